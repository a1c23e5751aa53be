"""The build sequence a run and each of its proxy nets share (:func:`hlbcli.run.plan_run`,
:func:`hlbcli.selection.proxy_net`), once, before the loop: after the net's data-aware init,
its loss, parameter groups, optimizers and lr tables, each from the active tricks' hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from hlbcli.contract import RunContext
from hlbcli.errors import TrickError, UsageError
from hlbcli.step import group_schedules


@dataclass
class Optimization:
    """What trains a net: its loss, its optimizers, each group's lr at build time (in the order
    of the groups of ``optimizers``), the run's lr multipliers (``hlb_lr_schedule``) and each
    group's (its own ``lr_schedule`` or the run's)."""

    loss_fn: Callable
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]
    lr_table: list[float]
    lr_tables: list[list[float]]


def check_optimizers(model: torch.nn.Module, optimizers: list) -> None:
    """What ``hlb_optimizer_build`` returned: optimizers, each parameter in at most one."""
    seen: set[int] = set()
    for opt in optimizers:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TrickError(
                f"hlb_optimizer_build returned {type(opt).__name__}, not a torch.optim.Optimizer",
                "return an optimizer or a list of them",
            )
        for g in opt.param_groups:
            for p in g["params"]:
                if id(p) in seen:
                    raise TrickError(
                        "a parameter is in two optimizer groups",
                        "take the parameters a trick optimises itself out of the other groups (hlb_param_groups wrapper)",
                    )
                seen.add(id(p))


def build_optimization(tm: Any, cfg: Any, ctx: RunContext, model: torch.nn.Module, total_steps: int) -> Optimization:
    """The hooks in their one order: ``hlb_loss_build``, ``hlb_param_groups``,
    ``hlb_optimizer_build`` (checked; ``ctx.optimizer`` and ``ctx.optimizers`` set before the
    schedule is asked for), ``hlb_lr_schedule`` over ``total_steps`` (checked: ``total_steps +
    1`` values), then each group's table (:func:`hlbcli.step.group_schedules`)."""
    loss_fn = tm.hook.hlb_loss_build(cfg=cfg, ctx=ctx)
    groups = tm.hook.hlb_param_groups(model=model, cfg=cfg, ctx=ctx)
    built = tm.hook.hlb_optimizer_build(param_groups=groups, cfg=cfg, ctx=ctx)
    optimizers = list(built) if isinstance(built, (list, tuple)) else [built]
    check_optimizers(model, optimizers)
    ctx.optimizer, ctx.optimizers = optimizers[0], optimizers
    all_groups = [g for opt in optimizers for g in opt.param_groups]
    base_lrs = [g["lr"] for g in all_groups]
    table = tm.hook.hlb_lr_schedule(total_steps=total_steps, cfg=cfg, ctx=ctx)
    if len(table) < total_steps + 1:
        raise UsageError(f"the lr schedule has {len(table)} values for {total_steps} steps", "fix the schedule hook")
    lr_table = [float(v) for v in table.tolist()]
    return Optimization(loss_fn, optimizers, base_lrs, lr_table, group_schedules(all_groups, lr_table, total_steps))
