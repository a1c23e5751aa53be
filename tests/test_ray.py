"""``hlb ablate --backend ray`` on a Ray instance of this machine: loopback only, two CPUs, started
by the test as a cluster head (``ray start --head``) and joined with ``--address`` the way a
user joins a cluster. The same seeds give the same records as the local backend; a worker
killed in the middle of its block is replaced and no finished run is lost; ``--resume``
trains only what is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import set_args, tiny_sets
from ray_head import start_head

ray = pytest.importorskip("ray", reason="the Ray backend's tests need the 'ray' extra: pip install 'hlbcli[ray]'")

FAST = tiny_sets("data.synthetic_train=128", "data.synthetic_test=64", "train.epochs=1")
# runs long enough (about a second each on one core) for a test to kill a worker between two
SLOW = tiny_sets("data.synthetic_train=2048", "data.synthetic_test=256", "train.epochs=2")


@pytest.fixture(scope="module")
def head():
    """A Ray head on 127.0.0.1 with 2 CPUs and no GPU: its address."""
    tmp = tempfile.mkdtemp(prefix="hlbray", dir="/tmp")
    # Ray 2.x clusters started with `ray start` want a token from every client: this one's is
    # random and given through the environment to the head and to hlb (never ~/.ray)
    auth = dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = dict(os.environ, HLB_THREADS="1", OMP_NUM_THREADS="1")
    proc, address = start_head(tmp, env)
    try:
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops what it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _records(arm_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(arm_dir.glob("run-*.json"))}


def _same_run(a: dict) -> dict:
    """The parts of a record that must not depend on where it ran (not times, not the host)."""
    keep = ("seed", "arm", "status", "accuracy", "tricks", "config", "precision", "compiled", "deterministic", "git_commit")
    epochs = [{k: v for k, v in e.items() if k != "elapsed" and "time" not in k and "seconds" not in k} for e in a["epochs"]]
    return {**{k: a.get(k) for k in keep}, "epochs": epochs}


def test_same_seeds_same_records_on_both_backends(head, hlb_proc, tmp_path):
    common = ["ablate", "--preset", "smoke", "--disable", "ema", "--runs", "3", "--device", "cpu", *set_args(FAST)]
    env = {"HLB_THREADS": "1", "OMP_NUM_THREADS": "1"}
    loc = hlb_proc(*common, "--out", tmp_path / "local", env=env)
    assert loc.returncode == 0, loc.stderr
    # the driver tracks the runs its tasks stream back (the tensorboard extra, when installed)
    track = ["--track", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    r = hlb_proc(*common, "--backend", "ray", "--address", head, "--block", "2", "--out", tmp_path / "ray", *track, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Ray task(s)" in r.stdout and "3/6 runs" in r.stdout and "ETA" in r.stdout
    for arm in ("baseline", "no-ema") if track else ():
        assert [len(list((tmp_path / "ray" / "tensorboard" / arm / f"seed{i}").glob("events.out.tfevents.*"))) for i in range(3)] == [1, 1, 1]
    for arm in ("baseline", "no-ema"):
        a, b = _records(tmp_path / "local" / "arms" / arm), _records(tmp_path / "ray" / "arms" / arm)
        assert sorted(a) == sorted(b) == [f"run-00{i}-seed{i}.json" for i in range(3)]
        for name in a:
            assert _same_run(a[name]) == _same_run(b[name])
            assert a[name]["status"] == "completed" and len(a[name]["epochs"]) == 1
    s_loc = json.loads((tmp_path / "local" / "summary.json").read_text())
    s_ray = json.loads((tmp_path / "ray" / "summary.json").read_text())
    for x, y in zip(s_loc["arms"], s_ray["arms"]):
        assert (x["name"], x["n"], x["status"]) == (y["name"], y["n"], y["status"])
        assert x["mean_accuracy"] == y["mean_accuracy"] and x["p_paired"] == y["p_paired"]
    table = lambda d: [ln.rsplit("|", 3)[0] for ln in (d / "summary.md").read_text().splitlines()[4:6]]  # noqa: E731
    assert table(tmp_path / "ray") == table(tmp_path / "local")  # all but the time columns
    assert json.loads((tmp_path / "ray" / "arms" / "no-ema" / "summary.json").read_text())["n"] == 3


def test_a_worker_killed_mid_block_is_replaced_and_keeps_its_finished_runs(head, tmp_path):
    out = tmp_path / "D"
    cmd = [sys.executable, "-m", "hlbcli.cli", "ablate", "--preset", "smoke", "--disable", "ema", "--runs", "4",
           "--device", "cpu", *set_args(SLOW), "--backend", "ray", "--address", head, "--block", "4", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = out / "arms" / "baseline"
    first = base / "run-000-seed0.json"
    deadline = time.monotonic() + 240
    while not first.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no run finished in 240 s"
        time.sleep(0.05)
    kept = first.read_bytes()
    pid = int(re.search(r"started on .* pid (\d+)", (base / "train.log").read_text()).group(1))
    os.kill(pid, signal.SIGKILL)  # the worker process, in the middle of seed 1
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    assert first.read_bytes() == kept, "a finished run was trained again"
    log = (base / "train.log").read_text()
    assert re.search(r"seeds 0\.\.3: lost its worker .* seeds 1\.\.3 again \(retry 1 of 3\)", log) or \
        re.search(r"seeds 0\.\.3: lost its worker .* seeds? [23]", log), log
    assert "lost its worker" in text
    s = json.loads((out / "summary.json").read_text())
    assert [a["n"] for a in s["arms"]] == [4, 4] and s["partial"] is False
    assert [r["seed"] for r in s["arms"][0]["runs"]] == [0, 1, 2, 3]


def test_resume_on_ray_trains_only_what_is_missing(head, hlb_proc, tmp_path):
    out = tmp_path / "D"
    args = ["ablate", "--preset", "smoke", "--disable", "ema", "--device", "cpu", *set_args(FAST),
            "--backend", "ray", "--address", head, "--out", out]
    r = hlb_proc(*args, "--runs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    before = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/run-*.json")}
    r = hlb_proc(*args, "--runs", "3", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    after = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/run-*.json")}
    assert {p: after[p] for p in before} == before and len(after) == 6
    assert "2 arms x 3 seeds (seeds 0..2) as 2 Ray task(s)" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert [a["n"] for a in s["arms"]] == [3, 3]
    r = hlb_proc(*args, "--runs", "3", "--resume", "--set", "train.epochs=2")
    assert r.returncode == 2 and "holds an ablation of another plan" in r.stderr


def test_dry_run_lists_the_tasks(cli):
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--runs", "5", "--backend", "ray",
                         "--block", "2", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("baseline\tray task: seeds 0..1, tricks ") and "ema" in lines[0]
    assert lines[2].startswith("baseline\tray task: seed 4,")
    assert lines[3].startswith("-ema\tray task: seeds 0..1") and "ema" not in lines[3].split("tricks")[1]


def test_ctrl_c_cancels_the_tasks_keeps_finished_runs_and_resume_completes(head, hlb_proc, tmp_path):
    out = tmp_path / "D"
    args = ["ablate", "--preset", "smoke", "--disable", "ema", "--runs", "3", "--device", "cpu", *set_args(SLOW),
            "--backend", "ray", "--address", head, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "hlbcli.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("arms/*/run-*.json")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no run finished in 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert re.search(r"interrupted by SIG\w+: \d finished run\(s\) kept in .* --resume", text), text
    s = json.loads((out / "summary.json").read_text())
    assert s["partial"] is True and 1 <= sum(a["n"] for a in s["arms"]) < 6
    kept = {p: p.read_bytes() for p in out.glob("arms/*/run-*.json")
            if json.loads(p.read_text())["status"] == "completed"}
    r = hlb_proc(*args, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(p.read_bytes() == b for p, b in kept.items()), "a finished run was trained again"
    assert [a["n"] for a in json.loads((out / "summary.json").read_text())["arms"]] == [3, 3]


@pytest.mark.parametrize("address,needle", [
    ("127.0.0.1:1", "error: --backend ray: nothing answers at 127.0.0.1:1"),
    ("somewhere", "error: --address somewhere: not HOST:PORT"),
])
def test_a_cluster_that_does_not_answer_is_one_line_before_anything_is_written(cli, tmp_path, address, needle):
    t0 = time.monotonic()
    code, _, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--backend", "ray", "--address", address,
                       "--out", tmp_path / "d")
    assert code == 2 and err.startswith(needle) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d").exists() and time.monotonic() - t0 < 30


def test_a_search_on_ray_asks_and_tells_from_the_driver(head, hlb_proc, tmp_path):
    pytest.importorskip("optuna", reason="hlb search needs the 'search' extra")
    (tmp_path / "space.toml").write_text('[settings]\n"train.lr" = { low = 5.0, high = 20.0 }\n')
    r = hlb_proc("search", "--preset", "smoke", "--space", tmp_path / "space.toml", "--trials", "3", "--seeds", "2",
                 "--workers", "2", "--confirm-top", "0", "--device", "cpu", *set_args(FAST), "--backend", "ray",
                 "--address", head, "--out", tmp_path / "out", env={"HLB_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Ray task(s)" in r.stdout
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [t["state"] for t in s["trials"]] == ["complete"] * 3 and s["trials"][0]["folder"] == "baseline"
    for t in s["trials"][1:]:  # the same seeds as the baseline, trained by the cluster's tasks
        assert sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "out" / "arms" / t["folder"]).glob("run-*.json")) == [0, 1]
