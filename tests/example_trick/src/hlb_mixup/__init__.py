"""mixup as an hlb trick: a pure function on tensors, plus three hook implementations."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import Transform, trick

NAME = "mixup"
__version__ = "0.2.0"


class MixupSettings(Settings):
    alpha: float = Field(0.2, gt=0, description="Beta(alpha, alpha) concentration: small values keep images nearly whole")
    start_epoch: int = Field(0, ge=0, description="first epoch with mixup")


def beta_sample(n: int, alpha: float, device, dtype=torch.float32) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) on ``device``, without a host sync (ratio of gammas)."""
    conc = torch.full((2, n), float(alpha), device=device)
    g = torch._standard_gamma(conc)
    return (g[0] / (g[0] + g[1]).clamp_min(1e-12)).to(dtype)


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image and its soft target with a shuffled partner's; rows still sum to one."""
    n = images.shape[0]
    partner = torch.randperm(n, device=images.device)
    lam = beta_sample(n, alpha, images.device)
    li = lam.to(images.dtype).view(n, *([1] * (images.dim() - 1)))
    lt = lam.to(targets.dtype).view(n, 1)
    return images * li + images[partner] * (1 - li), targets * lt + targets[partner] * (1 - lt)


hlb_trick_info, hlb_config_model = trick(NAME, "blend pairs of images and their labels with Beta(alpha, alpha) weights", MixupSettings, version=__version__,
                                         contract=3)


@hookimpl
def hlb_batch_transforms(cfg, ctx):
    s = getattr(cfg, NAME)

    def mixup_batch(images, targets):
        return mixup(images, targets, s.alpha)

    return [Transform(NAME, mixup_batch, level="batch", order=35, start_epoch=s.start_epoch)]
