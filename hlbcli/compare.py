"""``hlb compare DIR_A DIR_B``: two folders of run records (``hlb train --runs N --out`` or an
ablation's ``DIR/arms/<arm>``) compared seed by seed. The seeds both folders completed pair up
(same seed: same data order and initial weights), and B - A is reported with its mean, 95%
confidence interval and the paired t-test, Welch's test on the same seeds beside it
(:func:`hlbcli.stats.paired_difference`). Records are read and checked by :mod:`hlbcli.readback`.
Refused with one line (exit 2): a folder without valid records, folders trained on different
data (their records' ``config.data``), folders that share no completed seed. Folders timed on
different machines (:func:`hlbcli.machine.difference`) are one warning line."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

from hlbcli import readback, stats
from hlbcli.errors import UsageError
from hlbcli.machine import runs_machine, warn_different
from hlbcli.output import p_value, pts
from hlbcli.readback import first_difference
from hlbcli.record import _clean

HINT = "point at two --out folders of hlb train (or two arms' folders DIR/arms/ARM) trained on the same data and seeds"


def _data_of(folder: Path, runs: list[dict]) -> dict:
    """The ``config.data`` section the folder's records share; refused when they differ."""
    first = runs[0].get("config", {}).get("data")
    for rec in runs[1:]:
        other = rec.get("config", {}).get("data")
        if other != first:
            raise UsageError(f"{folder}: its records were trained on different data (seed {runs[0]['seed']} vs "
                             f"{rec['seed']}: {first_difference(first, other, 'data')})", HINT)
    if not isinstance(first, dict):
        raise UsageError(f"{folder}: seed {runs[0]['seed']}'s record has no config.data section", HINT)
    return first


def load(folder: Path) -> tuple[dict[int, float], dict, dict]:
    """A folder's completed accuracies by seed, its data section, and what was read: the
    records' statuses and the files left out (each named in a warning line)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", HINT)
    found = readback.read_records(folder)
    runs = found.sorted_runs()
    if not runs:
        left = found.left_out()
        if left:
            raise UsageError(f"no valid run records in {folder}: {len(left)} left out, the first {left[0][0]}: {left[0][1]}",
                             "compare folders written by this hlbcli and torch")
        raise UsageError(f"no run records in {folder}", HINT)
    for p, why in found.left_out():
        print(f"warning: left out {p}: {why}", file=sys.stderr, flush=True)
    data = _data_of(folder, runs)
    accs = {r["seed"]: r["accuracy"] for r in runs if r.get("status") == "completed"}
    info = {"folder": str(folder), "records": len(runs), "completed": len(accs), "left_out": len(found.left_out()),
            "machine": runs_machine(runs)}
    return accs, data, info


def compare(dir_a: Path, dir_b: Path) -> dict:
    """The comparison of two folders as a JSON-ready dict (see the module's docstring)."""
    a, data_a, info_a = load(dir_a)
    b, data_b, info_b = load(dir_b)
    warn_different(str(dir_a), info_a["machine"], str(dir_b), info_b["machine"])
    if data_a != data_b:
        raise UsageError(f"{dir_a} and {dir_b} were trained on different data ({first_difference(data_a, data_b, 'data')})", HINT)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise UsageError(f"{dir_a} and {dir_b} share no completed seed (A: {_seeds(a)}; B: {_seeds(b)})", HINT)
    diff = stats.paired_difference(a, b)
    arms = {}
    for name, accs, info in (("A", a, info_a), ("B", b, info_b)):
        xs = [accs[k] for k in shared]
        m, s = stats.mean_std(xs)
        arms[name] = {**info, "mean": m, "std": s, "ci95": list(stats.ci95(xs)),
                      "only_here": sorted(set(accs) - set(shared))}
    return {"kind": "compare", "dataset": data_a.get("dataset"), "A": arms["A"], "B": arms["B"], "difference": diff}


def _seeds(accs: dict[int, float]) -> str:
    ks = sorted(accs)
    if not ks:
        return "no completed run"
    return f"seed {ks[0]}" if len(ks) == 1 else f"{len(ks)} seeds {ks[0]}..{ks[-1]}"


#: points of accuracy, "n/a" where there are none
pts_na = partial(pts, missing="n/a")


def format_table(rep: dict) -> str:
    """A small table (A, B, B - A over the shared seeds) and the one summary line."""
    d = rep["difference"]
    rows = [("", "n", "mean %", "std", "95% CI", "folder")]
    for name in ("A", "B"):
        r = rep[name]
        rows.append((name, str(d["n"]), pts_na(r["mean"]), pts_na(r["std"]), f"{pts_na(r['ci95'][0])} to {pts_na(r['ci95'][1])}", r["folder"]))
    rows.append(("B - A", str(d["n"]), pts_na(d["mean"], signed=True), pts_na(d["std"]),
                 f"{pts_na(d['ci95'][0], signed=True)} to {pts_na(d['ci95'][1], signed=True)}", "paired, seed by seed"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + "  " + row[5]
             for row in rows]
    for name in ("A", "B"):
        if rep[name]["only_here"]:
            lines.append(f"{name} only (not compared): {_seeds(dict.fromkeys(rep[name]['only_here'], 0.0))}")
    lo, hi = d["ci95"]
    lines.append(f"B - A: {pts_na(d['mean'], signed=True)} points over {d['n']} paired seed(s) (95% CI {pts_na(lo, signed=True)} to "
                 f"{pts_na(hi, signed=True)}), paired t-test p={p_value(d['p_paired'])}; Welch's t-test p={p_value(d['p_welch'])}")
    return "\n".join(lines)


def to_json(rep: dict) -> str:
    return json.dumps(_clean(rep), indent=2)
