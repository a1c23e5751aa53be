"""The confirmation's error rate, simulated (no training): when no trial is better than the
baseline, searches that pick their best from noise and then confirm it on fresh seeds name a
false winner at most ``alpha`` of the time; and the scores, pruning and best-trial rules on
made-up records."""

from __future__ import annotations

import random

import pytest

from hlbcli.experiments.search_confirm import confirm_options, judge
from hlbcli.experiments.search_plan import SearchOptions
from hlbcli.experiments.search_summary import best_rows, candidates, prune_reason


def _recs(accs: list[float], times: list[float] | None = None, first: int = 0) -> dict[int, dict]:
    times = times or [1.0] * len(accs)
    return {first + i: {"status": "completed", "accuracy": a, "train_seconds": t} for i, (a, t) in enumerate(zip(accs, times))}


@pytest.mark.parametrize("objective,m", [("accuracy", 1), ("accuracy", 3), ("pareto", 2)])
def test_no_better_trial_gives_a_false_winner_at_most_alpha_of_the_time(tmp_path, objective, m):
    rng = random.Random(7)
    opts = SearchOptions(preset="smoke", space="x", runs=4, alpha=0.05, objective=objective, confirm_top=m)
    copts = confirm_options(opts, m, tmp_path)
    assert copts.alpha == pytest.approx(0.05 / m) and copts.seed == 4  # fresh: after the search's seeds 0..3
    sims, false = 1500, 0
    for _ in range(sims):
        # the search: 20 trials, all as good as the baseline; the best m picked from noise
        scores = sorted((rng.gauss(0, 0.004) for _ in range(20)), reverse=True)
        assert scores[0] > 0  # (the winner's curse: the best of noise looks better)
        seeds = range(copts.seed, copts.seed + copts.max_runs)
        shared = [rng.gauss(0.90, 0.01) for _ in seeds]  # the seed's own luck, in every arm
        base = _recs([s + rng.gauss(0, 0.004) for s in shared], [1.0 + rng.gauss(0, 0.02) for _ in seeds], copts.seed)
        won = False
        for _ in range(m):
            mine = _recs([s + rng.gauss(0, 0.004) for s in shared], [1.0 + rng.gauss(0, 0.02) for _ in seeds], copts.seed)
            won |= judge(objective, None, base, mine, copts)["winner"]
        false += won
    assert false / sims <= 0.05, f"{false} false winners in {sims}"


def test_a_real_improvement_is_confirmed(tmp_path):
    rng = random.Random(3)
    opts = SearchOptions(preset="smoke", space="x", runs=4)
    copts = confirm_options(opts, 1, tmp_path)
    shared = [rng.gauss(0.90, 0.01) for _ in range(copts.max_runs)]
    base = _recs([s + rng.gauss(0, 0.003) for s in shared], first=copts.seed)
    mine = _recs([s + 0.01 + rng.gauss(0, 0.003) for s in shared], first=copts.seed)
    j = judge("accuracy", None, base, mine, copts)
    assert j["winner"] and j["resolved"] and j["accuracy"]["look"] < copts.max_runs


def test_time_needs_the_target_and_a_faster_trial(tmp_path):
    opts = SearchOptions(preset="smoke", space="x", runs=4, objective="time", target=0.9)
    copts = confirm_options(opts, 1, tmp_path)
    n = copts.max_runs
    base = _recs([0.92] * n, [2.0 + 0.01 * (i % 3) for i in range(n)], copts.seed)
    fast_ok = _recs([0.91] * n, [1.5 + 0.01 * (i % 2) for i in range(n)], copts.seed)
    fast_low = _recs([0.85] * n, [1.5 + 0.01 * (i % 2) for i in range(n)], copts.seed)
    assert judge("time", 0.9, base, fast_ok, copts)["winner"]
    assert not judge("time", 0.9, base, fast_low, copts)["winner"]


def test_pruning_needs_the_interval_wholly_on_the_worse_side():
    opts = SearchOptions(preset="smoke", space="x", runs=8, prune_alpha=0.2)
    base = _recs([0.90, 0.88, 0.91, 0.89])
    assert prune_reason(opts, base, _recs([0.10, 0.11, 0.09, 0.10])).startswith("less accurate than the baseline")
    assert prune_reason(opts, base, _recs([0.10, 0.11])) is None  # too few seeds to bound anything at 0.2
    assert prune_reason(opts, base, _recs([0.91, 0.87, 0.90, 0.90])) is None
    diverged = {**_recs([0.10, 0.11, 0.09]), 3: {"status": "diverged", "accuracy": None}}
    assert prune_reason(opts, base, diverged)  # a diverged run scores 0
    pareto = SearchOptions(preset="smoke", space="x", runs=8, prune_alpha=0.2, objective="pareto")
    slower = _recs([0.10, 0.11, 0.09, 0.10], [3.0, 3.1, 3.0, 3.05])
    faster = _recs([0.10, 0.11, 0.09, 0.10], [0.1, 0.12, 0.1, 0.11])
    assert prune_reason(pareto, base, slower).startswith("less accurate") and prune_reason(pareto, base, faster) is None


def _row(n, diff, time_diff, acc=0.9, folder=None, state="complete"):
    return {"number": n, "state": state, "n": 4, "diff": diff, "time_diff": time_diff, "accuracy": acc,
            "folder": folder or ("baseline" if n == 0 else f"trial-{n:04d}")}


def test_the_best_the_pareto_front_and_the_candidates():
    rows = [_row(0, 0.0, 0.0), _row(1, 0.01, 0.5), _row(2, -0.01, -0.5), _row(3, -0.02, 0.1), _row(4, 0.02, 0.0, state="pruned"),
            _row(5, 0.01, 0.5, folder="trial-0001")]
    assert [r["number"] for r in best_rows("accuracy", rows)] == [1]
    assert [r["number"] for r in best_rows("pareto", rows)] == [1, 5, 0, 2]  # trial 3 is dominated; 4 was pruned
    assert [r["number"] for r in candidates("accuracy", rows, None, 3)] == [1]  # 5 shares 1's config: one of them
    assert [r["number"] for r in candidates("pareto", rows, None, 3)] == [1, 2]  # never the preset itself
    rows.append(_row(6, -0.005, -0.8, acc=0.95))
    assert [r["number"] for r in candidates("time", rows, 0.94, 3)] == [6]  # the only fast one at the target
