"""The record test of ``hlb bench --target``: a claim "preset P reaches a mean accuracy of at
least T", stated as the CIFAR-10 speedrun records state theirs (airbench, Jordan 2024): the mean
with its 95% confidence interval, the p-value of the one-sided t-test, the runs a claim at
p < 0.01 would need, the time per run and where it was measured. Over every record of the
``--out`` folder trained with this config, so ``--resume --runs 1000`` extends a claim of 200.
The statistics are :mod:`hlbcli.stats`'s; the records are read by :mod:`hlbcli.readback`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hlbcli import readback, stats
from hlbcli.output import NO_INTERVAL, p_value, pts, synthetic
from hlbcli.machine import runs_machine
from hlbcli.readback import config_difference
from hlbcli.record import source_commit, versions

#: the significance level of the "runs needed" figure
CLAIM_ALPHA = 0.01
#: what the time per run covers (hlbcli.run.fit): the same whichever timer reads it
TIMED = ("inside the timed region: the data-aware init (whitening included), every training step with its epoch's "
         "augmentation, and the final evaluation with TTA; outside it: data loading, building the model, "
         "compilation and warm-up, and the per-epoch evaluation")
#: how each timer of hlbcli.timers.TIMERS reads a phase (hlb bench --timer)
TIMERS = {"wall": "wall clock (time.perf_counter; on CUDA torch.cuda.synchronize() before each reading)",
          "cuda-events": "CUDA events (torch.cuda.Event(enable_timing=True) recorded at each phase's start and end, "
                         "the end synchronized, elapsed_time / 1000)"}
TEST = "one-sided one-sample t-test (scipy.stats.ttest_1samp, alternative='greater'); H0: the true mean is below the target"
NEEDED = (f"smallest n with sqrt(n) (mean - target) / std > t.ppf(1 - {CLAIM_ALPHA}, n - 1) at the observed mean "
          "and std (Student's t, bisection; a plug-in figure, not a power analysis)")


def folder_runs(out: Path, config: dict, defaults: dict | None = None) -> list[dict]:
    """Every record in ``out`` that passes readback's checks and was trained with ``config``
    (a key the record predates reads as its ``defaults``), by seed; the others are named in a
    warning line each and left out."""
    found = readback.read_records(Path(out))
    runs = []
    left = list(found.left_out())
    for p, rec in sorted(found.runs.values(), key=lambda pr: pr[1]["seed"]):
        why = config_difference(rec.get("config"), config, defaults)
        if why:
            left.append((p, f"trained with another config ({why})"))
        else:
            runs.append(rec)
    for p, why in left:
        print(f"warning: left out of the claim {p}: {why}", file=sys.stderr, flush=True)
    return runs


def check_claim(b: Any) -> str | None:
    """Why ``b``, a ``bench.json`` read back, is not the claim ``hlb bench`` wrote, or None: the
    fields ``hlb report`` shows, checked."""
    if not isinstance(b, dict):
        return "not a hlb bench claim (not a JSON object)"
    missing = [k for k in ("n", "accuracy_mean", "accuracy_ci95", "time_mean", "time_ci95", "summary_line") if k not in b]
    if missing:
        return f"not a hlb bench claim (no {missing[0]})"
    counts = {k: b.get(k) for k in ("n", "diverged", "runs_needed") if k == "n" or b.get(k) is not None}
    bad = [k for k, v in counts.items() if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)]
    bad += [k for k in ("accuracy_mean", "time_mean", "target", "p_value", "runs_needed_alpha") if not readback.number(b.get(k))]
    if bad:
        return f"{bad[0]} {b.get(bad[0])!r} is not {'a count' if bad[0] in counts else 'a number'}"
    for k in ("accuracy_ci95", "time_ci95"):
        if not (isinstance(b[k], list) and len(b[k]) == 2 and all(map(readback.number, b[k]))):
            return f"{k} {b[k]!r} is not an interval (two numbers)"
    return None if isinstance(b["summary_line"], str) else f"summary_line {b['summary_line']!r} is not text"


def runs_source(runs: list[dict], here: tuple[str, bool] | None = None) -> tuple[str, bool] | None:
    """The commit that trained ``runs``, as their records name it (several: joined by " + "),
    and whether any ran with uncommitted changes. A record written before records named their
    commit counts as ``here`` (left out when None); None when no record names one."""
    seen: dict[str, None] = {}
    dirty = False
    for r in runs:
        commit = r.get("git_commit")
        if isinstance(commit, str) and commit:
            seen[commit], dirty = None, dirty or bool(r.get("git_dirty"))
        elif here is not None:
            seen[here[0]], dirty = None, dirty or here[1]
    return (" + ".join(seen), dirty) if seen else here


def timer_of(runs: list[dict]) -> str:
    """The timer that timed ``runs``, as their records name it (several: joined by " + "); a
    record written before records named it was timed by the wall clock."""
    return " + ".join(dict.fromkeys(str(r.get("timer") or "wall") for r in runs)) or "wall"


def claim_report(runs: list[dict], target: float | None, device: str | None) -> dict:
    """The claim's fields over the completed runs of ``runs``; ``target`` None: no test."""
    done = [r for r in runs if r.get("status") == "completed"]
    b = stats.run_block(runs)
    accs, m, s = b["accuracies"], b["mean"], b["std"]
    commit, dirty = runs_source(done, source_commit())
    devices = sorted({str(r.get("device")) for r in done})
    rep = {
        "n": len(done),
        "diverged": sum(1 for r in runs if r.get("status") == "diverged"),
        "seeds": b["seeds"],
        "accuracy_mean": m,
        "accuracy_std": s,
        "accuracy_ci95": b["ci95"],
        "accuracy_ci95_method": b["ci95_method"],
        "accuracy_ci95_clipped": b["ci95_clipped"],
        "synthetic": synthetic(done),
        "target": target,
        "test": TEST if target is not None else None,
        "p_value": stats.claim_p(accs, target) if target is not None else None,
        "runs_needed_alpha": CLAIM_ALPHA,
        "runs_needed": stats.runs_needed(m, s, target, CLAIM_ALPHA) if target is not None and len(accs) > 1 else None,
        "runs_needed_method": NEEDED,
        "time_mean": b["time_mean"],
        "time_std": b["time_std"],
        "time_ci95": b["time_ci95"],
        "timer": timer_of(done),
        "timed": "; ".join(TIMERS.get(t, t) for t in timer_of(done).split(" + ")) + "; " + TIMED,
        "machine": runs_machine(done),
        "device": " + ".join(devices) if len(devices) > 1 else device or (devices[0] if devices else None),
        "torch": versions()["torch"],
        "git_commit": commit,
        "git_dirty": dirty,
    }
    return rep


def claim_line(rep: dict, preset: str) -> str:
    """The claim in one line, ready for a README."""
    lo, hi = rep["accuracy_ci95"]
    clipped = ", clipped to 0-100" if rep.get("accuracy_ci95_clipped") else ""
    ci = f"95% CI {pts(lo)}-{pts(hi)}{clipped}" if rep["n"] > 1 else NO_INTERVAL[1:-1]
    line = f"{preset}: {pts(rep['accuracy_mean'])}% mean over n={rep['n']} ({ci})"
    if rep["target"] is not None:
        line += f", p={p_value(rep['p_value'])} for mean < {100 * rep['target']:g}% (one-sided t-test)"
    if rep["diverged"]:
        line += f", {rep['diverged']} diverged run(s) left out"
    tlo, thi = rep["time_ci95"]
    commit = rep["git_commit"]
    short = " + ".join(c[:7] if c != "not a git checkout" else c for c in commit.split(" + "))
    hlb = f"hlb {short}{'+dirty' if rep['git_dirty'] else ''}" if commit != "not a git checkout" else "hlb (not a git checkout)"
    data = " on synthetic data, not a CIFAR-10 result" if rep.get("synthetic") else ""
    tci = f" (95% CI {tlo:.3g}-{thi:.3g})" if rep["n"] > 1 else ""
    return (f"{line}{data}; {rep['time_mean']:.3g} s per run{tci} on {rep['device']}, "
            f"torch {rep['torch']}, {hlb}")


def format_claim(rep: dict) -> str:
    """The claim's lines below ``hlb bench``'s report."""
    lo, hi = rep["accuracy_ci95"]
    ci = f"95% CI {pts(lo)}%-{pts(hi)}% ({stats.ACCURACY_CI_SHORT})" if rep["n"] > 1 else NO_INTERVAL
    lines = [f"  claim     mean {pts(rep['accuracy_mean'])}%  {ci}  "
             f"over {rep['n']} completed run(s)"
             + (f", {rep['diverged']} diverged" if rep["diverged"] else "")]
    if rep["target"] is not None:
        need = rep["runs_needed"]
        lines.append(f"  test      p = {p_value(rep['p_value'])} that the true mean is below {100 * rep['target']:g}% (one-sided t-test); "
                     + (f"p < {CLAIM_ALPHA:g} needs n = {need} at this mean and std" if need else
                        f"no n gives p < {CLAIM_ALPHA:g} at this mean and std"))
    tlo, thi = rep["time_ci95"]
    tci = f"95% CI {tlo:.3f}-{thi:.3f}" if rep["n"] > 1 else NO_INTERVAL
    lines.append(f"  per run   {rep['time_mean']:.3f} s  {tci}  (init + train steps + final eval with TTA; timer {rep.get('timer', 'wall')})")
    lines.append(f"  source    torch {rep['torch']}, git {rep['git_commit']}" + (" (with uncommitted changes)" if rep["git_dirty"] else ""))
    return "\n".join(lines)
