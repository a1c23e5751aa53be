"""The confirmation of a search: its best trial(s) trained again on fresh seeds against the
baseline, seeds added in rounds until resolved (``hlb ablate --until-resolved``, in
``DIR/confirm``), and only a resolved winner written out as a preset file (``DIR/best.toml``).

A search's best trial is the largest of many noisy estimates, so its estimate is too high (the
winner's curse); and its seeds were used to pick it. The fresh seeds (those after the search's)
measure it without that bias, and the confirmation's anytime-valid interval holds at every
look, at ``--alpha`` split over the trials confirmed (Bonferroni): with no trial better than
the baseline, a false winner comes out with probability at most ``--alpha``
(tests/test_search_confirm.py simulates it)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from hlbcli import record
from hlbcli.experiments.battery import run_ablation
from hlbcli.experiments.plan import BASELINE, AblateOptions, Arm, check_arm, check_sequential, finished_seeds
from hlbcli.experiments.search_summary import candidates, paired, search_summary, write_search_summary
from hlbcli.experiments.sequential import EFFECT_DOWN, EFFECT_UP, OPEN, METHOD, describe, interval_text, verdict
from hlbcli.layers import dump_toml
from hlbcli.output import pts
from hlbcli.stats import cs_bounded_from

CONFIRM_DIR, BEST_FILE = "confirm", "best.toml"


def confirm_options(opts, m: int, out: Path) -> AblateOptions:
    """The confirmation's battery: the seeds after the search's, ``--alpha`` over ``m`` trials,
    rounds of as many seeds as the first bounded interval needs, up to ``--max-runs``."""
    each = opts.alpha / m
    shared = {f.name: getattr(opts, f.name) for f in fields(AblateOptions)}  # the search's own fields left behind
    c = AblateOptions(**{**shared, "sets": list(opts.sets), "runs": cs_bounded_from(each), "seed": opts.seed + opts.runs,
                         "out": out / CONFIRM_DIR, "resume": (out / CONFIRM_DIR).exists(), "until_resolved": True,
                         "alpha": each})
    check_sequential(c)
    return c


def judge(objective: str, target: float | None, base: dict, mine: dict, copts: AblateOptions) -> dict:
    """A candidate's verdicts on the fresh seeds (accuracy; time, ``effect +`` meaning faster),
    whether they are resolved for the objective, and whether it is a winner."""
    acc = verdict(base, mine, copts)
    tm = verdict(base, mine, copts, key="train_seconds", sign=-1.0)
    a, t = acc["how"], tm["how"]
    accs = paired(base, mine)[2]
    mean_acc = sum(accs) / len(accs) if accs else float("nan")
    if objective == "accuracy":
        resolved, winner = a != OPEN, a == EFFECT_UP
    elif objective == "time":
        resolved, winner = t != OPEN, t == EFFECT_UP and mean_acc >= target
    else:
        resolved = a != OPEN and t != OPEN
        winner = (a == EFFECT_UP and t != EFFECT_DOWN) or (t == EFFECT_UP and a != EFFECT_DOWN)
    return {"accuracy": acc, "time": tm, "resolved": resolved, "winner": winner, "mean_accuracy": mean_acc}


def _leaves(objective: str, target: float | None):
    def leaves(arm, base, mine, copts) -> str | None:
        j = judge(objective, target, base, mine, copts)
        if not j["resolved"]:
            return None
        return (f"{arm.name}: accuracy {describe(j['accuracy'], copts.delta)} {interval_text(j['accuracy'])} pts, "
                f"time {describe(j['time'])}")
    return leaves


def _arm(row: dict, attrs: dict) -> Arm:
    a = attrs["arm"]
    return Arm(f"trial-{row['number']}", list(a["disabled"]), list(a["enabled"]), [], dict(a["replaced"]),
               sets=list(a["sets"]), dir=a["folder"])


def confirm(opts, study, out: Path, console=None, elapsed: float = 0.0) -> tuple[dict, int]:
    """Train the search's best trial(s) (:func:`candidates`) on fresh seeds against the
    baseline until resolved; write ``best.toml`` for a resolved winner; return the search's
    summary with its ``confirmation`` table, and the exit code."""
    summary = search_summary(opts, study, out, False, elapsed)
    rows = candidates(opts.objective, summary["trials"], opts.target, opts.confirm_top)
    say = (lambda text: None) if opts.quiet or console is None else (lambda text: console.print(text, markup=False))
    if not rows:
        line = "confirmation: no trial did better than the baseline in the search; nothing to confirm, no best.toml"
        summary["confirmation"] = {"candidates": [], "winner": None, "best": None, "lines": [line]}
        write_search_summary(out, summary)
        say(line)
        return summary, 0
    copts = confirm_options(opts, len(rows), out)
    attrs = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    base, arms = Arm(BASELINE), [_arm(r, attrs[r["number"]]) for r in rows]
    for arm in [base, *arms]:
        check_arm(copts, arm)
    say(f"confirmation: {len(arms)} trial(s) against the baseline on fresh seeds from {copts.seed}, "
        f"{copts.runs} at a time up to {copts.max_runs}, alpha {opts.alpha:g} over {len(arms)} (in {copts.out})")
    conf_summary, code = run_ablation(copts, console=console, arms=[base, *arms],
                                      leaves=None if opts.objective == "accuracy" else _leaves(opts.objective, opts.target))
    b = finished_seeds(base, copts, copts.out)
    table, winner = [], None
    for row, arm in zip(rows, arms):
        mine = finished_seeds(arm, copts, copts.out)
        j = judge(opts.objective, opts.target, b, mine, copts)
        d_acc, d_time, _ = paired(b, mine)
        entry = {"trial": row["number"], "changes": row["changes"], "folder": arm.folder,
                 "search": {"n": row["n"], "diff": row["diff"], "ci95": row["diff_ci95"], "time_diff": row["time_diff"]},
                 "fresh": {"n": len(d_acc), "diff": sum(d_acc) / len(d_acc) if d_acc else None,
                           "interval": j["accuracy"]["interval"], "time_diff": sum(d_time) / len(d_time) if d_time else None,
                           "accuracy": j["mean_accuracy"]},
                 "accuracy_verdict": describe(j["accuracy"]), "time_verdict": describe(j["time"]), "winner": j["winner"]}
        table.append(entry)
        if j["winner"] and winner is None:
            winner = (entry, arm)
    best = None
    if winner is not None and code == 0:
        best = write_best(out / BEST_FILE, winner[1], winner[0], opts, copts)
    summary["confirmation"] = {"folder": CONFIRM_DIR, "method": METHOD, "alpha": opts.alpha, "alpha_each": copts.alpha,
                               "seeds_from": copts.seed, "max_runs": copts.max_runs, "candidates": table,
                               "winner": winner[0]["trial"] if winner else None, "best": best,
                               "runs": sum(a.get("n_started", a["n"]) for a in conf_summary.get("arms", [])),
                               "lines": confirmation_lines(table, copts, best)}
    if conf_summary.get("error"):
        summary["error"] = f"confirmation: {conf_summary['error']}"
    write_search_summary(out, summary)
    return summary, code


def confirmation_lines(table: list[dict], copts: AblateOptions, best: str | None) -> list[str]:
    lines = [f"confirmation on fresh seeds from {copts.seed} ({METHOD}, alpha {copts.alpha:g} each):"]
    for e in table:
        s, f = e["search"], e["fresh"]
        lines.append(f"  trial {e['trial']} ({e['changes']}): search {pts(s['diff'], signed=True)} pts over {s['n']} seeds, "
                     f"fresh {pts(f['diff'], signed=True)} pts over {f['n']} seeds (winner's curse: "
                     f"{pts((s['diff'] or 0) - (f['diff'] or 0), signed=True)} pts); accuracy {e['accuracy_verdict']}, "
                     f"time {e['time_verdict']}" + (": the winner" if e["winner"] else ""))
    lines.append(f"best: {best}" if best else "no resolved winner: no best.toml (the preset stays the best known)")
    return lines


def _plain(v):
    """A resolved config for TOML: tables and lists as plain ones, None (unset) left out."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def write_best(path: Path, arm: Arm, entry: dict, opts, copts: AblateOptions) -> str:
    """The winner's resolved config as a preset file (``hlb train --preset DIR/best.toml``)."""
    config = _plain(dict(arm.config))
    config["description"] = f"hlb search winner over {opts.preset}: {entry['changes']}"
    f = entry["fresh"]
    head = (f"# {config['description']}\n# trial {entry['trial']} of {path.parent}; confirmed on seeds "
            f"{copts.seed}..{copts.seed + f['n'] - 1}: {pts(f['diff'], signed=True)} pts against the preset, "
            f"accuracy {entry['accuracy_verdict']}, time {entry['time_verdict']}\n")
    record.write_text(path, head + dump_toml(config))
    return str(path)
