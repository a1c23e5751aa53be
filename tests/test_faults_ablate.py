"""Faults of hlb ablate (issue 10): the arms' processes end with the parent, whatever ends it
(a kill, a second signal during the stop, an error in the parent), and a battery is checked
before any arm starts (a folder in use or of another plan, device, data, sizes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hlbcli.experiments import local_backend, plan as plans
from conftest import set_args, tiny_sets
from test_errors import assert_one_line_error


# a stand-in arm: writes one record and its pid, then waits to be stopped. On SIGINT it says
# so and waits for the test's "release" file, so a second signal can land during the stop.
SLOW_CHILD = r"""
import json, os, signal, sys, time
out = sys.argv[1]
def on_int(signum, frame):
    open(os.path.join(out, "stopping"), "w").close()
    t = time.time()
    while not os.path.exists(os.path.join(out, "..", "..", "release")) and time.time() - t < 60:
        time.sleep(0.05)
    sys.exit(130)
signal.signal(signal.SIGINT, on_int)
from hlbcli.record import versions  # what hlb train's records carry: hlb summary checks them
with open(os.path.join(out, "run-000-seed0.json"), "w") as f:
    json.dump({"seed": 0, "status": "completed", "accuracy": 0.5, "train_seconds": 1.0, "versions": versions(), "config": {}}, f)
with open(os.path.join(out, "pid"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
"""

PARENT = r"""
import sys
from hlbcli.experiments import local_backend, plan as plans
from hlbcli.cli import main
local_backend.child_command = lambda opts, arm, arm_dir: [sys.executable, "-c", sys.argv[1], str(arm_dir)]
sys.exit(main(["ablate", "--preset", "smoke", "--disable", "ema", "--runs", "3", "--device", "cpu",
               "--workers", "2", "--out", sys.argv[2]]))
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(paths: list[Path], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{what}: not there after 120 s"
        time.sleep(0.05)


def _start_parent(out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", PARENT, SLOW_CHILD, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _child_pids(out: Path) -> list[int]:
    return [int((out / "arms" / a / "pid").read_text()) for a in ("baseline", "no-ema")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_ablate_children_end_when_the_parent_is_killed_and_summary_rebuilds(cli, tmp_path):
    out = tmp_path / "D"
    parent = _start_parent(out)
    try:
        _wait_for([out / "arms" / a / "pid" for a in ("baseline", "no-ema")], parent, "both arms")
        pids = _child_pids(out)
        parent.send_signal(signal.SIGKILL)
        parent.communicate(timeout=60)
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in pids):
            assert time.monotonic() < deadline, "an arm outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for p in _child_pids(out) if (out / "arms" / "no-ema" / "pid").exists() else []:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert not (out / "summary.json").exists()  # killed before it could write one
    code, stdout, err = cli("summary", out)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert [a["n"] for a in s["arms"]] == [1, 1] and s["partial"] is True
    assert [a["status"] for a in s["arms"]] == ["incomplete", "incomplete"]
    assert "baseline" in stdout and "PARTIAL" in stdout and (out / "summary.md").exists()


def test_a_second_signal_during_the_stop_does_not_cut_the_summary(tmp_path):
    """SIGHUP stops the ablation like SIGTERM; a SIGTERM while the arms stop is held."""
    out = tmp_path / "D"
    parent = _start_parent(out)
    try:
        _wait_for([out / "arms" / a / "pid" for a in ("baseline", "no-ema")], parent, "both arms")
        pids = _child_pids(out)
        parent.send_signal(signal.SIGHUP)
        _wait_for([out / "arms" / "baseline" / "stopping"], parent, "the stop")
        parent.send_signal(signal.SIGTERM)
        (out / "release").touch()
        stdout, err = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 128 + signal.SIGHUP, err
    assert "Traceback" not in err and "--resume" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["partial"] is True and [a["status"] for a in s["arms"]] == ["interrupted", "interrupted"]
    assert not any(_alive(p) for p in pids)


def test_an_error_in_the_parent_stops_the_arms(cli, tmp_path, monkeypatch):
    """The summary write fails (a full disk) after one arm ended: the other arm is stopped,
    the error is one line."""
    import errno

    from hlbcli import record

    started = []
    real_popen = subprocess.Popen

    def popen(*a, **k):
        started.append(real_popen(*a, **k))
        return started[-1]

    def child(opts, arm, arm_dir):
        code = "import sys; sys.exit(1)" if arm.name == "-ema" else "import time; time.sleep(600)"
        return [sys.executable, "-c", code]

    real_mkstemp = record.tempfile.mkstemp

    def mkstemp(*a, prefix="", **k):
        if prefix.startswith(".summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*a, prefix=prefix, **k)

    monkeypatch.setattr(local_backend, "child_command", child)
    monkeypatch.setattr(local_backend.subprocess, "Popen", popen)
    monkeypatch.setattr(record.tempfile, "mkstemp", mkstemp)
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--device", "cpu", "--workers", "2",
                         "--out", tmp_path / "D")
    assert_one_line_error(code, err, 1, "cannot write", "summary.json", "No space left", "free some space")
    assert len(started) == 2 and all(p.poll() is not None for p in started)
    assert not (tmp_path / "D" / ".hlb-lock").exists()  # released


def test_ablate_into_a_folder_in_use_or_of_another_plan(cli, tmp_path, monkeypatch):
    from hlbcli import record

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with record.claim(tmp_path / "D"):
        code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--out", tmp_path / "D")
        assert_one_line_error(code, err, 2, "is in use by another hlb (pid")
    opts = plans.AblateOptions(preset="smoke", disable=["ema"], runs=2)
    arms = plans.plan_battery(opts)
    plans.claim_out(tmp_path / "E", plans.plan_of(opts, arms)).release()
    (tmp_path / "E" / "arms" / "baseline").mkdir()
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "tta", "--out", tmp_path / "E", "--resume")
    assert_one_line_error(code, err, 2, "--resume", "another plan")
    assert "--resume" in local_backend.child_command(plans.AblateOptions(preset="smoke", resume=True), arms[0], tmp_path)


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--device", "tpu"], ["unknown device 'tpu'"]),
        (["--set", 'data.dataset="cifar10"', "--data-dir", "EMPTY", "--no-download"], ["cifar10 not found", "--data-dir"]),
        (["--set", "train.batch_size=5000", "--set", "data.synthetic_train=4096"], ["train.batch_size 5000", "4096 images"]),
        (["--set", "model.widths=[8,8,8,8,8]"], ["model.widths", "at most"]),
        (["--runs", "100000000"], ["--runs", "10000"]),
    ],
)
def test_ablate_checks_device_data_and_sizes_before_any_arm(cli, tmp_path, args, needles):
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    for mode in (["--dry-run"], ["--out", str(tmp_path / "D")]):
        code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", *args, *mode)
        assert_one_line_error(code, err, 2, *needles)
        assert not (tmp_path / "D").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_ablate_cuda_where_there_is_none(cli):
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--device", "cuda", "--dry-run")
    assert_one_line_error(code, err, 2, "--device cuda", "no CUDA GPU")


@pytest.mark.parametrize("command", [["ablate", "--disable", "ema"], ["bench"], ["bench", "--against-set", "train.epochs=1"]])
def test_a_bad_hlb_threads_is_one_line_before_anything_trains(cli, monkeypatch, tmp_path, command):
    monkeypatch.setenv("HLB_THREADS", "abc")  # inherited by every arm and side: each would die of it
    code, out, err = cli(command[0], "--preset", "smoke", *command[1:], "--out", tmp_path / "D")
    assert_one_line_error(code, err, 2, "HLB_THREADS='abc' is not a thread count", "integer from 1 to")
    assert not (tmp_path / "D").exists()


def test_resume_with_another_preset_names_the_plan_before_the_data_is_read(cli, tmp_path):
    sets = set_args([s for s in tiny_sets("train.epochs=1") if not s.startswith("data.dataset")])  # the preset's data
    d = tmp_path / "D"
    code, out, err = cli("ablate", "--preset", "smoke", *sets, "--disable", "ema", "--runs", "1", "--out", d)
    assert code == 0, err
    code, out, err = cli("ablate", "--preset", "mini", *sets, "--disable", "ema", "--runs", "1", "--out", d, "--resume",
                         "--data-dir", tmp_path / "none", "--no-download")  # cifar10, not there: never looked for
    assert_one_line_error(code, err, 2, f"--resume: {d} holds an ablation of another plan (preset: ", "mini")
    assert not (tmp_path / "none").exists()
