"""The muon trick: orthogonalised updates for the conv filters, SGD for everything else."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_sets
from hlbcli.model import group_convs
from hlbcli.resolve import resolve
from hlbcli.run import fit, plan_run
from hlbcli.session import open_session


def test_orthogonalized_update_has_singular_values_near_one():
    from hlb_plugins.muon import orthogonalize

    torch.manual_seed(0)
    for shape in [(64, 216), (256, 576), (32, 8)]:  # wide, wide, tall (transposed inside)
        # a gradient-like matrix and one with singular values spread over 1.5 decades
        k = min(shape)
        u, _ = torch.linalg.qr(torch.randn(shape[0], k))
        v, _ = torch.linalg.qr(torch.randn(shape[1], k))
        spread = u @ torch.diag(torch.logspace(0, -1.5, k)) @ v.T
        for g, steps, lo in [(torch.randn(shape), 3, 0.6), (spread, 5, 0.6), (spread, 3, 0.15)]:
            s = torch.linalg.svdvals(orthogonalize(g, steps=steps))
            # quintic steps push every singular value into a band around 1, not onto 1 exactly
            assert s.min() > lo and s.max() < 1.25, (shape, steps, s.min().item(), s.max().item())
        before = torch.linalg.svdvals(spread)
        after = torch.linalg.svdvals(orthogonalize(spread, steps=5))
        assert before.max() / before.min() > 25 and after.max() / after.min() < 2


def test_muon_step_matches_its_formula():
    from hlb_plugins.muon import Muon, orthogonalize

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    ref = w.detach().clone()
    opt = Muon([w], lr=0.1, momentum=0.6, nesterov=True, ns_steps=3)
    buf = torch.zeros_like(ref)
    for _ in range(3):
        g = torch.randn_like(ref)
        w.grad = g.clone()
        opt.step()
        buf = 0.6 * buf + g
        u = g + 0.6 * buf
        ref = ref * (math.sqrt(8) / ref.norm())
        ref = ref - 0.1 * orthogonalize(u.reshape(8, -1), 3).view_as(ref)
        assert torch.allclose(w.detach(), ref, atol=1e-5)
    assert w.norm().item() == pytest.approx(math.sqrt(8), rel=0.2)  # renormalised each step, then one update


def _plan(*extra, enable=("muon",), disable=()):
    cfg, tm = resolve("smoke", sets=tiny_sets(*extra), enable=list(enable), disable=list(disable))
    s = open_session(cfg, tm, "cpu")
    return s, plan_run(s, 0)


def test_muon_takes_the_group_filters_and_nothing_else():
    s, plan = _plan()
    assert len(plan.optimizers) == 2
    sgd, muon = plan.optimizers
    filters = {id(c.weight) for c in group_convs(s.model)}
    in_sgd = {id(p) for g in sgd.param_groups for p in g["params"]}
    in_muon = [p for g in muon.param_groups for p in g["params"]]
    assert {id(p) for p in in_muon} == filters and not (filters & in_sgd)
    assert id(s.model.stem.weight) not in in_sgd | filters  # the whitening filters stay frozen
    # bias_lr's two groups survive, minus the filters
    assert [g["name"] for g in sgd.param_groups] == ["batchnorm", "other"]
    assert muon.ns_dtype == torch.float32  # fp32 Newton-Schulz on the CPU


def test_muon_uses_bf16_newton_schulz_on_cuda():
    from hlb_plugins.muon import ns_dtype

    assert ns_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert ns_dtype("auto", torch.device("cpu")) == torch.float32
    assert ns_dtype("fp32", torch.device("cuda")) == torch.float32


def _one_step(enable=(), disable=()):
    cfg, tm = resolve("smoke", sets=tiny_sets("train.epochs=1"), enable=list(enable), disable=list(disable))
    s = open_session(cfg, tm, "cpu")
    plan = plan_run(s, 0)
    step = plan.step_fn(s.model, [])
    x, y = plan.ctx.train_images[:64], s.dataset.train_labels[:64]
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    step(x, y, 0)
    after = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    return before, after


def test_parameters_outside_muon_get_identical_updates():
    """One step from the same weights and batch: with and without muon, every parameter that
    is not a group filter moves exactly the same; the filters move differently."""
    b0, a0 = _one_step()
    b1, a1 = _one_step(enable=["muon"])
    for n in b0:
        assert torch.equal(b0[n], b1[n]), n
        if ".conv" in n:
            assert not torch.allclose(a0[n], a1[n]), n
        else:
            assert torch.equal(a0[n], a1[n]), n


@pytest.mark.parametrize("disable", [[], ["bias_lr"], ["ema"]])
def test_muon_composes_with_bias_lr_and_ema(disable):
    cfg, tm = resolve("smoke", sets=tiny_sets(), enable=["muon"], disable=disable)
    s = open_session(cfg, tm, "cpu")
    res = fit(s, 0)
    assert res.status == "completed" and math.isfinite(res.epochs[-1]["train_loss"])
    assert res.accuracy > 0.1  # above chance on the synthetic set


def test_94_muon_preset_resolves_to_airbench94_muon_numbers():
    from hlbcli.contract import sgd_hparams

    cfg, tm = resolve("94-muon")
    lr, wd = sgd_hparams(cfg.train)
    assert lr == pytest.approx(0.67, rel=1e-4)  # head lr
    assert wd == pytest.approx(2e-6 * 2000, rel=1e-4)
    assert lr * cfg.bias_lr.scaler == pytest.approx(0.053, rel=1e-4)
    assert cfg.muon.lr == 0.24 and cfg.muon.momentum == 0.6 and cfg.train.batch_size == 2000
    assert "ema" not in cfg.tricks and "muon" in cfg.tricks
