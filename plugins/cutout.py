"""Cutout: a random ``size`` x ``size`` square of each training image is set to zero (the
dataset mean after normalisation), once per epoch."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import ORDER_OCCLUSION, Transform, trick

NAME = "cutout"
#: where this trick's transform runs among the others (``Transform.order``)
ORDER = ORDER_OCCLUSION


class CutoutSettings(Settings):
    size: int = Field(12, ge=1, description="side of the square in pixels")


def square_masks(n: int, h: int, w: int, size: int, device, generator=None) -> torch.Tensor:
    """(N, 1, H, W) boolean masks of one size x size square per image, placed fully inside."""
    size = min(size, h, w)
    y0 = torch.randint(0, h - size + 1, (n, 1, 1, 1), device=device, generator=generator)
    x0 = torch.randint(0, w - size + 1, (n, 1, 1, 1), device=device, generator=generator)
    ys = torch.arange(h, device=device).view(1, 1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, 1, w)
    return (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)


def cutout(images: torch.Tensor, size: int, generator=None) -> torch.Tensor:
    n, _, h, w = images.shape
    return images.masked_fill(square_masks(n, h, w, size, images.device, generator), 0)


hlb_trick_info, hlb_config_model = trick(NAME, "zero a random square of each training image, per epoch", CutoutSettings)


@hookimpl
def hlb_batch_transforms(cfg):
    size = getattr(cfg, NAME).size

    def cutout_epoch(images, epoch, gen=None):
        return cutout(images, size, gen)

    return [Transform(NAME, cutout_epoch, level="epoch", order=ORDER)]
