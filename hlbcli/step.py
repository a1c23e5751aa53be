"""The step: one phase's transforms and actions fused into a plain function, built once per
phase before the loop. Per step: no hook call, no host sync, no Python per image."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from hlbcli.contract import RunContext, StepAction, Transform, set_lrs
from hlbcli.errors import TrickError
from hlbcli.update import Update, UpdateParts, plain_update, update_parts


def build_step(
    forward: torch.nn.Module,
    loss_fn: Callable,
    optimizers: list[torch.optim.Optimizer],
    base_lrs: list[float],
    lr_tables: list[list[float]],
    batch_transforms: list[Transform],
    actions: list[StepAction],
    num_classes: int,
    ctx: RunContext,
    record: "StepRecord",
    forward_loss: Callable | None = None,
    weights: torch.Tensor | None = None,
    labelled: bool = False,
    update_build: Callable[[UpdateParts], Update | None] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, int], None]:
    """Fuse one phase's transforms and actions into a plain step function.

    Per step it dispatches what a hand-written step would: the forward, one loss, the
    backward, the optimizer's kernels and the actions due; nothing for bookkeeping (the loss
    tensors are kept on a list and summed once per epoch). Class-index targets go to the loss
    unless a batch transform is active, which gets one-hot targets and hands back soft ones.
    ``lr_tables``: one list of lr multipliers per group of ``optimizers`` (in order), made by
    :func:`group_schedules`. ``forward_loss``: ``(x, targets) -> (summed loss, logits)`` in
    one call, in place of the forward and the loss (``train.compile_loss``: :func:`fused_forward_loss`).
    ``weights``: the selection stage's per-example weights, row ``i`` for step ``i``
    (:class:`hlbcli.contract.Selection`), multiplying each example's loss before the sum.
    ``labelled`` (``hlb profile``): each part is wrapped, here at assembly, in a profiler range
    (:data:`LABELS`) that names its phase; the step of every other command has none.
    ``update_build``: ``hlb_update_build`` bound to the run (the core's answer, when no trick
    owns the update, is :func:`hlbcli.update.plain_update`), called here once with the phase's
    :class:`~hlbcli.update.UpdateParts`; None builds the core's directly."""
    before = tuple(a for a in actions if a.where == "before_forward")
    after_bwd = tuple(a for a in actions if a.where == "after_backward")
    after = tuple(a for a in actions if a.where == "after_step")
    transforms = tuple(t.fn for t in batch_transforms)
    soft = bool(transforms)
    groups = [g for opt in optimizers for g in opt.param_groups]
    tables = tuple(lr_tables)
    if forward_loss is None:
        forward_loss = plain_forward_loss(forward, loss_fn, soft, ctx)
    opt_steps = tuple(opt.step for opt in optimizers)
    if labelled:
        before, after_bwd, after = ([labelled_action(a) for a in part] for part in (before, after_bwd, after))
        transforms = tuple(label(LABELS["transforms"], fn) for fn in transforms)
        forward_loss = label(LABELS["forward"], forward_loss)
        opt_steps = tuple(label(LABELS["optimizer"], fn) for fn in opt_steps)
    losses, last = record.losses, record.last

    def after_backward(i: int) -> None:
        for a in after_bwd:
            if a.active(i):
                a.fn(i)

    parts = update_parts(forward_loss, optimizers, after_backward, lambda i: set_lrs(groups, base_lrs, tables, i), opt_steps)
    update = update_build(parts) if update_build is not None else None
    update = update if update is not None else plain_update(parts)

    def step(x: torch.Tensor, y: torch.Tensor, i: int) -> None:
        for a in before:
            if a.active(i):
                a.fn(i)
        targets = y
        if soft:
            targets = F.one_hot(y, num_classes).float()
            for fn in transforms:
                x, targets = fn(x, targets)
        loss, logits = update(x, targets, None if weights is None else weights[i], i)
        done = i + 1
        for a in after:
            if a.active(done):
                a.fn(done)
        losses.append(loss)
        last[:] = (logits, y)

    return step


#: the profiler ranges of a labelled step (``hlb profile``'s phases); the backward is autograd's
#: own (``autograd::engine::evaluate_function: ...``), the actions' ``hlb: action NAME``
#: (outside the step, in every run: ``data`` the epoch's set, ``evaluation`` the final one)
LABELS = {"transforms": "hlb: batch transforms", "forward": "hlb: forward and loss", "optimizer": "hlb: optimizer",
          "action": "hlb: action ", "data": "hlb: epoch data", "evaluation": "hlb: final evaluation"}


def label(name: str, fn: Callable) -> Callable:
    """``fn`` inside a profiler range called ``name``."""

    def labelled(*args, **kwargs):
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)

    return labelled


def labelled_action(a: StepAction) -> StepAction:
    """A copy of the step action ``a`` whose ``fn`` runs in the range ``hlb: action NAME``."""
    return replace(a, fn=label(LABELS["action"] + a.name, a.fn))


def plain_forward_loss(forward: Callable, loss_fn: Callable, soft: bool, ctx: RunContext) -> Callable:
    """``(x, targets[, weights]) -> (summed loss, logits)``: the forward under the run's
    autocast, then the loss (``soft``: a batch transform hands soft targets, and the logits go to
    it in fp32), each example's times its weight when given. The one forward-and-loss of the
    step, eager or compiled whole (:func:`fused_forward_loss`)."""
    autocast = ctx.autocast

    def forward_loss(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None):
        with autocast():
            logits = forward(x)
        loss = loss_fn(logits.float() if soft else logits, targets)
        return (loss if weights is None else loss * weights).sum(), logits

    return forward_loss


def fused_forward_loss(model: torch.nn.Module, loss_fn: Callable, soft: bool, ctx: RunContext, mode: str) -> Callable:
    """:func:`plain_forward_loss` of the uncompiled ``model`` as one ``torch.compile``d graph
    (``fullgraph``, ``mode``): the same numbers the step computes in two calls."""
    return torch.compile(plain_forward_loss(model, loss_fn, soft, ctx), mode=mode, fullgraph=True)


def group_schedules(groups: list[dict], run_table: list[float], total_steps: int) -> list[list[float]]:
    """One lr multiplier list per optimizer group: the group's own ``lr_schedule`` (a sequence
    or 1-D tensor of at least ``total_steps + 1`` multipliers of its base lr, step ``i`` using
    value ``i``) where it carries one, else the run's (``hlb_lr_schedule``). Read once, before
    the loop; groups without their own share the run's list."""
    tables = []
    for g in groups:
        own = g.get("lr_schedule")
        if own is None:
            tables.append(run_table)
            continue
        values = own.tolist() if isinstance(own, torch.Tensor) else list(own)
        if len(values) < total_steps + 1:
            raise TrickError(
                f"optimizer group '{g.get('name', '?')}' has an lr_schedule of {len(values)} values for {total_steps} steps",
                f"give at least total_steps + 1 = {total_steps + 1} multipliers",
            )
        tables.append([float(v) for v in values])
    return tables


@dataclass
class StepRecord:
    """What the steps leave for the epoch's metrics: each step's summed loss (a device tensor,
    never read inside a step), and the last batch's logits and labels."""

    losses: list = field(default_factory=list)
    last: list = field(default_factory=list)

    def clear(self) -> None:
        self.losses.clear()
        self.last.clear()

    def read(self, batch_size: int) -> tuple[float, float]:
        """(mean train loss per example over the epoch, accuracy on its last batch): one sync.
        ``batch_size``: the examples each step trained on (a selection's k)."""
        if not self.losses:
            return float("nan"), float("nan")
        logits, y = self.last
        total = torch.stack([v.float() for v in self.losses]).sum()
        acc = (logits.argmax(1) == y).float().mean()
        loss_sum, acc_v = torch.stack([total, acc]).tolist()
        return loss_sum / (len(self.losses) * batch_size), acc_v

