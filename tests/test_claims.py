"""Claims that hold: hlb bench --target (the record test, over every record of --out) and
hlb compare (two folders, seed by seed), against SciPy and numbers worked by hand."""

import json
import math
import subprocess
from pathlib import Path

import pytest
from scipy import stats as sp

from conftest import set_args, tiny_sets
from hlbcli import readback, stats
from hlbcli.record import versions, write_json

DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]  # R's sleep data, group 2


# --- the statistics ---------------------------------------------------------------------------


def test_claim_p_is_the_one_sided_t_test_that_the_mean_is_below_the_target():
    for target in (0.0, 1.0, 2.33, 4.0):
        n = len(DRUG2)
        m, s = stats.mean_std(DRUG2)
        t = (m - target) / (s / math.sqrt(n))
        want = sp.t.sf(t, n - 1)  # P(T > t): small when the mean is well above the target
        assert stats.claim_p(DRUG2, target) == pytest.approx(want, rel=1e-10)
        assert stats.claim_p(DRUG2, target) == pytest.approx(sp.ttest_1samp(DRUG2, target, alternative="greater").pvalue, rel=1e-10)
    # R: t.test(sleep$extra[sleep$group == 2], alternative = "greater") gives t = 3.6799, df = 9
    assert stats.claim_p(DRUG2, 0.0) == pytest.approx(sp.t.sf(3.6799, 9), rel=1e-4)
    assert stats.claim_p(DRUG2, 4.0) > 0.5  # the mean is below the target: no claim
    assert stats.claim_p([0.95, 0.95, 0.95], 0.94) == 0.0 and stats.claim_p([0.93, 0.93], 0.94) == 1.0
    assert math.isnan(stats.claim_p([0.95], 0.94))


def _sample(n: int, mean: float, std: float) -> list[float]:
    """n values with exactly this sample mean and standard deviation."""
    base = [float(i) for i in range(n)]
    m, s = stats.mean_std(base)
    return [mean + std * (x - m) / s for x in base]


@pytest.mark.parametrize("mean,std,target", [(0.9402, 0.0014, 0.94), (0.9410, 0.0025, 0.94), (1.0, 1.0, 0.0), (3.0, 1.0, 0.0)])
def test_runs_needed_is_the_first_n_where_the_observed_mean_and_std_reach_p_001(mean, std, target):
    n = stats.runs_needed(mean, std, target, 0.01)
    assert n is not None and n >= 2
    assert sp.ttest_1samp(_sample(n, mean, std), target, alternative="greater").pvalue < 0.01
    if n > 2:
        assert sp.ttest_1samp(_sample(n - 1, mean, std), target, alternative="greater").pvalue >= 0.01


def test_runs_needed_known_cases():
    # d = 1: sqrt(9) = 3 > t(0.99, 8) = 2.896, sqrt(8) = 2.83 < t(0.99, 7) = 2.998
    assert stats.runs_needed(1.0, 1.0, 0.0) == 9
    # a large n: the t quantile is near the normal's, n ~ (2.326 / d)^2
    n = stats.runs_needed(0.9402, 0.0014, 0.94)
    assert abs(n - (sp.norm.ppf(0.99) * 0.0014 / 0.0002) ** 2) < 0.02 * n
    assert stats.runs_needed(0.94, 0.001, 0.94) is None and stats.runs_needed(0.93, 0.001, 0.94) is None
    assert stats.runs_needed(0.95, 0.0, 0.94) == 2


# --- hlb bench --target -----------------------------------------------------------------------


def _bench(cli, out, *more):
    code, stdout, err = cli("bench", "--preset", "smoke", *set_args(tiny_sets()), "--target", "0.05", "--out", out, *more)
    assert code == 0, err
    return json.loads((Path(out) / "bench.json").read_text()), stdout, err


def test_bench_claim_is_extended_by_resume_and_covers_the_whole_folder(cli, tmp_path):
    rep, out, _ = _bench(cli, tmp_path, "--runs", "3")
    assert rep["n"] == 3 and rep["seeds"] == [0, 1, 2]
    rep, out, _ = _bench(cli, tmp_path, "--runs", "5", "--resume")
    assert rep["n"] == 5 and rep["seeds"] == [0, 1, 2, 3, 4]
    # seeds outside this batch are in the claim too (a claim of 200 extended to 1000)
    rep, out, err = _bench(cli, tmp_path, "--seed", "5", "--runs", "1", "--resume")
    assert rep["n"] == 6 and rep["seeds"] == list(range(6))
    recs = readback.read_records(tmp_path).sorted_runs()
    accs = [r["accuracy"] for r in recs]
    times = [r["train_seconds"] for r in recs]
    assert rep["accuracy_mean"] == pytest.approx(sum(accs) / 6)
    assert rep["p_value"] == pytest.approx(sp.ttest_1samp(accs, 0.05, alternative="greater").pvalue)
    assert rep["accuracy_ci95"] == pytest.approx(list(stats.accuracy_ci95(accs)))
    assert rep["accuracy_ci95_method"] == stats.ACCURACY_CI
    assert rep["time_ci95"] == pytest.approx(list(stats.ci95(times)))
    assert rep["runs_needed"] == stats.runs_needed(*stats.mean_std(accs), 0.05)
    for key in ("test", "runs_needed_method", "timer", "torch", "git_commit", "device", "summary_line"):
        assert rep[key], key
    assert rep["timer"] == "wall" and "per-epoch evaluation" in rep["timed"] and "synchronize" in rep["timed"]
    line = out.strip().splitlines()[-1]
    assert line == rep["summary_line"] and line.startswith("smoke: ") and "mean over n=6" in line
    assert "for mean < 5% (one-sided t-test)" in line and f"torch {rep['torch']}" in line


def test_bench_claim_names_the_commit_its_records_were_trained_with(cli, tmp_path):
    from hlbcli.claims import claim_line
    from hlbcli.record import source_commit

    rep, _, _ = _bench(cli, tmp_path, "--runs", "2")
    assert (rep["git_commit"], rep["git_dirty"]) == source_commit()
    recs = sorted(tmp_path.glob("run-*.json"))
    assert all(json.loads(p.read_text())["arm"] is None for p in recs)
    # a claim extended with --resume by a later commit names both; one from a record that
    # predates the field counts as this checkout's
    old = json.loads(recs[0].read_text())
    write_json(recs[0], {**old, "git_commit": "a" * 40, "git_dirty": True})
    rep, _, _ = _bench(cli, tmp_path, "--runs", "3", "--resume")
    assert rep["n"] == 3 and rep["git_commit"] == f"{'a' * 40} + {source_commit()[0]}" and rep["git_dirty"]
    assert f"hlb {'a' * 7} + " in claim_line(rep, "smoke") and "+dirty" in claim_line(rep, "smoke")
    write_json(recs[0], {k: v for k, v in old.items() if k not in ("git_commit", "git_dirty")})
    rep, _, _ = _bench(cli, tmp_path, "--runs", "3", "--resume")
    assert (rep["git_commit"], rep["git_dirty"]) == source_commit()


def test_bench_claim_leaves_out_records_of_another_config(cli, tmp_path):
    code, _, err = cli("train", "--preset", "smoke", "-q", *set_args(tiny_sets("train.epochs=1")), "--seed", "3", "--out", tmp_path)
    assert code == 0, err
    rep, _, err = _bench(cli, tmp_path, "--runs", "2", "--resume")
    assert rep["n"] == 2 and rep["seeds"] == [0, 1]
    assert "left out of the claim" in err and "another config (train.epochs: 1" in err


def test_source_commit_is_head_of_a_checkout_and_says_so_when_not(monkeypatch, tmp_path):
    import hlbcli
    from hlbcli.claims import source_commit

    src = Path(hlbcli.__file__).resolve().parent.parent
    if (src / ".git").exists():
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert source_commit()[0] == head
    fake = tmp_path / "site" / "hlbcli"
    fake.mkdir(parents=True)
    monkeypatch.setattr(hlbcli, "__file__", str(fake / "__init__.py"))
    assert source_commit() == ("not a git checkout", False)


# --- hlb compare ------------------------------------------------------------------------------


def _records(folder: Path, accs: dict[int, float], data: dict | None = None, **over) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (seed, acc) in enumerate(sorted(accs.items())):
        rec = {"seed": seed, "status": "completed", "accuracy": acc, "train_seconds": 1.0, "versions": versions(),
               "config": {"data": data or {"dataset": "synthetic", "synthetic_seed": 0}}}
        rec.update(over)
        write_json(folder / f"run-{i:03d}-seed{seed}.json", rec)
    return folder


A = {0: 0.900, 1: 0.910, 2: 0.920, 3: 0.930, 4: 0.905}
B = {0: 0.910, 1: 0.930, 2: 0.920, 3: 0.940, 5: 0.99}


def test_compare_pairs_the_shared_seeds(cli, tmp_path):
    a, b = _records(tmp_path / "a", A), _records(tmp_path / "arms" / "b", B)
    code, out, err = cli("compare", a, b, "--json")
    assert code == 0, err
    rep = json.loads(out)
    d = rep["difference"]
    shared = [0, 1, 2, 3]
    xa, xb = [A[k] for k in shared], [B[k] for k in shared]
    diffs = [y - x for x, y in zip(xa, xb)]
    assert d["n"] == 4 and d["seeds"] == shared
    assert d["mean"] == pytest.approx(0.01)
    half = sp.t.ppf(0.975, 3) * sp.tstd(diffs) / 2
    assert d["ci95"] == pytest.approx([0.01 - half, 0.01 + half])
    assert d["p_paired"] == pytest.approx(sp.ttest_rel(xb, xa).pvalue)
    assert d["p_welch"] == pytest.approx(sp.ttest_ind(xb, xa, equal_var=False).pvalue)
    assert d["p_paired"] < d["p_welch"]  # the pairing removes the seed's share of the noise
    assert rep["A"]["only_here"] == [4] and rep["B"]["only_here"] == [5] and rep["dataset"] == "synthetic"
    code, out, err = cli("compare", a, b)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("B - A: +1.00 points over 4 paired seed(s)")
    assert f"paired t-test p={d['p_paired']:.2g}" in last and f"Welch's t-test p={d['p_welch']:.2g}" in last


def _refused(cli, a, b, *words):
    code, out, err = cli("compare", a, b)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for w in words:
        assert w in err, err
    return err


def test_compare_refuses_folders_without_shared_seeds(cli, tmp_path):
    a, b = _records(tmp_path / "a", {0: 0.9, 1: 0.91}), _records(tmp_path / "b", {2: 0.9, 3: 0.92})
    _refused(cli, a, b, "share no completed seed", "A: 2 seeds 0..1", "B: 2 seeds 2..3")


def test_compare_refuses_folders_trained_on_different_data(cli, tmp_path):
    a = _records(tmp_path / "a", A)
    b = _records(tmp_path / "b", B, data={"dataset": "cifar10"})
    _refused(cli, a, b, "trained on different data", "data.dataset: 'synthetic' vs 'cifar10'")
    c = _records(tmp_path / "c", B, data={"dataset": "synthetic", "synthetic_seed": 1})
    _refused(cli, a, c, "data.synthetic_seed: 0 vs 1")


def test_compare_refuses_folders_without_valid_records(cli, tmp_path):
    a = _records(tmp_path / "a", A)
    _refused(cli, a, tmp_path / "none", "is not a folder")
    (tmp_path / "empty").mkdir()
    _refused(cli, a, tmp_path / "empty", "no run records in")
    old = _records(tmp_path / "old", B, versions={"hlbcli": "0.0.1", "torch": "1.0"})
    _refused(cli, a, old, "no valid run records in", "written by hlbcli '0.0.1'")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run-000-seed0.json").write_text("{not json")
    _refused(cli, bad, a, "no valid run records in", "not valid JSON")


def test_compare_names_the_records_it_leaves_out(cli, tmp_path):
    a, b = _records(tmp_path / "a", A), _records(tmp_path / "b", B)
    (b / "run-009-seed9.json").write_text("[]")
    code, out, err = cli("compare", a, b)
    assert code == 0 and "warning: left out" in err and "run-009-seed9.json" in err
