"""Test-time augmentation: average the logits over the mirror image (level 1), and also over
copies translated by one pixel each way (level 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick

NAME = "tta"


class TtaSettings(Settings):
    level: int = Field(2, ge=0, le=2, description="0 none, 1 mirror, 2 mirror + translate")
    shift: int = Field(1, ge=1, le=4, description="level 2: translation in pixels")


def tta_forward(net, level: int, shift: int = 1):
    """A forward that averages logits over test-time augmentations."""

    def mirror(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    def mirror_translate(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        up_left = padded[..., :h, :w]
        down_right = padded[..., 2 * shift : 2 * shift + h, 2 * shift : 2 * shift + w]
        shifted = 0.5 * mirror(up_left) + 0.5 * mirror(down_right)
        return 0.5 * mirror(x) + 0.5 * shifted

    return {0: net, 1: mirror, 2: mirror_translate}[level]


hlb_trick_info, hlb_config_model = trick(NAME, "test-time augmentation: mirror, and mirror + 1-pixel translations", TtaSettings)


@hookimpl(tryfirst=True)
def hlb_eval_forward(model, cfg):
    s = getattr(cfg, NAME)
    return tta_forward(model, s.level, s.shift)
