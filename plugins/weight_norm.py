"""Weight norm by renormalisation: after every optimizer step, each trainable group conv's
weight is rescaled to the fixed norm ``scale * sqrt(out_channels)`` (average filter norm
``scale``), in one batch of foreach operations.

Why this form: every group conv feeds a batchnorm, so a conv's scale does not change the
train-mode output, only the effective step size: as weights grow, steps shrink. Pinning the
norm removes that hidden lr decay (airbench's Muon script does the same). A reparametrisation
w = g * v / |v| would add a gain the batchnorm already cancels."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import StepAction, trick
from hlbcli.model import group_convs

NAME = "weight_norm"


class WeightNormSettings(Settings):
    scale: float = Field(1.0, gt=0, description="target average filter norm")


@torch.no_grad()
def renormalize_(weights: list[torch.Tensor], scale: float) -> None:
    """Rescale each (out, ...) tensor to norm scale * sqrt(out), without a host sync."""
    norms = torch._foreach_norm(weights)
    targets = [scale * math.sqrt(w.shape[0]) for w in weights]
    factors = torch._foreach_div(norms, 1.0)  # copies, to divide in place below
    torch._foreach_reciprocal_(factors)
    torch._foreach_mul_(factors, targets)
    torch._foreach_mul_(weights, factors)


hlb_trick_info, hlb_config_model = trick(NAME, "conv filters renormalised to a fixed norm after every step", WeightNormSettings)


@hookimpl
def hlb_model_init(model, ctx):
    weights = [c.weight for c in group_convs(model) if c.weight.requires_grad]
    renormalize_(weights, getattr(ctx.cfg, NAME).scale)


@hookimpl
def hlb_step_actions(model, cfg):
    weights = [c.weight for c in group_convs(model) if c.weight.requires_grad]
    scale = getattr(cfg, NAME).scale
    return [StepAction(NAME, lambda step: renormalize_(weights, scale), where="after_step")]
