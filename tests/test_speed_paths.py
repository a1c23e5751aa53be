"""The GPU paths, proved on the CPU: half-precision weights with fp32 batchnorm, the compiled
step against eager, and the step's dispatched operations against a hand-written step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_sets
from hlbcli.model import batchnorms, group_convs
from hlbcli.resolve import resolve
from hlbcli.session import open_session
from hlbcli.run import fit


def _session(*sets: str, **kw):
    cfg, tm = resolve("smoke", sets=tiny_sets(*sets), **kw)
    return open_session(cfg, tm, "cpu")


@pytest.mark.parametrize("precision,dtype", [("bf16-weights", torch.bfloat16), ("fp16-weights", torch.float16)])
def test_half_weights_keep_batchnorm_in_fp32(precision, dtype):
    s = _session(f'train.precision="{precision}"', "train.epochs=1")
    model = s.model
    assert all(c.weight.dtype == dtype for c in group_convs(model)) and model.stem.weight.dtype == dtype
    assert model.head.weight.dtype == dtype
    for bn in batchnorms(model):
        assert bn.bias.dtype == torch.float32 and bn.running_mean.dtype == torch.float32
        assert bn.running_var.dtype == torch.float32
    res = fit(s, 0)
    assert res.status == "completed" and math.isfinite(res.epochs[-1]["train_loss"])
    # still the same dtypes after a run (no casts slipped in), and the momentum is half too
    assert group_convs(model)[0].weight.dtype == dtype
    assert all(bn.running_var.dtype == torch.float32 for bn in batchnorms(model))
    # the batchnorm's output comes back in the weights' dtype, so the next conv takes it as is
    x = torch.randn(2, model.stem.out_channels, 8, 8, dtype=dtype)
    assert model.groups[0].norm1(model.groups[0].conv1(x)).dtype == dtype


@pytest.mark.parametrize("precision,dtype", [("bf16-all", torch.bfloat16), ("fp16-all", torch.float16)])
def test_all_half_puts_batchnorm_in_half_too(precision, dtype):
    """``*-all``: hiverge's path, every module cast, batchnorm's parameters and statistics too
    (the selection's proxy net alike); it trains."""
    s = _session(f'train.precision="{precision}"', "train.epochs=1")
    assert s.precision == precision
    for bn in batchnorms(s.model):
        assert bn.bias.dtype == dtype and bn.running_mean.dtype == dtype and bn.running_var.dtype == dtype
    assert group_convs(s.model)[0].weight.dtype == dtype
    res = fit(s, 0)
    assert res.status == "completed" and math.isfinite(res.epochs[-1]["train_loss"])
    assert all(bn.running_var.dtype == dtype for bn in batchnorms(s.model))


def test_half_weights_train_as_well_as_fp32():
    """The smoke preset (synthetic data, seconds) in fp32 and with bf16 weights."""
    accs = {}
    for precision in ("fp32", "bf16-weights"):
        cfg, tm = resolve("smoke", sets=[f'train.precision="{precision}"'])
        accs[precision] = fit(open_session(cfg, tm, "cpu"), 0).accuracy
    assert accs["fp32"] > 0.7  # chance is 0.1
    assert abs(accs["bf16-weights"] - accs["fp32"]) < 0.05, accs


def test_autocast_precision_keeps_fp32_weights():
    s = _session('train.precision="bf16"', "train.epochs=1")
    assert group_convs(s.model)[0].weight.dtype == torch.float32
    res = fit(s, 0)
    assert res.status == "completed"


def test_compiled_step_matches_eager():
    """The same seed through the compiled model and eagerly: the same losses within fp32
    tolerance, and the compiled run ends on weights close to the eager run's."""
    runs = {}
    for mode in ("off", "on"):
        s = _session(f'train.compile="{mode}"', "train.epochs=1", "data.synthetic_train=128")
        assert s.compiled == (mode == "on")
        res = fit(s, 0)
        runs[mode] = (res, [p.detach().clone() for p in s.model.parameters()])
    (eager, w_e), (comp, w_c) = runs["off"], runs["on"]
    assert comp.epochs[-1]["train_loss"] == pytest.approx(eager.epochs[-1]["train_loss"], rel=1e-3)
    for a, b in zip(w_e, w_c):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "fp16-weights"])
def test_step_dispatches_no_more_ops_than_a_hand_written_step(precision):
    """Counted, not timed: preset 94's assembled step against airbench94's step by hand."""
    from hlbcli.bench import ops_per_step

    rep = ops_per_step("94", precision, steps=10, batch_size=16, widths=(8, 16, 16))
    assert rep["hand"] > 50  # the counter sees the forward, the backward and the optimizer
    assert rep["ratio"] <= 1.0, rep


def test_eval_batch_size_auto_resolves_per_device_and_allocator():
    from hlbcli.config import EVAL_BATCH, EVAL_BATCH_CPU_SYSTEM, eval_batch_size

    assert (EVAL_BATCH_CPU_SYSTEM, EVAL_BATCH) == (128, 2000)
    assert eval_batch_size("auto", "cpu", kept=False) == EVAL_BATCH_CPU_SYSTEM
    assert eval_batch_size("auto", "cpu", kept=True) == EVAL_BATCH
    assert eval_batch_size("auto", torch.device("cuda", 0), kept=False) == EVAL_BATCH
    assert eval_batch_size(300, "cpu", kept=False) == eval_batch_size(300, "cuda", kept=True) == 300


def test_evaluation_batch_size_changes_the_batches_not_the_result():
    """The final evaluation (TTA's six views) runs at the resolved batch size and gives the
    same accuracy and loss at any size: batchnorm is in eval mode, so batches are independent."""
    from hlbcli.contract import RunContext

    results, sizes, resolved = {}, {}, None
    for bs in ("auto", 128, 1000, 50):
        s = _session("data.synthetic_test=300", f"train.eval_batch_size={json.dumps(bs)}")
        seen: list[int] = []
        res = fit(s, 0)
        handle = s.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
        ctx = RunContext(s.cfg, s.device, s.dtype, s.dataset, 0, 64, 4, 8, 2.0, 2, eval_batch_size=s.eval_batch_size)
        fwd = s.tm.hook.hlb_eval_forward(model=s.model, cfg=s.cfg, ctx=ctx, final=True)
        again = s.tm.hook.hlb_evaluate(model=s.model, images=s.dataset.test_images, labels=s.dataset.test_labels,
                                       forward=fwd, ctx=ctx, final=True)
        handle.remove()
        assert again["accuracy"] == res.accuracy
        results[bs], sizes[bs] = again, seen
        resolved = resolved or s.eval_batch_size
    assert sizes[128] == [128] * 12 + [44] * 6  # six TTA views per batch
    assert sizes[1000] == [300] * 6 and sizes[50] == [50] * 36
    assert sizes["auto"] == sizes[min(resolved, 1000)]  # 2000 (one batch of 300) or 128 on the CPU
    for bs in (128, 1000, 50):
        assert results[bs]["accuracy"] == results["auto"]["accuracy"]
        assert results[bs]["loss"] == pytest.approx(results["auto"]["loss"], rel=1e-5)


# a probe run in its own process (the setting holds for a whole process): free a 96 MB block,
# then allocate and write one of 64 MB, counting the page faults the second one costs
FAULT_PROBE = r"""
import json, resource, sys, torch
from hlbcli.hostmem import apply_host_memory
mode = apply_host_memory(sys.argv[1], "cpu")
n = 64 * 2**20 // 4  # 64 MB: over glibc's largest mmap threshold (32 MB)
x = torch.empty(n + n // 2); x.fill_(1.0); del x  # a larger block freed (an aligned block needs slack)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.empty(n); y.fill_(2.0)
print(json.dumps({"mode": mode, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _fault_probe(setting: str) -> dict:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FAULT_PROBE, setting], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_host_memory_keep_reuses_freed_blocks_without_page_faults():
    """keep: the next large block is the one just freed, its pages already mapped; system
    (glibc's default): a fresh mmap, each page faulted in and zeroed again."""
    from hlbcli.hostmem import glibc

    if glibc() is None:
        pytest.skip("train.host_memory=keep needs glibc")
    keep, system = _fault_probe("keep"), _fault_probe("system")
    assert keep["mode"] == "keep" and system["mode"] == "system"
    assert keep["faults"] < 16, keep
    assert system["faults"] > keep["faults"] + 16, system  # 16384 pages of 4 KB (32 with 2 MB pages)


def test_host_memory_resolves_per_device(monkeypatch):
    from hlbcli import hostmem
    from hlbcli.errors import UsageError

    monkeypatch.setattr(hostmem, "glibc", lambda: object())
    assert hostmem.resolve_host_memory("auto", "cpu") == "keep"
    assert hostmem.resolve_host_memory("auto", "cuda") == "system"
    assert hostmem.resolve_host_memory("system", "cpu") == "system"
    monkeypatch.setattr(hostmem, "glibc", lambda: None)  # macOS, musl
    assert hostmem.resolve_host_memory("auto", "cpu") == "system"
    with pytest.raises(UsageError, match="needs glibc"):
        hostmem.resolve_host_memory("keep", "cpu")
