"""Partial identity (dirac) init: in each conv group's convs, the first min(in, out) filters
start as the identity, so at init the group passes its input through."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick
from hlbcli.model import group_convs

NAME = "dirac"


class DiracSettings(Settings):
    scale: float = Field(1.0, description="value of the identity tap (1.0: exact identity)")


def dirac_partial_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Set the first min(out, in) filters of a (out, in, k, k) weight to ``scale`` times the
    identity; the other filters keep their init."""
    out_c, in_c = weight.shape[:2]
    n = min(out_c, in_c)
    with torch.no_grad():
        torch.nn.init.dirac_(weight[:n])
        weight[:n].mul_(scale)
    return weight


hlb_trick_info, hlb_config_model = trick(NAME, "identity init of the first filters of each group conv (partial dirac)", DiracSettings)


@hookimpl
def hlb_model_init(model, ctx):
    s = ctx.settings(NAME)
    for conv in group_convs(model):
        dirac_partial_(conv.weight, s.scale)
