"""The model API: the conv net family of hlb-CIFAR10 and airbench, its parts and parameter
names, and the helpers tricks use to find them. Built-in tricks and third-party ones import
this module alike; what is listed here keeps its names.

The net (:class:`Net`, built by :func:`build_net` from ``cfg.model``)::

    stem          Conv2d(C, stem_width, stem_kernel), bias: the whitening slot (stem.weight, stem.bias)
    stem_act      GELU
    groups.N      ConvGroup N = 0, 1, ...: conv1 -> pool -> norm1 -> act -> conv2 -> norm2 -> act
                  (act: GELU, or SiLU with model.activation = "silu")
                  (depth 3: conv3 -> norm3 -> act, plus a residual)
                  groups.N.convK.weight  3x3 filters, no bias      groups.N.normK.{weight,bias}
                  (batchnorm; running_mean, running_var buffers)
    pool          global max-pool
    head          Linear(widths[-1], classes, bias=False) (head.weight); logits = head(x) * scaling_factor

Helpers: :func:`batchnorms` (every batchnorm module), :func:`group_convs` (the 3x3 convs of the
groups, not the stem), :func:`half_weights` (the half-precision cast the trainer applies).
Tricks that wrap ``hlb_model_build`` may add modules but should keep these names.
"""

from __future__ import annotations

import torch
from torch import nn

from hlbcli.errors import UsageError


#: ``model.activation``: the conv groups' nonlinearity (the stem's stays GELU)
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}


class ConvGroup(nn.Module):
    """conv -> max-pool -> BN -> act -> conv -> BN -> act, act GELU or SiLU (depth 3: one more
    conv/BN, with a residual over the last two)."""

    def __init__(self, c_in: int, c_out: int, depth: int = 2, bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 activation: str = "gelu"):
        super().__init__()
        self.depth = depth
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(c_out, momentum=bn_momentum, eps=bn_eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.norm2 = nn.BatchNorm2d(c_out, momentum=bn_momentum, eps=bn_eps)
        if depth >= 3:
            self.conv3 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
            self.norm3 = nn.BatchNorm2d(c_out, momentum=bn_momentum, eps=bn_eps)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        if self.depth >= 3:
            x0 = x
            x = self.act(self.norm2(self.conv2(x)))
            return self.act(self.norm3(self.conv3(x)) + x0)
        return self.act(self.norm2(self.conv2(x)))


class Net(nn.Module):
    """stem (the whitening slot) -> GELU -> conv groups -> global max-pool -> linear * scale."""

    def __init__(
        self,
        widths: list[int],
        num_classes: int,
        in_channels: int = 3,
        depth: int = 2,
        stem_width: int = 24,
        stem_kernel: int = 2,
        scaling_factor: float = 1 / 9,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        activation: str = "gelu",
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem_width, stem_kernel, padding=0, bias=True)
        self.stem_act = nn.GELU()
        chans = [stem_width, *widths]
        self.groups = nn.Sequential(
            *[ConvGroup(chans[i], chans[i + 1], depth, bn_momentum, bn_eps, activation) for i in range(len(widths))]
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.scaling_factor = scaling_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem_act(self.stem(x)))
        x = self.pool(x).flatten(1)
        return self.head(x) * self.scaling_factor


__all__ = ["Net", "ConvGroup", "build_net", "batchnorms", "group_convs", "half_weights", "check_fits"]


def check_fits(widths: list[int], image_size: int, stem_kernel: int) -> None:
    side = image_size - stem_kernel + 1
    for i, _ in enumerate(widths):
        side //= 2
        if side < 1:
            raise UsageError(
                f"model.widths has {len(widths)} conv groups, but {image_size}px images allow at most {i}",
                f"use at most {i} widths, e.g. --set model.widths=[64,256,256]",
            )


def build_net(m, num_classes: int, in_channels: int) -> Net:
    """Build from a :class:`~hlbcli.config.ModelSettings`."""
    net = Net(
        list(m.widths),
        num_classes,
        in_channels,
        m.depth,
        m.stem_width,
        m.stem_kernel,
        m.scaling_factor,
        m.bn_momentum,
        m.bn_eps,
        m.activation,
    )
    if m.head_init_std > 0:
        with torch.no_grad():
            w = net.head.weight
            w.mul_(m.head_init_std / w.std())
    return net


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def group_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The 3x3 convs of the conv groups (not the stem)."""
    return [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.endswith("stem")]


def half_weights(model: nn.Module, dtype: torch.dtype, batchnorm_fp32: bool = True) -> nn.Module:
    """Weights (and so activations and optimizer state) in ``dtype``, every batchnorm's
    parameters and running statistics kept in fp32: airbench's GPU precision path, with no
    per-step casts of fp32 master weights. Batchnorm takes the half-precision input and
    returns it in that dtype. ``batchnorm_fp32=False`` (``train.precision`` ``*-all``): batchnorm
    in ``dtype`` too, as hiverge's record casts every module."""
    model.to(dtype)
    if batchnorm_fp32:
        for bn in batchnorms(model):
            bn.float()
    return model
