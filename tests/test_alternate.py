"""hlb bench --against: two configs timed in alternation (A B B A ...), one worker process per
side opened once, the seeds paired, the ratio and paired statistics from the records."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import set_args, tiny_sets
from hlbcli import stats
from hlbcli.experiments.alternate import order


def test_order_alternates_a_b_b_a():
    assert order(4) == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B"), (3, "B"), (3, "A")]


def test_alternation_pairs_seeds_keeps_one_session_per_side_and_reports_paired_stats(cli, tmp_path):
    out = tmp_path / "alt"
    code, stdout, err = cli("bench", "--preset", "smoke", *set_args(tiny_sets()), "--against-set", "train.epochs=1",
                            "--runs", "2", "--seed", "3", "--out", out)
    assert code == 0, err
    rep = json.loads((out / "bench.json").read_text())
    # the order of the runs, from the workers' answers: A B, then B A, one after another
    steps = [step for pair in rep["order"] for step in pair[1:]]
    assert [s[0] for s in steps] == ["A", "B", "B", "A"]
    assert [pair[0] for pair in rep["order"]] == [3, 4]
    times = [t for s in steps for t in s[3:5]]
    assert times == sorted(times)  # each run started after the one before ended
    # one process per side, its session opened once, not this process
    pids = {side: {s[1] for s in steps if s[0] == side} for side in "AB"}
    assert len(pids["A"]) == 1 and len(pids["B"]) == 1 and pids["A"] != pids["B"] and os.getpid() not in pids["A"] | pids["B"]
    assert {s[2] for s in steps} == {1}
    assert rep["workers"]["A"]["pid"] in pids["A"]
    # the seeds pair up; side B got --against-set, side A not
    recs = {side: {json.loads(p.read_text())["seed"]: json.loads(p.read_text()) for p in (out / side).glob("run-*.json")}
            for side in "AB"}
    assert set(recs["A"]) == set(recs["B"]) == {3, 4}
    assert {r["config"]["train"]["epochs"] for r in recs["A"].values()} == {2}
    assert {r["config"]["train"]["epochs"] for r in recs["B"].values()} == {1}
    assert {side: {r["arm"] for r in recs[side].values()} for side in "AB"} == {"A": {"A"}, "B": {"B"}}
    # the figures are stats.py's over the records
    ratios = [recs["B"][s]["train_seconds"] / recs["A"][s]["train_seconds"] for s in (3, 4)]
    assert rep["time_ratios"] == pytest.approx(ratios)
    assert rep["time_ratio_mean"] == pytest.approx(stats.mean_std(ratios)[0])
    assert rep["time_ratio_ci95"] == pytest.approx(list(stats.ci95(ratios)))
    want = stats.paired_difference({s: r["accuracy"] for s, r in recs["A"].items()}, {s: r["accuracy"] for s, r in recs["B"].items()})
    for key in ("n", "mean", "t_paired"):
        assert rep["accuracy"][key] == pytest.approx(want[key], nan_ok=True)
    assert rep["accuracy"]["ci95"] == pytest.approx(want["ci95"], nan_ok=True)
    assert rep["accuracy"]["p_paired"] == pytest.approx(want["p_paired"], nan_ok=True)
    assert rep["accuracy"]["p_welch"] == pytest.approx(want["p_welch"], nan_ok=True)
    assert stdout.strip().splitlines()[-1] == rep["summary_line"] and "in alternation" in rep["summary_line"]
    assert "B/A mean" in stdout and "paired t-test p" in stdout and "Welch p" in stdout
    code, cmp_out, err = cli("compare", out / "A", out / "B")
    assert code == 0, err
    assert "paired" in cmp_out


def test_a_bad_against_set_is_one_line_before_anything_starts(cli, tmp_path):
    out = tmp_path / "alt"
    code, stdout, err = cli("bench", "--preset", "smoke", *set_args(tiny_sets()), "--against-set", "train.nope=1",
                            "--runs", "2", "--out", out)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: side B (smoke): ") and "train.nope" in err
    assert not out.exists()  # nothing started, nothing written


def test_ctrl_c_stops_both_sides_and_keeps_the_finished_pairs(tmp_path):
    out = tmp_path / "alt"
    cmd = [sys.executable, "-m", "hlbcli.cli", "bench", "--preset", "smoke", *set_args(tiny_sets("train.epochs=1")),
           "--against-set", "train.batch_size=32", "--runs", "50", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "bench.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    rep = json.loads((out / "bench.json").read_text())
    assert rep["partial"] and 1 <= rep["n"] < 50 and "interrupted by SIGINT" in err
    assert len(list((out / "A").glob("run-*.json"))) >= rep["n"]
    for side in "AB":
        pid = rep["workers"][side]["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
