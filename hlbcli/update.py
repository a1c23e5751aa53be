"""The update: the part of a training step that turns a batch into new weights (the forward and
the loss, the gradients, the optimizers' steps). :func:`hlbcli.step.build_step` builds one per
phase, before the loop, through ``hlb_update_build``: the core's (:func:`plain_update`) is one
forward and backward and each optimizer's step; a trick that owns the update (``sam``: two
forward and backward passes) builds its own from the same :class:`UpdateParts`. Everything a
part does per step is device work: no hook call, no host sync."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

#: ``update(x, targets, weights, step) -> (summed loss, logits)``: one step's update of the
#: batch ``x`` (after the batch transforms) with ``targets`` (class indices, or soft ones where a
#: batch transform is active), ``weights`` the selection's per-example weights for the step or
#: None, ``step`` the 0-based step index (a host int). The loss and logits returned are what the
#: epoch's metrics read (the first pass's, for an update that makes several).
Update = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", int], tuple[torch.Tensor, torch.Tensor]]


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` must be given a closure: its ``closure`` parameter has no
    default (``torch.optim.LBFGS``). Read once, when the update is built."""
    try:
        p = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return p is not None and p.default is inspect.Parameter.empty


@dataclass(frozen=True)
class UpdateParts:
    """What an update is built from (``hlb_update_build``), fixed for the phase.

    - ``forward_loss(x, targets, weights=None) -> (summed loss, logits)``: the forward under the
      run's autocast and the loss (each example's times its weight when ``weights`` is given);
      the compiled graph when the net is compiled, so an update that calls it runs compiled.
      Calling it twice runs the net twice (a batchnorm's running statistics move twice).
    - ``optimizers``: the run's, in order; ``params``: every parameter they hold, in that order.
    - ``after_backward(step)``: the ``after_backward`` step actions due at ``step`` (they may
      edit the gradients the optimizers are about to use); call it once, after the last backward.
    - ``set_lrs(step)``: each optimizer group's lr for ``step`` (the schedule).
    - ``optimizer_steps``: each optimizer's ``step`` (the labelled one under ``hlb profile``).

    :meth:`zero_grad`, :meth:`optimizer_step` and :meth:`closure` are what an update calls."""

    forward_loss: Callable
    optimizers: tuple
    params: tuple
    after_backward: Callable[[int], None]
    set_lrs: Callable[[int], None]
    optimizer_steps: tuple
    #: per optimizer, whether its ``step`` requires a closure (:func:`needs_closure`)
    takes_closure: tuple = ()

    def zero_grad(self) -> None:
        """Every optimizer's ``zero_grad(set_to_none=True)``."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def optimizer_step(self, step: int, closure: Callable[[], torch.Tensor] | None = None) -> None:
        """Set each group's lr for ``step``, then ``step()`` each optimizer in order; one whose
        ``step`` requires a closure (:func:`needs_closure`: LBFGS) is given ``closure``
        (:meth:`closure` makes one), the others are not (torch's optimizers would call it)."""
        self.set_lrs(step)
        for opt_step, takes in zip(self.optimizer_steps, self.takes_closure):
            if takes and closure is not None:
                opt_step(closure)
            else:
                opt_step()

    def closure(self, x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> Callable[[], torch.Tensor]:
        """A closure on this batch, for an optimizer that calls it as often as it needs: zero
        the gradients, recompute the summed loss, backward, return the loss. The step actions
        do not run inside it."""

        def closure() -> torch.Tensor:
            with torch.enable_grad():
                self.zero_grad()
                loss, _ = self.forward_loss(x, targets, weights)
                loss.backward()
            return loss

        return closure


def update_parts(forward_loss: Callable, optimizers: list, after_backward: Callable[[int], None],
                 set_lrs: Callable[[int], None], optimizer_steps: tuple) -> UpdateParts:
    """:class:`UpdateParts` of a phase; ``forward_loss`` is called ``(x, targets)`` when there
    are no weights (the compiled graph sees the same arguments as before there was a choice)."""

    def forward_and_loss(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None):
        return forward_loss(x, targets) if weights is None else forward_loss(x, targets, weights)

    params = tuple(p for opt in optimizers for g in opt.param_groups for p in g["params"])
    return UpdateParts(forward_and_loss, tuple(optimizers), params, after_backward, set_lrs, tuple(optimizer_steps),
                       tuple(needs_closure(opt) for opt in optimizers))


def plain_update(parts: UpdateParts) -> Update:
    """The core's update: the forward and the loss, the gradients (zeroed first), the
    ``after_backward`` actions, the lrs and each optimizer's step. An optimizer that requires a
    closure is given one on the same batch (its first evaluation is a second forward)."""
    forward_loss, zero_grad, after_backward, optimizer_step = (
        parts.forward_loss, parts.zero_grad, parts.after_backward, parts.optimizer_step)
    closing = any(parts.takes_closure)

    def update(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None, i: int):
        loss, logits = forward_loss(x, targets, weights)
        zero_grad()
        loss.backward()
        after_backward(i)
        optimizer_step(i, parts.closure(x, targets, weights) if closing else None)
        return loss, logits

    return update
