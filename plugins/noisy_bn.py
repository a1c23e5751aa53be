"""Noisy batchnorm: a high running-stat momentum and a tiny eps make the batch statistics a
regulariser; the scale can be frozen at 1, and batchnorm can run in fp32 under autocast."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick
from hlbcli.model import batchnorms

NAME = "noisy_bn"


class NoisyBnSettings(Settings):
    momentum: float = Field(0.4, gt=0, le=1, description="running-stat momentum, PyTorch convention (airbench's 0.6 is 1 - this)")
    eps: float = Field(1e-12, gt=0, le=1, description="batchnorm epsilon")
    freeze_scale: bool = Field(True, description="keep the scale (weight) at 1, untrained")
    fp32: bool = Field(False, description="run batchnorm in fp32 under half-precision autocast")


class Fp32BatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d that normalises in fp32 and returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def make_noisy(model: torch.nn.Module, momentum: float, eps: float, freeze_scale: bool, fp32: bool) -> torch.nn.Module:
    for bn in batchnorms(model):
        bn.momentum = momentum
        bn.eps = eps
        if freeze_scale and bn.weight is not None:
            with torch.no_grad():
                bn.weight.fill_(1.0)
            bn.weight.requires_grad_(False)
        if fp32 and type(bn) is torch.nn.BatchNorm2d:
            bn.__class__ = Fp32BatchNorm2d
    return model


hlb_trick_info, hlb_config_model = trick(
    NAME, "batchnorm with high momentum and tiny eps; frozen scale; optional fp32", NoisyBnSettings,
    overrides=("model.bn_momentum", "model.bn_eps"),
)


@hookimpl(wrapper=True)
def hlb_model_build(cfg):
    model = yield
    s = getattr(cfg, NAME)
    return make_noisy(model, s.momentum, s.eps, s.freeze_scale, s.fp32)
