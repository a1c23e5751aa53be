"""What hlb reads back: run records (``run-*.json``) and ablation plans (``ablation.json``),
each checked as it is read. One reader for ``--resume`` (``hlb train`` and ``hlb ablate``, both
backends), ``hlb summary`` and the ablation's live summary.

A record is used only if it is a JSON object whose ``seed`` is an integer in 0..MAX_SEED and
whose ``status`` is one of :data:`STATUSES`; a completed run has an accuracy in [0, 1] and a
finite, non-negative ``train_seconds`` (or null). Strict reading (``--resume``, ``hlb summary``)
also wants the ``versions.hlbcli`` and ``versions.torch`` of this process and a ``config`` object.
One record per seed: of two copies, the one under its canonical name
(``run-{i:03d}-seed{seed}.json``) is kept; with none canonical, every copy is left out.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hlbcli.config import MAX_ARMS, MAX_RUNS, MAX_SEED
from hlbcli.errors import UsageError
from hlbcli.record import versions

#: statuses a run record may have
STATUSES = ("completed", "diverged", "failed", "interrupted")
#: statuses of a run that is over: ``--resume`` keeps these and trains the rest
FINISHED = ("completed", "diverged")
#: the largest record or plan read back (hlb writes a few KiB)
MAX_FILE = 4 * 2**20
#: the most ``run-*.json`` files read from one folder
MAX_FILES = 4 * MAX_RUNS
PLAN_NAME = "ablation.json"
RESUME_HINT = "move the file away to retrain that seed, or choose a new folder"

_NAME = re.compile(r"run-(\d{3,})-seed(\d+)\.json")


class Bad(Exception):
    """A file that is not what hlb wrote; ``str(e)`` says why."""


def read_json(path: Path) -> Any:
    """A JSON file of at most :data:`MAX_FILE` bytes; :class:`Bad` otherwise (FileNotFoundError
    goes up as such)."""
    st = os.stat(path)
    return _parse(path, st)


def _parse(path: Path, st: os.stat_result) -> Any:
    if not stat.S_ISREG(st.st_mode):
        raise Bad("not a regular file")
    if st.st_size > MAX_FILE:
        raise Bad(f"{st.st_size} bytes, more than the {MAX_FILE // 2**20} MiB hlb reads back")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise Bad(f"cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_FILE:
        raise Bad(f"more than the {MAX_FILE // 2**20} MiB hlb reads back")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise Bad("not UTF-8 text") from None
    except RecursionError:
        raise Bad("not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise Bad(f"not valid JSON ({e})") from None


@functools.lru_cache(maxsize=1)
def _build() -> tuple[str, str]:
    v = versions()
    return v["hlbcli"], v["torch"]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(v: Any) -> bool:
    """A number (not a boolean) or null: a statistic of a summary or claim, NaN where undefined."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _kind(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


def check_record(rec: Any, strict: bool = True) -> str | None:
    """Why ``rec`` is not a run record hlb can use, or None. ``strict``: also the versions of
    this process and a config (the live summary of an ablation reads its own children's
    records, already checked at ``--resume``, without)."""
    if not isinstance(rec, dict):
        return f"not a run record (the file holds {_kind(rec)}, not an object)"
    if "seed" not in rec:
        return "no seed"
    seed = rec["seed"]
    if not _int(seed):
        return f"seed {seed!r} is not an integer"
    if not 0 <= seed <= MAX_SEED:
        return f"seed {seed} is outside 0..{MAX_SEED}"
    status = rec.get("status")
    if status not in STATUSES:
        return f"status {status!r} is not one of {', '.join(STATUSES)}"
    if status == "completed":
        if "accuracy" not in rec:
            return "a completed run without an accuracy"
        acc = rec["accuracy"]
        if not _finite(acc):
            return f"accuracy {acc!r} of a completed run is not a finite number"
        if not 0 <= acc <= 1:
            return f"accuracy {acc!r} is outside 0..1"
        t = rec.get("train_seconds")
        if t is not None and not (_finite(t) and t >= 0):
            return f"train_seconds {t!r} is not a finite number >= 0"
    if not strict:
        return None
    v = rec.get("versions")
    if not isinstance(v, dict):
        return "no versions (written by an unknown hlbcli)"
    for name, mine in zip(("hlbcli", "torch"), _build()):
        if v.get(name) != mine:
            return f"written by {name} {v.get(name)!r}, this is {name} {mine}"
    if not isinstance(rec.get("config"), dict):
        return "no config object"
    return None


#: records read so far, by path, with the (mtime, size) they were read at: the progress display
#: reads the arms' folders every second, and a battery of hundreds of runs must not be parsed
#: again each time
_READ: dict[Path, tuple[tuple[int, int], Any]] = {}


def _load_cached(p: Path) -> Any:
    """The parsed file, or a :class:`Bad` (returned, not raised, so that it is cached too)."""
    try:
        st = os.stat(p)
    except OSError as e:
        return Bad(f"cannot be read: {e.strerror or e}")
    key = (st.st_mtime_ns, st.st_size)
    hit = _READ.get(p)
    if hit is None or hit[0] != key:
        try:
            value: Any = _parse(p, st)
        except Bad as e:
            value = e
        hit = (key, value)
        _READ[p] = hit
    return hit[1]


def _canonical(p: Path, seed: int, first_seed: int | None) -> bool:
    if first_seed is not None:
        return p.name == f"run-{seed - first_seed:03d}-seed{seed}.json"
    m = _NAME.fullmatch(p.name)
    return m is not None and m.group(2) == str(seed)


def _span(seeds: range) -> str:
    return f"{seeds.start}..{seeds.stop - 1}"


@dataclass
class Records:
    """The run records of one folder: ``runs`` by seed (the plan's seeds, one each), the files
    ``rejected`` (with why) and the valid records of seeds ``outside`` the plan."""

    folder: Path
    runs: dict[int, tuple[Path, dict]] = field(default_factory=dict)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    outside: list[tuple[Path, str]] = field(default_factory=list)

    def sorted_runs(self) -> list[dict]:
        return [rec for _, (_, rec) in sorted(self.runs.items())]

    def left_out(self) -> list[tuple[Path, str]]:
        return [*self.rejected, *self.outside]


def read_records(folder: Path, seeds: range | None = None, first_seed: int | None = None,
                 strict: bool = True, read: Callable[[Path], bool] | None = None) -> Records:
    """The run records in ``folder``, each checked by :func:`check_record`. ``seeds``: the
    plan's seeds (others are set aside in ``outside``); ``first_seed``: the seed of
    ``run-000-*`` (the canonical names), by default ``seeds.start``; ``read``: which files are
    read at all (the others are not there for this reader)."""
    folder = Path(folder)
    if first_seed is None and seeds is not None:
        first_seed = seeds.start
    out = Records(folder)
    paths = [p for p in sorted(folder.glob("run-*.json")) if read is None or read(p)]
    if len(paths) > MAX_FILES:
        raise UsageError(f"{folder} holds {len(paths)} run-*.json files, more than the {MAX_FILES} hlb reads back",
                         "move the files hlb did not write away, or choose a new folder")
    by_seed: dict[int, list[tuple[Path, dict]]] = {}
    for p in paths:
        rec = _load_cached(p)
        why = str(rec) if isinstance(rec, Bad) else check_record(rec, strict)
        if why:
            out.rejected.append((p, why))
        elif seeds is not None and rec["seed"] not in seeds:
            out.outside.append((p, f"seed {rec['seed']} is outside this batch's seeds {_span(seeds)}"))
        else:
            by_seed.setdefault(rec["seed"], []).append((p, rec))
    for seed, copies in sorted(by_seed.items()):
        if len(copies) == 1:
            out.runs[seed] = copies[0]
            continue
        keep = [c for c in copies if _canonical(c[0], seed, first_seed)]
        if len(keep) == 1:
            out.runs[seed] = keep[0]
        for p, _ in copies:
            if len(keep) != 1 or p != keep[0][0]:
                why = f"a second record of seed {seed}" + (f" ({keep[0][0].name} is kept)" if len(keep) == 1 else
                                                             " (no copy under its own name run-NNN-seedS.json: all left out)")
                out.rejected.append((p, why))
    out.rejected.sort()
    return out


def refuse_rejected(found: list[Records]) -> None:
    """``--resume``: a record that fails the checks stops the command (exit 2, one line);
    records of seeds outside the plan are named in one warning line."""
    bad = [r for f in found for r in f.rejected]
    if bad:
        more = f"; {len(bad) - 1} more record(s) refused" if len(bad) > 1 else ""
        raise UsageError(f"{bad[0][0]}: {bad[0][1]}{more}", RESUME_HINT)
    aside = [r for f in found for r in f.outside]
    if aside:
        more = f" and {len(aside) - 1} more" if len(aside) > 1 else ""
        print(f"warning: left out of this batch: {aside[0][0]} ({aside[0][1]}){more}", file=sys.stderr, flush=True)


def arms_hold_records(folder: Path) -> bool:
    return any(Path(folder).glob("arms/*/run-*.json"))


def read_plan(folder: Path) -> dict:
    """``DIR/ablation.json``, checked: its shape and bounds (runs, seeds, arms)."""
    path = Path(folder) / PLAN_NAME
    fix = "move it away and rerun the hlb ablate command that made it with --resume to write it again, or choose a new folder"
    try:
        plan = read_json(path)
    except FileNotFoundError:
        if arms_hold_records(folder):
            raise UsageError(f"{folder} has no {PLAN_NAME}, but its arms/ holds run records",
                             "rerun the hlb ablate command that made it with --resume to write the plan again") from None
        raise UsageError(f"{folder} has no {PLAN_NAME}", "it was not written by hlb ablate; choose a new folder") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read: {e.strerror or e}", fix) from None
    except Bad as e:
        raise UsageError(f"{path}: {e}", fix) from None
    why = check_plan(plan)
    if why:
        raise UsageError(f"{path}: {why}", fix)
    return plan


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def check_plan(plan: Any) -> str | None:
    """Why ``plan`` is not an ablation plan hlb wrote, or None."""
    if not isinstance(plan, dict) or plan.get("kind") != "ablation-plan":
        return "not an ablation plan" + ("" if isinstance(plan, dict) else f" (the file holds {_kind(plan)})")
    if not isinstance(plan.get("preset"), str) or not plan["preset"]:
        return f"preset {plan.get('preset')!r} is not a preset name"
    if plan.get("config") is not None and not isinstance(plan["config"], str):
        return f"config {plan['config']!r} is not a path or null"
    if not _strs(plan.get("sets", [])):
        return f"sets {plan.get('sets')!r} is not a list of strings"
    seed, runs = plan.get("seed"), plan.get("runs")
    if not _int(seed) or not 0 <= seed <= MAX_SEED:
        return f"seed {seed!r} is not an integer in 0..{MAX_SEED}"
    if not _int(runs) or not 1 <= runs <= MAX_RUNS:
        return f"runs {runs!r} is not an integer in 1..{MAX_RUNS}"
    if seed + runs - 1 > MAX_SEED:
        return f"seeds {seed}..{seed + runs - 1} go past the largest seed {MAX_SEED}"
    why = check_sequential(plan.get("sequential"), seed, runs)
    if why:
        return why
    arms = plan.get("arms")
    if not isinstance(arms, list) or not 2 <= len(arms) <= MAX_ARMS:
        n = f"{len(arms)} arms" if isinstance(arms, list) else repr(arms)
        return f"arms {n} is not a list of 2..{MAX_ARMS} arms"
    names = set()
    for i, a in enumerate(arms):
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not a["name"]:
            return f"arm {i} is not an object with a name"
        if a["name"] in names:
            return f"arm {a['name']!r} is named twice"
        names.add(a["name"])
        for k in ("disabled", "enabled", "silenced"):
            if not _strs(a.get(k, [])):
                return f"arm {a['name']!r}: {k} {a.get(k)!r} is not a list of trick names"
        rep = a.get("replaced", {})
        if not (isinstance(rep, dict) and _strs(list(rep)) and _strs(list(rep.values()))):
            return f"arm {a['name']!r}: replaced {rep!r} is not a table of trick names"
        sets = a.get("sets", [])
        if not (_strs(sets) and all(_setting(x) for x in sets)):
            return f"arm {a['name']!r}: sets {sets!r} is not a list of KEY=VALUE settings"
        if i and not (a.get("disabled") or a.get("enabled") or sets):
            return f"arm {a['name']!r} switches no trick and changes no setting"
        folder = a.get("folder")
        if folder is not None and not (isinstance(folder, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", folder)):
            return f"arm {a['name']!r}: folder {folder!r} is not a plain folder name"
        # a search's trial (its own folder) may switch tricks and change settings at once
        if sets and (not i or (a.get("disabled") or a.get("enabled") or a.get("replaced")) and not folder):
            return f"arm {a['name']!r}: sets belong to an arm of --vary alone, not to " + ("the baseline" if not i else "an arm that switches tricks")
    return None


def _setting(s: str) -> bool:
    """``KEY=VALUE`` with a key of non-empty dotted parts (``--vary``'s settings)."""
    key, eq, _ = s.partition("=")
    return bool(eq) and all(key.split("."))


def check_sequential(seq: Any, seed: int, runs: int) -> str | None:
    """Why a plan's ``sequential`` table (``hlb ablate --until-resolved``; absent in a fixed
    plan) is not one hlb wrote, or None."""
    if seq is None:
        return None
    if not isinstance(seq, dict) or seq.get("method") != "t-cs":
        return f"sequential {seq!r} is not a table with method 't-cs'"
    top = seq.get("max_runs")
    if not _int(top) or not runs <= top <= MAX_RUNS:
        return f"sequential max_runs {top!r} is not an integer in {runs}..{MAX_RUNS}"
    if seed + top - 1 > MAX_SEED:
        return f"seeds {seed}..{seed + top - 1} go past the largest seed {MAX_SEED}"
    if not _finite(seq.get("alpha")) or not 0 < seq["alpha"] < 1:
        return f"sequential alpha {seq.get('alpha')!r} is not a number between 0 and 1"
    d = seq.get("delta")
    if d is not None and not (_finite(d) and 0 < d < 1):
        return f"sequential delta {d!r} is not a number between 0 and 1 or null"
    return None


def plan_difference(old: dict, new: dict) -> str:
    """The first difference between two plans (``runs`` aside), as ``sets: [...] vs [...]``;
    the arms by name, then their order."""

    def keyed(plan: dict) -> dict:
        arms = plan.get("arms", [])
        d = {k: v for k, v in plan.items() if k not in ("runs", "arms")}
        d["arms"] = {a.get("name"): {k: v for k, v in a.items() if k != "name"} for a in arms}
        d["arm order"] = [a.get("name") for a in arms]
        return d

    return first_difference(keyed(old), keyed(new))


def with_defaults(stored: Any, defaults: Any) -> Any:
    """``stored`` (a record's config) with each key it lacks taken from ``defaults``, at every
    depth. A record written before a setting existed ran with that setting's default: a new
    setting's default keeps the runs as they were (CONTRIBUTING's rule for settings)."""
    if not (isinstance(stored, dict) and isinstance(defaults, dict)):
        return stored
    return {**{k: v for k, v in defaults.items() if k not in stored},
            **{k: with_defaults(v, defaults.get(k)) for k, v in stored.items()}}


def config_difference(stored: Any, current: dict, defaults: dict | None = None) -> str | None:
    """None where a record's config is ``current`` (keys it predates read as their
    ``defaults``), else the first difference, as :func:`first_difference` words it."""
    stored = with_defaults(stored, defaults)
    return None if stored == current else first_difference(stored, current)


def first_difference(a: Any, b: Any, where: str = "") -> str:
    """Where two resolved configs differ first, as ``train.lr: 0.5 vs 11.5``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    return f"{where or 'config'}: {a!r} vs {b!r}"
