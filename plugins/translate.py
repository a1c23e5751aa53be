"""Random translation: reflect-pad by ``pad`` pixels, then crop back to the original size at
a shift drawn uniformly from every value in [-pad, pad] on each axis (the seed's crop only
reached -2..+1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import ORDER_GEOMETRY, PerInput, Transform, trick

NAME = "translate"
#: where this trick's transform runs among the others (``Transform.order``)
ORDER = ORDER_GEOMETRY + 10


class TranslateSettings(Settings):
    pad: int = Field(2, ge=1, le=16, description="largest shift in pixels (reflect padding)")


def shifted(images: torch.Tensor, shifts: torch.Tensor, pad: int, padded: torch.Tensor | None = None) -> torch.Tensor:
    """Translate each image of (N, C, H, W) by its (dy, dx) in ``shifts`` (N, 2), values in
    [-pad, pad], filling from a reflection (``padded``: the images reflect-padded by ``pad``,
    if already at hand). One masked copy per shift value pair, so the set is read about twice
    in all; no per-image Python. (Runs once per epoch, outside the step.)"""
    _, _, h, w = images.shape
    if padded is None:
        padded = F.pad(images, (pad,) * 4, mode="reflect")
    out = torch.empty_like(images)
    for dy in range(-pad, pad + 1):
        row = shifts[:, 0] == dy
        for dx in range(-pad, pad + 1):
            m = row & (shifts[:, 1] == dx)
            out[m] = padded[m, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return out


def random_translate(images: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                     padded: torch.Tensor | None = None) -> torch.Tensor:
    shifts = torch.randint(-pad, pad + 1, (len(images), 2), device=images.device, generator=generator)
    return shifted(images, shifts, pad, padded)


class PadCache(PerInput):
    """The reflect-padded copies of the last two inputs (an alternating flip hands over two
    sets, in turn), so the set is padded once per input, not once per epoch."""

    def __init__(self, pad: int):
        super().__init__(lambda images: F.pad(images, (pad,) * 4, mode="reflect"), keep=2)


hlb_trick_info, hlb_config_model = trick(NAME, "random translation by every shift in [-pad, pad] from a reflect pad, per epoch", TranslateSettings)


@hookimpl
def hlb_batch_transforms(cfg):
    pad = getattr(cfg, NAME).pad
    padded = PadCache(pad)

    def translate_epoch(images, epoch, gen=None):
        return random_translate(images, pad, gen, padded(images))

    return [Transform(NAME, translate_epoch, level="epoch", order=ORDER)]
