"""``hlb ablate --until-resolved``: seeds added in rounds until each arm's paired difference from
the baseline is resolved.

The first round trains ``--runs`` seeds per arm; each next round adds ``--runs`` more seeds
(``--resume`` semantics: only missing seeds train) to the baseline and every arm not yet
resolved, up to ``--max-runs``. After each round (a *look*) every arm's per-seed differences
from the baseline get an anytime-valid confidence interval (:func:`hlbcli.stats.t_confidence_sequence`:
the t confidence sequence of Lai 1976, as in Howard, Ramdas, McAuliffe and Sekhon 2021), and
an arm is *resolved* as soon as that interval

- excludes 0: an effect, ``effect +`` (the arm is better) or ``effect -``;
- lies within ``+-delta`` (``--delta``): ``no effect`` worth knowing;
- or its budget is spent (``--max-runs`` seeds): ``budget spent``, unresolved.

The interval holds at every look at once (with probability at least 1 - alpha), so stopping at
the first look that resolves keeps the error rate at alpha, which stopping at the first
p < alpha of a plain t-test does not. The looks are a function of the plan alone, so
``hlb summary`` and ``--resume`` find the same verdicts in the same records."""

from __future__ import annotations

from dataclasses import replace

from hlbcli import stats
from hlbcli.config import MAX_RUNS, MAX_SEED
from hlbcli.errors import UsageError

METHOD = "t confidence sequence"
REFERENCE = ("Lai (1976), On confidence sequences, Ann. Statist. 4:265-280; Howard, Ramdas, McAuliffe "
             "and Sekhon (2021), Time-uniform, nonparametric, nonasymptotic confidence sequences, Ann. Statist. 49:1055-1080")
EFFECT_UP, EFFECT_DOWN, NO_EFFECT, BUDGET, OPEN = "effect +", "effect -", "no effect", "budget spent", "open"


#: the ``method`` of a plan's ``sequential`` table: :func:`hlbcli.stats.t_confidence_sequence`
SEQUENTIAL_METHOD = "t-cs"
#: --max-runs when not given
DEFAULT_MAX_RUNS = 20


def check_sequential(opts: AblateOptions) -> None:
    """``--until-resolved`` and its options, before anything trains; sets the default
    ``max_runs``."""
    if not opts.until_resolved:
        given = [n for n, v in (("--max-runs", opts.max_runs), ("--delta", opts.delta)) if v is not None]
        given += ["--alpha"] if opts.alpha != 0.05 else []
        if given:
            raise UsageError(f"{given[0]} is an option of --until-resolved", "add --until-resolved, or drop it")
        return
    if opts.max_runs is None:
        opts.max_runs = max(DEFAULT_MAX_RUNS, opts.runs)
    if not opts.runs <= opts.max_runs <= MAX_RUNS:
        raise UsageError(f"--max-runs {opts.max_runs}: must lie in --runs ({opts.runs})..{MAX_RUNS}",
                         "--runs is the first round's seeds per arm (and each next round's); --max-runs the most any arm gets")
    if opts.seed + opts.max_runs - 1 > MAX_SEED:
        raise UsageError(f"--seed {opts.seed} with --max-runs {opts.max_runs} goes past the largest seed {MAX_SEED}",
                         "use a smaller --seed")
    if not 0 < opts.alpha < 1:
        raise UsageError(f"--alpha {opts.alpha:g}: must lie between 0 and 1", "0.05: a 95% confidence sequence")
    first = stats.cs_bounded_from(opts.alpha)
    if opts.max_runs < first:
        raise UsageError(f"--alpha {opts.alpha:g} with --max-runs {opts.max_runs}: no look can resolve an arm, the interval "
                         f"is bounded from {first} seeds on", f"raise --max-runs to {first} or more, or use a larger --alpha: at 0.05 it is bounded from 4")
    if opts.delta is not None and not 0 < opts.delta < 1:
        raise UsageError(f"--delta {opts.delta:g}: must lie between 0 and 1 (a difference in accuracy, which is a fraction)",
                         "e.g. --delta 0.002: 0.2 points of accuracy")


def looks(opts: AblateOptions) -> list[int]:
    """The seeds per arm at each look: ``runs``, ``2 runs``, ... and ``max_runs`` last."""
    top = opts.max_runs or opts.runs
    return sorted({*range(opts.runs, top, max(1, opts.runs)), top})


def judge(diffs: list[float], alpha: float, delta: float | None) -> tuple[str, list[float]]:
    """The verdict on paired differences at one look, and their anytime-valid interval."""
    lo, hi = stats.t_confidence_sequence(diffs, alpha)
    if lo > 0:
        return EFFECT_UP, [lo, hi]
    if hi < 0:
        return EFFECT_DOWN, [lo, hi]
    if delta and -delta < lo and hi < delta:
        return NO_EFFECT, [lo, hi]
    return OPEN, [lo, hi]


def _values(finished: dict[int, dict], key: str) -> dict[int, float]:
    return {s: r[key] for s, r in finished.items()
            if r.get("status") == "completed" and isinstance(r.get(key), (int, float))}


def verdict(base: dict[int, dict], arm: dict[int, dict], opts: AblateOptions, key: str = "accuracy",
            sign: float = 1.0) -> dict:
    """An arm's state from the finished records (by seed) of the baseline and of the arm: the
    first look that resolved it, else the last look both have all the seeds of. ``key``: the
    records' figure compared (``train_seconds`` with ``sign`` -1: ``effect +`` is faster)."""
    b = {s: sign * v for s, v in _values(base, key).items()}
    a = {s: sign * v for s, v in _values(arm, key).items()}
    out = {"resolved": False, "how": OPEN, "look": 0, "pairs": 0, "interval": [None, None]}
    for n in looks(opts):
        seeds = range(opts.seed, opts.seed + n)
        if not all(s in base and s in arm for s in seeds):
            break
        diffs = [a[s] - b[s] for s in seeds if s in a and s in b]
        how, interval = judge(diffs, opts.alpha, opts.delta)
        if how == OPEN and n >= (opts.max_runs or opts.runs):
            how = BUDGET
        out.update(how=how, look=n, pairs=len(diffs), interval=[_num(v) for v in interval], resolved=how != OPEN)
        if how != OPEN:
            break
    return out


def _num(v: float) -> float | None:
    """A bound for JSON: None where infinite (too few pairs to bound anything)."""
    return None if v != v or v in (float("inf"), float("-inf")) else v


def describe(v: dict, delta: float | None = None) -> str:
    """``effect + after 9 runs``, ``no effect (+-0.2 pts) after 12 runs``, ``open after 6 runs``."""
    how = v["how"] + (f" (+-{100 * delta:g} pts)" if v["how"] == NO_EFFECT and delta else "")
    return f"{how} after {v['look']} runs" if v["look"] else how


def interval_text(v: dict) -> str:
    lo, hi = v["interval"]
    f = lambda x, inf: inf if x is None else f"{100 * x:+.2f}"  # noqa: E731 (points)
    return "-" if not v["look"] else f"[{f(lo, '-inf')}, {f(hi, '+inf')}]"


def totals(rows: list[dict], opts: AblateOptions, partial: bool = False) -> dict:
    """The battery's runs spent, the most it could have spent (every arm at ``--max-runs``)
    and the difference; no saving (None) for a partial battery, whose missing runs were never
    reached rather than saved."""
    spent = sum(r.get("n_started", r["n"]) for r in rows)
    most = len(rows) * (opts.max_runs or opts.runs)
    return {"method": METHOD, "reference": REFERENCE, "alpha": opts.alpha, "delta": opts.delta,
            "max_runs": opts.max_runs, "looks": looks(opts), "runs_spent": spent, "runs_max": most,
            "runs_saved": None if partial else most - spent}


def resolved_line(arm, base: dict[int, dict], mine: dict[int, dict], opts: AblateOptions) -> str | None:
    """The line an arm leaves the rounds with once its verdict is resolved (else None)."""
    v = verdict(base, mine, opts)
    if not v["resolved"]:
        return None
    return f"arm {arm.name}: {describe(v, opts.delta)}, paired difference in {interval_text(v)} points"


def run_rounds(backend, battery, got: list[int], at: list[int] | None = None, leaves=resolved_line) -> None:
    """Train ``battery`` round by round (see the module): each round sets the plan's runs per
    arm, gives the backend the baseline and the arms still in with ``--resume`` semantics, then
    looks at them. An arm that fails leaves the rounds; the baseline failing ends them. The
    battery keeps the whole plan for its summary. ``at``: the seeds per arm at each look
    (default: :func:`looks`); ``leaves(arm, base, mine, opts)``: after a look, the line an arm
    leaves the rounds with (None: it stays), from the finished records by seed of the baseline
    and of the arm (default: its verdict, once resolved)."""
    opts, arms = battery.opts, list(battery.arms)
    base, active = arms[0], arms[1:]
    battery.whole = (opts, arms)
    first = stats.cs_bounded_from(opts.alpha)
    try:
        for i, n in enumerate(at or looks(opts)):
            part = replace(opts, runs=n, until_resolved=False, resume=opts.resume or i > 0)
            battery.opts, battery.arms, backend.opts = part, [base, *active], part
            if any(len(battery.finished(a)) < n for a in battery.arms):
                still_in = "unresolved" if leaves is resolved_line else "remaining"
                battery.say(f"round {i + 1}: baseline and {len(active)} {still_in} arm(s) to {n} seeds "
                            f"(seeds {opts.seed}..{opts.seed + n - 1})"
                            + (f"; too few to resolve any: the interval is bounded from {first} seeds on"
                               if n < first and leaves is resolved_line else ""))
                backend.train(battery, got)
            if base.name in battery.failed:
                return
            still = []
            for arm in active:
                if arm.name in battery.failed:
                    continue
                line = leaves(arm, battery.finished(base), battery.finished(arm), opts)
                if line:
                    battery.say(line)
                else:
                    still.append(arm)
            active = still
            if not active:
                return
    finally:
        battery.opts, battery.arms, backend.opts = opts, arms, opts
