"""The switches of hiverge's record recipe that live in the core and the whitening trick, each
proved on the CPU: a group's own lr schedule (the contract), the whitening bias's fractional
training and linear decay, the SVD solver, the conv groups' activation, and the forward and
loss compiled as one graph."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_sets
from hlbcli.resolve import resolve
from hlbcli.run import fit, plan_run
from hlbcli.session import open_session


def _session(*sets: str, preset: str = "smoke", disable: tuple[str, ...] = ()):
    cfg, tm = resolve(preset, sets=tiny_sets(*sets), disable=list(disable))
    return open_session(cfg, tm, "cpu")


# --- the contract: a group's own lr schedule ---------------------------------------------------


def test_a_group_with_its_own_lr_schedule_follows_it_and_the_rest_follow_the_run():
    from hlbcli.step import group_schedules
    from hlbcli.errors import TrickError

    run = [1.0, 0.5, 0.25, 0.0]
    groups = [dict(params=[], lr=1.0), dict(params=[], lr=2.0, lr_schedule=torch.tensor([0.0, 1.0, 2.0, 3.0]))]
    tables = group_schedules(groups, run, total_steps=3)
    assert tables[0] is run and tables[1] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(TrickError, match="lr_schedule of 2 values for 3 steps"):
        group_schedules([dict(params=[], lr=1.0, lr_schedule=[1.0, 0.5], name="g")], run, total_steps=3)


def test_the_step_writes_each_groups_lr_from_its_own_table():
    """Seen from inside the optimizer: the lr each group has when ``step()`` runs."""
    s = _session('whitening.bias_schedule="linear"', "whitening.bias_epochs=1.5", "bias_lr.stem_bias=true",
                 "train.epochs=2")
    plan = plan_run(s, 0)
    names = [g.get("name") for opt in plan.optimizers for g in opt.param_groups]
    assert "whitening_bias" in names
    seen: list[dict] = []
    opt = plan.optimizers[0]
    orig = opt.step
    opt.step = lambda *a, **k: (seen.append({g.get("name"): g["lr"] for g in opt.param_groups}), orig(*a, **k))[1]
    step = plan.step_fn(s.forward_model, [])
    ds = s.dataset
    n = plan.ctx.total_steps
    for i in range(n):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(ds.train_labels)
        step(plan.ctx.train_images[idx], ds.train_labels[idx], i)
    base = {g.get("name"): b for g, b in zip([g for o in plan.optimizers for g in o.param_groups], plan.base_lrs)}
    bias_steps = math.ceil(1.5 * plan.ctx.steps_per_epoch)
    for i, lrs in enumerate(seen):
        assert lrs["whitening_bias"] == pytest.approx(base["whitening_bias"] * max(0.0, 1 - i / bias_steps))
        assert lrs["batchnorm"] == pytest.approx(base["batchnorm"] * plan.lr_table[i])


# --- whitening: fractional bias epochs, its own decay, the SVD solver ------------------------


@pytest.mark.parametrize("bias_init", ["zero", "default"])
def test_whitening_bias_starts_at_zero_or_as_the_conv_was_built(bias_init):
    """zero (airbench94) or PyTorch's Conv2d default, uniform in +-1/sqrt(fan in), drawn from
    the seed (airbench94_muon and hiverge keep it): the same seed gives the same bias, another
    seed another one; the filters are the whitening's either way."""
    s = _session(f'whitening.bias_init="{bias_init}"')
    stem = s.model.stem
    fan_in = stem.in_channels * stem.kernel_size[0] * stem.kernel_size[1]
    plan_run(s, 0)
    first, filters = stem.bias.detach().clone(), stem.weight.detach().clone()
    plan_run(s, 0)
    assert torch.equal(stem.bias, first) and torch.equal(stem.weight, filters)
    if bias_init == "zero":
        assert torch.count_nonzero(first) == 0
        return
    assert first.abs().max() <= 1 / math.sqrt(fan_in) and first.std() > 0.3 / math.sqrt(fan_in)
    plan_run(s, 1)
    assert not torch.equal(stem.bias, first) and torch.allclose(stem.weight, filters)
    assert stem.bias.requires_grad and not stem.weight.requires_grad


def test_whitening_bias_trains_exactly_its_fraction_of_steps():
    """bias_epochs=1.5 of 4 steps per epoch: the bias moves in steps 0..5 and never after
    (without the lookahead EMA, which moves every weight it averages)."""
    s = _session("whitening.bias_epochs=1.5", "train.epochs=3", "data.synthetic_train=256", disable=("ema",))
    plan = plan_run(s, 0)
    assert plan.ctx.steps_per_epoch == 4
    bias = s.model.stem.bias
    step_fn = None
    values = [bias.detach().clone()]
    ds = s.dataset
    step = 0
    for epoch in range(3):
        plan.ctx.rebuild_step = False
        s.tm.hook.hlb_epoch_start(epoch=epoch, ctx=plan.ctx)
        step_fn = plan.step_fn(s.forward_model, [])
        for _ in range(4):
            idx = torch.arange(step * 64, (step + 1) * 64) % len(ds.train_labels)
            step_fn(plan.ctx.train_images[idx], ds.train_labels[idx], step)
            values.append(bias.detach().clone())
            step += 1
    moved = [not torch.equal(a, b) for a, b in zip(values, values[1:])]
    assert moved == [True] * 6 + [False] * 6
    assert not bias.requires_grad  # frozen from the next epoch's start


def test_linear_decay_and_bias_steps():
    from hlb_plugins.whitening import bias_steps, linear_decay

    assert bias_steps(0.19, 32) == 7 and bias_steps(3, 97) == 291 and bias_steps(0, 32) == 0
    assert linear_decay(4, 6) == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]


def test_integer_bias_epochs_train_as_before():
    """No action is added where the bias stops at an epoch boundary: the default runs as it did."""
    s = _session("whitening.bias_epochs=1")
    plan = plan_run(s, 0)
    assert not [a for a in plan.actions if a.name == "whitening_bias_stop"]
    assert all(g.get("name") != "whitening_bias" for o in plan.optimizers for g in o.param_groups)


def test_svd_solver_gives_the_eigh_filters_up_to_sign():
    from hlb_plugins.whitening import whitening_filters

    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    a = whitening_filters(x, 2, 5e-4, "eigh").flatten(1)
    b = whitening_filters(x, 2, 5e-4, "svd").flatten(1)
    half = len(a) // 2
    for i in range(half):  # each filter equals its counterpart or its negation (the pair holds both)
        assert torch.allclose(a[i], b[i], atol=1e-4) or torch.allclose(a[i], -b[i], atol=1e-4)
    assert torch.allclose(a[:half].abs(), b[:half].abs(), atol=1e-4)


# --- the conv groups' activation ---------------------------------------------------------------


def test_activation_setting_puts_silu_in_the_groups_and_keeps_gelu_at_the_stem():
    s = _session('model.activation="silu"')
    assert isinstance(s.model.stem_act, torch.nn.GELU)
    assert all(isinstance(g.act, torch.nn.SiLU) for g in s.model.groups)
    assert fit(s, 0).status == "completed"
    assert all(isinstance(g.act, torch.nn.GELU) for g in _session().model.groups)


# --- the forward and the loss compiled as one graph -------------------------------------------


def test_compile_loss_is_off_without_compiling_and_fuses_when_compiled():
    s = _session("train.compile_loss=true")
    assert not s.compiled and s.forward_loss(lambda a, b: a, False, None) is None


def test_compiled_forward_and_loss_give_the_eager_losses():
    """One epoch of the smoke recipe (label smoothing folded into the loss) with the forward and
    the loss compiled as one graph, against eager: the same losses within fp32 tolerance; the
    graph is built once and reused by the next seed."""
    runs = {}
    for sets in (('train.compile="off"',), ('train.compile="on"', "train.compile_loss=true")):
        s = _session(*sets, "train.epochs=1", "data.synthetic_train=128")
        res = fit(s, 0)
        runs[sets[-1]] = (s, res)
    (eager_s, eager), (comp_s, comp) = runs['train.compile="off"'], runs["train.compile_loss=true"]
    assert comp_s.compiled and len(comp_s.fused) == 1
    assert comp.epochs[-1]["train_loss"] == pytest.approx(eager.epochs[-1]["train_loss"], rel=1e-3)
    fit(comp_s, 1)
    assert len(comp_s.fused) == 1  # the next seed's equal loss reuses the graph


# --- the preset: hiverge's numbers, and every switch in one run ---------------------------------


def test_94_record_holds_hiverges_numbers_in_pytorch_units():
    from hlbcli.contract import sgd_hparams

    cfg, _ = resolve("94-record")
    lr, wd = sgd_hparams(cfg.train)
    assert lr == pytest.approx(0.5415, rel=1e-6)  # head lr
    assert lr * cfg.bias_lr.scaler == pytest.approx(0.0573, rel=1e-5)  # whitening and batchnorm biases
    assert wd == pytest.approx(1.0418e-6 * 1536, rel=1e-5)  # absolute decay per step
    assert cfg.muon.weight_decay == pytest.approx(1.0418e-6 * 1536)
    assert math.ceil(cfg.train.epochs * (50000 // cfg.train.batch_size)) == 245  # hiverge 06c6072: total_train_steps = ceil(7.65 * 32)
    assert math.ceil(cfg.whitening.bias_epochs * (50000 // cfg.train.batch_size)) == 7  # its whiten_bias_train_steps
    assert cfg.noisy_bn.momentum == pytest.approx(1 - 0.5566)
    assert (cfg.model.activation, cfg.tta.fraction, cfg.tta.weighting) == ("silu", 0.25, "uniform")
    assert cfg.muon.batched and cfg.muon.anneal_target and cfg.muon.renorm_schedule == "progressive"
    assert "color_jitter" in cfg.tricks and "ema" not in cfg.tricks


def test_94_record_trains_with_every_switch_on():
    s = _session('train.compile="off"', preset="94-record")
    plan = plan_run(s, 0)
    names = [g.get("name") for o in plan.optimizers for g in o.param_groups]
    assert "whitening_bias" in names and "muon" in names
    assert fit(s, 0).status == "completed"
