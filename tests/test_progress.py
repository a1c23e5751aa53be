"""The progress of a battery (hlbcli.experiments.battery_progress): plain lines with the runs done, the
time spent and an estimate of the rest where stdout is not a terminal, a live table where it is."""

from __future__ import annotations

import re


def _console(terminal: bool):
    import io

    from rich.console import Console

    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=terminal, width=200, highlight=False)


def test_progress_counts_runs_and_estimates_the_rest_in_plain_lines():
    from hlbcli.experiments.battery_progress import BatteryProgress as Progress

    buf, console = _console(False)
    t = [100.0]
    p = Progress(total=10, kept=2, console=console, now=lambda: t[0])  # 2 kept by --resume
    with p:
        assert p.line() == "2/10 runs, 0s elapsed, ETA -"
        t[0] += 60
        p.run_finished("-ema", {"seed": 3, "status": "completed", "accuracy": 0.8512, "train_seconds": 180.3})
        t[0] += 60
        p.run_finished("-ema", {"seed": 4, "status": "diverged", "accuracy": None, "train_seconds": None})
        p.arm_finished({"name": "-ema", "n": 1, "n_started": 2, "mean_accuracy": 0.8512, "std_accuracy": 0.0,
                        "ci95": [0.8512, 0.8512], "delta_accuracy": -0.01, "p_value": None, "p_paired": None,
                        "mean_train_seconds": 180.3, "delta_train_seconds": 1.0})
    # the rate counts only this process's runs: 2 in 120 s, 6 left
    assert p.line() == "4/10 runs, 2m00s elapsed, ETA 6m00s"
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[3/10 runs, 1m00s elapsed, ETA 7m00s] arm -ema, seed 3: 85.12% in 180.3 s"
    assert lines[1] == "[4/10 runs, 2m00s elapsed, ETA 6m00s] arm -ema, seed 4: diverged"
    assert lines[2].startswith("arm -ema done: n 1/2, accuracy 85.12%,") and "Δ acc -1.00" in lines[2]


def test_progress_on_a_terminal_is_a_live_table():
    from hlbcli.experiments.summary import rich_table
    from hlbcli.experiments.battery_progress import BatteryProgress as Progress
    from hlbcli.progress import clock

    buf, console = _console(True)
    summary = {"preset": "smoke", "arms": [
        {"name": "baseline", "status": "completed", "n": 2, "mean_accuracy": 0.5, "std_accuracy": 0.1, "ci95": [0.4, 0.6],
         "delta_accuracy": None, "p_value": None, "p_paired": None, "mean_train_seconds": 1.0, "delta_train_seconds": None},
        {"name": "-ema", "status": "running", "n": 1, "mean_accuracy": 0.4, "std_accuracy": 0.0, "ci95": [0.4, 0.4],
         "delta_accuracy": -0.1, "p_value": None, "p_paired": None, "mean_train_seconds": 1.0, "delta_train_seconds": 0.0},
    ]}
    with Progress(total=4, console=console, render=lambda s: rich_table(s, live=True)) as p:
        assert p.live is not None
        p.update(summary)
        p.run_finished("-ema", {"seed": 1, "status": "completed", "accuracy": 0.4})
    text = buf.getvalue()
    assert "-ema (running)" in text and "3/4 runs" not in text and "1/4 runs" in text
    assert [clock(s) for s in (5, 65, 3725, None)] == ["5s", "1m05s", "1h02m", "-"]


# --- where each run is, in every long command (issue 36, item 1) ------------------------------


class _Lines:
    """A console that is not a terminal, keeping what is printed."""

    is_terminal = False

    def __init__(self):
        self.lines: list[str] = []

    def print(self, text, markup=False):
        self.lines.append(text)


def test_the_final_evaluation_has_its_images_and_an_eta():
    from hlbcli.progress import StepProgress

    t = [0.0]
    c, told = _Lines(), []
    p = StepProgress(c, "run 1/1 (seed 3)", now=lambda: t[0], every=30, report=told.append, report_every=1, seed=3)
    for step in range(1, 11):
        t[0] += 2.0
        p(step, 10, 1, 1)
    p.evaluating(0, 10000)
    t[0] += 20.0
    p.evaluating(2500, 10000)
    t[0] += 30.0  # 30 s since the last line (at 40 s): one now
    p.evaluating(5000, 10000)
    assert c.lines[-1] == ("run 1/1 (seed 3): 10/10 steps done, final evaluation 5000/10000 images (50%), "
                           "1m10s elapsed, ETA 50s")
    # the parent's copy: a report per second at most, and one as training ends and as the pass starts
    assert [s["step"] for s in told] == list(range(1, 11)) + [10, 10, 10]
    assert told[-1]["seed"] == 3 and told[-1]["eval_done"] == 5000 and told[-1]["eta"] == 50.0
    assert told[2]["rate"] == 0.5 and told[2]["eta"] == 14.0


def test_the_battery_counts_the_running_runs_and_is_never_silent_longer_than_its_interval():
    from hlbcli.experiments.battery_progress import BatteryProgress

    buf, console = _console(False)
    t = [0.0]
    p = BatteryProgress(total=4, console=console, now=lambda: t[0], every=30)
    t[0] = 10.0
    p.tick()
    assert buf.getvalue() == ""  # within the interval: nothing
    t[0] = 60.0
    p.run_progress("-ema", {"seed": 0, "step": 50, "total": 100, "epoch": 1, "epochs": 2, "rate": 1.0,
                            "elapsed": 55.0, "eta": 50.0})
    # half a run in 60 s: 3.5 runs left at that rate
    assert buf.getvalue().splitlines() == [
        "[0/4 runs, 1m00s elapsed, ETA 7m00s; -ema seed 0: epoch 1/2, step 50/100 (50%), 1 steps/s, ETA 50s]"]
    t[0] = 80.0
    p.tick()
    assert len(buf.getvalue().splitlines()) == 1
    p.run_finished("-ema", {"seed": 0, "status": "completed", "accuracy": 0.5, "train_seconds": 70.0})
    assert p.running == {} and p.line() == "1/4 runs, 1m20s elapsed, ETA 4m00s"


def test_fit_tells_the_final_evaluation_batch_by_batch_and_then_lets_go():
    from conftest import tiny_sets
    from hlbcli.resolve import resolve
    from hlbcli.run import fit
    from hlbcli.session import open_session

    cfg, tm = resolve("smoke", sets=tiny_sets("train.eval_batch_size=50"))
    seen: list[tuple] = []

    class Told:
        def __call__(self, *a):
            seen.append(("step", *a))

        def evaluating(self, done, n):
            seen.append(("eval", done, n))

    session = open_session(cfg, tm, "cpu")
    assert fit(session, 0, on_step=Told()).status == "completed"
    evals = [s[1:] for s in seen if s[0] == "eval"]
    # smoke's tta at its fraction makes a plain pass over all 128 images, then one over a share
    assert evals[:4] == [(0, 128), (50, 128), (100, 128), (128, 128)]
    assert all(0 <= d <= n for d, n in evals) and evals[-1][0] == evals[-1][1]
    assert seen.index(("eval", 0, 128)) > max(i for i, s in enumerate(seen) if s[0] == "step")


def test_an_arms_process_reports_its_run_to_the_file_the_battery_reads(cli, monkeypatch, tmp_path):
    from conftest import set_args, tiny_sets
    from hlbcli.progress import PROGRESS_FILE_ENV, read_report

    path = tmp_path / "progress.json"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(path))
    code, out, err = cli("train", "--preset", "smoke", *set_args(tiny_sets()), "--quiet", "--seed", "4")
    assert code == 0 and out == "" and err == ""  # quiet on screen, not to its parent
    s = read_report(path)
    assert s["seed"] == 4 and s["step"] == s["total"] == 8 and s["eval_images"] == 128  # its final evaluation


def test_ablate_and_bench_against_are_never_silent_and_say_where_the_running_run_is_when_piped(tmp_path):
    """Piped, at an interval of 0 s: ablate's battery line ticks while its first run trains (never
    silent), and bench --against names the running run of a side (its report at the end of
    training always reaches the parent through the protocol)."""
    import subprocess
    import sys

    from conftest import set_args, tiny_sets

    env = {**__import__("os").environ, "HLB_PROGRESS_SECONDS": "0"}
    for cmd, pattern in (
        (["ablate", "--disable", "ema", "--runs", "1", "--out", str(tmp_path / "A")], r"^\[0/2 runs, \S+ elapsed, ETA \S+"),
        (["bench", "--runs", "1", "--against", "smoke", "--against-disable", "ema"],
         r"^\[0/2 runs, \S+ elapsed, ETA \S+; A seed 0: (epoch \d/2, step \d+/8|8/8 steps done)"),
    ):
        proc = subprocess.run([sys.executable, "-m", "hlbcli.cli", *cmd, "--preset", "smoke", *set_args(tiny_sets()),
                               "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert re.search(pattern, proc.stdout + proc.stderr, re.M), proc.stdout + proc.stderr
