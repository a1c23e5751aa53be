"""Horizontal flips of the training set, once per epoch. ``alternating`` (airbench): each
image gets a random flip bit once, and every other epoch all bits invert, so each image is
flipped in exactly one of any two consecutive epochs. ``random``: a fresh coin per image per
epoch."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import ORDER_GEOMETRY, PerInput, Transform, trick

NAME = "flip"
#: where this trick's transform runs among the others (``Transform.order``)
ORDER = ORDER_GEOMETRY


class FlipSettings(Settings):
    mode: Literal["alternating", "random"] = Field("alternating", description="alternating (airbench) or random per epoch")


def flip_masked(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip (left-right) the images where ``mask`` (N,) is true."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


def make_transform(n: int, mode: str, device, generator: torch.Generator | None) -> Transform:
    base = torch.rand(n, device=device, generator=generator) < 0.5
    # the even epochs' set is computed once per input (one select over the set), the odd
    # epochs' set is that one mirrored whole (the same as flipping by ~base); both kept, so
    # that later transforms see the same two inputs in turn
    even = PerInput(lambda images: flip_masked(images, base))
    odd = PerInput(lambda flipped: flipped.flip(-1))

    def flip_epoch(images: torch.Tensor, epoch: int, gen: torch.Generator | None = None) -> torch.Tensor:
        if mode == "alternating":
            return even(images) if epoch % 2 == 0 else odd(even(images))
        mask = torch.rand(len(images), device=images.device, generator=gen) < 0.5
        return flip_masked(images, mask)

    return Transform(NAME, flip_epoch, level="epoch", order=ORDER)


hlb_trick_info, hlb_config_model = trick(NAME, "horizontal flips, alternating per epoch (each image in one of two epochs) or random", FlipSettings)


@hookimpl
def hlb_batch_transforms(cfg, ctx):
    return [make_transform(len(ctx.dataset.train_labels), getattr(cfg, NAME).mode, ctx.device, ctx.generator)]
