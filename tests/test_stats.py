"""hlbcli.stats against values published with R (the ``sleep`` data set: Cushny and Peebles'
two soporifics on ten patients, R's own ``t.test`` examples) and closed forms."""

import math

import pytest

from hlbcli import stats

# extra hours of sleep, patients 1..10, with drug 1 and with drug 2
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_t_quantiles_match_tables():
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-7)
    assert stats.t_quantile(0.975, 9) == pytest.approx(2.2621572, rel=1e-7)
    assert stats.t_quantile(0.975, 1e9) == pytest.approx(1.9599640, rel=1e-7)
    assert math.isnan(stats.t_quantile(0.975, 0))


def test_two_sided_tail_has_closed_forms():
    # df 1 is Cauchy: P(|T| > t) = 1 - 2 atan(t) / pi; df 2: 1 - t / sqrt(t^2 + 2)
    for t in (0.3, 1.0, 4.2):
        assert stats.t_sf2(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-10)
        assert stats.t_sf2(-t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-10)
    assert math.isnan(stats.t_sf2(float("nan"), 3))


def test_welch_matches_r_on_sleep():
    # R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, p-value = 0.07939
    t, p = stats.welch(DRUG2, DRUG1)
    assert t == pytest.approx(-1.8608, abs=5e-5)
    assert p == pytest.approx(0.07939, abs=5e-6)


def test_paired_matches_r_on_sleep():
    # R: t.test(DRUG1, DRUG2, paired = TRUE) -> t = -4.0621, df = 9, p-value = 0.002833
    t, p, n = stats.paired(dict(enumerate(DRUG2)), dict(enumerate(DRUG1)))
    assert (n, round(t, 4), round(p, 6)) == (10, -4.0621, 0.002833)


def test_paired_uses_only_common_seeds_and_is_sharper_than_welch():
    base = {s: 0.90 + 0.01 * s for s in range(6)}  # seed-to-seed spread far above the effect
    arm = {s: v - 0.002 + (0.0001 if s % 2 else -0.0001) for s, v in base.items()}
    arm[99] = 0.5  # a seed the baseline lacks: ignored by the paired test
    _, p, n = stats.paired(base, arm)
    assert n == 6 and p < 1e-4
    assert stats.welch(list(base.values()), [arm[s] for s in base])[1] > 0.5


def test_ci95_matches_r_on_sleep():
    # R: t.test(sleep$extra[1:10])$conf.int -> -0.5297804 2.0297804
    lo, hi = stats.ci95(DRUG1)
    assert (lo, hi) == (pytest.approx(-0.5297804, abs=1e-7), pytest.approx(2.0297804, abs=1e-7))
    assert stats.ci95([0.9]) == (0.9, 0.9)


def test_degenerate_samples():
    assert math.isnan(stats.welch([0.9], [0.8, 0.7])[1])
    assert stats.welch([0.9, 0.9], [0.9, 0.9]) == (0.0, 1.0)
    assert stats.welch([0.9, 0.9], [0.8, 0.8])[1] == 0.0
    assert stats.paired({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})[:2] == (0.0, 1.0)
    assert stats.paired({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.7})[1] == 0.0
    assert math.isnan(stats.paired({0: 0.9}, {0: 0.8, 1: 0.7})[1])
    m, s = stats.mean_std([])
    assert math.isnan(m) and math.isnan(s)
