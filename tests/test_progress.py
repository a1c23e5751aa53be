"""The progress of a battery (hlbcli.experiments.battery_progress): plain lines with the runs done, the
time spent and an estimate of the rest where stdout is not a terminal, a live table where it is."""

from __future__ import annotations


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
