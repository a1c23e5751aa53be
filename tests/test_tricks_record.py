"""hiverge's cifar10-speedrun tricks on CPU tensors: colour jitter (``color_jitter``) and the
selective TTA and uniform view weights of ``tta`` (``tta.fraction``, ``tta.weighting``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from conftest import tiny_sets
from hlbcli import hookimpl, testing
from hlbcli.contract import ORDER_COLOR, ORDER_GEOMETRY, ORDER_OCCLUSION, RunContext, trick
from hlbcli.errors import ConfigError
from hlbcli.evaluation import eval_logits, evaluate, scores
from hlbcli.resolve import resolve
from hlbcli.run import fit, new_context
from hlbcli.session import open_session
from hlbcli.testing import plan

# --- color_jitter ----------------------------------------------------------------------------


def _jitter_transform(*sets: str):
    cfg, tm = resolve("smoke", sets=tiny_sets(*sets), enable=["color_jitter"])
    ds = open_session(cfg, tm, "cpu").dataset
    ctx = RunContext(cfg, torch.device("cpu"), torch.float32, ds, 0, 64, 4, 8, 2.0, 2)
    (tr,) = [t for r in tm.hook.hlb_batch_transforms(cfg=cfg, ctx=ctx) for t in r if t.name == "color_jitter"]
    return tr


def two_valued(n: int, p: float = 0.75, q: float = -1.25) -> torch.Tensor:
    """n images (fp64) whose pixels are p (left half) and q (right half), every channel."""
    x = torch.full((n, 3, 4, 4), p, dtype=torch.float64)
    x[..., 2:] = q
    return x


def recovered(out: torch.Tensor, p: float = 0.75, q: float = -1.25) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, c) per image from x' = (x + b) * c on :func:`two_valued` images."""
    hi, lo = out[:, 0, 0, 0], out[:, 0, 0, -1]
    c = (hi - lo) / (p - q)
    return hi / c - p, c


def test_color_jitter_draws_one_brightness_and_contrast_per_image_in_range():
    tr = _jitter_transform("color_jitter.brightness=0.3", "color_jitter.contrast=0.2")
    assert tr.level == "epoch" and tr.order == ORDER_COLOR and ORDER_GEOMETRY + 10 < tr.order < ORDER_OCCLUSION
    n = 2000
    x = two_valued(n)
    before, version = x.clone(), x._version
    gen = torch.Generator().manual_seed(0)
    out0 = tr.fn(x, 0, gen)
    out1 = tr.fn(x, 1, gen)
    assert torch.equal(x, before) and x._version == version  # the input is untouched
    for out in (out0, out1):
        b, c = recovered(out)
        # one (b, c) per image, the same for every channel and pixel
        expect = (two_valued(n) + b.view(-1, 1, 1, 1)) * c.view(-1, 1, 1, 1)
        assert torch.allclose(out, expect, atol=1e-12)
        assert b.abs().max() <= 0.3 + 1e-9 and (c - 1).abs().max() <= 0.2 + 1e-9
        # uniform over the whole range: both ends reached
        assert b.min() < -0.28 and b.max() > 0.28 and c.min() < 0.82 and c.max() > 1.18
        assert len(b.unique()) > n * 0.99 and len(c.unique()) > n * 0.99  # they vary between images
    b0, c0 = recovered(out0)
    b1, c1 = recovered(out1)
    assert (b0 != b1).all() and (c0 != c1).all()  # and between epochs
    # reproducible for a seed: the same draws from the same generator state
    gen2 = torch.Generator().manual_seed(0)
    assert torch.equal(tr.fn(x, 0, gen2), out0) and torch.equal(tr.fn(x, 1, gen2), out1)
    assert not torch.equal(tr.fn(x, 0, torch.Generator().manual_seed(1)), out0)


def test_color_jitter_is_hiverges_formula_on_its_draws():
    """x' = (x + b) * c with b = (u1 * 2 - 1) * brightness, c = (u2 * 2 - 1) * contrast + 1,
    u1 then u2 drawn from the generator, one per image."""
    from hlb_plugins.color_jitter import color_jitter

    x = torch.randn(50, 3, 8, 8)
    out = color_jitter(x, 0.1399, 0.1308, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u1, u2 = torch.rand(50, 1, 1, 1, generator=g), torch.rand(50, 1, 1, 1, generator=g)
    assert torch.equal(out, (x + (u1 * 2 - 1) * 0.1399) * ((u2 * 2 - 1) * 0.1308 + 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_color_jitter_keeps_dtype_and_channels_last(dtype):
    from hlb_plugins.color_jitter import color_jitter

    x = torch.randn(20, 3, 8, 8).to(dtype).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    out = color_jitter(x, 0.2, 0.2, torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert out.data_ptr() != x.data_ptr() and torch.equal(x, before)
    plain = color_jitter(x.contiguous(), 0.2, 0.2, torch.Generator().manual_seed(0))
    assert plain.is_contiguous() and torch.equal(plain, out)


def test_color_jitter_with_zero_ranges_is_the_identity():
    tr = _jitter_transform("color_jitter.brightness=0", "color_jitter.contrast=0")
    x = torch.randn(64, 3, 8, 8)
    out = tr.fn(x, 0, torch.Generator().manual_seed(0))
    assert out is not x and torch.equal(out, x)


class HostWatch(TorchDispatchMode):
    """Records every aten op; ``moves`` lists those that read a value on the host or leave a
    tensor on the CPU (the ops under test run on ``meta``, where nothing else is on the CPU)."""

    SYNCS = {"_local_scalar_dense", "item", "nonzero"}

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.moves: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops.append(name)
        out = func(*args, **(kwargs or {}))
        on_cpu = any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_flatten(out)[0])
        if name in self.SYNCS or on_cpu:
            self.moves.append(name)
        return out


def test_host_watch_sees_a_sync_and_a_copy_to_the_cpu():
    with HostWatch() as w:
        torch.ones(3).sum().item()
    assert "_local_scalar_dense" in w.moves
    with HostWatch() as w:
        torch.ones(3, device="meta").to(torch.float16)  # stays on meta: not a move
        torch.zeros(2, device="cpu")  # a tensor made on the CPU: a move
    assert w.moves == ["zeros"], w.moves


def test_color_jitter_moves_nothing_to_the_host():
    """Run on the ``meta`` device: any read of a value (item, nonzero, a bool) or copy to the
    host would raise there or show as a CPU tensor; and no op that syncs is even called."""
    tr = _jitter_transform()
    x = torch.empty(512, 3, 32, 32, device="meta", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    with HostWatch() as w:
        out = tr.fn(x, 0, None)
        out = tr.fn(out, 1, None)
    assert w.ops and not w.moves, w.moves
    assert out.device.type == "meta" and out.dtype == torch.float16 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_color_jitter_trains_in_a_tiny_run(monkeypatch):
    import hlb_plugins.color_jitter as cj

    seen = []
    orig = cj.color_jitter

    def spy(images, *a, **k):
        out = orig(images, *a, **k)
        seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last), torch.equal(out, images)))
        return out

    monkeypatch.setattr(cj, "color_jitter", spy)
    cfg, tm = resolve("smoke", sets=tiny_sets("train.channels_last=true"), enable=["color_jitter"])
    s = open_session(cfg, tm, "cpu")
    p = plan(s, 0)
    epoch_transforms = [t.name for t in p.transforms if t.level == "epoch"]
    assert epoch_transforms == ["flip", "translate", "color_jitter"]
    seen.clear()
    res = fit(s, 0)
    assert res.status == "completed" and 0 <= res.accuracy <= 1
    assert seen == [(torch.float32, True, False)] * len(res.epochs) == [(torch.float32, True, False)] * 2  # every epoch


def test_color_jitter_settings_are_checked():
    cfg, _ = resolve("smoke", sets=tiny_sets(), enable=["color_jitter"])
    assert (cfg.color_jitter.brightness, cfg.color_jitter.contrast) == (0.1399, 0.1308)
    with pytest.raises(ConfigError):
        resolve("smoke", sets=tiny_sets("color_jitter.brightness=-0.1"), enable=["color_jitter"])


# --- tta: selective (fraction) and uniform weighting -------------------------------------------


def airbench_tta(net, x: torch.Tensor) -> torch.Tensor:
    """Level 2 as tta computed it before ``fraction`` and ``weighting``, operation for
    operation: image and mirror 1/4, the shifted views 1/8."""
    p = F.pad(x, (1,) * 4, mode="reflect")
    ul, dr = p[..., :32, :32], p[..., 2:34, 2:34]
    out = net(x) * 0.25
    for v, w in [(ul, 0.125), (dr, 0.125), (x.flip(-1), 0.25), (ul.flip(-1), 0.125), (dr.flip(-1), 0.125)]:
        out = out.add_(net(v) * w)
    return out


@pytest.fixture(scope="module")
def trained():
    """A tiny trained session (ema and tta on), its run's context, evaluation batches of 32
    over 128 test images."""
    cfg, tm = resolve("smoke", sets=tiny_sets("train.eval_batch_size=32"))
    s = open_session(cfg, tm, "cpu")
    assert fit(s, 0).status == "completed"
    ctx = new_context(s, 0)
    assert ctx.eval_batch_size == 32
    return s, ctx


def _final(s, ctx, *sets: str, model=None) -> tuple[dict, object]:
    """The final evaluation through the hooks of a manager with ``sets`` (the metrics, the
    forward): hlb_eval_forward, then hlb_evaluate, as the trainer calls them."""
    cfg, tm = resolve("smoke", sets=tiny_sets("train.eval_batch_size=32", *sets))
    ctx = dataclasses.replace(ctx, cfg=cfg)
    model = model if model is not None else s.model
    forward = tm.hook.hlb_eval_forward(model=model, cfg=cfg, ctx=ctx, final=True)
    ds = s.dataset
    metrics = tm.hook.hlb_evaluate(model=s.model, images=ds.test_images, labels=ds.test_labels, forward=forward,
                                   ctx=ctx, final=True)
    return metrics, forward


def test_tta_fraction_one_is_full_tta_exactly_as_before(trained):
    from hlb_plugins.tta import SelectiveTta

    s, ctx = trained
    metrics, forward = _final(s, ctx, "tta.fraction=1.0")
    assert not isinstance(forward, SelectiveTta)  # the same forward as before the setting
    ds = s.dataset
    before = evaluate(s.model, ds.test_images, ds.test_labels, lambda x: airbench_tta(s.model, x), ctx)
    assert metrics == before
    assert torch.equal(eval_logits(s.model, ds.test_images, forward, ctx),
                       eval_logits(s.model, ds.test_images, lambda x: airbench_tta(s.model, x), ctx))
    default, _ = _final(s, ctx)
    assert default == before


def test_tta_fraction_zero_is_plain_evaluation(trained):
    s, ctx = trained
    metrics, _ = _final(s, ctx, "tta.fraction=0")
    plain, _ = _final(s, ctx, "tta.level=0")
    ds = s.dataset
    assert metrics == plain == evaluate(s.model, ds.test_images, ds.test_labels, s.model, ctx)


class Counting(torch.nn.Module):
    """A net that counts the images it is given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x):
        self.images += len(x)
        return self.net(x)


def test_tta_fraction_gives_tta_to_the_least_confident_only(trained):
    from hlb_plugins.tta import SelectiveTta, selective_logits, tta_forward

    s, ctx = trained
    ds = s.dataset
    n = len(ds.test_labels)
    k = int(n * 0.25)
    counting = Counting(s.model)
    metrics, forward = _final(s, ctx, "tta.fraction=0.25", model=counting)
    assert isinstance(forward, SelectiveTta)
    # one plain pass over all (the core's evaluation, whose logits tta reuses), six views of the k chosen
    assert counting.images == n + 6 * k

    counting.images = 0
    logits = selective_logits(s.model, ds.test_images, forward, ctx)  # the plain pass made afresh
    assert counting.images == n + 6 * k
    assert metrics == scores(logits, ds.test_labels, ctx.eval_batch_size)
    plain = eval_logits(s.model, ds.test_images, s.model, ctx)
    full = eval_logits(s.model, ds.test_images, tta_forward(s.model, 2, 1), ctx)
    changed = (logits != plain).any(1)
    assert changed.sum() == k
    assert torch.equal(logits[~changed], plain[~changed])  # the others keep the plain logits exactly
    assert torch.allclose(logits[changed], full[changed], atol=1e-5)  # the chosen get full TTA
    # chosen over the whole test set (not per evaluation batch): the k least confident
    confidence = plain.softmax(1).amax(1)
    assert confidence[changed].max() <= confidence[~changed].min()
    assert set(changed.nonzero().flatten().tolist()) == set(confidence.topk(k, largest=False).indices.tolist())


def test_tta_selective_leaves_other_evaluations_alone_and_owns_no_evaluation(trained):
    """tta's hlb_evaluate is a wrapper: the core still owns the evaluation; a per-epoch
    evaluation (final False) or a forward that is not tta's passes through untouched."""
    from hlb_plugins.tta import SelectiveTta

    s, ctx = trained
    ds = s.dataset
    cfg, tm = resolve("smoke", sets=tiny_sets("train.eval_batch_size=32", "tta.fraction=0.5"))
    assert tm.owners()["hlb_evaluate"] == "core" and tm.owners()["hlb_eval_forward"] == "tta"
    forward = tm.hook.hlb_eval_forward(model=s.model, cfg=cfg, ctx=ctx, final=True)
    assert isinstance(forward, SelectiveTta)
    plain = evaluate(s.model, ds.test_images, ds.test_labels, s.model, ctx)
    kw = dict(model=s.model, images=ds.test_images, labels=ds.test_labels, ctx=ctx)
    assert tm.hook.hlb_evaluate(forward=forward, final=False, **kw) == plain
    assert tm.hook.hlb_evaluate(forward=s.model, final=True, **kw) == plain
    assert tm.hook.hlb_evaluate(forward=forward, final=True, **kw) != plain
    assert forward.seen is None  # nothing kept after the evaluation
    # called by anything else, it is the plain net
    x = torch.randn(4, 3, 32, 32)
    s.model.eval()
    try:
        with torch.no_grad():
            assert torch.equal(forward(x), s.model(x))
    finally:
        s.model.train()


class OwnEvaluator:
    """A third-party trick that evaluates its own way: the whole test set in one batch, and a
    metric of its own."""

    hlb_trick_info, hlb_config_model = trick("own_eval", "evaluates in one batch, adds a metric")

    @hookimpl
    def hlb_evaluate(self, model, images, labels, forward, ctx):
        logits = eval_logits(model, images, forward, dataclasses.replace(ctx, eval_batch_size=len(images)))
        return {**scores(logits, labels, ctx.eval_batch_size), "own": 1.0}


def test_selective_tta_composes_with_a_trick_that_evaluates_its_own_way():
    from hlb_plugins.tta import selective_logits

    cfg, tm = testing.resolve_config(OwnEvaluator(), sets=["tta.fraction=0.25", "train.eval_batch_size=32"])
    assert tm.owners()["hlb_evaluate"] == "own_eval"  # no clash with tta
    s = testing.session(cfg, tm)
    res = testing.run(s, 0)
    assert res.status == "completed" and res.final["own"] == 1.0
    ctx = new_context(s, 0)
    forward = tm.hook.hlb_eval_forward(model=s.model, cfg=cfg, ctx=ctx, final=True)
    ds = s.dataset
    # its one batch is not the evaluation's batches: tta made the plain pass again, in its own batches
    expect = scores(selective_logits(s.model, ds.test_images, forward, ctx), ds.test_labels, 32)
    assert {k: res.final[k] for k in ("accuracy", "loss")} == expect


def test_tta_uniform_weighting_is_the_mean_of_the_six_views():
    from hlb_plugins.tta import tta_forward, tta_views

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.randn(6, 3, 8, 8)
    net(x)
    views = tta_views(x, 2, 1, "uniform")
    assert len(views) == 6 and all(w == 1 / 6 for _, w in views)
    p = F.pad(x, (1,) * 4, mode="reflect")
    ul, dr = p[..., :8, :8], p[..., 2:10, 2:10]
    six = [x, ul, dr, x.flip(-1), ul.flip(-1), dr.flip(-1)]
    with torch.no_grad():
        mean = torch.stack([net(v) for v in six]).mean(0)
        assert torch.allclose(tta_forward(net, 2, 1, "uniform")(x), mean, atol=1e-6)
        airbench = 0.25 * (net(x) + net(x.flip(-1))) + 0.125 * sum(net(v) for v in [ul, dr, ul.flip(-1), dr.flip(-1)])
        assert torch.allclose(tta_forward(net, 2, 1)(x), airbench, atol=1e-6)
        assert not torch.allclose(mean, airbench, atol=1e-4)
        # level 1 is the image and its mirror, 1/2 each, either way
        assert torch.equal(tta_forward(net, 1, 1, "uniform")(x), tta_forward(net, 1, 1, "airbench")(x))


def test_tta_settings_are_checked():
    cfg, _ = resolve("smoke", sets=tiny_sets())
    assert (cfg.tta.fraction, cfg.tta.weighting) == (1.0, "airbench")
    for bad in ("tta.fraction=1.5", "tta.fraction=-0.1", 'tta.weighting="mean"'):
        with pytest.raises(ConfigError):
            resolve("smoke", sets=tiny_sets(bad))


def test_selective_tta_composes_with_ema_in_a_tiny_run(monkeypatch):
    """ema wraps hlb_evaluate (it swaps its average in for per-epoch evaluations); the final
    evaluation with fraction < 1 is tta's, on the net that holds the average."""
    import hlb_plugins.tta as tta

    calls = []
    orig = tta.selective_logits

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(tta, "selective_logits", spy)
    cfg, tm = resolve("smoke", sets=tiny_sets("tta.fraction=0.25", "train.eval_every_epoch=true",
                                              "train.eval_batch_size=32", "train.epochs=3"))
    assert "ema" in tm.trick_names() and "tta" in tm.trick_names()
    s = open_session(cfg, tm, "cpu")
    res = fit(s, 0)
    assert res.status == "completed"
    assert [row["val_acc"] is not None for row in res.epochs] == [True, True, True]
    assert len(calls) == 1  # the final evaluation only: per-epoch ones are the core's
    # the run's final numbers are selective TTA's on the final (averaged) weights
    ctx = new_context(s, 0)
    forward = tm.hook.hlb_eval_forward(model=s.model, cfg=cfg, ctx=ctx, final=True)
    ds = s.dataset
    again = scores(orig(s.model, ds.test_images, forward, ctx), ds.test_labels, ctx.eval_batch_size)
    assert res.final == again and res.accuracy == again["accuracy"]
