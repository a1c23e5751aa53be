"""Each trick proves its claim on CPU tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_sets
from hlbcli.resolve import resolve
from hlbcli.session import open_session
from hlbcli.run import fit


def smooth_images(n=64, c=3, h=16, w=16, seed=0):
    """Images with strongly correlated neighbouring pixels and channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h + 2, w + 2, generator=g)
    x = x + 0.7 * x.roll(1, 2) + 0.5 * x.roll(1, 3) + 0.3 * x.mean(1, keepdim=True)
    return x[..., 1:-1, 1:-1]


# --- whitening -------------------------------------------------------------------------------


def test_whitened_patches_have_identity_covariance():
    from hlb_plugins.whitening import patches, whitening_filters

    x = smooth_images()
    raw = patches(x, 2).double()
    raw_cov = raw.T @ raw / len(raw)
    assert (raw_cov - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5  # far from white before

    filters = whitening_filters(x, 2, eps=1e-8)
    assert filters.shape == (24, 3, 2, 2)
    assert torch.allclose(filters[12:], -filters[:12])  # each filter paired with its negation
    out = F.conv2d(x.double(), filters[:12].double())  # (N, 12, H-1, W-1)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / len(flat)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)


def test_whitening_hook_freezes_filters_and_bias_after_n_epochs():
    cfg, tm = resolve("smoke", sets=tiny_sets("whitening.bias_epochs=1", "train.epochs=2"))
    s = open_session(cfg, tm, "cpu")
    fit(s, 0)
    stem = s.model.stem
    assert not stem.weight.requires_grad and not stem.bias.requires_grad
    from hlb_plugins.whitening import whitening_filters

    imgs = s.dataset.train_images[: cfg.whitening.num_images]
    from hlbcli.data import normalize

    expected = whitening_filters(normalize(imgs, s.dataset.mean, s.dataset.std, torch.float32), 2, cfg.whitening.eps)
    assert torch.allclose(stem.weight, expected, atol=1e-5)  # frozen: still the init after training
    assert stem.bias.abs().sum() > 0  # the bias trained in epoch 1


# --- cutmix ----------------------------------------------------------------------------------


def test_cutmix_target_mass_equals_pasted_area():
    from hlb_plugins.cutmix import cutmix

    torch.manual_seed(0)
    n, k = 64, 64
    images = torch.rand(n, 3, 16, 16) + torch.arange(n).view(n, 1, 1, 1)  # every pixel unique per image
    labels = torch.arange(n)  # one class per image
    targets = F.one_hot(labels, k).float()
    mixed, mixed_t = cutmix(images, targets, size=5)
    assert torch.allclose(mixed_t.sum(1), torch.ones(n))
    pasted = (mixed != images).any(1).float().mean((1, 2))  # fraction of pixels from a partner
    own_mass = mixed_t[torch.arange(n), labels]
    assert torch.allclose(1 - own_mass, pasted, atol=1e-6)
    changed = pasted > 0
    assert changed.sum() > n // 2
    assert torch.allclose(pasted[changed], torch.full_like(pasted[changed], 25 / 256))


def test_cutmix_is_active_only_in_last_epochs():
    cfg, tm = resolve("smoke", sets=tiny_sets("train.epochs=5", "cutmix.last_epochs=2"), enable=["cutmix"])
    s = open_session(cfg, tm, "cpu")
    from hlbcli.contract import RunContext

    ctx = RunContext(cfg, s.device, torch.float32, s.dataset, 0, 64, 4, 20, 5.0, 5)
    (tr,) = [t for r in tm.hook.hlb_batch_transforms(cfg=cfg, ctx=ctx) for t in r if t.name == "cutmix"]
    assert [tr.active(e) for e in range(5)] == [False, False, False, True, True]


# --- ema -------------------------------------------------------------------------------------


def test_ema_matches_closed_form():
    from hlb_plugins.ema import Lookahead, decay_table

    T, every, base, power = 20, 5, 0.9, 2.0
    decays = decay_table(T, every, base, power)
    for t in range(T + 1):
        assert decays[t].item() == pytest.approx(base**every * (t / T) ** power, rel=1e-6)

    torch.manual_seed(0)
    net = [torch.zeros(3), torch.zeros(2, 2)]
    la = Lookahead(net)
    avg_ref = [t.clone() for t in net]
    for step in range(1, T + 1):
        for p in net:
            p.add_(torch.randn_like(p))  # an optimizer step
        if step % every == 0:
            d = decays[step].item()
            avg_ref = [d * a + (1 - d) * p for a, p in zip(avg_ref, net)]
            la.update(decays[step])
            for p, a in zip(net, avg_ref):
                assert torch.allclose(p, a, atol=1e-6)  # lookahead: the net jumps to the average
    la.finish()
    for p, a in zip(net, avg_ref):
        assert torch.allclose(p, a, atol=1e-6)


def test_ema_actions_run_every_k_steps_and_net_ends_on_average():
    cfg, tm = resolve("smoke", sets=tiny_sets("ema.every=3"))
    s = open_session(cfg, tm, "cpu")
    calls = []
    import hlb_plugins.ema as ema

    orig = ema.Lookahead.update

    def spy(self, decay):
        calls.append(1)
        return orig(self, decay)

    ema.Lookahead.update = spy
    try:
        res = fit(s, 0)
    finally:
        ema.Lookahead.update = orig
    total = res.epochs[-1]["steps"]
    assert len(calls) == total // 3  # after steps 3, 6, 9, ... (completed steps)


# --- label smoothing -------------------------------------------------------------------------


def test_label_smoothing_loss_equals_hand_computation():
    cfg, tm = resolve("smoke", sets=tiny_sets("label_smoothing.factor=0.2"))
    loss_fn = tm.hook.hlb_loss_build(cfg=cfg, ctx=None)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0]])  # the second is a CutMix-style soft target
    got = loss_fn(logits, targets)
    eps, k = 0.2, 3
    for i in range(2):
        z = [math.exp(v) for v in logits[i].tolist()]
        logp = [math.log(v / sum(z)) for v in z]
        q = [(1 - eps) * t + eps / k for t in targets[i].tolist()]
        assert got[i].item() == pytest.approx(-sum(a * b for a, b in zip(q, logp)), rel=1e-5)
    hard = torch.tensor([0, 2])
    assert torch.allclose(
        loss_fn(logits, F.one_hot(hard, 3).float()), F.cross_entropy(logits, hard, label_smoothing=0.2, reduction="none")
    )


# --- weight norm -----------------------------------------------------------------------------


def _train_tiny(enable=(), disable=(), sets=()):
    cfg, tm = resolve("smoke", sets=tiny_sets("train.epochs=1", *sets), enable=list(enable), disable=list(disable))
    s = open_session(cfg, tm, "cpu")
    fit(s, 0)
    return s


def test_weight_norm_changes_weights_and_output():
    from hlbcli.model import group_convs

    plain = _train_tiny(disable=["ema"])
    normed = _train_tiny(enable=["weight_norm"], disable=["ema"], sets=["weight_norm.scale=0.5"])
    for conv in group_convs(normed.model):
        w = conv.weight
        assert w.norm().item() == pytest.approx(0.5 * math.sqrt(w.shape[0]), rel=1e-4)
    plain_norms = [c.weight.norm().item() for c in group_convs(plain.model)]
    assert all(abs(n - 0.5 * math.sqrt(c.weight.shape[0])) > 1e-2 for n, c in zip(plain_norms, group_convs(plain.model)))
    x = torch.randn(8, 3, 32, 32)
    plain.model.eval(), normed.model.eval()
    with torch.no_grad():
        assert not torch.allclose(plain.model(x), normed.model(x), atol=1e-4)


def test_weight_norm_renormalize_function():
    from hlb_plugins.weight_norm import renormalize_

    ws = [torch.randn(8, 4, 3, 3) * 5, torch.randn(16, 8, 3, 3) * 0.1]
    renormalize_(ws, 2.0)
    assert ws[0].norm().item() == pytest.approx(2.0 * math.sqrt(8), rel=1e-5)
    assert ws[1].norm().item() == pytest.approx(2.0 * 4.0, rel=1e-5)


# --- flip and translate ----------------------------------------------------------------------


def test_alternating_flip_flips_each_image_in_exactly_one_of_two_epochs():
    from hlb_plugins.flip import make_transform

    n = 200
    images = torch.rand(n, 3, 8, 8)
    tr = make_transform(n, "alternating", "cpu", torch.Generator().manual_seed(0))
    flipped = []
    for epoch in range(5):
        out = tr.fn(images, epoch, None)
        is_flipped = (out == images.flip(-1)).flatten(1).all(1)
        is_same = (out == images).flatten(1).all(1)
        assert (is_flipped ^ is_same).all()
        flipped.append(is_flipped)
    for a, b in zip(flipped, flipped[1:]):
        assert (a ^ b).all()
    assert 0.3 < flipped[0].float().mean() < 0.7


def test_alternating_flip_follows_its_input_when_it_changes():
    """The even epochs' flipped set is kept between epochs; a new or changed input is flipped
    afresh, with the same per-image bits."""
    from hlb_plugins.flip import make_transform

    images = torch.rand(50, 3, 4, 4)
    tr = make_transform(50, "alternating", "cpu", torch.Generator().manual_seed(0))
    first = tr.fn(images, 0, None).clone()
    images.mul_(2)  # in place: a new version of the same storage
    again = tr.fn(images, 2, None)
    assert torch.equal(again, first * 2)
    other = torch.rand(50, 3, 4, 4)
    flipped_bits = (first == images.flip(-1) / 2).flatten(1).all(1)
    out = tr.fn(other, 1, None)  # odd epoch: every bit inverted
    assert torch.equal(out[flipped_bits], other[flipped_bits])
    assert torch.equal(out[~flipped_bits], other[~flipped_bits].flip(-1))


def test_random_flip_is_random_per_epoch():
    from hlb_plugins.flip import make_transform

    images = torch.rand(400, 3, 4, 4)
    tr = make_transform(400, "random", "cpu", None)
    g = torch.Generator().manual_seed(1)
    a = (tr.fn(images, 0, g) == images.flip(-1)).flatten(1).all(1)
    b = (tr.fn(images, 1, g) == images.flip(-1)).flatten(1).all(1)
    assert not (a ^ b).all() and (a ^ b).any()


@pytest.mark.parametrize("pad", [1, 2, 3])
def test_translate_reaches_every_shift(pad):
    from hlb_plugins.translate import random_translate

    n, h, w = 3000, 12, 12
    grid = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).expand(n, 3, h, w).contiguous()
    out = random_translate(grid, pad, torch.Generator().manual_seed(0))
    centre = out[:, 0, h // 2, w // 2].long()
    dy, dx = centre // w - h // 2, centre % w - w // 2
    seen = set(zip(dy.tolist(), dx.tolist()))
    assert seen == {(a, b) for a in range(-pad, pad + 1) for b in range(-pad, pad + 1)}
    # every output is an exact crop of the reflect-padded input at its shift
    padded = F.pad(grid[:1], (pad,) * 4, mode="reflect")[0]
    for i in range(20):
        y0, x0 = pad + dy[i].item(), pad + dx[i].item()
        assert torch.equal(out[i], padded[:, y0 : y0 + h, x0 : x0 + w])


def test_translate_pads_each_input_once_and_crops_the_same():
    from hlb_plugins.translate import PadCache, random_translate

    a, b = torch.rand(40, 3, 8, 8), torch.rand(40, 3, 8, 8)
    cache = PadCache(2)
    pa = cache(a)
    assert cache(b) is not pa and cache(a) is pa  # two inputs in turn (an alternating flip's)
    assert torch.equal(pa, F.pad(a, (2,) * 4, mode="reflect"))
    a.add_(1)  # changed in place: padded afresh
    assert cache(a) is not pa and torch.equal(cache(a), F.pad(a, (2,) * 4, mode="reflect"))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_translate(b, 2, g1), random_translate(b, 2, g2, cache(b)))


def test_cutout_zeroes_one_square():
    from hlb_plugins.cutout import cutout

    x = torch.ones(50, 3, 16, 16)
    out = cutout(x, 5, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1).flatten(1).sum(1)
    assert (zeros == 25).all()


# --- model tricks ----------------------------------------------------------------------------


def test_noisy_bn_settings_reach_every_batchnorm():
    from hlbcli.model import batchnorms

    cfg, tm = resolve("smoke", sets=tiny_sets("noisy_bn.momentum=0.3", "noisy_bn.eps=1e-9", "noisy_bn.fp32=true"))
    model = tm.hook.hlb_model_build(cfg=cfg, num_classes=10, in_channels=3)
    bns = batchnorms(model)
    assert bns and all(b.momentum == 0.3 and b.eps == 1e-9 and not b.weight.requires_grad for b in bns)
    x = torch.randn(4, 16, 8, 8, dtype=torch.bfloat16)
    bn = bns[-1]
    assert bn(x).dtype == torch.bfloat16
    cfg2, tm2 = resolve("smoke", sets=tiny_sets(), disable=["noisy_bn"])
    plain = tm2.hook.hlb_model_build(cfg=cfg2, num_classes=10, in_channels=3)
    assert all(b.momentum == 0.1 and b.weight.requires_grad for b in batchnorms(plain))


def test_dirac_makes_first_filters_identity():
    from hlb_plugins.dirac import dirac_partial_

    conv = torch.nn.Conv2d(4, 6, 3, padding="same", bias=False)
    dirac_partial_(conv.weight)
    x = torch.randn(2, 4, 5, 5)
    y = conv(x)
    assert torch.allclose(y[:, :4], x, atol=1e-6)
    assert not torch.allclose(y[:, 4:], torch.zeros_like(y[:, 4:]))


def test_dirac_first_conv_add_puts_the_identity_on_the_init_at_the_inits_scale():
    """hlb-CIFAR10 v0.7's init: each group's first conv is its random init plus the identity,
    shifted and scaled back to the init's mean and std; the second conv is the identity."""
    from types import SimpleNamespace

    from hlb_plugins import dirac
    from hlbcli.model import ConvGroup, Net

    torch.manual_seed(0)
    net = Net([8, 16, 16], 10)
    groups = [m for m in net.modules() if isinstance(m, ConvGroup)]
    init = [g.conv1.weight.detach().clone() for g in groups]
    dirac.hlb_model_init(model=net, ctx=SimpleNamespace(settings=lambda name: dirac.DiracSettings(first_conv="add")))
    for g, w0 in zip(groups, init):
        w = g.conv1.weight.detach()
        eye = torch.nn.init.dirac_(torch.empty_like(w0))
        (std0, mean0), (std1, mean1) = torch.std_mean(w0), torch.std_mean(w0 + eye)
        assert torch.allclose(w, (w0 + eye - mean1) * (std0 / std1) + mean0, atol=1e-6)
        assert torch.allclose(torch.std(w), std0) and not torch.allclose(w, w0)
        n = min(w.shape[:2])
        assert w[range(n), range(n), 1, 1].mean() > 5 * w.abs().mean()  # the identity taps stand out
        x = torch.randn(2, g.conv2.in_channels, 5, 5)
        assert torch.allclose(g.conv2(x), x, atol=1e-6)
    # replace (the default): the first conv's first filters are the identity and nothing else
    dirac.hlb_model_init(model=net, ctx=SimpleNamespace(settings=lambda name: dirac.DiracSettings()))
    w = groups[1].conv1.weight.detach()
    n = min(w.shape[:2])
    assert torch.equal(w[:n], torch.nn.init.dirac_(torch.empty_like(w[:n])))


def test_bias_lr_scales_batchnorm_lr_keeps_absolute_decay():
    cfg, tm = resolve("smoke", sets=tiny_sets("bias_lr.scaler=64", "noisy_bn.freeze_scale=false"))
    model = tm.hook.hlb_model_build(cfg=cfg, num_classes=10, in_channels=3)
    groups = tm.hook.hlb_param_groups(model=model, cfg=cfg, ctx=None)
    by = {g["name"]: g for g in groups}
    assert by["batchnorm"]["lr"] == pytest.approx(64 * by["other"]["lr"])
    assert by["batchnorm"]["lr"] * by["batchnorm"]["weight_decay"] == pytest.approx(by["other"]["lr"] * by["other"]["weight_decay"])
    n_bn = sum(p.numel() for g in groups if g["name"] == "batchnorm" for p in g["params"])
    from hlbcli.model import batchnorms

    assert n_bn == sum(p.numel() for b in batchnorms(model) for p in b.parameters())


def test_tta_levels():
    from hlb_plugins.tta import tta_forward

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.randn(6, 3, 8, 8)
    net(x)
    assert torch.equal(tta_forward(net, 0)(x), net(x))
    m = tta_forward(net, 1)
    assert torch.allclose(m(x), m(x.flip(-1)), atol=1e-6)  # mirror-averaged: flip invariant
    assert torch.allclose(m(x), 0.5 * net(x) + 0.5 * net(x.flip(-1)))
    t2 = tta_forward(net, 2)(x)
    p = F.pad(x, (1,) * 4, mode="reflect")
    ul, dr = p[..., :8, :8], p[..., 2:10, 2:10]
    assert torch.allclose(t2, 0.5 * m(x) + 0.25 * m(ul) + 0.25 * m(dr), atol=1e-6)


# --- independence ----------------------------------------------------------------------------


SMOKE_TRICKS = ["whitening", "dirac", "noisy_bn", "bias_lr", "label_smoothing", "flip", "translate", "ema", "tta"]


@pytest.mark.parametrize("off", SMOKE_TRICKS)
def test_disabling_a_trick_leaves_the_others_as_they_were(off):
    base_cfg, base_tm = resolve("smoke", sets=tiny_sets())
    cfg, tm = resolve("smoke", sets=tiny_sets(), disable=[off])
    assert tm.trick_names() == [t for t in SMOKE_TRICKS if t != off]
    assert off not in cfg.model_fields_set and not hasattr(cfg, off)
    for name in tm.trick_names():
        assert getattr(cfg, name) == getattr(base_cfg, name)
        assert tm.stages(name) == base_tm.stages(name)
        hooks = sorted(c.name for c in tm.pm.get_hookcallers(tm.pm.get_plugin(name)))
        base_hooks = sorted(c.name for c in base_tm.pm.get_hookcallers(base_tm.pm.get_plugin(name)))
        assert hooks == base_hooks
    # the data tricks that stay on produce the same augmented data from the same seed
    from hlbcli.contract import RunContext

    s = open_session(base_cfg, base_tm, "cpu")
    images = torch.rand(len(s.dataset.train_labels), 3, 32, 32)

    def augmented(tm_, cfg_):
        ctx = RunContext(cfg_, s.device, torch.float32, s.dataset, 0, 64, 4, 8, 2.0, 2, generator=torch.Generator().manual_seed(0))
        out = {}
        for r in tm_.hook.hlb_batch_transforms(cfg=cfg_, ctx=ctx):
            for tr in r:
                if tr.level == "epoch":
                    out[tr.name] = tr.fn(images, 1, torch.Generator().manual_seed(3))
        return out

    ctx_all = augmented(base_tm, base_cfg)
    ctx_off = augmented(tm, cfg)
    for name, val in ctx_off.items():
        assert torch.equal(val, ctx_all[name])


def test_per_input_never_mistakes_a_new_set_in_reused_memory_for_the_old_one():
    """The CUDA caching allocator hands an epoch's freed set's memory to the next epoch's new
    set: same address, same shape, version 0. Made here on the CPU by two tensors over one
    numpy buffer rewritten between them. A transform's kept result must follow the new set."""
    import numpy as np

    from hlb_plugins.translate import PadCache

    buf = np.zeros((4, 3, 8, 8), dtype=np.float32)
    cache = PadCache(2)
    a = torch.from_numpy(buf)
    cache(a)
    del a  # the old set is gone; its memory comes back holding other images
    buf[:] = np.random.default_rng(0).random(buf.shape, dtype=np.float32)
    b = torch.from_numpy(buf)
    assert torch.equal(cache(b), F.pad(b, (2,) * 4, mode="reflect"))
