"""Label smoothing: targets become (1 - eps) * targets + eps / K. Works on soft targets, so
it composes with CutMix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import CrossEntropy, trick

NAME = "label_smoothing"


class LabelSmoothingSettings(Settings):
    factor: float = Field(0.2, ge=0, lt=1, description="probability mass spread evenly over all classes")


def smooth(targets: torch.Tensor, factor: float) -> torch.Tensor:
    return targets * (1 - factor) + factor / targets.shape[-1]


hlb_trick_info, hlb_config_model = trick(NAME, "soft targets: (1 - eps) * y + eps / K, composes with CutMix", LabelSmoothingSettings)


def fold(loss, factor: float):
    """``loss`` with smoothing ``factor`` added. The core's :class:`CrossEntropy` takes it as
    its own ``label_smoothing`` (one kernel, class-index targets stay as they are); any other
    loss gets smoothed probability targets."""
    if isinstance(loss, CrossEntropy):
        # smoothing s then f: (1-f)((1-s)y + s/K) + f/K = (1-f)(1-s)y + (1-(1-f)(1-s))/K
        return CrossEntropy(1 - (1 - loss.label_smoothing) * (1 - factor))

    def smoothed(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not targets.is_floating_point():
            targets = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
        return loss(logits, smooth(targets, factor))

    return smoothed


@hookimpl(wrapper=True)
def hlb_loss_build(cfg):
    loss = yield
    return fold(loss, getattr(cfg, NAME).factor)
