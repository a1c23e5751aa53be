"""The plugin contract of hlb.

Every hook is called with keyword arguments; an implementation may accept any subset of the
arguments a spec names. Hooks run at build time and at epoch boundaries, never inside a training
step: the trainer collects what they return and assembles a plain step function per phase
before the loop.

Words used below: a *session* is what :func:`hlbcli.session.open_session` builds once and reuses for
every seed (the data and the model: once per ``hlb train``/``hlb bench`` process, once per arm
in a Ray worker); a *run* is one seed trained on a session. When the model is compiled, an
untimed warm-up run comes before the timed ones and calls the per-run hooks too
(``ctx.warmup`` is True).

Which stage each hook belongs to is :data:`HOOK_STAGES` below, the one source of that table (in
the order of :data:`hlbcli.contract.STAGES`): ``hlb tricks list`` reports a trick's stages from
it, and ``tests/test_docs.py`` checks the table in docs/tricks.md against it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import BaseModel

from hlbcli import hookspec
from hlbcli.contract_history import DEPRECATED_ARGS
from hlbcli.contract import (Dataset, DataSpec, ProxyNet, RunContext, Selection, StepAction, TrickInfo, Transform, Update,
                             UpdateParts)

#: Which stage each hook belongs to, in the order of ``hlbcli.contract.STAGES``: the one source
#: of the stage table (``hlb tricks list`` reports a trick's stages from it, leaving out setup;
#: ``tests/test_docs.py`` holds docs/tricks.md's table to it). Every hookspec is listed here.
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
    "hlb_update_build": "step",
    "hlb_select": "select",
    "hlb_train_start": "run",
    "hlb_epoch_start": "run",
    "hlb_epoch_end": "run",
    "hlb_train_end": "run",
    "hlb_run_end": "run",
    "hlb_eval_forward": "eval",
    "hlb_evaluate": "eval",
}


# --- setup -----------------------------------------------------------------------------------


@hookspec
def hlb_trick_info() -> TrickInfo:
    """Describe the trick: name (its config section and the name ``--disable`` takes) and a
    one-line summary. Called on each trick directly, not through the hook: when the trick
    registers (its name must match the one it is registered under), when ``requires`` and
    ``conflicts`` are checked, and whenever tricks are listed (``hlb tricks list/show``). A
    trick without it is listed as "(no hlb_trick_info)"; :func:`hlbcli.contract.trick` writes
    it."""


@hookspec
def hlb_config_model() -> tuple[str, type[BaseModel]]:
    """Return ``(section, SettingsModel)``, or None for a trick without settings: the trick's
    settings, a pydantic model whose every field has a default. Called on each active trick
    directly, each time a config is resolved (once per arm in ``hlb ablate``, again in each
    arm's process or Ray worker) and by ``hlb tricks show``; the section is validated with it
    (``extra="forbid"``) and reaches hooks as ``getattr(cfg, section)``."""


@hookspec
def hlb_validate(cfg: Any, data: DataSpec, model: torch.nn.Module) -> None:
    """Check settings that depend on the data or the model (a size larger than the images, a
    layer the net lacks) and raise :class:`hlbcli.TrickError` with a hint when one does not
    fit. ``model`` is built for the check alone (``hlb_model_build``, fp32, on the CPU), not the
    model that trains. Called before anything trains: once per session, after the dataset is
    loaded (``data`` is its spec); and by ``hlb ablate`` for every arm before any arm starts
    (also with ``--dry-run``, which stops there), with ``data`` known from the config and no
    data loaded. All implementations run. Must not change anything."""


# --- data ------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_dataset_build(cfg: Any, device: torch.device, data_dir: str, download: bool) -> Dataset:
    """Load the dataset named by ``cfg.data`` as uint8 tensors on ``device``. Called once per
    session, before ``hlb_validate``; the first non-None result wins (the core implements it
    last)."""


@hookspec
def hlb_batch_transforms(cfg: Any, ctx: RunContext) -> list[Transform]:
    """Return data augmentations (:class:`~hlbcli.contract.Transform`). Called once per run,
    after ``hlb_model_init``, before the loop; all results are concatenated (a transform or a
    list of them per implementation) and sorted by ``order``. Epoch-level ones
    run on the whole training set at each epoch start, with ``ctx.generator`` (the run's
    generator on its device, seeded with the seed); batch-level ones are fused into the
    step for the epochs where they are active."""


# --- model -----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_model_build(cfg: Any, num_classes: int, in_channels: int) -> torch.nn.Module:
    """Build the network on the CPU in fp32. First result wins; wrappers
    (``@hookimpl(wrapper=True)``) receive the model from ``yield`` and may edit or replace it
    (noisy batchnorm, weight norm).

    Called several times per process, so it must build the same structure every time and have
    no side effect that matters:

    - in the check before training (the model ``hlb_validate`` sees; once per session, and in
      ``hlb ablate`` once per arm);
    - once per session, for the model that trains: the trainer moves it to the device, in the
      ``*-weights`` precisions casts it to half with batchnorm kept in fp32, and compiles it;
    - once per run (every seed, and the warm-up run), after ``torch.manual_seed(seed)``: the
      trainer copies this fresh model's state and each parameter's ``requires_grad`` into the
      session's model, which is never rebuilt (a compiled graph keeps its tensors). Data-aware
      init then follows in ``hlb_model_init``."""


@hookspec
def hlb_model_init(model: torch.nn.Module, ctx: RunContext) -> None:
    """Initialise weights from data or by rule (whitening, dirac). Called once per run, the
    first of the per-run hooks, after the weights are reset to the seed's defaults; all
    implementations run, the last trick of the config's ``tricks`` list first (pluggy calls the
    last registered first; hlb registers in the list's order). Counts as timed work (the run's ``init``
    phase); ``ctx.train_images`` holds the normalised training set."""


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
    (a label) and ``lr_schedule``: the group's own lr multipliers (a sequence or 1-D tensor of
    at least ``total_steps + 1`` values, step ``i`` using value ``i``, read once before the
    loop), in place of the run's ``hlb_lr_schedule`` for that group alone (the whitening
    bias's own linear decay). Called once per run. First result wins (the core's is one group; ``bias_lr``
    splits off the batchnorm parameters); a wrapper receives the groups from ``yield`` and may
    take parameters out of them (for an optimizer of its own, see ``hlb_optimizer_build``).
    :func:`hlbcli.contract.sgd_hparams` turns the decoupled settings into lr and decay."""


@hookspec(firstresult=True)
def hlb_optimizer_build(param_groups: list[dict], cfg: Any, ctx: RunContext) -> "torch.optim.Optimizer | list[torch.optim.Optimizer]":
    """Build the optimizer(s) from the groups. Called once per run. First result wins (the
    core builds Nesterov SGD over ``param_groups``); a wrapper receives that result from
    ``yield`` and may return a list, e.g. ``[sgd, MyOptimizer(filters)]``, to optimise the
    parameters it took out in ``hlb_param_groups`` with an optimizer of its own.

    What the trainer does with the result, every step: ``zero_grad(set_to_none=True)`` on
    each optimizer before the backward pass, and ``step()`` on each after it (and after the
    ``after_backward`` step actions), in list order; and before the steps it rewrites ``group["lr"]`` of every group of every optimizer as the group's lr at
    build time times the schedule's multiplier for the step (``hlb_lr_schedule``, or the group's own
    ``lr_schedule``), so an
    optimizer must read ``group["lr"]`` at each step. Groups may carry extra keys (the core's
    ``name``); the trainer reads and writes only ``lr``. Each parameter belongs to exactly one
    optimizer. The trainer never saves optimizer state, but ``state_dict()`` should work for
    tools that do. ``ctx.optimizers`` holds the list, ``ctx.optimizer`` the first."""


@hookspec(firstresult=True)
def hlb_lr_schedule(total_steps: int, cfg: Any, ctx: RunContext) -> torch.Tensor:
    """Return a float tensor of at least ``total_steps + 1`` multipliers of each group's base
    lr, computed before the loop: step ``i`` (counted from 0) uses value ``i``. Called once per
    run, after ``hlb_optimizer_build``. First result wins; fewer values is an error. The core's
    (last) is piecewise linear from ``train.lr_start`` up to 1 at ``train.lr_peak_at`` and down
    to ``train.lr_end``: a trick that returns its own makes those keys do nothing, so it
    declares them in ``TrickInfo.overrides``."""


# --- step ------------------------------------------------------------------------------------


@hookspec(warn_on_impl_args={k: DeprecationWarning(v) for k, v in DEPRECATED_ARGS["hlb_step_actions"].items()})
def hlb_step_actions(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, optimizers: list, cfg: Any, ctx: RunContext
) -> list[StepAction]:
    """Return functions to place in the fused step (:class:`~hlbcli.contract.StepAction`), to
    run before the forward pass, after the backward pass, after the optimizer step, or once
    after the last step (``at_end``). ``optimizers``: all of them; ``optimizer``, the first, is
    deprecated (contract 3: a DeprecationWarning when a trick asking for it registers; use
    ``optimizers[0]``). Called once per run, after ``hlb_lr_schedule``; results are concatenated (an
    action or a list of them per implementation)."""


@hookspec(firstresult=True)
def hlb_update_build(parts: UpdateParts, cfg: Any, ctx: RunContext) -> Update:
    """Build the step's *update*: ``update(x, targets, weights, step) -> (summed loss, logits)``
    (:data:`hlbcli.contract.Update`), the part of the step from the batch (after the batch
    transforms) to new weights. Own it to change how a step trains: SAM's two passes, a
    closure-based optimizer, gradient accumulation. ``parts`` (:class:`~hlbcli.contract.UpdateParts`)
    holds the phase's forward-and-loss (compiled when the net is compiled), the optimizers and
    their parameters, the ``after_backward`` actions, the lr setting, ``zero_grad``,
    ``optimizer_step`` and ``closure``.

    Called once per phase when its step is assembled (before the first epoch, and again where
    the batch transforms change or ``ctx.rebuild_step`` is set), never per step; the function
    it returns is called every step, so it does device work only (no hook call, no ``.item()``).
    First result wins: the core's (last) is :func:`hlbcli.contract.plain_update`, one forward
    and backward, the ``after_backward`` actions, then ``parts.optimizer_step(step)``; a wrapper
    (``@hookimpl(wrapper=True)``) receives the update from ``yield`` and may wrap it. An update
    must call ``parts.after_backward(step)`` once, after the gradients the optimizers will use,
    and ``parts.optimizer_step(step)`` (which sets the lrs) once."""


# --- select --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_select(stream: Any, build_proxy: Callable[..., ProxyNet], cfg: Any, ctx: RunContext) -> Selection | None:
    """Choose, before the run trains, which examples of each batch it trains on and with what
    weight: return a :class:`~hlbcli.contract.Selection` (or None: every example, weight 1).
    Example selection, pruning, reweighting and curricula live here.

    Called once per run (the warm-up run too), after ``hlb_step_actions`` and before
    ``hlb_train_start``; its time counts in the run's timed ``init`` phase, as work before
    the first step. First non-None result wins.

    ``stream`` (:class:`hlbcli.stream.BatchStream`) replays the batches the run will train on,
    ``(step, images, labels)`` for each step, same order and same epoch-level augmentations,
    from a copy of the run's generator (iterating it does not move the run's), and the run's
    generator is put back after this hook, so a draw from ``ctx.generator`` here does not move
    the run away from the batches the stream replayed. Iterate it as
    often as needed. ``build_proxy(model={...}, freeze=(names,), steps=N)`` returns a
    :class:`~hlbcli.contract.ProxyNet`: a second net with ``cfg.model`` changed by ``model``,
    set up by the run's own hooks (build, init, loss, groups, optimizer, lr schedule) on the
    run's device and precision, built and compiled once per session, its lr schedule spread
    over ``steps`` (default: the run's); the trick trains it.
    Work here is per run, not per step; keep it on the device (no ``.item()`` per step): the
    selection's tensors are read inside the step by row, with no hook call and no sync."""


# --- run and epoch events --------------------------------------------------------------------


@hookspec
def hlb_train_start(ctx: RunContext) -> None:
    """Called once per run, the last of the per-run build-time hooks (after
    ``hlb_step_actions``), before the first epoch starts; its time counts in the run's ``init``
    phase."""


@hookspec
def hlb_epoch_start(epoch: int, ctx: RunContext) -> None:
    """Called at the start of every epoch (``epoch`` counts from 0), before the epoch's phase
    is chosen and its epoch-level transforms run, outside the step (freeze a layer, change a
    flag). Set ``ctx.rebuild_step = True`` if the change needs a new step function (the trainer
    clears it before each call)."""


@hookspec
def hlb_epoch_end(epoch: int, metrics: dict, ctx: RunContext) -> None:
    """Called after every epoch's steps and its evaluation, with ``epoch`` counting from 0
    (as ``hlb_epoch_start`` and ``Transform.start_epoch`` count). Every epoch but the last:
    after its steps and its per-epoch evaluation (if any). The last epoch of a run that
    completed: after the final evaluation (so after ``hlb_train_end``), its ``val_acc`` the
    run's accuracy. Not called for an epoch whose training loss is not finite (the run is then
    ``diverged`` and stops), nor for the last epoch of a run whose end failed.

    ``metrics`` is the epoch's row of the run record, host numbers already synced:
    ``epoch`` (counted from 1: ``epoch + 1``, the number the table shows), ``steps`` (training
    steps done so far in the run), ``train_loss`` (mean loss per example over the epoch),
    ``train_acc`` (accuracy on the epoch's last batch), ``val_acc`` (the per-epoch
    ``hlb_evaluate``'s accuracy, None when ``train.eval_every_epoch`` is off; for the last
    epoch the final evaluation's accuracy, TTA included) and ``elapsed`` (timed seconds so far:
    the run's init and training epochs, and for the last epoch the final evaluation; per-epoch
    evaluation is not timed)."""


@hookspec
def hlb_train_end(ctx: RunContext) -> None:
    """Called once per run that completed: after the last epoch's steps and the ``at_end``
    step actions, before ``hlb_eval_forward``, the final evaluation and the last epoch's
    ``hlb_epoch_end``, inside the timed ``eval`` phase. The place to put the weights that are
    evaluated in the net. Not called for a run that diverged, failed or was interrupted."""


@hookspec
def hlb_run_end(ctx: RunContext, status: str, metrics: dict | None, phases: dict) -> None:
    """Called once at the end of every run, whatever its outcome; the last hook of a run. All
    implementations run.

    ``status`` is the run record's: ``completed`` (after the final evaluation and the last
    ``hlb_epoch_end``), ``diverged`` (the loss became NaN or infinite, or a step overflowed),
    ``failed`` (an error ended the run; it goes on up after this hook) or ``interrupted``
    (Ctrl-C or a signal). ``metrics`` is the final evaluation's result (``accuracy``, ``loss``
    and whatever ``hlb_evaluate`` returned, as the record's ``final``) for a completed run,
    else None. ``phases`` holds the timed seconds so far: ``init``, ``train``, ``eval``.

    Two tricks' implementations run the last trick of the config's ``tricks`` list first.
    Called after the run's record is made: in ``hlb train`` (and ``hlb ablate``'s arms, either
    backend) a failed or interrupted run's record is already kept when it runs. An exception
    raised here is the trick's bug (exit 2), and the record stays as the run ended; while a
    failed or interrupted run's own error goes up, an exception here is left out. Also called
    for the untimed warm-up run (``ctx.warmup`` True)."""


# --- evaluation ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hlb_eval_forward(model: torch.nn.Module, cfg: Any, ctx: RunContext, final: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``forward(images) -> logits`` used for the final evaluation (normalised float
    images in, as :func:`hlbcli.evaluation.net_input` makes them; logits out). ``model`` is
    the forward the run trained with (the compiled model when compiling is on). Called once
    per run that completed, after ``hlb_train_end``, with ``final`` True (the per-epoch
    evaluation calls the training forward directly, not this hook); first result wins (TTA
    returns an averaging forward; the core returns ``model``). On entry the model is in
    training mode with autograd on; the evaluation calls the forward in eval mode under
    ``torch.no_grad()``."""


@hookspec(firstresult=True)
def hlb_evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    ctx: RunContext,
    final: bool,
) -> dict:
    """Evaluate ``forward`` on uint8 ``images`` (the test set); return at least
    ``{"accuracy": float, "loss": float}``. ``model`` is the uncompiled module (for wrappers
    that swap weights); ``forward`` is what to call. First result wins; wrappers may swap
    weights in and out around it.

    On entry ``model`` is in training mode and autograd is on: an implementation switches to
    eval mode and ``torch.no_grad()`` itself and restores the mode. The core's is
    :func:`hlbcli.evaluation.evaluate`: batches of ``ctx.eval_batch_size`` normalised with the
    dataset's mean and std, eval mode, no grad, ``ctx.autocast()``; ``loss`` the mean
    cross-entropy over the images. Its pieces are the trick API's (:mod:`hlbcli.evaluation`).

    Called in two places, told apart by ``final``:

    - per epoch (``final`` False), only when ``train.eval_every_epoch`` is on, after every
      epoch but the last, with ``forward`` the training forward (the compiled model when
      compiling is on; no TTA). Untimed; its accuracy becomes the epoch's ``val_acc``, before
      ``hlb_epoch_end``.
    - once at the end of a run that completed (``final`` True), after ``hlb_train_end``, with
      ``forward`` from ``hlb_eval_forward`` (TTA where active). Timed as the ``eval`` phase;
      the result is the run record's ``final``, its accuracy the run's and the last epoch's
      ``val_acc``, and ``hlb_run_end``'s ``metrics``."""
