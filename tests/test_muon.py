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


# --- hiverge's options (cifar10-speedrun): each off by default ------------------------------


def _reference_orthogonalize(g, steps=3, dtype=torch.float32, eps=1e-7):
    """airbench94_muon's Newton-Schulz as the trick had it before hiverge's options."""
    x = g.to(dtype)
    x = x / (x.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    a, b, c = (3.4445, -4.7750, 2.0315)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def _reference_step(params, bufs, lr, m=0.6, steps=3, dtype=torch.float32):
    """The trick's Muon step before hiverge's options (Nesterov, renormalise every step)."""
    grads = [p.grad for p in params]
    torch._foreach_mul_(bufs, m)
    torch._foreach_add_(bufs, grads)
    updates = torch._foreach_add(grads, bufs, alpha=m)
    for p, n in zip(params, torch._foreach_norm(params)):
        p.mul_(math.sqrt(p.shape[0]) / n)
    for p, u in zip(params, updates):
        p.add_(_reference_orthogonalize(u.reshape(len(u), -1), steps, dtype).view(p.shape).to(p.dtype), alpha=-lr)


#: filter shapes as in the net's conv groups (small widths), one group with a tall matrix
SHAPES = [(8, 4, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3), (40, 2, 2, 2)]


def _filters(seed=0, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def _train(opt_kwargs, steps=4, seed=0, dtype=torch.float32, lrs=None, **kw):
    """``steps`` Muon steps on fresh filters with fixed random gradients: the filters after."""
    from hlb_plugins.muon import Muon

    params = _filters(seed, dtype=dtype)
    opt = Muon([dict(params=params, name="muon")], **opt_kwargs, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        opt.step()
    return [p.detach().clone() for p in params], opt


def test_default_muon_is_bit_identical_to_the_code_before_hiverges_options():
    from hlb_plugins.muon import MuonSettings, orthogonalize

    s = MuonSettings()
    assert (s.batched, s.anneal_target, s.renorm_schedule, s.momentum_dtype, s.weight_decay) == (False, False, "every_step", "auto", 0.0)
    torch.manual_seed(0)
    for shape in [(64, 216), (32, 8)]:
        g = torch.randn(shape)
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(orthogonalize(g, 3, dtype), _reference_orthogonalize(g, 3, dtype))
    for dtype in (torch.float32, torch.bfloat16):
        ref = _filters()
        bufs = [torch.zeros_like(p) for p in ref]
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in ref:
                p.grad = torch.randn(p.shape, generator=gen)
            with torch.no_grad():
                _reference_step(ref, bufs, 0.24, dtype=dtype)
        # the settings' defaults, as hlb_optimizer_build passes them (total_steps from the run)
        got, _ = _train(dict(lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, ns_steps=s.ns_steps, ns_dtype=dtype,
                             weight_decay=s.weight_decay, batched=s.batched, ns_coefficients=s.ns_coefficients,
                             anneal_target=s.anneal_target, renorm_schedule=s.renorm_schedule, total_steps=4))
        for a, b in zip(got, ref):
            assert torch.equal(a, b.detach())


@pytest.mark.parametrize("coeffs", [(3.4445, -4.7750, 2.0315), (3.4576, -4.7391, 2.0843)])
def test_batched_newton_schulz_equals_the_per_filter_loop(coeffs):
    from hlb_plugins.muon import orthogonalize, orthogonalize_batched, padded_shape

    torch.manual_seed(0)
    batches = [
        [(64, 216), (64, 576), (256, 576), (256, 2304)],  # the 94 net's matrices, all wide
        [(32, 8), (16, 72)],  # a tall one (D > K) in a batch that is not transposed
        [(64, 18), (48, 36), (20, 40)],  # maxD 64 > maxK 48: the batch is transposed, one wide in it
    ]
    for shapes in batches:
        mats = [torch.randn(s) for s in shapes]
        d, k = padded_shape(shapes)
        assert d == max(s[0] for s in shapes) and k % 16 == 0 and k - 16 < max(s[1] for s in shapes) <= k
        outs = orthogonalize_batched(mats, d, k, 3, coeffs=coeffs)
        for m, o in zip(mats, outs):
            assert o.shape == m.shape
            assert torch.allclose(o, orthogonalize(m, 3, coeffs=coeffs), atol=1e-5), (m.shape, coeffs)
    g = torch.randn(64, 216)
    assert not torch.allclose(orthogonalize(g, coeffs=coeffs), orthogonalize(g, coeffs=(3.0, -3.2, 1.2)))


def test_batched_muon_matches_the_per_filter_muon():
    loop, _ = _train(dict(lr=0.1, ns_coefficients=(3.4576, -4.7391, 2.0843)), steps=5)
    batched, opt = _train(dict(lr=0.1, ns_coefficients=(3.4576, -4.7391, 2.0843), batched=True), steps=5)
    assert opt.pad_plan == [(40, 144)]  # computed once, at construction: 16*9 is a multiple of 16 already
    for a, b in zip(loop, batched):
        assert torch.allclose(a, b, atol=1e-5)


def test_progressive_renorm_schedule_by_hand():
    from hlb_plugins.muon import renorm_steps

    # total 40: the period at step s is 2 + int(15 * s / 40) = 2 + int(0.375 s)
    # s=2: period 2, 2 - 0 >= 2; s=5: period 3, 5 - 2 >= 3; s=10: period 5 (3.75), 10 - 5 >= 5;
    # s=18: period 8 (6.75), 18 - 10 >= 8; s=31: period 13 (11.625), 31 - 18 >= 13; then
    # s=40: period 17, 40 - 31 = 9: none
    assert renorm_steps(40) == [2, 5, 10, 18, 31]
    # total 20: period 2 + int(0.75 s) outgrows s - 0 until s=5 (period 5); after it the
    # period (>= 6) stays above s - 5 up to s=20 (period 17, 15 steps)
    assert renorm_steps(20) == [5]
    assert renorm_steps(10, start=1, growth=0.0) == list(range(1, 11))
    assert renorm_steps(6, start=3, growth=0.0) == [3, 6]


@pytest.mark.parametrize("schedule", ["every_step", "progressive"])
def test_muon_rescales_the_filters_exactly_on_the_schedules_steps(schedule):
    """With lr 0 an update does not move the filters; each is doubled before every step, so it
    is back at norm sqrt(out) after a step that rescales, twice the last norm after one that does not."""
    from hlb_plugins.muon import Muon, renorm_steps

    total = 40
    params = _filters()
    opt = Muon(params, lr=0.0, renorm_schedule=schedule, total_steps=total)
    rescaled = []
    for s in range(1, total + 1):
        with torch.no_grad():
            for p in params:
                p.grad = torch.randn_like(p)
                p.mul_(2.0)
        opt.step()
        at = [math.isclose(p.norm().item(), math.sqrt(p.shape[0]), rel_tol=1e-5) for p in params]
        assert all(at) or not any(at)
        if all(at):
            rescaled.append(s)
    assert rescaled == (renorm_steps(total) if schedule == "progressive" else list(range(1, total + 1)))
    assert opt.step_count == total and opt.last_renorm_step == (31 if schedule == "progressive" else 0)


def test_target_is_annealed_linearly():
    from hlb_plugins.muon import target_norm

    assert target_norm(0.0, 0.5012, 0.0786) == pytest.approx(0.5012)
    assert target_norm(0.5, 0.5012, 0.0786) == pytest.approx((0.5012 + 0.0786) / 2)
    assert target_norm(1.0, 0.5012, 0.0786) == pytest.approx(0.0786)


def test_anneal_target_is_cancelled_by_the_normalisation_up_to_rounding():
    """hiverge scales each update to the annealed target norm, then Newton-Schulz divides it by
    its own norm: the update reaches the iteration at the target norm, and what comes out is
    the same as without the scaling, up to the eps terms (rounding)."""
    from hlb_plugins.muon import orthogonalize, target_norm

    seen = []

    def spy(g, *a, **k):
        seen.append(g.norm().item())
        return orthogonalize(g, *a, **k)

    total = 4
    plain, _ = _train(dict(lr=0.1), steps=total)
    annealed, _ = _train(dict(lr=0.1, anneal_target=True, total_steps=total, orthogonalize_fn=spy), steps=total)
    n = len(SHAPES)
    for s in range(1, total + 1):  # progress = step (from 1) / total_steps, as hiverge
        for norm in seen[(s - 1) * n : s * n]:
            assert norm == pytest.approx(target_norm(s / total, 0.5012, 0.0786), rel=1e-4)
    for a, b in zip(plain, annealed):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    batched, _ = _train(dict(lr=0.1, anneal_target=True, total_steps=total, batched=True), steps=total)
    for a, b in zip(plain, batched):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fp16_momentum_buffers_stay_fp16_and_close_to_fp32():
    fp32, _ = _train(dict(lr=0.1), steps=5)
    fp16, opt = _train(dict(lr=0.1, momentum_dtype=torch.float16), steps=5)
    assert all(opt.state[p]["momentum_buffer"].dtype == torch.float16 for p in opt.param_groups[0]["params"])
    for a, b in zip(fp32, fp16):
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, atol=2e-3)
    # bf16 filters with fp32 momentum: the update is cast back to the filters' dtype
    bf16, opt = _train(dict(lr=0.1, momentum_dtype=torch.float32), steps=5, dtype=torch.bfloat16)
    assert all(opt.state[p]["momentum_buffer"].dtype == torch.float32 for p in opt.param_groups[0]["params"])
    for a, b in zip(fp32, bf16):
        assert b.dtype == torch.bfloat16 and torch.allclose(a, b.float(), atol=0.05)


def test_weight_decay_is_decoupled_after_the_update_with_the_scheduled_lr():
    from hlb_plugins.muon import Muon, orthogonalize

    wd, lrs = 0.5, [0.2, 0.1, 0.05]  # the trainer rewrites group["lr"] each step
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    ref, buf = w.detach().clone(), torch.zeros(8, 4, 3, 3)
    opt = Muon([w], lr=0.2, weight_decay=wd)
    for lr in lrs:
        g = torch.randn_like(ref)
        w.grad = g.clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
        buf = 0.6 * buf + g
        u = orthogonalize((g + 0.6 * buf).reshape(8, -1)).view_as(ref)
        ref = (ref * (math.sqrt(8) / ref.norm()) - lr * u) * (1 - lr * wd)
        assert torch.allclose(w.detach(), ref, atol=1e-6)
    without, _ = _train(dict(lr=0.1), steps=3)
    decayed, _ = _train(dict(lr=0.1, weight_decay=wd), steps=3)
    assert not torch.allclose(without[0], decayed[0])


def test_hiverges_options_reach_the_run_and_train():
    sets = ["muon.batched=true", "muon.ns_coefficients=[3.4576, -4.7391, 2.0843]", "muon.anneal_target=true",
            'muon.renorm_schedule="progressive"', 'muon.momentum_dtype="fp16"', "muon.weight_decay=0.0016"]
    s, plan = _plan(*sets)
    muon = plan.optimizers[1]
    assert muon.total_steps == plan.ctx.total_steps and muon.batched and muon.anneal_target
    assert muon.coeffs == (3.4576, -4.7391, 2.0843) and muon.renorm_schedule == "progressive"
    assert muon.momentum_dtype == torch.float16 and muon.param_groups[0]["weight_decay"] == 0.0016
    cfg, tm = resolve("smoke", sets=tiny_sets(*sets), enable=["muon"])
    res = fit(open_session(cfg, tm, "cpu"), 0)
    assert res.status == "completed" and math.isfinite(res.epochs[-1]["train_loss"])
