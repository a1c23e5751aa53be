"""The selection stage (``hlb_select``) and the ``select`` trick (airbench96_faster's proxy):
the stream replays the run's batches, the step trains on the kept examples with the loss their
weighted sum, and ``select`` keeps exactly the examples its proxy scored highest."""

from __future__ import annotations

import copy

import pytest
import torch

import hlbcli.run as run_mod
from hlbcli import hookimpl
from hlbcli.contract import Selection
from hlbcli.errors import TrickError
from hlbcli.run import fit, new_context, plan_run
from hlbcli.session import open_session
from hlbcli.stream import BatchStream, epoch_set
from hlbcli.testing import HookRecorder, resolve_config


def _session(*sets: str, enable=("select",), plugin=None, disable=()):
    plugins, names = ((plugin,), ["keeper"]) if plugin is not None else ((), None)
    keep = ["select.keep=24"] if "select" in enable else []
    cfg, tm = resolve_config(*plugins, names=names, sets=[*keep, *sets], enable=list(enable),
                             disable=list(disable))
    return open_session(cfg, tm, "cpu")


def _capture_steps(monkeypatch) -> list:
    """Every step's (images, labels) as the loop hands them to the step function."""
    seen: list = []
    orig = run_mod.build_step

    def build_step(*a, **k):
        step = orig(*a, **k)

        def recording(x, y, i):
            seen.append((i, x.clone(), y.clone()))
            step(x, y, i)

        return recording

    monkeypatch.setattr(run_mod, "build_step", build_step)
    return seen


class KeepFirstAndRecord:
    """A selection trick for the tests: records the stream it is shown, keeps positions
    ``2j + 1`` of every batch (k = 8) with weights 1, 2, ... 8."""

    def __init__(self):
        self.batches: list = []

    @hookimpl
    def hlb_select(self, stream, ctx):
        self.batches = [(i, x.clone(), y.clone()) for i, x, y in stream]
        keep = (torch.arange(8) * 2 + 1).repeat(stream.total_steps, 1)
        weights = torch.arange(1, 9, dtype=torch.float32).repeat(stream.total_steps, 1)
        return Selection(keep=keep, weights=weights)


def test_the_stream_is_the_run_and_the_step_trains_on_the_kept_examples(monkeypatch):
    rec = KeepFirstAndRecord()
    s = _session(enable=(), plugin=rec)
    seen = _capture_steps(monkeypatch)
    res = fit(s, 0)
    assert res.status == "completed"
    assert len(rec.batches) == len(seen) == res.epochs[-1]["steps"] > 4
    for (i, x, y), (j, sx, sy) in zip(rec.batches, seen):
        assert i == j
        assert torch.equal(sx, x[1::2][:8]) and torch.equal(sy, y[1::2][:8])  # same batch, same augmentations, kept rows


def test_the_loss_is_the_weighted_sum_over_the_kept_examples():
    rec = KeepFirstAndRecord()
    s = _session(enable=(), plugin=rec)
    plan = plan_run(s, 0)
    images, perm = epoch_set(plan.ctx, plan.transforms, 0, plan.ctx.generator, s.cfg.train.channels_last)
    idx = perm[: plan.ctx.batch_size][plan.keep[0]]
    x, y = images[idx], s.dataset.train_labels[idx]
    ref = copy.deepcopy(s.model)
    with torch.no_grad():
        expected = (plan.loss_fn(ref(x), y) * torch.arange(1, 9, dtype=torch.float32)).sum()
    plan.step_fn(s.forward_model, [])(x, y, 0)
    assert torch.allclose(plan.record.losses[0], expected, rtol=1e-5)
    assert plan.k == 8 and plan.record.read(plan.k)[0] == pytest.approx(float(expected) / 8, rel=1e-5)


def test_select_keeps_exactly_the_highest_losses_its_proxy_saw():
    # the proxy steps once (step 0), then only scores: its losses can be recomputed afterwards
    s = _session("select.backward_every=1000")
    plan = plan_run(s, 0)
    got = plan.ctx.state["select"]
    keep, scores = got["keep"], got["scores"]
    assert torch.equal(plan.keep, keep) and keep.shape == (plan.ctx.total_steps, 24)
    (proxy, forward), = s.proxies.values()
    stream = BatchStream(plan.ctx, plan.transforms, s.dataset.train_labels, s.cfg.train.channels_last)
    loss_fn = plan.loss_fn
    for step, x, y in stream:
        if step == 0:
            continue
        with torch.no_grad():
            losses = loss_fn(forward(x), y).float()
        assert torch.allclose(scores[step], losses, rtol=1e-4, atol=1e-6)
        top = set(losses.topk(24).indices.tolist())
        assert set(keep[step].tolist()) == top and keep[step].tolist() == sorted(top)


def test_the_proxy_is_built_by_the_runs_hooks_with_its_own_settings():
    s = _session("select.proxy_widths=[4,8,8]", "select.proxy_depth=3")
    with HookRecorder(s.tm) as calls:
        plan_run(s, 0)
    order = calls.names()
    assert order.index("hlb_step_actions") < order.index("hlb_select") < order.index("hlb_train_start")
    (proxy, _), = s.proxies.values()
    assert [g.conv1.out_channels for g in proxy.groups] == [4, 8, 8] and hasattr(proxy.groups[0], "conv3")
    assert not proxy.stem.bias.requires_grad and not proxy.stem.weight.requires_grad  # whitened, frozen
    assert calls.count("hlb_model_init") == 2 and calls.count("hlb_optimizer_build") == 2  # the run's and the proxy's
    # the run's net is untouched by the proxy's settings
    assert [g.conv1.out_channels for g in s.model.groups] == list(s.cfg.model.widths)


def test_select_changes_what_the_run_learns_and_costs_no_step_sync():
    a = fit(_session(), 0)
    b = fit(_session(enable=()), 0)
    assert a.status == b.status == "completed"
    assert a.epochs[0]["train_loss"] != b.epochs[0]["train_loss"]


def test_the_warm_up_stream_runs_two_steps_an_epoch():
    s = _session("train.epochs=3")
    ctx = new_context(s, 0, warmup=True)
    plan = plan_run(s, 0, warmup=True, ctx=ctx)
    stream = BatchStream(plan.ctx, plan.transforms, s.dataset.train_labels, False)
    assert [i for i, _, _ in stream] == [0, 1, 2, 3, 4, 5]


def test_a_bad_selection_is_the_tricks_bug_in_one_line():
    class Bad:
        @hookimpl
        def hlb_select(self, stream):
            return Selection(keep=torch.zeros(3, 4, dtype=torch.long))

    s = _session(enable=(), plugin=Bad())
    with pytest.raises(TrickError) as e:
        plan_run(s, 0)
    assert "the Selection of keeper has keep of shape (3, 4)" in e.value.line() and "total_steps=" in e.value.line()


def test_keep_larger_than_the_batch_is_refused_up_front(cli):
    code, out, err = cli("train", "--preset", "smoke", "--enable", "select", "--set", "select.keep=5000", "--quiet")
    assert code == 2 and "select.keep 5000 is larger than train.batch_size" in err and len(err.strip().splitlines()) == 1
