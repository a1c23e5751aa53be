"""The trainer: build once per process, then for each seed reset, init, and run a fused step
per phase. No hook call, host sync or per-image Python inside a step."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hlbcli.config import eval_batch_size
from hlbcli.contract import Dataset, DataSpec, RunContext, StepAction, Transform
from hlbcli.data import normalize
from hlbcli.errors import TrickError, UsageError
from hlbcli.hostmem import apply_host_memory
from hlbcli.model import check_fits, half_weights
from hlbcli.plugins import TrickManager


class RunDiverged(Exception):
    def __init__(self, epoch: int, value: float):
        super().__init__(f"training loss became {value} in epoch {epoch}")
        self.epoch = epoch
        self.value = value


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is visible", "use --device cpu or --device auto")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{device}'", "use auto, cpu or cuda")
    return torch.device(device)


HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(precision: str, device: torch.device) -> str:
    """``train.precision`` with ``auto`` resolved: fp16-weights on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "fp16-weights" if device.type == "cuda" else "fp32"
    return precision


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the images and weights, autocast dtype or None) for ``train.precision``.
    The explicit choices hold on any device (half precision on the CPU is slow, but it is
    what tests and the ops benchmark use to follow the CUDA path)."""
    precision = precision_name(precision, device)
    if precision == "fp32":
        return torch.float32, None
    if precision.endswith("-weights"):
        return HALF[precision.split("-")[0]], None
    return torch.float32, HALF[precision]


class Timer:
    """Wall time of the timed phases, synchronising the device when it reads the clock."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


@dataclass
class Session:
    """What is built once per process and reused across seeds."""

    cfg: Any
    tm: TrickManager
    device: torch.device
    dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    dataset: Dataset
    model: torch.nn.Module
    forward_model: torch.nn.Module
    compiled: bool
    deterministic: bool
    load_seconds: float
    build_seconds: float
    #: what holds for this process's C allocator (``train.host_memory`` resolved and applied
    #: once, when the session starts): keep or system
    host_memory: str = "system"
    warmup_seconds: float = 0.0
    warmed_up: bool = False

    @property
    def precision(self) -> str:
        """The resolved ``train.precision`` (fp32, fp16, bf16, fp16-weights, bf16-weights)."""
        return precision_name(self.cfg.train.precision, self.device)

    @property
    def eval_batch_size(self) -> int:
        """The resolved ``train.eval_batch_size`` (``auto``: by device and host memory)."""
        return eval_batch_size(self.cfg.train.eval_batch_size, self.device, self.host_memory == "keep")

    @property
    def train_size(self) -> int:
        return len(self.dataset.train_labels)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = torch.cuda.is_available()


def prepare(
    cfg: Any,
    tm: TrickManager,
    device: str = "auto",
    data_dir: str | None = None,
    download: bool = True,
    deterministic: bool = False,
) -> Session:
    dev = resolve_device(device)
    dtype, autocast_dtype = resolve_precision(cfg.train.precision, dev)
    set_deterministic(deterministic)
    host_memory = apply_host_memory(cfg.train.host_memory, dev.type)
    t0 = time.perf_counter()
    dataset = tm.hook.hlb_dataset_build(cfg=cfg, device=dev, data_dir=data_dir, download=download)
    load_s = time.perf_counter() - t0
    check_run(cfg, tm, dataset.spec())
    t0 = time.perf_counter()
    model = tm.hook.hlb_model_build(cfg=cfg, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    model = model.to(dev)
    if dtype != torch.float32:
        half_weights(model, dtype)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compile_on = cfg.train.compile == "on" or (cfg.train.compile == "auto" and dev.type == "cuda")
    forward_model = torch.compile(model, mode=cfg.train.compile_mode) if compile_on else model
    build_s = time.perf_counter() - t0
    return Session(
        cfg, tm, dev, dtype, autocast_dtype, dataset, model, forward_model, compile_on,
        deterministic or dev.type == "cpu", load_s, build_s, host_memory,
    )


def reset_weights(session: Session, seed: int) -> None:
    """Give the built model the seed's fresh initial weights in place (the compiled graph
    keeps pointing at the same tensors)."""
    torch.manual_seed(seed)
    cfg, ds = session.cfg, session.dataset
    fresh = session.tm.hook.hlb_model_build(cfg=cfg, num_classes=ds.num_classes, in_channels=ds.in_channels)
    with torch.no_grad():
        session.model.load_state_dict(fresh.state_dict())
    for p, q in zip(session.model.parameters(), fresh.parameters()):
        p.requires_grad_(q.requires_grad)
        p.grad = None


def _flatten(results: list) -> list:
    out = []
    for r in results:
        if r is None:
            continue
        out.extend(r if isinstance(r, (list, tuple)) else [r])
    return out


def build_step(
    forward: torch.nn.Module,
    loss_fn: Callable,
    optimizers: list[torch.optim.Optimizer],
    base_lrs: list[float],
    lr_table: list[float],
    batch_transforms: list[Transform],
    actions: list[StepAction],
    num_classes: int,
    ctx: RunContext,
    record: "StepRecord",
) -> Callable[[torch.Tensor, torch.Tensor, int], None]:
    """Fuse one phase's transforms and actions into a plain step function.

    Per step it dispatches what a hand-written step would: the forward, one loss, the
    backward, the optimizer's kernels and the actions due; nothing for bookkeeping (the loss
    tensors are kept on a list and summed once per epoch). Class-index targets go to the loss
    unless a batch transform is active, which gets one-hot targets and hands back soft ones."""
    before = tuple(a for a in actions if a.where == "before_forward")
    after_bwd = tuple(a for a in actions if a.where == "after_backward")
    after = tuple(a for a in actions if a.where == "after_step")
    transforms = tuple(t.fn for t in batch_transforms)
    soft = bool(transforms)
    groups = [g for opt in optimizers for g in opt.param_groups]
    zero_grads = tuple(opt.zero_grad for opt in optimizers)
    opt_steps = tuple(opt.step for opt in optimizers)
    autocast = ctx.autocast
    use_autocast = ctx.autocast_dtype is not None
    losses, last = record.losses, record.last

    def step(x: torch.Tensor, y: torch.Tensor, i: int) -> None:
        for a in before:
            if a.active(i):
                a.fn(i)
        targets = y
        if soft:
            targets = F.one_hot(y, num_classes).float()
            for fn in transforms:
                x, targets = fn(x, targets)
        if use_autocast:
            with autocast():
                logits = forward(x)
        else:
            logits = forward(x)
        loss = loss_fn(logits.float() if soft else logits, targets).sum()
        for zero_grad in zero_grads:
            zero_grad(set_to_none=True)
        loss.backward()
        for a in after_bwd:
            if a.active(i):
                a.fn(i)
        scale = lr_table[i]
        for g, base in zip(groups, base_lrs):
            g["lr"] = base * scale
        for opt_step in opt_steps:
            opt_step()
        done = i + 1
        for a in after:
            if a.active(done):
                a.fn(done)
        losses.append(loss)
        last[:] = (logits, y)

    return step


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
        """(mean train loss per example over the epoch, accuracy on its last batch): one sync."""
        if not self.losses:
            return float("nan"), float("nan")
        logits, y = self.last
        total = torch.stack([v.float() for v in self.losses]).sum()
        acc = (logits.argmax(1) == y).float().mean()
        loss_sum, acc_v = torch.stack([total, acc]).tolist()
        return loss_sum / (len(self.losses) * batch_size), acc_v


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
    record: StepRecord = field(default_factory=StepRecord)

    def step_fn(self, forward: torch.nn.Module, batch_transforms: list[Transform]):
        return build_step(
            forward, self.loss_fn, self.optimizers, self.base_lrs, self.lr_table, batch_transforms,
            self.actions, self.ctx.dataset.num_classes, self.ctx, self.record,
        )


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


def data_spec(cfg: Any) -> DataSpec:
    """The dataset's shape from the config alone (no data loaded): for ``--dry-run``."""
    d = cfg.data
    if d.dataset == "synthetic":
        return DataSpec("synthetic", d.synthetic_classes, 3, d.synthetic_size, d.synthetic_train, d.synthetic_test)
    classes = 100 if d.dataset == "cifar100" else 10
    return DataSpec(d.dataset, classes, 3, 32, 50000, 10000)


def check_run(cfg: Any, tm: TrickManager, spec: DataSpec | None = None) -> None:
    """Everything that can be checked before training: the batch against the training set,
    the widths against the image size, and each trick's ``hlb_validate`` on the built model
    (fp32, on the CPU). ``spec`` defaults to the config's (``--dry-run``)."""
    spec = spec or data_spec(cfg)
    if cfg.train.batch_size > spec.train_size:
        raise UsageError(
            f"train.batch_size {cfg.train.batch_size} is larger than the training set ({spec.train_size} images)",
            f"use --set train.batch_size={min(1024, spec.train_size)} or fewer",
        )
    check_fits(list(cfg.model.widths), spec.image_size, cfg.model.stem_kernel)
    model = tm.hook.hlb_model_build(cfg=cfg, num_classes=spec.num_classes, in_channels=spec.in_channels)
    tm.hook.hlb_validate(cfg=cfg, data=spec, model=model)


def plan_run(session: Session, seed: int, warmup: bool = False) -> RunPlan:
    """Reset the weights to the seed's, then call the build-time hooks once: data-aware init,
    transforms, loss, parameter groups, optimizer, lr table, step actions, train start."""
    cfg, tm, dev, ds = session.cfg, session.tm, session.device, session.dataset
    if dev.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    reset_weights(session, seed)
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    model = session.model
    model.train()
    t = cfg.train
    steps_per_epoch = session.train_size // t.batch_size
    total_steps = max(1, math.ceil(t.epochs * steps_per_epoch))
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    ctx = RunContext(
        cfg=cfg, device=dev, dtype=session.dtype, dataset=ds, seed=seed, batch_size=t.batch_size,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, epochs=t.epochs, num_epochs=num_epochs,
        model=model, generator=gen, autocast_dtype=session.autocast_dtype, warmup=warmup,
        eval_batch_size=session.eval_batch_size,
    )
    train_images = normalize(ds.train_images, ds.mean, ds.std, session.dtype)
    if t.channels_last:
        train_images = train_images.contiguous(memory_format=torch.channels_last)
    ctx.train_images = train_images
    tm.hook.hlb_model_init(model=model, ctx=ctx)
    transforms = sorted(_flatten(tm.hook.hlb_batch_transforms(cfg=cfg, ctx=ctx)), key=lambda tr: tr.order)
    loss_fn = tm.hook.hlb_loss_build(cfg=cfg, ctx=ctx)
    groups = tm.hook.hlb_param_groups(model=model, cfg=cfg, ctx=ctx)
    built = tm.hook.hlb_optimizer_build(param_groups=groups, cfg=cfg, ctx=ctx)
    optimizers = list(built) if isinstance(built, (list, tuple)) else [built]
    check_optimizers(model, optimizers)
    ctx.optimizer, ctx.optimizers = optimizers[0], optimizers
    base_lrs = [g["lr"] for opt in optimizers for g in opt.param_groups]
    lr_table = tm.hook.hlb_lr_schedule(total_steps=total_steps, cfg=cfg, ctx=ctx)
    if len(lr_table) < total_steps + 1:
        raise UsageError(f"the lr schedule has {len(lr_table)} values for {total_steps} steps", "fix the schedule hook")
    lr_table = [float(v) for v in lr_table.tolist()]
    actions = _flatten(tm.hook.hlb_step_actions(model=model, optimizer=optimizers[0], optimizers=optimizers, cfg=cfg, ctx=ctx))
    tm.hook.hlb_train_start(ctx=ctx)
    return RunPlan(ctx, transforms, loss_fn, optimizers, base_lrs, lr_table, actions)


def run_one(
    session: Session,
    seed: int,
    on_epoch: Callable[[dict], None] | None = None,
    warmup: bool = False,
) -> RunResult:
    """Train one seed. ``warmup`` runs two steps per epoch on the same plan (it compiles every
    phase's graphs) and skips the per-epoch evaluation's output."""
    cfg, tm, dev, ds = session.cfg, session.tm, session.device, session.dataset
    timer = Timer(dev)
    phases = {"init": 0.0, "train": 0.0, "eval": 0.0}
    t0 = timer.now()
    plan = plan_run(session, seed, warmup)
    phases["init"] = timer.now() - t0
    ctx, transforms, actions = plan.ctx, plan.transforms, plan.actions
    record = plan.record
    model, fwd, gen = session.model, session.forward_model, ctx.generator
    t = cfg.train
    n = session.train_size
    steps_per_epoch, total_steps, num_epochs = ctx.steps_per_epoch, ctx.total_steps, ctx.num_epochs
    labels = ds.train_labels
    epochs: list[dict] = []
    step_fn = None
    phase_key = None
    step = 0
    elapsed = phases["init"]
    status, message = "completed", ""

    for epoch in range(num_epochs):
        t0 = timer.now()
        ctx.rebuild_step = False
        tm.hook.hlb_epoch_start(epoch=epoch, ctx=ctx)
        batch_tr = [tr for tr in transforms if tr.level == "batch" and tr.active(epoch)]
        key = tuple(tr.name for tr in batch_tr)
        if step_fn is None or key != phase_key or ctx.rebuild_step:
            step_fn = plan.step_fn(fwd, batch_tr)
            phase_key = key
        images = ctx.train_images
        for tr in transforms:
            if tr.level == "epoch" and tr.active(epoch):
                images = tr.fn(images, epoch, gen)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        perm = torch.randperm(n, device=dev, generator=gen)
        n_steps = min(steps_per_epoch, total_steps - step)
        if warmup:
            n_steps = min(n_steps, 2)
        record.clear()
        bs = t.batch_size
        for i in range(n_steps):
            idx = perm[i * bs : (i + 1) * bs]
            step_fn(images[idx], labels[idx], step)
            step += 1
        train_loss, train_acc = record.read(bs)
        dt = timer.now() - t0
        phases["train"] += dt
        elapsed += dt
        row = {"epoch": epoch + 1, "steps": step, "train_loss": train_loss, "train_acc": train_acc, "val_acc": None, "elapsed": elapsed}
        if not math.isfinite(train_loss):
            status, message = "diverged", f"training loss became {train_loss} in epoch {epoch + 1}"
            epochs.append(row)
            if on_epoch and not warmup:
                on_epoch(row)
            break
        if t.eval_every_epoch and epoch < num_epochs - 1:
            res = tm.hook.hlb_evaluate(model=model, images=ds.test_images, labels=ds.test_labels, forward=fwd, ctx=ctx)
            row["val_acc"] = res["accuracy"]
        tm.hook.hlb_epoch_end(epoch=epoch, metrics=row, ctx=ctx)
        epochs.append(row)
        if on_epoch and epoch < num_epochs - 1 and not warmup:
            on_epoch(row)

    accuracy = float("nan")
    final: dict = {}
    if status == "completed":
        t0 = timer.now()
        for a in actions:
            if a.where == "at_end":
                a.fn(step)
        tm.hook.hlb_train_end(ctx=ctx)
        forward = tm.hook.hlb_eval_forward(model=fwd, cfg=cfg, ctx=ctx)
        final = tm.hook.hlb_evaluate(model=model, images=ds.test_images, labels=ds.test_labels, forward=forward, ctx=ctx)
        dt = timer.now() - t0
        phases["eval"] = dt
        accuracy = final["accuracy"]
        elapsed += dt
        epochs[-1]["val_acc"] = accuracy
        epochs[-1]["elapsed"] = elapsed
        if on_epoch and not warmup:
            on_epoch(epochs[-1])
    return RunResult(seed, status, accuracy, sum(phases.values()), phases, epochs, message, final)


def warm_up(session: Session, seed: int = 0) -> float:
    """Compile every phase's graphs once (two steps per epoch), untimed, before the runs."""
    if session.warmed_up or not session.compiled:
        return 0.0
    t0 = time.perf_counter()
    run_one(session, seed, warmup=True)
    session.warmup_seconds = time.perf_counter() - t0
    session.warmed_up = True
    return session.warmup_seconds
