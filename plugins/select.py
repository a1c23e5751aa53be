"""Data selection by a proxy net (airbench96_faster): before the run trains, a small net of
the same family trains over the same batches (same order, same augmentations) and scores every
example of every batch by its loss; the run then trains each step on the ``keep`` examples of
its batch the proxy found hardest (the highest loss), the loss summed over those alone.

The proxy is built by the run's own hooks with ``proxy_widths`` and ``proxy_depth`` (so
whitening, dirac, noisy batchnorm, the bias lr, label smoothing and the optimizer apply to it as
to the run; its stem bias stays frozen, as airbench96_faster's). It scores every batch with a
forward pass, and takes an optimizer step on its own selected loss every ``backward_every``
steps during its first ``proxy_epochs`` epochs (all of them by default); its lr schedule is the
run's, spread over those epochs. All of it is counted in the run's timed ``init`` phase.

``ctx.state["select"]`` keeps, per run, ``scores`` (the proxy's per-example losses, one row per
step) beside the ``Selection``: what was chosen and why."""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator

from hlbcli import TrickError, hookimpl
from hlbcli.config import Settings
from hlbcli.contract import Selection, trick

NAME = "select"


class SelectSettings(Settings):
    keep: int = Field(512, ge=1, description="examples of each batch the run trains on: the proxy's highest losses")
    proxy_widths: list[int] = Field([32, 64, 64], min_length=1, max_length=5, description="the proxy net's conv group widths")
    proxy_depth: int = Field(2, ge=2, le=3, description="the proxy net's convs per group")
    backward_every: int = Field(4, ge=1, description="the proxy takes an optimizer step every N steps (a forward on every step)")
    proxy_epochs: float | None = Field(
        None, gt=0, description="epochs the proxy trains (its lr schedule spread over them); it scores every batch of the run either way. Unset: the run's epochs")

    @field_validator("proxy_widths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError("every width must be a positive integer")
        return v


hlb_trick_info, hlb_config_model = trick(
    NAME, "train on the hardest examples of each batch, as a small proxy net scored them (airbench96_faster)", SelectSettings)


@hookimpl
def hlb_validate(cfg):
    s = getattr(cfg, NAME)
    if s.keep > cfg.train.batch_size:
        raise TrickError(f"select.keep {s.keep} is larger than train.batch_size {cfg.train.batch_size}",
                         f"use --set select.keep={cfg.train.batch_size // 2} or a larger batch")


def hardest(losses: torch.Tensor, k: int) -> torch.Tensor:
    """The positions of the ``k`` highest losses of a batch, in batch order (int64)."""
    return losses.topk(k, sorted=False).indices.sort().values


@hookimpl
def hlb_select(stream, build_proxy, cfg, ctx):
    s = getattr(cfg, NAME)
    k, total = s.keep, stream.total_steps
    train_steps = total if s.proxy_epochs is None else min(total, max(1, math.ceil(s.proxy_epochs * ctx.steps_per_epoch)))
    proxy = build_proxy(model={"widths": list(s.proxy_widths), "depth": s.proxy_depth}, freeze=("stem.bias",),
                        steps=train_steps)
    keep = torch.arange(k, device=ctx.device).repeat(total, 1)  # rows the stream never reaches (warm-up) stay valid
    scores = torch.zeros(total, stream.batch_size, device=ctx.device)
    for step, x, y in stream:
        learn = step < train_steps and step % s.backward_every == 0
        with torch.set_grad_enabled(learn), ctx.autocast():
            losses = proxy.loss_fn(proxy.forward(x), y).float()
        chosen = hardest(losses.detach(), k)
        keep[step] = chosen
        scores[step] = losses.detach()
        if learn:
            for opt in proxy.optimizers:
                opt.zero_grad(set_to_none=True)
            losses.gather(0, chosen).sum().backward()
            proxy.set_lr(step)
            for opt in proxy.optimizers:
                opt.step()
    ctx.state[NAME] = {"scores": scores, "keep": keep}
    return Selection(keep=keep)
