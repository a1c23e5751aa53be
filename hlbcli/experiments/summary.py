"""The summary of a battery: each arm's statistics from its run records (Welch's test against
the baseline and the paired t-test seed by seed), ``summary.json``, ``summary.md`` and the table,
the same for every backend; ``hlb summary DIR`` rebuilds it from the plan and the records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hlbcli import readback, record, stats
from hlbcli.errors import UsageError
from hlbcli.machine import runs_machine
from hlbcli.experiments import sequential
from hlbcli.output import SYNTHETIC, num, pct, pts, runs_saved_line, synthetic
from hlbcli.experiments.plan import BASELINE, AblateOptions, Arm, arm_records, options_of, plan_runs

SIGNIFICANCE = 0.05


def run_path(arm_dir: Path, first_seed: int, seed: int) -> Path:
    """Where the record of ``seed`` goes: ``hlb train --seed FIRST`` names its i-th run so."""
    return arm_dir / f"run-{seed - first_seed:03d}-seed{seed}.json"


def arm_stats(arm: Arm, runs: list[dict], base: dict | None) -> dict:
    """An arm's row of the ablation's summary, from the one statistics block
    (:func:`hlbcli.stats.run_block`), with its differences from ``base`` (the baseline's row)."""
    b = stats.run_block(runs)
    accs, times, mean, std, tmean = b["accuracies"], b["times"], b["mean"], b["std"], b["time_mean"]
    lo, hi = b["ci95"]
    row: dict[str, Any] = {
        "name": arm.name,
        "disabled": list(arm.disabled),
        "enabled": list(arm.enabled),
        "replaced": dict(arm.replaced),
        "sets": list(arm.sets),
        "n": b["n"],
        "n_started": len(runs),
        "seeds": b["seeds"],
        "mean_accuracy": mean,
        "std_accuracy": std,
        "ci95": [lo, hi],
        "delta_accuracy": None,
        "p_value": None,
        "mean_train_seconds": tmean,
        "delta_train_seconds": None,
    }
    by_seed = {seed: acc for seed, acc in zip(b["seeds"], accs) if isinstance(seed, int)}
    row["p_paired"], row["n_paired"], row["delta_paired"] = None, 0, None
    if base is not None:
        base_accs = base["_accs"]
        row["delta_accuracy"] = mean - base["mean_accuracy"] if accs and base_accs else None
        row["p_value"] = stats.welch(base_accs, accs)[1]
        _, row["p_paired"], row["n_paired"] = stats.paired(base["_by_seed"], by_seed)
        common = sorted(set(base["_by_seed"]) & set(by_seed))
        if common:
            row["delta_paired"] = stats.mean_std([by_seed[k] - base["_by_seed"][k] for k in common])[0]
        if times and base["_times"]:
            row["delta_train_seconds"] = tmean - base["mean_train_seconds"]
    row["_accs"], row["_times"], row["_by_seed"] = accs, times, by_seed
    return row


def summarize(opts: AblateOptions, arms: list[Arm], out: Path, status: dict[str, str], partial: bool,
              strict: bool = False) -> dict:
    """The summary from the arms' records; those left out are named in its ``rejected``; the
    machine the runs ran on (:func:`hlbcli.machine.runs_machine`).
    ``strict`` (``hlb summary``): also the records' versions and config are checked."""
    rows, left = [], []
    base_row = base_done = None
    for arm in arms:
        found = arm_records(arm, opts, out, strict)
        runs, left = found.sorted_runs(), left + found.left_out()
        row = arm_stats(arm, runs, base_row)
        done = {s: r for s, (_, r) in found.runs.items() if r["status"] in readback.FINISHED}
        if base_row is None:
            base_row, base_done = row, done
        elif opts.until_resolved:  # --until-resolved: the verdict of the arm's looks so far
            row["sequential"] = sequential.verdict(base_done, done, opts)
        row["status"] = status.get(arm.name, "not started")
        row["dir"] = f"arms/{arm.folder}"
        row["runs"] = runs
        rows.append(row)
    for row in rows:
        row.pop("_accs"), row.pop("_times"), row.pop("_by_seed")
    return {
        "kind": "ablation",
        "out": str(out),
        "preset": opts.preset,
        "config": opts.config,
        "sets": list(opts.sets),
        "runs_per_arm": opts.runs,
        "seeds": list(range(opts.seed, opts.seed + plan_runs(opts))),
        "baseline": BASELINE,
        "significance": SIGNIFICANCE,
        "ci95_method": stats.ACCURACY_CI,
        "partial": partial,
        "machine": runs_machine([r for row in rows for r in row["runs"]]),
        "arms": rows,
        "rejected": [{"file": str(p), "why": why} for p, why in left],
        **({"sequential": sequential.totals(rows, opts, partial)} if opts.until_resolved else {}),
    }


def write_summary(opts: AblateOptions, arms: list[Arm], out: Path, status: dict[str, str], partial: bool,
                  wall_seconds: float | None = None, strict: bool = False) -> dict:
    summary = summarize(opts, arms, out, status, partial, strict)
    if wall_seconds is not None:
        summary["wall_seconds"] = wall_seconds
    record.write_json(out / "summary.json", summary)
    record.write_text(out / "summary.md", markdown(summary))
    return summary


def rebuild_summary(folder: Path) -> dict:
    """``hlb summary DIR`` for an ablation: the summary again from its plan and the arms' run
    records (after a crash, a SIGKILL, or by hand). Records that fail the checks are left out
    and named in its ``rejected``; none valid among some: exit 2."""
    opts, arms = options_of(readback.read_plan(folder), Path(folder))
    status, left, valid = {}, [], 0
    base_done = None
    for arm in arms:
        found = arm_records(arm, opts, Path(folder), strict=True)
        finished = {s: r for s, (_, r) in found.runs.items() if r["status"] in readback.FINISHED}
        over = len(finished) == opts.runs
        if opts.until_resolved:  # over once resolved (the baseline: once every arm is)
            if base_done is None:
                base_done, over = finished, True
            else:
                over = sequential.verdict(base_done, finished, opts)["resolved"]
                if not over:
                    status[BASELINE] = "incomplete"
        status[arm.name] = "completed" if over else ("incomplete" if found.runs else "not started")
        left, valid = left + found.left_out(), valid + len(found.runs)
    if left and not valid:
        raise UsageError(f"no valid run records in {folder}: {len(left)} left out, the first {left[0][0]}: {left[0][1]}",
                         "move them away and rerun the ablation command with --resume to train them again, or use the hlbcli and torch that wrote them")
    partial = any(v != "completed" for v in status.values())
    return write_summary(opts, arms, Path(folder), status, partial, strict=True)


COLUMNS = ["arm", "n", "accuracy", "std", "ci95", "Δ acc", "p Welch", "p paired", "time s", "Δ time s"]
#: the columns ``--until-resolved`` adds: the verdict (and the runs spent), the anytime-valid
#: interval of the paired difference; the fixed-n p-values beside them lose their star (the
#: verdict is what decides)
SEQ_COLUMNS = ["verdict", "interval (anytime-valid, pts)"]


def columns(summary: dict) -> list[str]:
    return COLUMNS + (SEQ_COLUMNS if summary.get("sequential") else [])


def _p(p: float | None, alpha: float | None) -> str:
    """A p-value, starred below ``alpha`` (None: never)."""
    return num(p, ".3g") + (" *" if alpha is not None and p is not None and p == p and p < alpha else "")


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    for a in summary["arms"]:
        lo, hi = a["ci95"]
        alpha = None if summary.get("sequential") else summary.get("significance", SIGNIFICANCE)
        rows.append([
            a["name"],
            f"{a['n']}" + (f"/{a['n_started']}" if a.get("n_started", a["n"]) != a["n"] else ""),
            pct(a["mean_accuracy"]),
            pts(a["std_accuracy"]),
            f"[{pts(lo)}, {pts(hi)}]" if a["n"] else "-",
            pts(a["delta_accuracy"], signed=True),
            _p(a.get("p_value"), alpha),
            _p(a.get("p_paired"), alpha),
            num(a["mean_train_seconds"], ".2f"),
            num(a["delta_train_seconds"], ".2f", signed=True),
        ])
        if summary.get("sequential"):
            v = a.get("sequential")
            rows[-1] += [sequential.describe(v, summary["sequential"].get("delta")), sequential.interval_text(v)] if v else ["baseline", "-"]
    return rows


def footnote(summary: dict) -> str:
    alpha = summary.get("significance", SIGNIFICANCE)
    note = (
        "accuracy and ci95 in %, std and Δ acc in points; ci95: the 95% t interval of the mean, clipped to 0-100%; "
        f"Δ: arm minus baseline; p Welch: Welch's t-test against the baseline; p paired: the paired "
        f"t-test of the per-seed differences (seeds both arms finished); * where p < {alpha:g}; "
        f"seeds {summary['seeds'][0]}..{summary['seeds'][-1]} in every arm"
    ) if summary["seeds"] else "no seeds"
    seq = summary.get("sequential")
    if seq and summary["seeds"]:
        delta = seq.get("delta")
        note = note.replace(f"; * where p < {alpha:g}", "").replace(" in every arm", f" at most; {runs_saved_line(seq)}")
        note += "\n" + "\n".join([
            "verdict: effect + or - once the interval excludes 0"
            + (f", no effect once it lies within +-{100 * delta:g} points" if delta else "")
            + ", else open (more seeds to come) or budget spent (--max-runs reached);",
            f"interval (anytime-valid, pts): the {1 - seq['alpha']:.0%} {seq['method']} of the per-seed differences "
            "from the baseline, in points, which holds at every look at once;",
            f"p Welch and p paired: the fixed-n tests of the seeds there are, starless here, as stopping at the first "
            f"p < {alpha:g} would not keep the error rate: read the verdict",
            *([] if delta else ["no arm can be called 'no effect': add --delta D (in accuracy: 0.002 is 0.2 points)"]),
        ])
    if summary.get("partial"):
        note += "; PARTIAL: interrupted or failed before every run finished"
    if synthetic([r for a in summary.get("arms", []) for r in a.get("runs", [])]):
        note += f"; {SYNTHETIC[1:-1]}"
    return note


def markdown(summary: dict) -> str:
    rows, cols = table_rows(summary), columns(summary)
    lines = [
        f"# Ablation of preset `{summary['preset']}`",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(cols) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += ["", footnote(summary).replace("\n", "  \n"), ""]  # (a line each: a hard break)
    return "\n".join(lines)


def rich_table(summary: dict, live: bool = False):
    """The table as a rich ``Table``; ``live`` marks the arms still training (the progress
    display)."""
    from rich import box
    from rich.table import Table

    rows = [[f"{r[0]} ({a.get('status', 'waiting')})", *r[1:]] if live and a.get("status") not in ("completed",) else r
            for a, r in zip(summary["arms"], table_rows(summary))]
    # a narrow terminal (160 columns) wraps the headers and the words of the arms' names and
    # verdicts, never cuts a cell short: each number's column is as wide as its widest cell;
    # no lines between columns (their room goes to the cells)
    t = Table(title=f"ablation of {summary['preset']}", title_justify="left", box=box.SIMPLE_HEAD)
    cols = columns(summary)
    for i, c in enumerate(cols):
        words = i == 0 or c == SEQ_COLUMNS[0]
        t.add_column(c, justify="left" if i == 0 else "right", overflow="fold",
                     min_width=None if words else max(len(r[i]) for r in rows))
    for r in rows:
        t.add_row(*r)
    return t


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console(highlight=False, soft_wrap=True)
    rows = table_rows(summary)
    if console.is_terminal:
        console.print(rich_table(summary))
    else:
        for line in plain_lines(columns(summary), rows):
            console.print(line, markup=False)
    console.print(footnote(summary), markup=False)


def plain_lines(cols: list[str], rows: list[list[str]]) -> list[str]:
    """A table as plain text (a log, a pipe): the first column left, the others right."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()
    return [fmt(cols), *map(fmt, rows)]

