"""CutMix on the device: each image gets a ``size`` x ``size`` patch pasted from another image
of the batch, and its soft target becomes the area-weighted mix of both labels."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import ORDER_MIXING, Transform, trick

NAME = "cutmix"
#: where this trick's transform runs among the others (``Transform.order``)
ORDER = ORDER_MIXING


class CutmixSettings(Settings):
    size: int = Field(3, ge=1, description="side of the pasted square in pixels")
    last_epochs: int | None = Field(6, ge=0, description="active only in the last N epochs (unset: every epoch)")


def cutmix(images: torch.Tensor, targets: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random square from a shuffled partner into each image; mix the targets by the
    pasted fraction of the area (so each row still sums to one)."""
    n, _, h, w = images.shape
    dev = images.device
    size = min(size, h, w)
    partner = torch.randperm(n, device=dev)
    y0 = torch.randint(0, h - size + 1, (n, 1, 1, 1), device=dev)
    x0 = torch.randint(0, w - size + 1, (n, 1, 1, 1), device=dev)
    ys = torch.arange(h, device=dev).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, 1, w)
    mask = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    mixed = torch.where(mask, images[partner], images)
    area = mask.flatten(1).float().mean(1, keepdim=True).to(targets.dtype)
    return mixed, targets * (1 - area) + targets[partner] * area


hlb_trick_info, hlb_config_model = trick(NAME, "paste a square from another image, mix the targets by area", CutmixSettings)


@hookimpl
def hlb_batch_transforms(cfg, ctx):
    s = getattr(cfg, NAME)
    start = 0 if s.last_epochs is None else max(0, ctx.num_epochs - s.last_epochs)

    def cutmix_batch(images, targets):
        return cutmix(images, targets, s.size)

    return [Transform(NAME, cutmix_batch, level="batch", order=ORDER, start_epoch=start)]
