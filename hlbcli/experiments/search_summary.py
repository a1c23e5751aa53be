"""``hlb search``'s scores and its summary: each trial's paired difference from the baseline on
the search's seeds, the best trials (the Pareto front for ``pareto``), what the search spent,
and the table (a terminal, a log, ``DIR/summary.md``)."""

from __future__ import annotations

from pathlib import Path

from hlbcli import record
from hlbcli.experiments.plan import BASELINE, Arm, finished_seeds
from hlbcli.experiments.summary import plain_lines
from hlbcli.output import num, pct, pts
from hlbcli.stats import ci95, mean_std, t_confidence_sequence, cs_bounded_from

def _acc(rec: dict) -> float:
    """A run's accuracy for the search: a diverged run (or one without a number) scores 0."""
    a = rec.get("accuracy")
    return float(a) if rec.get("status") == "completed" and isinstance(a, (int, float)) and a == a else 0.0


def paired(base: dict[int, dict], mine: dict[int, dict]) -> tuple[list[float], list[float], list[float]]:
    """Per shared seed: the accuracy difference (mine - base), the time difference (mine -
    base, seconds) and the arm's own accuracy."""
    seeds = sorted(set(base) & set(mine))
    t = lambda r: float(r.get("train_seconds") or 0.0)  # noqa: E731
    return ([_acc(mine[s]) - _acc(base[s]) for s in seeds], [t(mine[s]) - t(base[s]) for s in seeds],
            [_acc(mine[s]) for s in seeds])


def prune_reason(opts, base: dict[int, dict], mine: dict[int, dict]) -> str | None:
    """Why the trial is clearly worse than the baseline so far (else None): the anytime-valid
    interval at ``prune_alpha`` lies on the worse side (accuracy; for ``pareto`` accuracy and
    time both; for ``time``, the accuracy below the target)."""
    d_acc, d_time, accs = paired(base, mine)
    if len(d_acc) < cs_bounded_from(opts.prune_alpha):
        return None
    lo, hi = t_confidence_sequence(d_acc, opts.prune_alpha)
    if opts.objective == "time":
        lo, hi = t_confidence_sequence([a - opts.target for a in accs], opts.prune_alpha)
        return f"accuracy below the target {100 * opts.target:g}%: at most {100 * (opts.target + hi):.2f}%" if hi < 0 else None
    if hi >= 0:
        return None
    if opts.objective == "pareto":
        t_lo, _ = t_confidence_sequence(d_time, opts.prune_alpha)
        if t_lo <= 0:
            return None
        return f"less accurate (at most {100 * hi:+.2f} pts) and slower (at least {t_lo:+.2f} s) than the baseline"
    return f"less accurate than the baseline: at most {100 * hi:+.2f} pts"


def trial_values(opts, base: dict[int, dict], mine: dict[int, dict]) -> list[float]:
    d_acc, d_time, _ = paired(base, mine)
    acc, tm = sum(d_acc) / len(d_acc), sum(d_time) / len(d_time)
    return {"accuracy": [acc], "pareto": [acc, tm], "time": [tm]}[opts.objective]




def _mean(xs: list[float]) -> float:
    return mean_std(xs)[0] if xs else float("nan")


def changes(arm: dict | None) -> str:
    """A trial's changes to the preset in words: ``-ema +cutmix flip->my_flip train.epochs=7.2``."""
    if not arm:
        return "?"
    if arm["folder"] == BASELINE:
        return "the preset"
    swapped = set(arm["replaced"].values())
    words = [f"-{d}" for d in arm["disabled"] if d not in arm["replaced"]]
    words += [f"+{e}" for e in arm["enabled"] if e not in swapped] + [f"{o}->{n}" for o, n in arm["replaced"].items()]
    return " ".join(words + [_short(s) for s in arm["sets"]]) or "the preset"


def _short(setting: str) -> str:
    """``train.lr=12.168673208563671`` as ``train.lr=12.17`` (the value trained is the whole)."""
    key, _, raw = setting.partition("=")
    try:
        v = float(raw)
    except ValueError:
        return setting
    return f"{key}={v:.4g}" if "." in raw and len(raw) > 6 else setting


def _dominates(a: dict, b: dict) -> bool:
    """Trial ``a`` is at least as accurate and as fast as ``b``, and better in one."""
    return (a["diff"] >= b["diff"] and a["time_diff"] <= b["time_diff"]
            and (a["diff"] > b["diff"] or a["time_diff"] < b["time_diff"]))


def best_rows(objective: str, rows: list[dict], target: float | None = None) -> list[dict]:
    """The best complete trials, best first: the highest accuracy difference; the Pareto front
    (by accuracy); the least time among those whose mean accuracy reaches the target."""
    done = [r for r in rows if r["state"] == "complete" and r.get("n")]
    if objective == "accuracy":
        return sorted(done, key=lambda r: -r["diff"])[:1]
    if objective == "time":
        ok = [r for r in done if r["accuracy"] >= target]
        return sorted(ok, key=lambda r: r["time_diff"])[:1]
    front = [r for r in done if not any(_dominates(o, r) for o in done)]
    return sorted(front, key=lambda r: -r["diff"])


def candidates(objective: str, rows: list[dict], target: float | None, top: int) -> list[dict]:
    """The trials worth confirming on fresh seeds, at most ``top``: better than the baseline in
    the search (never the preset itself), one per config."""
    done = [r for r in rows if r["state"] == "complete" and r.get("n") and r["folder"] != BASELINE]
    if objective == "accuracy":
        ranked = sorted([r for r in done if r["diff"] > 0], key=lambda r: -r["diff"])
    elif objective == "time":
        ranked = sorted([r for r in done if r["accuracy"] >= target and r["time_diff"] < 0], key=lambda r: r["time_diff"])
    else:
        ranked = [r for r in best_rows(objective, rows) if r["folder"] != BASELINE and (r["diff"] > 0 or r["time_diff"] < 0)]
    seen, out = set(), []
    for r in ranked:
        if r["folder"] not in seen:
            seen.add(r["folder"])
            out.append(r)
    return out[:top]


def trial_rows(opts, study, out: Path) -> list[dict]:
    """A row per trial of the study: its state, changes, and its runs against the baseline's."""
    base = finished_seeds(Arm(BASELINE), opts, out)
    cache: dict[str, dict] = {BASELINE: base}
    rows = []
    for t in study.get_trials(deepcopy=False):
        arm = t.user_attrs.get("arm")
        row = {"number": t.number, "state": t.state.name.lower(), "folder": arm["folder"] if arm else None,
               "changes": changes(arm), "params": dict(t.params), "values": list(t.values) if t.values else None,
               "why": t.user_attrs.get("pruned") or t.user_attrs.get("error")}
        if arm:
            f = arm["folder"]
            if f not in cache:
                cache[f] = finished_seeds(Arm(f, dir=f), opts, out)
            d_acc, d_time, accs = paired(base, cache[f])
            row.update(n=len(d_acc), accuracy=_mean(accs), diff=_mean(d_acc),
                       diff_ci95=list(ci95(d_acc)) if len(d_acc) > 1 else [None, None], time_diff=_mean(d_time))
        rows.append(row)
    return rows


def search_summary(opts, study, out: Path, partial: bool, elapsed: float) -> dict:
    rows = trial_rows(opts, study, out)
    folders = {r["folder"] for r in rows if r["folder"]} | {BASELINE}
    runs = [rec for f in sorted(folders) for rec in finished_seeds(Arm(f, dir=f), opts, out).values()]
    base = finished_seeds(Arm(BASELINE), opts, out)
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return {
        "kind": "search", "preset": opts.preset, "objective": opts.objective, "target": opts.target,
        "sampler": opts.sampler, "seeds": [opts.seed, opts.seed + opts.runs - 1], "trials_planned": opts.trials,
        "prune_alpha": opts.prune_alpha, "out": str(out), "partial": partial,
        "baseline": {"n": len(base), "accuracy": _mean([_acc(r) for r in base.values()]),
                     "time": _mean([float(r.get("train_seconds") or 0) for r in base.values()])},
        "trials": rows, "best": [r["number"] for r in best_rows(opts.objective, rows, opts.target)],
        "spent": {"trials": len(rows), "states": states, "runs": len(runs),
                  "train_seconds": sum(float(r.get("train_seconds") or 0) for r in runs), "elapsed_here": elapsed},
        "n": len(runs),
    }


def write_search_summary(out: Path, summary: dict) -> None:
    record.write_json(out / "summary.json", summary)
    record.write_text(out / "summary.md", markdown(summary))


COLUMNS = ["trial", "state", "changes", "n", "accuracy", "vs baseline (pts, 95% t)", "time vs baseline (s)"]


def table_rows(summary: dict) -> list[list[str]]:
    best = set(summary["best"])
    rows = []
    for r in summary["trials"]:
        lo, hi = (r.get("diff_ci95") or [None, None])
        ci = f" [{pts(lo, signed=True)}, {pts(hi, signed=True)}]" if lo is not None else ""
        mark = " *best" if r["number"] in best and summary["objective"] != "pareto" else (" *front" if r["number"] in best else "")
        rows.append([f"{r['number']}{mark}", r["state"], r["changes"], str(r.get("n", 0)), pct(r.get("accuracy")),
                     pts(r.get("diff"), signed=True) + ci, num(r.get("time_diff"), ".2f", signed=True)])
    return rows


def footnote(summary: dict) -> str:
    s, b = summary["spent"], summary["baseline"]
    lines = [f"{s['trials']} trials ({', '.join(f'{v} {k}' for k, v in sorted(s['states'].items()))}), {s['runs']} runs, "
             f"{s['train_seconds']:.0f} s of training; baseline {pct(b['accuracy'])} over {b['n']} seeds "
             f"(seeds {summary['seeds'][0]}..{summary['seeds'][1]}, the same in every trial)."]
    if summary.get("partial"):
        lines.append("PARTIAL: the search stopped before its trials were done (--resume goes on).")
    lines += [f"pruned: {r['number']}: {r['why']}" for r in summary["trials"] if r["state"] == "pruned" and r.get("why")][:5]
    conf = summary.get("confirmation")
    if conf:
        lines += conf.get("lines", [])
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    rows = table_rows(summary)
    lines = [f"# Search over preset `{summary['preset']}` ({summary['objective']})", "",
             "| " + " | ".join(COLUMNS) + " |", "| " + " | ".join(["---"] * 3 + ["---:"] * 4) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines + ["", footnote(summary).replace("\n", "  \n"), ""])


def search_table(summary: dict):
    """The trials as a rich table (the live display)."""
    from rich import box
    from rich.table import Table

    t = Table(title=f"search over {summary['preset']} ({summary['objective']})", title_justify="left", box=box.SIMPLE_HEAD)
    for i, c in enumerate(COLUMNS):
        t.add_column(c, justify="left" if i < 3 else "right", overflow="fold")
    for r in table_rows(summary)[-30:]:
        t.add_row(*r)
    return t


def print_search(summary: dict, console) -> None:
    if console.is_terminal:
        console.print(search_table(summary))
    else:
        for line in plain_lines(COLUMNS, table_rows(summary)):
            console.print(line, markup=False)
    console.print(footnote(summary), markup=False)
