"""A final evaluation of its own in the built-in tta's place: the image and its mirror, averaged."""

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick

from hlb_fixture_tricks import CONTRACT


class MyTtaSettings(Settings):
    mirror_weight: float = Field(0.5, ge=0, le=1, description="the mirror's share of the averaged logits")


hlb_trick_info, hlb_config_model = trick("mytta", "image and mirror, averaged by mirror_weight", MyTtaSettings,
                                         replaces=("tta",), contract=CONTRACT)


@hookimpl
def hlb_eval_forward(model, cfg, final):
    w = cfg.mytta.mirror_weight

    def forward(images: torch.Tensor) -> torch.Tensor:
        return (1 - w) * model(images) + w * model(images.flip(-1))

    return forward
