"""Random translation: reflect-pad by ``pad`` pixels, then crop back to the original size at
a shift drawn uniformly from every value in [-pad, pad] on each axis (the seed's crop only
reached -2..+1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import Transform, TrickInfo

NAME = "translate"


class TranslateSettings(Settings):
    pad: int = Field(2, ge=1, le=16, description="largest shift in pixels (reflect padding)")


def shifted(images: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image of (N, C, H, W) by its (dy, dx) in ``shifts`` (N, 2), values in
    [-pad, pad], filling from a reflection. One gather, no per-image Python."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad,) * 4, mode="reflect")
    rows = (torch.arange(h, device=images.device) + pad).view(1, h) + shifts[:, :1]  # N, H
    cols = (torch.arange(w, device=images.device) + pad).view(1, w) + shifts[:, 1:]  # N, W
    idx = (rows.view(n, 1, h, 1) * (w + 2 * pad) + cols.view(n, 1, 1, w)).expand(n, c, h, w)
    return padded.flatten(2).gather(2, idx.reshape(n, c, h * w)).view(n, c, h, w)


def random_translate(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    shifts = torch.randint(-pad, pad + 1, (len(images), 2), device=images.device, generator=generator)
    return shifted(images, shifts, pad)


@hookimpl
def hlb_trick_info():
    return TrickInfo(NAME, "random translation by every shift in [-pad, pad] from a reflect pad, per epoch")


@hookimpl
def hlb_config_model():
    return NAME, TranslateSettings


@hookimpl
def hlb_batch_transforms(cfg, ctx):
    pad = getattr(cfg, NAME).pad

    def translate_epoch(images, epoch, gen=None):
        return random_translate(images, pad, gen)

    return [Transform(NAME, translate_epoch, level="epoch", order=10)]
