"""Colour jitter (hiverge's cifar10-speedrun): once per epoch, each image of the normalised,
flipped and translated training set gets a brightness shift ``b`` drawn uniformly from
[-brightness, brightness] added, then a contrast factor ``c`` drawn uniformly from
[1 - contrast, 1 + contrast] multiplied: ``x' = (x + b) * c``, one ``b`` and one ``c`` per image
(all channels and pixels alike). Drawn on the device with the run's generator; the set keeps
its dtype and memory format, and nothing moves to the host."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import ORDER_COLOR, Transform, trick

NAME = "color_jitter"
#: where this trick's transform runs among the others (``Transform.order``)
ORDER = ORDER_COLOR


class ColorJitterSettings(Settings):
    brightness: float = Field(0.1399, ge=0, le=1, description="largest brightness shift added per image, in normalised units (hiverge: 0.1399; 1 is a shift of one standard deviation)")
    contrast: float = Field(0.1308, ge=0, le=1, description="largest contrast change per image: the factor is drawn from [1 - contrast, 1 + contrast] (hiverge: 0.1308; above 1 the factor could turn negative and invert the image)")


def jitter_factors(n: int, brightness: float, contrast: float, device, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, (shift, factor), each (N, 1, 1, 1) in ``dtype``: shift uniform in
    [-brightness, brightness], factor uniform in [1 - contrast, 1 + contrast]. Drawn in fp32
    (the shifts first), then cast."""
    shift = (torch.rand(n, 1, 1, 1, device=device, generator=generator) * 2 - 1) * brightness
    factor = (torch.rand(n, 1, 1, 1, device=device, generator=generator) * 2 - 1) * contrast + 1
    return shift.to(dtype), factor.to(dtype)


def color_jitter(images: torch.Tensor, brightness: float, contrast: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``(images + shift) * factor`` per image of (N, C, H, W) (:func:`jitter_factors`), into a
    new tensor of the input's dtype and memory format; the input is left as it was."""
    shift, factor = jitter_factors(len(images), brightness, contrast, images.device, generator, images.dtype)
    out = torch.empty_like(images)  # preserve_format: channels_last stays channels_last
    torch.add(images, shift, out=out)
    return out.mul_(factor)


hlb_trick_info, hlb_config_model = trick(
    NAME, "per-image brightness shift and contrast factor, x' = (x + b) * c, drawn per epoch", ColorJitterSettings)


@hookimpl
def hlb_batch_transforms(cfg):
    s = getattr(cfg, NAME)

    def color_jitter_epoch(images, epoch, gen=None):
        return color_jitter(images, s.brightness, s.contrast, gen)

    return [Transform(NAME, color_jitter_epoch, level="epoch", order=ORDER)]
