"""Sharpness-aware minimisation (SAM; Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware
Minimization for Efficiently Improving Generalization", ICLR 2021): each step takes the gradient
at the weights moved up the loss by ``rho`` along the batch's own gradient direction,

    e = rho * g / ||g||,   g = grad L(w);   the optimizers step with grad L(w + e), from w.

The trick owns the step's update (``hlb_update_build``): two forward and backward passes per
step, both through the run's forward-and-loss (compiled when the net is compiled), ``||g||``
the L2 norm over every parameter the optimizers hold. The weights are put back by copy, not by
subtracting ``e`` (no rounding left behind). The second pass moves batchnorm's running
statistics too (a batch seen twice). The loss and accuracy the epoch table shows are the first
pass's (at ``w``)."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import UpdateParts, trick

NAME = "sam"


class SamSettings(Settings):
    rho: float = Field(0.05, gt=0, description="radius of the ascent step, in the L2 norm of all trained parameters")


hlb_trick_info, hlb_config_model = trick(NAME, "sharpness-aware minimisation: the gradient at w + rho * g/|g| (two passes a step)",
                                         SamSettings)


def sam_update(parts: UpdateParts, rho: float):
    """The SAM update of ``parts``: device work only, no host sync."""
    params, forward_loss, zero_grad = parts.params, parts.forward_loss, parts.zero_grad
    closing = any(parts.takes_closure)  # read once, at assembly

    def update(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, i: int):
        loss, logits = forward_loss(x, targets, weights)
        zero_grad()
        loss.backward()
        with torch.no_grad():
            live = [p for p in params if p.grad is not None]
            grads = [p.grad for p in live]
            norm = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))
            scale = rho / (norm + 1e-12)
            saved = [p.detach().clone() for p in live]
            torch._foreach_add_(live, torch._foreach_mul(grads, scale))
        zero_grad()
        forward_loss(x, targets, weights)[0].backward()
        with torch.no_grad():
            torch._foreach_copy_(live, saved)
        parts.after_backward(i)
        parts.optimizer_step(i, parts.closure(x, targets, weights) if closing else None)
        return loss, logits

    return update


@hookimpl
def hlb_update_build(parts, cfg):
    return sam_update(parts, getattr(cfg, NAME).rho)
