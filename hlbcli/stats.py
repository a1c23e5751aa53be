"""Statistics of seeds: mean and spread, confidence intervals, and the tests an ablation reports.

The distributions and tests come from SciPy (``scipy.stats``), imported when first needed so
that ``hlb`` starts without it. Every function takes plain lists of floats (accuracies) and
returns plain floats; NaN where the sample is too small to say anything.
"""

from __future__ import annotations

import math

#: two-sided confidence of the intervals printed in tables
CONFIDENCE = 0.95


def mean_std(xs: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1); (nan, nan) for no values and a
    standard deviation of 0 for one."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = math.fsum(xs) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom."""
    if not df > 0:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(q, df))


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| > |t|) of Student's t with ``df`` degrees of freedom."""
    if math.isnan(t) or not df > 0:
        return float("nan")
    from scipy.stats import t as student

    return float(2 * student.sf(abs(t), df))


def ci95(xs: list[float]) -> tuple[float, float]:
    """95% confidence interval of the mean (t distribution); a point when n < 2."""
    n = len(xs)
    m, s = mean_std(xs)
    if n < 2:
        return m, m
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * s / math.sqrt(n)
    return m - half, m + half


#: how an accuracy's interval is made (printed beside it; ``ci95_method`` in summary.json):
#: accuracies are fractions in [0, 1], and at small n the t interval reaches past them (two runs
#: at 0.80 and 0.90 give [0.21, 1.49]), so it is clipped to [0, 1]
ACCURACY_CI = "95% t interval of the mean, clipped to [0, 1]"
#: the same, said beside accuracies printed in percent
ACCURACY_CI_SHORT = "t, clipped to 0-100%"


def accuracy_ci95(xs: list[float]) -> tuple[float, float]:
    """:func:`ci95` of accuracies (fractions), clipped to [0, 1] (:data:`ACCURACY_CI`); NaN
    stays NaN."""
    lo, hi = ci95(xs)
    return (lo if lo != lo else max(0.0, lo)), (hi if hi != hi else min(1.0, hi))


def median(xs: list[float]) -> float:
    """The median; NaN for no values."""
    if not xs:
        return float("nan")
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2


def run_block(runs: list[dict]) -> dict:
    """The statistics block of a set of run records, the one copy that summaries, claims, arms
    and reports are made from: over the completed runs, ``n`` (and ``n_started``, every run),
    their ``seeds``, ``accuracies`` and ``times`` (``train_seconds``); the accuracies' ``mean``,
    ``std``, ``min``, ``max`` and ``ci95`` (:func:`accuracy_ci95`, its method ``ci95_method``;
    ``ci95_clipped``: whether the clipping moved it); the times' ``time_mean``, ``time_std``,
    ``time_median`` and ``time_ci95`` (:func:`ci95`)."""
    done = [r for r in runs if r.get("status") == "completed" and r.get("accuracy") is not None]
    accs = [r["accuracy"] for r in done]
    times = [r["train_seconds"] for r in done if r.get("train_seconds") is not None]
    m, s = mean_std(accs)
    tm, ts = mean_std(times)
    raw, clipped = ci95(accs), accuracy_ci95(accs)
    return {
        "n": len(done), "n_started": len(runs), "seeds": [r.get("seed") for r in done], "accuracies": accs, "times": times,
        "mean": m, "std": s, "min": min(accs) if accs else float("nan"), "max": max(accs) if accs else float("nan"),
        "ci95": list(clipped), "ci95_method": ACCURACY_CI, "ci95_clipped": any(r == r and r != c for r, c in zip(raw, clipped)),
        "time_mean": tm, "time_std": ts, "time_median": median(times), "time_ci95": list(ci95(times)),
    }


#: a spread below this (accuracies are fractions) is rounding, not variation: 0.8 - 0.9 and
#: 0.7 - 0.8 differ in the 17th digit, and a t-test on that would report p = 1e-16
TINY = 1e-12


def _degenerate(diff: float) -> tuple[float, float]:
    """A test with zero spread on both sides: certain when the means differ, p = 1 when not."""
    return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's unequal-variance t-test of mean(b) - mean(a): returns (t, two-sided p). NaN when
    either side has fewer than two values; p = 1 when both sides have zero spread and equal
    means, 0 when they differ."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if sa <= TINY and sb <= TINY:
        return _degenerate(0.0 if abs(mb - ma) <= TINY else mb - ma)
    from scipy.stats import ttest_ind

    res = ttest_ind(b, a, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def welch_difference(a: list[float], b: list[float]) -> dict:
    """mean(b) - mean(a) for two samples that share no random streams (two implementations,
    say): ``mean``, its 95% interval ``ci95`` from Welch's t with the Welch-Satterthwaite
    degrees of freedom ``df``, and the two-sided ``p`` of :func:`welch`. NaN below two values
    a side; a point interval when both sides have zero spread."""
    nan = float("nan")
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    out = {"n": [len(a), len(b)], "mean": mb - ma, "ci95": [nan, nan], "df": nan, "p": welch(a, b)[1]}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = sa * sa / len(a), sb * sb / len(b)
    if va + vb <= TINY * TINY:
        return {**out, "ci95": [mb - ma, mb - ma]}
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * math.sqrt(va + vb)
    return {**out, "ci95": [mb - ma - half, mb - ma + half], "df": df}


def ratio_of_times(a: list[float], b: list[float]) -> dict:
    """How many times longer b's runs take than a's: the ratio of the geometric means,
    ``ratio``, with the 95% interval ``ci95`` of :func:`welch_difference` on the logarithms
    (times are positive and vary by factors), and its ``p``."""
    d = welch_difference([math.log(x) for x in a], [math.log(x) for x in b])
    return {"n": d["n"], "ratio": math.exp(d["mean"]), "ci95": [math.exp(v) for v in d["ci95"]], "p": d["p"]}


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """The paired t-test of b - a over the keys (seeds) both have: returns (t, two-sided p, n
    pairs). Arms that share seeds share their data order and initial weights, so the per-seed
    difference removes that part of the noise and the paired test is the sharper one. NaN
    below two pairs; p = 1 when every difference is 0, 0 when all differences are one same
    non-zero value."""
    keys = sorted(set(a) & set(b))
    n = len(keys)
    if n < 2:
        return float("nan"), float("nan"), n
    diffs = [b[k] - a[k] for k in keys]
    md, sd = mean_std(diffs)
    if sd <= TINY:
        return (*_degenerate(0.0 if abs(md) <= TINY else md), n)
    from scipy.stats import ttest_rel

    res = ttest_rel([b[k] for k in keys], [a[k] for k in keys])
    return float(res.statistic), float(res.pvalue), n


# --- claims: the record test of hlb bench, the paired comparison of hlb compare -----------------


def claim_p(xs: list[float], target: float) -> float:
    """The p-value of a claim "the true mean is at least ``target``": the one-sided one-sample
    Student's t-test of H0 "the true mean is below ``target``" against H1 "it is above"
    (``scipy.stats.ttest_1samp(xs, target, alternative="greater")``), as the CIFAR-10 speedrun
    records state it (Jordan, airbench, 2024). A small p: the claim holds. NaN below two values;
    with zero spread, 0 when the mean is above the target and 1 when not."""
    if len(xs) < 2:
        return float("nan")
    m, s = mean_std(xs)
    if s <= TINY:
        return 0.0 if m - target > TINY else 1.0
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(xs, target, alternative="greater").pvalue)


#: the most runs :func:`runs_needed` will name
MAX_NEEDED = 10**9


def runs_needed(mean: float, std: float, target: float, alpha: float = 0.01) -> int | None:
    """How many runs the claim of :func:`claim_p` needs for p < ``alpha`` if the sample mean and
    standard deviation stay as observed: the smallest n >= 2 with
    ``sqrt(n) * (mean - target) / std > t.ppf(1 - alpha, n - 1)`` (Student's t quantile, SciPy).
    The left side grows with n and the quantile shrinks, so the n is found by bisection. A
    plug-in figure, not a power analysis: at that n a new sample's mean falls short about half
    the time. None when the mean is not above the target or more than :data:`MAX_NEEDED` runs
    would be needed; 2 when the spread is zero and the mean is above."""
    if not (math.isfinite(mean) and math.isfinite(std)) or mean - target <= TINY:
        return None
    if std <= TINY:
        return 2
    d = (mean - target) / std

    def enough(n: int) -> bool:
        return math.sqrt(n) * d > t_quantile(1 - alpha, n - 1)

    if not enough(MAX_NEEDED):
        return None
    lo, hi = 1, MAX_NEEDED  # enough(hi); lo is not a sample size a t-test takes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict:
    """B - A seed by seed over the seeds both have: ``n``, ``mean`` and 95% confidence interval
    ``ci95`` of the differences (Student's t), the paired t-test's two-sided ``p_paired``
    (``scipy.stats.ttest_rel``) and, beside it on the same seeds, Welch's unequal-variance
    t-test's ``p_welch`` (``scipy.stats.ttest_ind(equal_var=False)``), which ignores the pairing."""
    keys = sorted(set(a) & set(b))
    diffs = [b[k] - a[k] for k in keys]
    m, s = mean_std(diffs)
    lo, hi = ci95(diffs) if len(diffs) >= 2 else (float("nan"), float("nan"))
    t_p, p_p, n = paired(a, b)
    t_w, p_w = welch([a[k] for k in keys], [b[k] for k in keys])
    return {"n": n, "seeds": keys, "mean": m, "std": s, "ci95": [lo, hi], "t_paired": t_p, "p_paired": p_p,
            "t_welch": t_w, "p_welch": p_w}


# --- anytime-valid confidence sequence (hlb ablate --until-resolved) -------------------------

#: the mixture's precision rho of :func:`t_confidence_sequence` (prior N(0, 1/rho) on the effect
#: in standard deviations): tightest around 5-20 paired seeds and effects near one std
CS_RHO = 0.5


def _cs_k(t: int, alpha: float, rho: float) -> float:
    """k of :func:`t_confidence_sequence` after ``t`` values, computed in logs: alpha squared
    underflows to 0 for alpha below about 1e-154, which would make k = t + rho at every t."""
    return -(t + rho) * math.expm1((2 * math.log(alpha) + math.log(rho) - math.log(t + rho)) / t)


def cs_bounded_from(alpha: float = 0.05, rho: float = CS_RHO) -> int:
    """The fewest values from which :func:`t_confidence_sequence` can be bounded (t > k): a
    look before it resolves nothing (4 at alpha 0.05, 5 at 0.01, 227 at 1e-300).

    k grows like 2 log(1/alpha) + log(t), so the first t above it is found by doubling and then
    bisection: a handful of steps for any alpha in (0, 1)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie between 0 and 1, not {alpha!r}")
    hi = 1
    while hi <= _cs_k(hi, alpha, rho):
        hi *= 2
    lo = hi // 2  # the last power of two at or below k (0 when t = 1 is already bounded)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if mid <= _cs_k(mid, alpha, rho) else (lo, mid)
    return hi


def t_confidence_sequence(xs: list[float], alpha: float = 0.05, rho: float = CS_RHO) -> tuple[float, float]:
    """The anytime-valid (1 - alpha) confidence interval of the mean of ``xs`` after ``len(xs)``
    observations: the Gaussian-mixture t confidence sequence of Lai (1976), "On confidence
    sequences", Ann. Statist. 4(2):265-280, in the form of Howard, Ramdas, McAuliffe and Sekhon
    (2021), "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist.
    49(2):1055-1080 (see also Wang and Ramdas 2023, arXiv:2310.03722). For i.i.d. normal values
    of unknown mean mu and unknown variance, with S_t = sum(x_i - mu), Q_t = sum((x_i - mu)^2),

        M_t(mu) = sqrt(rho / (t + rho)) * (1 - S_t^2 / ((t + rho) Q_t))^(-t/2)

    (the scale-invariant likelihood ratio, mixed over an effect of N(0, 1/rho) standard
    deviations) is a nonnegative martingale with M_0 = 1 under mu, so by Ville's inequality
    P(exists t: M_t(mu) >= 1/alpha) <= alpha. The set {mu: M_t(mu) < 1/alpha} is, with mean m,
    V = sum((x_i - m)^2), k = (t + rho) (1 - (alpha^2 rho / (t + rho))^(1/t)):

        m +- sqrt(k V / (t (t - k)))   when t > k, else (-inf, inf).

    It holds at every t at once, so it may be looked at after every seed and a stop decided
    from it, with a (two-sided) error rate of at most alpha. A point at m when V is 0."""
    t = len(xs)
    if t == 0 or not 0 < alpha < 1:
        return -math.inf, math.inf
    m, _ = mean_std(xs)
    k = _cs_k(t, alpha, rho)
    if t <= k:
        return -math.inf, math.inf
    v = math.fsum((x - m) ** 2 for x in xs)
    if v <= TINY * TINY * t:
        return m, m
    half = math.sqrt(k * v / (t * (t - k)))
    return m - half, m + half
