"""A seed's run on an open session: reset the weights, call the per-run hooks once (the
:class:`RunPlan`), train the epochs with a fused step per phase, evaluate; :func:`run_seed` turns
it into the run's record, whatever ends it."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hlbcli import record
from hlbcli.config import to_dict
from hlbcli.contract import RunContext, StepAction, Transform
from hlbcli.data import normalize
from hlbcli.errors import HlbError, out_of_memory
from hlbcli.machine import fingerprint
from hlbcli.session import Session, device_name, reset_weights
from hlbcli.signals import Interrupted
from hlbcli.build import build_optimization
from hlbcli.selection import run_selection
from hlbcli.step import LABELS, StepRecord, build_step
from hlbcli.stream import epoch_set, epoch_steps
from hlbcli.blame import culprit, memory_error, raised, raised_in_torch, raised_natively
from hlbcli.timers import TIMERS


@dataclass
class RunResult:
    seed: int
    status: str
    accuracy: float
    train_seconds: float
    phases: dict
    epochs: list[dict]
    message: str = ""
    final: dict = field(default_factory=dict)


@dataclass
class RunPlan:
    """A run assembled from the hooks, ready for the loop: built once per seed."""

    ctx: RunContext
    transforms: list[Transform]
    loss_fn: Callable
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]
    lr_table: list[float]
    actions: list[StepAction]
    #: one multiplier list per optimizer group (:func:`hlbcli.step.group_schedules`)
    lr_tables: list[list[float]] = field(default_factory=list)
    record: StepRecord = field(default_factory=StepRecord)
    #: the selection stage's (``hlb_select``): positions kept per step, weights per step, and k,
    #: the examples each step trains on (the batch size without a selection)
    keep: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    k: int = 0
    #: ``hlb profile``: the step's parts in profiler ranges (:func:`hlbcli.step.build_step`)
    labelled: bool = False
    #: ``hlb_update_build`` bound to the run: called once per phase, when its step is assembled
    update_build: Callable | None = None

    def step_fn(self, forward: torch.nn.Module, batch_transforms: list[Transform], forward_loss=None):
        return build_step(
            forward, self.loss_fn, self.optimizers, self.base_lrs, self.lr_tables, batch_transforms,
            self.actions, self.ctx.dataset.num_classes, self.ctx, self.record, forward_loss, self.weights,
            self.labelled, self.update_build,
        )


def _flatten(results: list) -> list:
    out = []
    for r in results:
        if r is None:
            continue
        out.extend(r if isinstance(r, (list, tuple)) else [r])
    return out


#: the ties of transform order said in this process (each once)
_TIES_SAID: set[tuple[str, ...]] = set()


def in_order(transforms: list[Transform]) -> list[Transform]:
    """The transforms by ``order``, ties by name (whatever order the tricks registered in); a
    tie is said on stderr once per process, naming which runs first."""
    out = sorted(transforms, key=lambda tr: (tr.order, tr.name))
    for order in sorted({tr.order for tr in out}):
        tied = tuple(tr.name for tr in out if tr.order == order)
        if len(tied) > 1 and tied not in _TIES_SAID:
            _TIES_SAID.add(tied)
            print(f"note: transforms {', '.join(repr(n) for n in tied)} share order {order}: they run in that order "
                  "(ties go by name); give one an order of its own to choose", file=sys.stderr, flush=True)
    return out


def new_context(session: Session, seed: int, warmup: bool = False, arm: str | None = None,
                out: Path | None = None) -> RunContext:
    """The run's :class:`RunContext`, before any hook: sizes, the model, and the run's
    generator on the session's device, seeded with ``seed`` (drawing nothing else)."""
    cfg, dev = session.cfg, session.device
    t = cfg.train
    steps_per_epoch = session.train_size // t.batch_size
    total_steps = max(1, math.ceil(t.epochs * steps_per_epoch))
    return RunContext(
        cfg=cfg, device=dev, dtype=session.dtype, dataset=session.dataset, seed=seed, batch_size=t.batch_size,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, epochs=t.epochs,
        num_epochs=math.ceil(total_steps / steps_per_epoch), model=session.model,
        generator=torch.Generator(device=dev).manual_seed(seed), autocast_dtype=session.autocast_dtype,
        warmup=warmup, eval_batch_size=session.eval_batch_size, arm=arm, out=out,
    )


def plan_run(session: Session, seed: int, warmup: bool = False, ctx: RunContext | None = None) -> RunPlan:
    """Reset the weights to the seed's, then call the build-time hooks once: data-aware init,
    transforms, loss, parameter groups, optimizer, lr table, step actions, selection, train start.
    ``ctx``: the run's context when the caller made it (:func:`new_context`)."""
    cfg, tm, dev, ds = session.cfg, session.tm, session.device, session.dataset
    ctx = ctx if ctx is not None else new_context(session, seed, warmup)
    if dev.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    reset_weights(session, seed)
    torch.manual_seed(seed)
    model = session.model
    model.train()
    t = cfg.train
    total_steps = ctx.total_steps
    train_images = normalize(ds.train_images, ds.mean, ds.std, session.dtype)
    if t.channels_last:
        train_images = train_images.contiguous(memory_format=torch.channels_last)
    ctx.train_images = train_images
    tm.hook.hlb_model_init(model=model, ctx=ctx)
    transforms = in_order(_flatten(tm.hook.hlb_batch_transforms(cfg=cfg, ctx=ctx)))
    o = build_optimization(tm, cfg, ctx, model, total_steps)
    actions = _flatten(tm.hook.hlb_step_actions(model=model, optimizer=o.optimizers[0], optimizers=o.optimizers, cfg=cfg, ctx=ctx))
    keep, weights, k = run_selection(session, ctx, transforms)
    tm.hook.hlb_train_start(ctx=ctx)
    return RunPlan(ctx, transforms, o.loss_fn, o.optimizers, o.base_lrs, o.lr_table, actions, lr_tables=o.lr_tables,
                   keep=keep, weights=weights, k=k, labelled=session.profiling,
                   update_build=lambda parts: tm.hook.hlb_update_build(parts=parts, cfg=cfg, ctx=ctx))


def fit(
    session: Session,
    seed: int,
    on_epoch: Callable[[dict], None] | None = None,
    warmup: bool = False,
    ctx: RunContext | None = None,
    phases: dict | None = None,
    on_step: Callable[[int, int, int, int], None] | None = None,
) -> RunResult:
    """Train one seed on the open session and evaluate it: the loop (:func:`run_seed` makes the
    run's record of it). ``warmup`` runs two steps per epoch on the same plan (it compiles every
    phase's graphs) and skips the per-epoch evaluation's output. ``ctx``: the run's context
    when the caller made it; ``phases``: a dict the timed seconds are kept in as they pass (so a
    caller sees them when the run ends in an error); ``on_step(step, total, epoch, epochs)``: after
    each step, outside it (host-side progress, :class:`hlbcli.progress.StepProgress`); its
    ``evaluating``, where it has one, becomes ``ctx.eval_progress`` for the final evaluation."""
    cfg, tm, ds = session.cfg, session.tm, session.dataset
    timer = TIMERS[session.timer](session.device)
    phases = phases if phases is not None else {}
    phases.update(init=0.0, train=0.0, eval=0.0)
    t0 = timer.start()
    plan = plan_run(session, seed, warmup, ctx)
    phases["init"] = timer.seconds(t0)
    ctx, transforms, actions, keep = plan.ctx, plan.transforms, plan.actions, plan.keep
    steps = plan.record
    model, fwd, gen = session.model, session.forward_model, ctx.generator
    t = cfg.train
    total_steps, num_epochs = ctx.total_steps, ctx.num_epochs
    labels = ds.train_labels
    epochs: list[dict] = []
    step_fn = None
    phase_key = None
    step = 0
    elapsed = phases["init"]
    status, message = "completed", ""

    for epoch in range(num_epochs):
        t0 = timer.start()
        ctx.rebuild_step = False
        tm.hook.hlb_epoch_start(epoch=epoch, ctx=ctx)
        batch_tr = [tr for tr in transforms if tr.level == "batch" and tr.active(epoch)]
        key = tuple(tr.name for tr in batch_tr)
        if step_fn is None or key != phase_key or ctx.rebuild_step:
            step_fn = plan.step_fn(fwd, batch_tr, session.forward_loss(plan.loss_fn, bool(batch_tr), ctx))
            phase_key = key
        with torch.profiler.record_function(LABELS["data"]):
            images, perm = epoch_set(ctx, transforms, epoch, gen, t.channels_last)
        steps.clear()
        bs = t.batch_size
        for i in range(epoch_steps(ctx, step)):
            idx = perm[i * bs : (i + 1) * bs]
            if keep is not None:  # the selection's examples of this batch (a device gather)
                idx = idx[keep[step]]
            step_fn(images[idx], labels[idx], step)
            step += 1
            if on_step is not None:
                on_step(step, total_steps, epoch + 1, num_epochs)
        train_loss, train_acc = steps.read(plan.k)
        dt = timer.seconds(t0)
        phases["train"] += dt
        elapsed += dt
        row = {"epoch": epoch + 1, "steps": step, "train_loss": train_loss, "train_acc": train_acc, "val_acc": None, "elapsed": elapsed}
        if not math.isfinite(train_loss):
            status, message = "diverged", f"training loss became {train_loss} in epoch {epoch + 1}"
            epochs.append(row)
            if on_epoch and not warmup:
                on_epoch(row)
            break
        epochs.append(row)
        if epoch == num_epochs - 1:
            break  # the last epoch ends after the final evaluation, below
        if t.eval_every_epoch:
            res = tm.hook.hlb_evaluate(model=model, images=ds.test_images, labels=ds.test_labels, forward=fwd,
                                       ctx=ctx, final=False)
            row["val_acc"] = res["accuracy"]
        tm.hook.hlb_epoch_end(epoch=epoch, metrics=row, ctx=ctx)
        if on_epoch and not warmup:
            on_epoch(row)

    accuracy = float("nan")
    final: dict = {}
    if status == "completed":
        t0 = timer.start()
        for a in actions:
            if a.where == "at_end":
                a.fn(step)
        tm.hook.hlb_train_end(ctx=ctx)
        forward = tm.hook.hlb_eval_forward(model=fwd, cfg=cfg, ctx=ctx, final=True)
        ctx.eval_progress = getattr(on_step, "evaluating", None)
        try:
            with torch.profiler.record_function(LABELS["evaluation"]):
                final = tm.hook.hlb_evaluate(model=model, images=ds.test_images, labels=ds.test_labels, forward=forward,
                                             ctx=ctx, final=True)
        finally:
            ctx.eval_progress = None
        dt = timer.seconds(t0)
        phases["eval"] = dt
        accuracy = final["accuracy"]
        elapsed += dt
        epochs[-1]["val_acc"] = accuracy
        epochs[-1]["elapsed"] = elapsed
        tm.hook.hlb_epoch_end(epoch=len(epochs) - 1, metrics=epochs[-1], ctx=ctx)
        if on_epoch and not warmup:
            on_epoch(epochs[-1])
    return RunResult(seed, status, accuracy, sum(phases.values()), phases, epochs, message, final)


def warm_up(session: Session, seed: int = 0, arm: str | None = None, out: Path | None = None) -> float:
    """Compile every phase's graphs once (two steps per epoch), untimed, before the runs."""
    if session.warmed_up or not session.compiled:
        return 0.0
    t0 = time.perf_counter()
    ctx, phases = new_context(session, seed, True, arm, out), {}
    try:
        res = fit(session, seed, warmup=True, ctx=ctx, phases=phases)
    except Interrupted as e:
        run_end(session, ctx, "interrupted", None, phases, e)
        raise
    except (Exception, SystemExit) as e:
        run_end(session, ctx, "diverged" if _numeric_failure(e) else "failed", None, phases, e)
        raise
    run_end(session, ctx, res.status, res.final or None, phases)
    session.warmup_seconds = time.perf_counter() - t0
    session.warmed_up = True
    return session.warmup_seconds


def _numeric_failure(e: BaseException) -> bool:
    """An exception a training step raises when a value overflowed or went non-finite (lr
    1e300: "value cannot be converted to type float without overflow"): a divergence. Only
    torch's own: raised by an op or in torch's Python code. A trick's ``raise`` or its own
    Python arithmetic (``int(math.inf)``) is the trick's bug, whatever its words."""
    if not isinstance(e, (RuntimeError, OverflowError, FloatingPointError)):
        return False
    if re.search(r"\b(overflow|nan|inf|infinity|non-finite)\b", str(e).lower()) is None:
        return False
    return raised_in_torch(e) or (type(e) is RuntimeError and raised_natively(e))


def run_error(session: Any, seed: int, e: BaseException) -> HlbError | None:
    """The one-line error for what ended a run, when it can be named: the machine's memory,
    a trick's code (found from the traceback), foreign code calling ``sys.exit``. None: hlb's
    own bug (an internal error, reported as such)."""
    if isinstance(e, HlbError):
        return e
    words = memory_error(e)
    if words is not None:
        return out_of_memory(f"on {device_name(session.device)} while training seed {seed}", words)
    name = culprit(e, session.tm.files())
    if name is not None:
        return raised(name, session.tm.origins[name], "the training run (a transform or step action)", e)
    if isinstance(e, SystemExit):
        return HlbError(f"code run by hlb called sys.exit({e.code!r}) during seed {seed}", "rerun with --debug to see where")
    return None


def run_end(session: Any, ctx: RunContext, status: str, metrics: dict | None, phases: dict,
            cause: BaseException | None = None) -> None:
    """``hlb_run_end``. While ``cause`` (the run's own error) goes up, an error of the hook is
    left out (noted on ``cause``): the run's error is what ended it."""
    try:
        session.tm.hook.hlb_run_end(ctx=ctx, status=status, metrics=metrics, phases=dict(phases))
    except (Exception, SystemExit) as e:
        if cause is None:
            raise
        cause.add_note(f"hlb_run_end then failed too: {e.__class__.__name__}: {e}")


def run_seed(session: Any, seed: int, on_epoch: Callable[[dict], None] | None = None,
             keep: Callable[[dict], None] | None = None, arm: str | None = None, out: Path | None = None,
             on_step: Callable[[int, int, int, int], None] | None = None) -> dict:
    """Train one seed of an open session and return its run record: ``completed``, or
    ``diverged`` when a step overflowed. Any other error, and an interruption, first hand the
    record (``failed`` with the message, or ``interrupted``) to ``keep``, then go up: what a
    run was is never lost. ``hlb train`` and the Ray backend's tasks write the same records.

    ``hlb_run_end`` comes last, whatever the outcome, once the record is made; when it raises
    after a completed or diverged run, the record goes to ``keep`` before its error goes up.
    ``arm`` and ``out`` become ``ctx.arm`` and ``ctx.out``; ``on_step`` goes to :func:`fit`."""
    tm = session.tm
    tricks = list(tm.trick_names())
    rows: list[dict] = []

    def epoch(row: dict) -> None:
        rows.append(row)
        if on_epoch:
            on_epoch(row)

    rec = {
        "seed": seed, "arm": arm, "status": "interrupted", "accuracy": None, "train_seconds": None,
        "tricks": tricks, "trick_sources": {n: tm.origins[n] for n in tricks}, "config": to_dict(session.cfg),
        "device": device_name(session.device), "versions": record.versions(), "machine": fingerprint(session.device),
        "timer": session.timer,
        "git_commit": session.source[0], "git_dirty": session.source[1], "deterministic": session.deterministic, "compiled": session.compiled,
        "precision": session.precision, "compile_mode": session.cfg.train.compile_mode if session.compiled else None,
        "eval_batch_size": session.eval_batch_size, "host_memory": session.host_memory,
        "epochs": rows,
    }
    keep = keep or (lambda rec: None)
    ctx, phases = new_context(session, seed, arm=arm, out=out), {}
    try:
        res = fit(session, seed, epoch, ctx=ctx, phases=phases, on_step=on_step)
    except (Exception, SystemExit) as e:
        if not _numeric_failure(e):
            err = run_error(session, seed, e)
            rec.update(status="failed", message=err.line() if err else f"{e.__class__.__name__}: {e}")
            keep(rec)
            up = err if err is not None else e
            run_end(session, ctx, "failed", None, phases, up)
            if up is not e:
                raise up from e
            raise
        res = RunResult(seed, "diverged", float("nan"), None, {}, rows,
                        f"a training step failed in epoch {len(rows) + 1}: {e}")
    except Interrupted as e:
        rec["message"] = "interrupted during this run"
        keep(rec)
        run_end(session, ctx, "interrupted", None, phases, e)
        raise
    rec.update(
        status=res.status, accuracy=res.accuracy if res.status == "completed" else None,
        train_seconds=res.train_seconds, phases=res.phases, message=res.message, final=res.final,
    )
    try:
        run_end(session, ctx, res.status, res.final if res.status == "completed" else None, phases)
    except BaseException:
        keep(rec)  # the run's record first: the hook's error goes up after it
        raise
    return rec

