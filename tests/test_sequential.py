"""`hlb ablate --until-resolved`: the t confidence sequence proven by simulation (its error rate
under repeated looks, its runs against a fixed design of the same power), and the rounds with
stand-in children (no torch): one arm resolves early, another spends its budget, resume."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from hlbcli import readback, stats
from hlbcli.errors import UsageError
from hlbcli.experiments import battery, local_backend, sequential
from hlbcli.experiments import summary as summaries
from hlbcli.experiments.plan import AblateOptions, options_of, plan_of

ALPHA, SIMS, MAX_RUNS = 0.05, 1000, 30
#: three Monte-Carlo standard errors of a rate of ALPHA over SIMS simulations
MC = 3 * (ALPHA * (1 - ALPHA) / SIMS) ** 0.5


# --- the method, by simulation (seeded numpy, vectorised) ------------------------------------


def cs_half_widths(x: np.ndarray, alpha: float = ALPHA, rho: float = stats.CS_RHO) -> tuple[np.ndarray, np.ndarray]:
    """The means and half-widths of stats.t_confidence_sequence after every look (columns)."""
    t = np.arange(1, x.shape[1] + 1)
    s, q = x.cumsum(1), (x ** 2).cumsum(1)
    m, v = s / t, np.maximum(q - s ** 2 / t, 0)
    k = (t + rho) * (1 - (alpha ** 2 * rho / (t + rho)) ** (1 / t))
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.where(t > k, np.sqrt(k * v / (t * (t - k))), np.inf)
    return m, half


def first_stop(hit: np.ndarray) -> np.ndarray:
    """The runs spent per simulation: the first look that hit, else all of them."""
    return np.where(hit.any(1), hit.argmax(1) + 1, hit.shape[1])


def test_vectorised_sequence_is_the_one_in_stats():
    x = np.random.default_rng(1).normal(0.3, 1, (3, 12))
    m, half = cs_half_widths(x)
    for i in range(3):
        for n in (1, 4, 5, 12):
            lo, hi = stats.t_confidence_sequence(list(x[i, :n]), ALPHA)
            assert (lo, hi) == ((-np.inf, np.inf) if np.isinf(half[i, n - 1])
                                else pytest.approx((m[i, n - 1] - half[i, n - 1], m[i, n - 1] + half[i, n - 1])))


def test_null_false_positive_rate_holds_under_a_look_after_every_seed_and_peeking_at_p_does_not():
    from scipy.stats import t as student

    x = np.random.default_rng(2026).normal(0.0, 0.0015, (SIMS, MAX_RUNS))  # sigma: CIFAR-10 seeds
    m, half = cs_half_widths(x)
    cs_rate = (np.abs(m) > half).any(1).mean()
    assert cs_rate <= ALPHA + MC, cs_rate
    # a plain paired t-test after every seed from the second, stopped at its first p < alpha
    n = np.arange(1, MAX_RUNS + 1)
    sd = np.sqrt(np.maximum((x ** 2).cumsum(1) - x.cumsum(1) ** 2 / n, 0)[:, 1:] / (n[1:] - 1))
    p = 2 * student.sf(np.abs(m[:, 1:] / (sd / np.sqrt(n[1:]))), n[1:] - 1)
    naive_rate = (p < ALPHA).any(1).mean()
    assert naive_rate > 3 * ALPHA, naive_rate  # about 0.27: over five times the nominal rate
    print(f"false positives over {SIMS} null ablations of up to {MAX_RUNS} seeds: "
          f"confidence sequence {cs_rate:.3f}, first p < {ALPHA} {naive_rate:.3f}")


def test_a_true_effect_of_one_std_stops_sooner_than_a_fixed_design_of_the_same_power():
    from scipy.stats import nct, t as student

    x = np.random.default_rng(7).normal(1.0, 1.0, (SIMS, MAX_RUNS))
    m, half = cs_half_widths(x)
    hit = m - half > 0
    power = hit.any(1).mean()
    runs = first_stop(hit).mean()
    assert (m + half < 0).any(1).mean() == 0  # never the wrong sign
    fixed = next(n for n in range(2, 200) if
                 nct.sf(q := student.ppf(1 - ALPHA / 2, n - 1), n - 1, np.sqrt(n)) + nct.cdf(-q, n - 1, np.sqrt(n)) >= power)
    assert power > 0.95 and runs < fixed - 3, (power, runs, fixed)
    print(f"effect of 1 std: power {power:.3f} in {runs:.1f} runs on average; a fixed paired t-test needs {fixed}")


def test_judge_verdicts():
    assert sequential.judge([0.01, 0.011, 0.009, 0.0105, 0.0095, 0.01], 0.05, None)[0] == sequential.EFFECT_UP
    assert sequential.judge([-0.01, -0.011, -0.009, -0.0105, -0.0095, -0.01], 0.05, None)[0] == sequential.EFFECT_DOWN
    small = [0.0001, -0.0001, 0.0002, -0.0002, 0.0, 0.0001, -0.0001, 0.0]
    assert sequential.judge(small, 0.05, None)[0] == sequential.OPEN
    assert sequential.judge(small, 0.05, 0.002)[0] == sequential.NO_EFFECT
    assert sequential.judge([0.01, 0.02], 0.05, 0.1) == (sequential.OPEN, [-np.inf, np.inf])  # too few to bound


def test_looks_and_option_checks():
    assert sequential.looks(AblateOptions(preset="smoke", runs=3, until_resolved=True, max_runs=10)) == [3, 6, 9, 10]
    assert sequential.looks(AblateOptions(preset="smoke", runs=5, until_resolved=True, max_runs=5)) == [5]
    from hlbcli.experiments.plan import check_sequential

    with pytest.raises(UsageError, match="--max-runs is an option of --until-resolved"):
        check_sequential(AblateOptions(preset="smoke", max_runs=9))
    with pytest.raises(UsageError, match="--max-runs 2: must lie in --runs"):
        check_sequential(AblateOptions(preset="smoke", runs=3, until_resolved=True, max_runs=2))
    with pytest.raises(UsageError, match="--delta"):
        check_sequential(AblateOptions(preset="smoke", until_resolved=True, delta=0.0))
    with pytest.raises(UsageError, match="--delta 5: must lie between 0 and 1"):  # accuracy is a fraction
        check_sequential(AblateOptions(preset="smoke", until_resolved=True, delta=5.0))
    with pytest.raises(UsageError, match="no look can resolve an arm, the interval is bounded from 227 seeds"):
        check_sequential(AblateOptions(preset="smoke", runs=4, until_resolved=True, alpha=1e-300))
    o = AblateOptions(preset="smoke", runs=3, until_resolved=True)
    check_sequential(o)
    assert o.max_runs == 20


# --- the rounds, with stand-in children ------------------------------------------------------

#: -ema loses 1 point on every seed (resolved early), -tta differs by noise only (the budget)
SEQ_CHILD = r"""
import json, os, sys
out, runs, seed0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
versions = dict(zip(("hlbcli", "torch"), sys.argv[4:6]))
with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
with open(os.path.join(out, "..", "..", "calls.txt"), "a") as f:
    f.write(f"{os.path.basename(out)} {runs}\n")
for seed in range(seed0, seed0 + runs):
    path = os.path.join(out, f"run-{seed - seed0:03d}-seed{seed}.json")
    if os.path.exists(path):
        continue  # --resume: only missing seeds train
    noise = ((seed * 7919) % 13 - 6) * 0.0003
    acc = 0.9 + noise + (-0.01 + 0.0002 * (seed % 3) if "no-ema" in out else 0.0)
    acc += ((seed * 104729) % 11 - 5) * 0.0002 if "no-tta" in out else 0.0
    with open(path, "w") as f:
        json.dump({"seed": seed, "status": "completed", "accuracy": acc, "train_seconds": 1.0,
                   "versions": versions, "config": config}, f)
    if os.environ.get("STOP_AT") == f"{os.path.basename(out)}:{seed}":
        os.kill(os.getppid(), 2)
        break
"""


@pytest.fixture
def seq_children(monkeypatch):
    def fake(opts, arm, arm_dir):
        return [sys.executable, "-c", SEQ_CHILD, str(arm_dir), str(opts.runs), str(opts.seed), *readback._build()]

    monkeypatch.setattr(local_backend, "child_command", fake)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def _opts(out, **kw):
    return AblateOptions(preset="smoke", disable=["ema", "tta"], runs=3, device="cpu", out=out, quiet=True,
                         until_resolved=True, max_runs=12, **kw)


def _calls(out):
    return [ln.split() for ln in (out / "calls.txt").read_text().splitlines()]


def test_rounds_stop_a_resolved_arm_and_run_the_other_to_its_budget(seq_children, tmp_path):
    said: list[str] = []
    summary, code = battery.run_ablation(_opts(tmp_path), say=said.append)
    assert code == 0, summary.get("error")
    rounds = [line for line in said if line.startswith("round ")]
    assert rounds[0].endswith("to 3 seeds (seeds 0..2); too few to resolve any: the interval is bounded from 4 seeds on")
    assert rounds[1].endswith("to 6 seeds (seeds 0..5)")
    base, ema, tta = summary["arms"]
    assert ema["sequential"]["how"] == "effect -" and ema["sequential"]["look"] == 6 and ema["n"] == 6
    assert ema["sequential"]["interval"][1] < 0
    assert tta["sequential"]["how"] == "budget spent" and tta["n"] == 12 and base["n"] == 12
    lo, hi = tta["sequential"]["interval"]
    assert lo < 0 < hi
    # rounds: all three to 3 then 6 seeds; after that the baseline and -tta only
    calls = _calls(tmp_path)
    assert [c for c in calls if c[0] == "no-ema"] == [["no-ema", "3"], ["no-ema", "6"]]
    assert [c for c in calls if c[0] == "no-tta"] == [["no-tta", n] for n in ("3", "6", "9", "12")]
    seq = summary["sequential"]
    assert (seq["runs_spent"], seq["runs_max"], seq["runs_saved"]) == (30, 36, 6)
    assert seq["method"] == "t confidence sequence" and "Howard" in seq["reference"]
    md = (tmp_path / "summary.md").read_text()
    assert "| verdict | interval (anytime-valid, pts) |" in md and "effect - after 6 runs" in md and "budget spent after 12 runs" in md
    assert "until resolved: 30 runs of at most 36 (--max-runs 12 x 3 arms): 6 saved" in md
    assert all(a["status"] == "completed" for a in summary["arms"]) and not summary["partial"]
    # the plan keeps the settings; hlb summary finds the same verdicts
    plan = json.loads((tmp_path / "ablation.json").read_text())
    assert plan["sequential"] == {"method": "t-cs", "max_runs": 12, "alpha": 0.05, "delta": None}
    from hlbcli import plot

    assert [g["verdict"] for g in plot.groups(summary)] == [None, "effect -", "budget spent"]
    if importlib.util.find_spec("matplotlib"):
        assert plot.plot_summary(summary, tmp_path / "accuracy.png").stat().st_size > 0
    again = summaries.rebuild_summary(tmp_path)
    assert [a.get("sequential") for a in again["arms"]] == [a.get("sequential") for a in summary["arms"]]
    assert not again["partial"]


def test_no_effect_within_delta_resolves_an_arm(seq_children, tmp_path):
    summary, code = battery.run_ablation(_opts(tmp_path, delta=0.01))
    assert code == 0
    tta = summary["arms"][2]
    assert tta["sequential"]["how"] == "no effect" and tta["n"] < 12
    assert "no effect (+-1 pts) after" in (tmp_path / "summary.md").read_text()


def test_resume_mid_way_trains_only_what_is_missing(seq_children, tmp_path, monkeypatch):
    monkeypatch.setenv("STOP_AT", "no-tta:7")  # the child stops the battery in the third round
    summary, code = battery.run_ablation(_opts(tmp_path))
    assert code == 130 and summary["partial"] and "--resume" in summary["error"]
    assert summary["arms"][1]["sequential"]["how"] == "effect -"
    assert summary["arms"][2]["sequential"]["how"] == "open"
    assert summaries.rebuild_summary(tmp_path)["arms"][2]["status"] == "incomplete"
    monkeypatch.delenv("STOP_AT")
    (tmp_path / "calls.txt").unlink()
    with pytest.raises(UsageError, match="another plan"):
        battery.run_ablation(_opts(tmp_path, resume=True, alpha=0.1))
    summary, code = battery.run_ablation(_opts(tmp_path, resume=True))
    assert code == 0
    # rounds 1 and 2 are all there: nothing trains again for them, and -ema stays out; the
    # baseline had its 9 seeds of round 3, so only no-tta's process starts for that round
    assert [c[1] for c in _calls(tmp_path)] == ["9", "12", "12"]
    assert [a["n"] for a in summary["arms"]] == [12, 6, 12]


def test_old_plans_read_as_fixed_and_bad_sequential_tables_are_refused(tmp_path):
    opts = AblateOptions(preset="smoke", runs=3)
    from hlbcli.experiments.plan import Arm

    plan = plan_of(opts, [Arm("baseline"), Arm("-ema", disabled=["ema"])])
    assert "sequential" not in plan and readback.check_plan(plan) is None
    assert options_of(plan, tmp_path)[0].until_resolved is False
    for bad, why in [({"method": "x"}, "method 't-cs'"), ({"method": "t-cs", "max_runs": 2, "alpha": 0.05}, "max_runs"),
                     ({"method": "t-cs", "max_runs": 9, "alpha": 2}, "alpha"),
                     ({"method": "t-cs", "max_runs": 9, "alpha": 0.05, "delta": -1}, "delta"),
                     ({"method": "t-cs", "max_runs": 9, "alpha": 0.05, "delta": 5}, "delta")]:
        assert why in readback.check_plan({**plan, "sequential": bad})
    seq = {**plan, "sequential": {"method": "t-cs", "max_runs": 9, "alpha": 0.05, "delta": 0.002}}
    assert readback.check_plan(seq) is None
    o = options_of(seq, tmp_path)[0]
    assert (o.until_resolved, o.max_runs, o.alpha, o.delta) == (True, 9, 0.05, 0.002)


def test_cli_flags_and_dry_run(cli, tmp_path):
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--max-runs", "9", "--out", tmp_path / "d")
    assert code == 2 and "--max-runs is an option of --until-resolved" in err
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--until-resolved", "--max-runs", "8",
                         "--delta", "0.002", "--dry-run")
    assert code == 0, err
    assert "until resolved: looks at 3, 6, 8 seeds per unresolved arm (alpha 0.05, no effect within +-0.002)" in out
    assert "bounded from 4 seeds on, so the look at 3 resolves nothing (--runs 4 makes it count)" in out
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--until-resolved", "--runs", "4", "--dry-run")
    assert code == 0, err
    assert "looks at 4, 8, 12, 16, 20 seeds" in out and "resolves nothing" not in out


def test_cs_bounded_from_is_the_first_count_with_a_finite_interval():
    for alpha in (0.2, 0.05, 0.01, 0.001):
        first = stats.cs_bounded_from(alpha)
        xs = [1.0, 1.3, 0.8, 1.1, 0.9, 1.2, 1.05, 0.95]
        assert stats.t_confidence_sequence(xs[:first - 1], alpha) == (-np.inf, np.inf)
        assert all(np.isfinite(stats.t_confidence_sequence(xs[:first], alpha))), alpha
    assert (stats.cs_bounded_from(0.05), stats.cs_bounded_from(0.01)) == (4, 5)


def test_cs_bounded_from_ends_for_an_alpha_whose_square_underflows():
    # alpha ** 2 is 0.0 below ~1e-154: k must be computed in logs, or the search never ends
    for alpha in (1e-154, 1e-200, 1e-300, 5e-324):
        first = stats.cs_bounded_from(alpha)
        xs = [1.0 + 0.1 * ((i * 7) % 5) for i in range(first)]
        assert stats.t_confidence_sequence(xs[:first - 1], alpha) == (-np.inf, np.inf)
        assert all(np.isfinite(stats.t_confidence_sequence(xs, alpha))), alpha
    assert stats.cs_bounded_from(1e-300) == 227
    with pytest.raises(ValueError):
        stats.cs_bounded_from(0.0)


def test_a_partial_battery_counts_no_runs_as_saved():
    """Runs an interrupted battery never reached were not saved by stopping early: the footer
    says nothing was counted, where a finished battery gives the saving."""
    from types import SimpleNamespace

    from hlbcli.experiments.summary import footnote
    opts = SimpleNamespace(max_runs=10, runs=3, alpha=0.05, delta=None, until_resolved=True)
    rows = [{"n": 3}, {"n": 1}]
    done, stopped = sequential.totals(rows, opts), sequential.totals(rows, opts, partial=True)
    assert done["runs_saved"] == 16 and stopped["runs_saved"] is None
    summary = {"seeds": list(range(10)), "partial": True, "sequential": stopped, "arms": []}
    note = footnote(summary)
    assert "4 runs of at most 20" in note and "none counted (stopped early)" in note and "saved" not in note.split("none counted")[0]
