"""The step's update in micro-batches: each part's forward and backward, the gradients summed, one
optimizer step. It owns the update (hlb_update_build)."""

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick

from hlb_fixture_tricks import CONTRACT


class AccumulateSettings(Settings):
    parts: int = Field(2, ge=1, description="micro-batches per step")


class Accumulate:
    hlb_trick_info, hlb_config_model = trick("accumulate", "the batch in micro-batches, gradients summed",
                                             AccumulateSettings, contract=CONTRACT)

    @hookimpl
    def hlb_update_build(self, parts, cfg):
        n = cfg.accumulate.parts

        def update(x, targets, weights, step):
            parts.zero_grad()
            losses, logits = [], []
            chunks = zip(x.chunk(n), targets.chunk(n), weights.chunk(n) if weights is not None else [None] * n)
            for xs, ts, ws in chunks:
                loss, out = parts.forward_loss(xs, ts, ws)
                loss.backward()
                losses.append(loss.detach())
                logits.append(out)
            parts.after_backward(step)
            parts.optimizer_step(step)
            return torch.stack(losses).sum(), torch.cat(logits)

        return update


TRICK = Accumulate()
