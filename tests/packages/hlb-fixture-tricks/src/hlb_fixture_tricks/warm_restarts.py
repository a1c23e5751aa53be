"""Cosine learning rate with warm restarts: its own schedule in place of the core's."""

import math

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick

from hlb_fixture_tricks import CONTRACT


class WarmRestartsSettings(Settings):
    cycles: int = Field(2, ge=1, description="cosine cycles over the run")


# the core's schedule keys do nothing while this schedule is on: declared, so a value for them is refused
hlb_trick_info, hlb_config_model = trick("warm_restarts", "cosine lr restarted every 1/cycles of the run",
                                         WarmRestartsSettings, contract=CONTRACT,
                                         overrides=("train.lr_start", "train.lr_peak_at", "train.lr_end"))


@hookimpl
def hlb_lr_schedule(total_steps, cfg):
    cycle = (total_steps + 1) / cfg.warm_restarts.cycles
    x = torch.arange(total_steps + 1, dtype=torch.float64) % cycle / cycle
    return (0.5 * (1 + torch.cos(math.pi * x))).float()
