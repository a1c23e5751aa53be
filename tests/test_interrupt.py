"""Failing and interrupted runs: a diverged run stops at the epoch boundary and says so, the
batch goes on (or stops with --stop-on-failure); SIGINT/SIGTERM keep the finished records and a
partial summary; records are written atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import set_args, tiny_sets
from hlbcli import record
from test_errors import fake_cifar, install_trick  # noqa: F401 (a fixture)

TINY = set_args(tiny_sets())


def poison_after_first_epoch(monkeypatch) -> None:
    """A test trick that fills the weights with NaN at the end of epoch 1 of seed 0 only, so
    seed 0's loss turns NaN during epoch 2 and seed 1 trains normally (no per-step hook)."""

    def hlb_epoch_end(epoch, metrics, ctx):
        if ctx.seed == 0 and epoch == 0:
            with torch.no_grad():
                for p in ctx.model.parameters():
                    p.fill_(float("nan"))

    install_trick(monkeypatch, "poison", hlb_epoch_end=hlb_epoch_end)


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))]


def test_diverged_run_is_recorded_and_the_batch_goes_on(cli, tmp_path, monkeypatch):
    poison_after_first_epoch(monkeypatch)
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--set", "train.epochs=3", "--enable", "poison",
                         "--runs", "2", "--seed", "0", "--out", tmp_path, "--quiet")
    assert code == 1
    assert "Traceback" not in err
    assert "run 1 (seed 0) diverged" in err and "epoch 2" in err and "the batch goes on" in err
    first, second = _records(tmp_path)
    assert first["status"] == "diverged" and first["accuracy"] is None
    assert "epoch 2" in first["message"] and "nan" in first["message"]
    assert [e["epoch"] for e in first["epochs"]] == [1, 2]  # stopped at the boundary of epoch 2
    assert first["epochs"][1]["train_loss"] is None  # NaN is written as null: valid JSON
    assert second["status"] == "completed" and 0 <= second["accuracy"] <= 1 and len(second["epochs"]) == 3
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n"] == 1 and s["n_started"] == 2 and s["partial"] is False


def test_stop_on_failure_ends_the_batch(cli, tmp_path, monkeypatch):
    poison_after_first_epoch(monkeypatch)
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--enable", "poison", "--runs", "3",
                         "--stop-on-failure", "--out", tmp_path, "--quiet")
    assert code == 1 and "--stop-on-failure" in err
    recs = _records(tmp_path)
    assert [r["status"] for r in recs] == ["diverged"]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n"] == 0 and s["n_started"] == 1 and s["partial"] is True and s["runs_requested"] == 3


def test_huge_lr_diverges_in_epoch_1(cli, tmp_path):
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--set", "train.lr=1e30", "--out", tmp_path, "--quiet")
    assert code == 1
    (rec,) = _records(tmp_path)
    assert rec["status"] == "diverged" and "epoch 1" in rec["message"] and len(rec["epochs"]) == 1


# --- signals ---------------------------------------------------------------------------------


def _hlb_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("hlb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hlbcli.cli"]


@pytest.mark.parametrize("sig, want", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_keeps_finished_runs_and_a_partial_summary(tmp_path, sig, want):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HLB_THREADS="1")
    p = subprocess.Popen(
        [*_hlb_cmd(), "train", "--preset", "smoke", *TINY, "--runs", "500", "--out", out, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 150
        while not list(out.glob("run-*.json")):
            assert p.poll() is None, f"hlb ended early: {p.communicate()}"
            assert time.monotonic() < deadline, "no run record after 150 s"
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == want, err
    assert "Traceback" not in err
    assert f"interrupted by {sig.name}" in err and "--resume" in err
    files = list(out.iterdir())
    assert not [f for f in files if f.name.endswith(".tmp")], files
    parsed = {f.name: json.loads(f.read_text()) for f in files if f.suffix == ".json"}  # every file parses
    s = parsed["summary.json"]
    assert s["partial"] is True and s["n"] >= 1 and s["runs_requested"] == 500
    done = [r for r in s["runs"] if r["status"] == "completed"]
    assert len(done) == s["n"]
    for r in done:
        assert parsed[f"run-{r['seed']:03d}-seed{r['seed']}.json"]["accuracy"] == r["accuracy"]
    assert all(r["status"] in ("completed", "interrupted") for r in s["runs"])


def _mapped(pid: int, lib: str) -> bool:
    try:
        return lib in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """SIGINT while torch imports (its library is mapped, no training yet): one line, exit 130."""
    p = subprocess.Popen([*_hlb_cmd(), "train", "--preset", "smoke", "--set", "train.epochs=1", "--set", "data.synthetic_train=1024",
                          "--set", "data.synthetic_test=256", "--out", tmp_path / "out"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _mapped(p.pid, "libtorch"):
            assert p.poll() is None, f"hlb ended early: {p.communicate()}"
            assert time.monotonic() < deadline, "torch not loading after 60 s"
            time.sleep(0.005)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert err == "error: interrupted during start-up; nothing was trained\n"
    assert not list((tmp_path / "out").glob("run-*.json"))


def test_interrupt_while_loading_data_is_not_a_corrupt_file(cli, tmp_path, fake_cifar, monkeypatch):
    """The signal handler raises wherever the process is: the dataset reader's
    ``except Exception`` must not turn Ctrl-C into "file is corrupt"."""
    import hlbcli.data
    from hlbcli.signals import Interrupted

    def interrupted(*a, **k):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(hlbcli.data._BatchUnpickler, "load", interrupted)
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--set", 'data.dataset="cifar10"', "--data-dir", fake_cifar,
                         "--no-download", "--out", tmp_path / "out", "--quiet")
    assert code == 130, err
    assert "interrupted by SIGINT" in err and "corrupt" not in err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["partial"] is True and s["n"] == 0


# --- atomic writes ---------------------------------------------------------------------------


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    record.write_json(path, {"n": 1, "x": float("nan")})
    assert json.loads(path.read_text()) == {"n": 1, "x": None}

    real_write = record._write_atomic

    def dies_mid_write(p, write):
        def half(f):
            f.write('{"n": 2, "trunc')
            raise KeyboardInterrupt  # killed while writing

        real_write(p, half)

    monkeypatch.setattr(record, "_write_atomic", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        record.write_json(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 1, "x": None}  # the old file, whole
    assert [f.name for f in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


def test_unserialisable_data_never_touches_the_file(tmp_path):
    path = tmp_path / "r.json"
    record.write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        record.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert len(list(tmp_path.iterdir())) == 1


def test_records_get_the_usual_file_mode(tmp_path):
    record.write_json(tmp_path / "a.json", {})
    record.write_text(tmp_path / "b.md", "x")
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("a.json", "b.md"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask
