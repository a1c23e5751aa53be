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


def tta_views(x: torch.Tensor, level: int, shift: int = 1) -> tuple[torch.Tensor, list[float]]:
    """All the views of a batch stacked into one batch, and each view's weight in the
    average: level 1 the image and its mirror (1/2 each); level 2 also both mirrored
    copies shifted by ``shift`` pixels up-left and down-right (1/4 for the image and its
    mirror, 1/8 for each shifted view)."""
    if level == 0:
        return x, [1.0]
    if level == 1:
        return torch.cat([x, x.flip(-1)]), [0.5, 0.5]
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    up_left = padded[..., :h, :w]
    down_right = padded[..., 2 * shift : 2 * shift + h, 2 * shift : 2 * shift + w]
    views = torch.cat([x, up_left, down_right])
    return torch.cat([views, views.flip(-1)]), [0.25, 0.125, 0.125, 0.25, 0.125, 0.125]


def tta_forward(net, level: int, shift: int = 1):
    """A forward that averages the logits over the test-time views, all in one batch (one
    forward call per evaluation batch, whatever the level)."""
    if level == 0:
        return net

    def forward(x: torch.Tensor) -> torch.Tensor:
        views, weights = tta_views(x, level, shift)
        logits = net(views)
        logits = logits.view(len(weights), x.shape[0], *logits.shape[1:])
        w = torch.tensor(weights, dtype=logits.dtype, device=logits.device).view(-1, *[1] * (logits.dim() - 1))
        return (logits * w).sum(0)

    return forward


hlb_trick_info, hlb_config_model = trick(NAME, "test-time augmentation: mirror, and mirror + 1-pixel translations", TtaSettings)


@hookimpl(tryfirst=True)
def hlb_eval_forward(model, cfg):
    s = getattr(cfg, NAME)
    return tta_forward(model, s.level, s.shift)
