"""The plugin contract of hlb.

Every hook is called with keyword arguments; an implementation may accept any subset of the
arguments a spec names. Hooks run at build time (once per process or once per run) and at epoch
boundaries, never inside a training step: the trainer collects what they return and assembles a
plain step function per phase before the loop.

Stages and hooks:

=========  ==========================================================================
setup      ``hlb_trick_info``, ``hlb_config_model``, ``hlb_validate``
data       ``hlb_dataset_build``, ``hlb_batch_transforms``
model      ``hlb_model_build``, ``hlb_model_init``
loss       ``hlb_loss_build``
optimizer  ``hlb_param_groups``, ``hlb_optimizer_build``, ``hlb_lr_schedule``
step       ``hlb_step_actions``
run        ``hlb_train_start``, ``hlb_epoch_start``, ``hlb_epoch_end``, ``hlb_train_end``
eval       ``hlb_eval_forward``, ``hlb_evaluate``
=========  ==========================================================================
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import BaseModel

from hlbcli import hookspec
from hlbcli.contract import Dataset, DataSpec, RunContext, StepAction, TrickInfo, Transform

#: Which stage each hook belongs to (``hlb tricks list`` reports a trick's stages from it).
HOOK_STAGES = {
    "hlb_trick_info": "setup",
    "hlb_config_model": "setup",
    "hlb_validate": "setup",
    "hlb_dataset_build": "data",
    "hlb_batch_transforms": "data",
    "hlb_model_build": "model",
    "hlb_model_init": "model",
    "hlb_loss_build": "loss",
    "hlb_param_groups": "optimizer",
    "hlb_optimizer_build": "optimizer",
    "hlb_lr_schedule": "optimizer",
    "hlb_step_actions": "step",
    "hlb_train_start": "run",
    "hlb_epoch_start": "run",
    "hlb_epoch_end": "run",
    "hlb_train_end": "run",
    "hlb_eval_forward": "eval",
    "hlb_evaluate": "eval",
}


# --- setup -----------------------------------------------------------------------------------


@hookspec
def hlb_trick_info() -> TrickInfo:
    """Describe the trick: name (its config section and the name ``--disable`` takes) and a
    one-line summary. Called whenever the plugin manager is listed; every trick returns one."""


@hookspec
def hlb_config_model() -> tuple[str, type[BaseModel]]:
    """Return ``(section, SettingsModel)``: the trick's settings, a pydantic model whose every
    field has a default. Called once when the config is resolved; the section is validated
    with it (``extra="forbid"``) and reaches hooks as ``getattr(cfg, section)``."""


@hookspec
def hlb_validate(cfg: Any, data: DataSpec, model: torch.nn.Module) -> None:
    """Check settings that depend on the data or the model (a size larger than the images, a
    layer the net lacks) and raise :class:`hlbcli.TrickError` with a hint when one does not
    fit. Called once per process before anything trains (after the dataset is loaded and the
    model built, fp32 on the CPU), and by ``hlb train --dry-run`` and ``hlb ablate --dry-run``
    for every arm, with the data's shape known from the config and no data loaded. Must not
    change anything."""


# --- data ------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_dataset_build(cfg: Any, device: torch.device, data_dir: str, download: bool) -> Dataset:
    """Load the dataset named by ``cfg.data`` as uint8 tensors on ``device``. Called once per
    process; the first non-None result wins (the core implements it last)."""


@hookspec
def hlb_batch_transforms(cfg: Any, ctx: RunContext) -> list[Transform]:
    """Return data augmentations (:class:`~hlbcli.contract.Transform`). Called once per run,
    before the loop; all results are concatenated and sorted by ``order``. Epoch-level ones
    run on the whole training set at each epoch start; batch-level ones are fused into the
    step for the epochs where they are active."""


# --- model -----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_model_build(cfg: Any, num_classes: int, in_channels: int) -> torch.nn.Module:
    """Build the network (on the CPU, fp32; the trainer then moves it to the device and, in
    the ``*-weights`` precisions, casts it to half with batchnorm kept in fp32). Called once
    per process: runs with several seeds
    reset weights through ``hlb_model_init``, never rebuild. First result wins; wrappers
    (``@hookimpl(wrapper=True)``) receive the model from ``yield`` and may edit or replace it
    (noisy batchnorm, weight norm)."""


@hookspec
def hlb_model_init(model: torch.nn.Module, ctx: RunContext) -> None:
    """Initialise weights from data or by rule (whitening, dirac). Called once per run after
    the weights are reset to the seed's defaults, in registration order; counts as timed
    work."""


# --- loss ------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_loss_build(cfg: Any, ctx: RunContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return ``loss(logits, targets) -> per-example loss``. ``targets`` are class indices
    (B,) in a phase without batch transforms (the logits then come in the net's dtype, fp16
    on CUDA), and soft (B, K) probabilities with fp32 logits where a batch transform (CutMix)
    is active; a loss must take both. Called once per run. First result wins; wrappers may
    wrap the function they receive. The core returns :class:`~hlbcli.contract.CrossEntropy`,
    which label smoothing folds its factor into (one kernel)."""


# --- optimizer -------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_param_groups(model: torch.nn.Module, cfg: Any, ctx: RunContext) -> list[dict]:
    """Split the trainable parameters into optimizer groups, each a dict with ``params``,
    ``lr`` and ``weight_decay`` in PyTorch's (coupled) convention, and optionally ``name``
    (a label). Called once per run. First result wins (the core's is one group; ``bias_lr``
    splits off the batchnorm parameters); a wrapper receives the groups from ``yield`` and may
    take parameters out of them (for an optimizer of its own, see ``hlb_optimizer_build``).
    :func:`hlbcli.contract.sgd_hparams` turns the decoupled settings into lr and decay."""


@hookspec(firstresult=True)
def hlb_optimizer_build(param_groups: list[dict], cfg: Any, ctx: RunContext) -> "torch.optim.Optimizer | list[torch.optim.Optimizer]":
    """Build the optimizer(s) from the groups. Called once per run. First result wins (the
    core builds Nesterov SGD over ``param_groups``); a wrapper receives that result from
    ``yield`` and may return a list, e.g. ``[sgd, MyOptimizer(filters)]``, to optimise the
    parameters it took out in ``hlb_param_groups`` with an optimizer of its own.

    What the trainer does with the result, every step: ``zero_grad(set_to_none=True)`` and
    ``step()`` on each optimizer, in list order, after the backward pass; and before the
    steps it rewrites ``group["lr"]`` of every group of every optimizer as the group's lr at
    build time times the schedule's multiplier for the step (``hlb_lr_schedule``), so an
    optimizer must read ``group["lr"]`` at each step. Groups may carry extra keys (the core's
    ``name``); the trainer reads and writes only ``lr``. Each parameter belongs to exactly one
    optimizer. The trainer never saves optimizer state, but ``state_dict()`` should work for
    tools that do. ``ctx.optimizers`` holds the list, ``ctx.optimizer`` the first."""


@hookspec(firstresult=True)
def hlb_lr_schedule(total_steps: int, cfg: Any, ctx: RunContext) -> torch.Tensor:
    """Return a float tensor of ``total_steps + 1`` multipliers of each group's base lr, one
    per step, computed before the loop. First result wins."""


# --- step ------------------------------------------------------------------------------------


@hookspec
def hlb_step_actions(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, optimizers: list, cfg: Any, ctx: RunContext
) -> list[StepAction]:
    """Return functions to place in the fused step (:class:`~hlbcli.contract.StepAction`):
    ``optimizer`` is the first optimizer, ``optimizers`` all of them.
    before the forward pass, after the backward pass, after the optimizer step, or once at the
    end. Called once per run; results are concatenated in registration order."""


# --- run and epoch events --------------------------------------------------------------------


@hookspec
def hlb_train_start(ctx: RunContext) -> None:
    """Called once per run, after init and before the first step."""


@hookspec
def hlb_epoch_start(epoch: int, ctx: RunContext) -> None:
    """Called at the start of every epoch, outside the step (freeze a layer, change a flag).
    Set ``ctx.rebuild_step = True`` if the change needs a new step function."""


@hookspec
def hlb_epoch_end(epoch: int, metrics: dict, ctx: RunContext) -> None:
    """Called after every epoch with its metrics (host numbers, already synced)."""


@hookspec
def hlb_train_end(ctx: RunContext) -> None:
    """Called once per run after the last step and its ``at_end`` actions, before the final
    evaluation."""


# --- evaluation ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_eval_forward(model: torch.nn.Module, cfg: Any, ctx: RunContext) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``forward(images) -> logits`` used for evaluation (normalised float images in,
    logits out). Called once per run; first result wins (TTA returns an averaging forward)."""


@hookspec(firstresult=True)
def hlb_evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    ctx: RunContext,
) -> dict:
    """Evaluate ``forward`` on uint8 ``images``; return at least ``{"accuracy": float,
    "loss": float}``. Called at each epoch end (no TTA) and once at the end (with the eval
    forward). First result wins; wrappers may swap weights in and out around it."""
