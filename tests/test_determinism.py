"""On the CPU the same preset and seed give the same record: in another process, in this one,
and as the second seed of a batch (the model is reused across seeds: nothing may leak)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import set_args, tiny_sets

TINY = set_args(tiny_sets("train.epochs=3"))


def _numbers(rec: dict) -> dict:
    """Everything a rerun must reproduce exactly (not the timings)."""
    return {
        "seed": rec["seed"],
        "accuracy": rec["accuracy"],
        "final": rec["final"],
        "epochs": [(e["epoch"], e["steps"], e["train_loss"], e["train_acc"], e["val_acc"]) for e in rec["epochs"]],
    }


@pytest.fixture
def restore_torch_determinism(monkeypatch):
    """--deterministic changes process-wide torch state: put it back for the other tests."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_same_seed_same_record(cli, hlb_proc, tmp_path, restore_torch_determinism):
    # 1. a process of its own, one thread like this test process (conftest sets one)
    p = hlb_proc("train", "--preset", "smoke", *TINY, "--seed", "1", "--out", tmp_path / "a", "--quiet",
                 env={"HLB_THREADS": "1", "OMP_NUM_THREADS": "1"}, timeout=240)
    assert p.returncode == 0, p.stderr
    a = json.loads((tmp_path / "a" / "run-000-seed1.json").read_text())
    # 2. in this process
    code, _, err = cli("train", "--preset", "smoke", *TINY, "--seed", "1", "--out", tmp_path / "b", "--quiet")
    assert code == 0, err
    b = json.loads((tmp_path / "b" / "run-000-seed1.json").read_text())
    # 3. seed 1 as the second run of a batch, with --deterministic
    code, _, err = cli("train", "--preset", "smoke", *TINY, "--seed", "0", "--runs", "2", "--deterministic",
                       "--out", tmp_path / "c", "--quiet")
    assert code == 0, err
    c0 = json.loads((tmp_path / "c" / "run-000-seed0.json").read_text())
    c1 = json.loads((tmp_path / "c" / "run-001-seed1.json").read_text())

    assert a["status"] == b["status"] == c1["status"] == "completed"
    assert _numbers(a) == _numbers(b)
    sa, sb = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("a", "b"))
    assert sa["mean_accuracy"] == sb["mean_accuracy"] == a["accuracy"]
    assert _numbers(a) == _numbers(c1)
    assert _numbers(c0)["epochs"] != _numbers(c1)["epochs"]  # another seed, other numbers
    # the CPU is deterministic with or without the flag, and the record says so
    assert a["deterministic"] is True and b["deterministic"] is True and c1["deterministic"] is True


def test_deterministic_flag_asks_torch_for_deterministic_kernels(restore_torch_determinism):
    from hlbcli.session import set_deterministic

    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
