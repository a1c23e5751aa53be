"""Label smoothing: targets become (1 - eps) * targets + eps / K. Works on soft targets, so
it composes with CutMix."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick

NAME = "label_smoothing"


class LabelSmoothingSettings(Settings):
    factor: float = Field(0.2, ge=0, lt=1, description="probability mass spread evenly over all classes")


def smooth(targets: torch.Tensor, factor: float) -> torch.Tensor:
    return targets * (1 - factor) + factor / targets.shape[-1]


hlb_trick_info, hlb_config_model = trick(NAME, "soft targets: (1 - eps) * y + eps / K, composes with CutMix", LabelSmoothingSettings)


@hookimpl(wrapper=True)
def hlb_loss_build(cfg):
    loss = yield
    factor = getattr(cfg, NAME).factor

    def smoothed(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(logits, smooth(targets, factor))

    return smoothed
