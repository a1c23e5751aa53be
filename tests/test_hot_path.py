"""The fused step: zero pluggy calls and no host sync inside a step."""

from __future__ import annotations

import pytest
import torch

import hlbcli.run as run_mod
from conftest import tiny_sets
from hlbcli.resolve import resolve
from hlbcli.session import open_session
from hlbcli.run import fit


def guarded_build_step(state: dict):
    """A build_step that marks, in ``state["on"]``, when a step is running, and counts steps."""
    orig_build = run_mod.build_step

    def build_step(*a, **k):
        step = orig_build(*a, **k)

        def guarded(x, y, i):
            state["on"] = True
            state["steps"] += 1
            try:
                step(x, y, i)
            finally:
                state["on"] = False

        return guarded

    return build_step


#: the tricks each hot-path test turns on: with the core's update, and with one a trick owns (sam)
ENABLED = [["cutmix", "weight_norm", "select"], ["cutmix", "weight_norm", "select", "sam"]]


def _count_hook_calls(batch_size: int, enable: list[str], extra=()):
    cfg, tm = resolve("smoke", sets=tiny_sets(f"train.batch_size={batch_size}", "select.keep=8", *extra), enable=enable)
    s = open_session(cfg, tm, "cpu")
    calls: list[str] = []
    in_step = {"on": False, "steps": 0}

    def before(hook_name, hook_impls, kwargs):
        assert not in_step["on"], f"pluggy hook {hook_name} called inside a training step"
        calls.append(hook_name)

    def after(outcome, hook_name, hook_impls, kwargs):
        pass

    orig_build = run_mod.build_step
    undo = tm.pm.add_hookcall_monitoring(before, after)
    run_mod.build_step = guarded_build_step(in_step)
    try:
        fit(s, 0)
    finally:
        run_mod.build_step = orig_build
        undo()
    return calls, in_step["steps"]


@pytest.mark.parametrize("enable", ENABLED, ids=["core-update", "sam"])
def test_no_hook_call_inside_a_step_and_calls_do_not_grow_with_steps(enable):
    few, n_few = _count_hook_calls(64, enable)  # 4 steps per epoch
    many, n_many = _count_hook_calls(16, enable)  # 16 steps per epoch
    assert n_many == 4 * n_few
    assert sorted(few) == sorted(many)  # hook calls depend on epochs, not steps


@pytest.mark.parametrize("enable", ENABLED, ids=["core-update", "sam"])
def test_no_host_sync_inside_a_step(monkeypatch, enable):
    """Reading a tensor on the host inside a step raises: item(), tolist(), bool(), float()."""
    cfg, tm = resolve("smoke", sets=tiny_sets("select.keep=8"), enable=enable)
    s = open_session(cfg, tm, "cpu")
    state = {"on": False, "steps": 0}

    def forbid(name):
        orig = getattr(torch.Tensor, name)

        def guard(self, *a, **k):
            if state["on"]:
                raise AssertionError(f"host sync via Tensor.{name} inside a training step")
            return orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, guard)

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        forbid(name)

    monkeypatch.setattr(run_mod, "build_step", guarded_build_step(state))
    res = fit(s, 0)
    assert res.status == "completed" and state["steps"] > 0
