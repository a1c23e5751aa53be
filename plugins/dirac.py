"""Partial identity (dirac) init: in each conv group's convs, the first min(in, out) filters
start as the identity, so at init the group passes its input through. The group's first conv
can instead take the identity on top of its random init, rescaled to the init's mean and std
(``first_conv = "add"``, as tysam-code's hlb-CIFAR10 v0.7 does)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick
from hlbcli.model import ConvGroup, group_convs

NAME = "dirac"


class DiracSettings(Settings):
    scale: float = Field(1.0, description="value of the identity tap (1.0: exact identity)")
    first_conv: Literal["replace", "add"] = Field(
        "replace", description="each group's first conv: replace (its first min(in, out) filters become the identity, as airbench94) "
                               "or add (the identity added to its random init, the whole weight rescaled to the init's mean and std, "
                               "as hlb-CIFAR10 v0.7); the other convs are always replaced")


def dirac_partial_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Set the first min(out, in) filters of a (out, in, k, k) weight to ``scale`` times the
    identity; the other filters keep their init."""
    out_c, in_c = weight.shape[:2]
    n = min(out_c, in_c)
    with torch.no_grad():
        torch.nn.init.dirac_(weight[:n])
        weight[:n].mul_(scale)
    return weight


def dirac_added_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Add ``scale`` times the identity (the first min(out, in) filters' centre taps) to the
    weight's init, then shift and scale the whole weight back to the init's mean and std: the
    identity path and the random filters share the init's size."""
    with torch.no_grad():
        std, mean = torch.std_mean(weight)
        weight.add_(torch.nn.init.dirac_(torch.empty_like(weight)), alpha=scale)
        new_std, new_mean = torch.std_mean(weight)
        weight.sub_(new_mean).mul_(std / new_std).add_(mean)
    return weight


hlb_trick_info, hlb_config_model = trick(NAME, "identity init of the first filters of each group conv (partial dirac)", DiracSettings)


@hookimpl
def hlb_model_init(model, ctx):
    s = ctx.settings(NAME)
    added = {id(g.conv1) for g in model.modules() if isinstance(g, ConvGroup)} if s.first_conv == "add" else set()
    for conv in group_convs(model):
        (dirac_added_ if id(conv) in added else dirac_partial_)(conv.weight, s.scale)
