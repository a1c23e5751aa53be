"""The objects that cross the plugin contract: what hooks receive and return."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from hlbcli.config import EVAL_BATCH
from hlbcli import hookimpl
# the update a trick may own (hlb_update_build): its parts, the core's, and the closure rule
from hlbcli.update import Update, UpdateParts, needs_closure, plain_update  # noqa: F401
from hlbcli.contract_history import CONTRACT  # noqa: F401 (the contract's version)

#: The stages a trick can hook into, in pipeline order.
STAGES = ("setup", "data", "model", "loss", "optimizer", "step", "select", "run", "eval")

#: ``Transform.order``'s slots (lower runs first), by kind of augmentation, never by trick: each
#: trick places its transforms by a slot and an offset of its own (flip at ``ORDER_GEOMETRY``,
#: translate at ``ORDER_GEOMETRY + 10``). Where a pixel comes from (flips, shifts, crops) ...
ORDER_GEOMETRY = 0
#: ... then what its value is (brightness, contrast: colour jitter, on the moved images) ...
ORDER_COLOR = 15
#: ... then regions erased (cutout) ...
ORDER_OCCLUSION = 20
#: ... and last, two images and their labels mixed (CutMix, mixup)
ORDER_MIXING = 30

#: the order constants of contract 1, named after built-in tricks: still importable, with a
#: ``DeprecationWarning``, each the value it had (see CHANGELOG.md, "For trick authors")
_DEPRECATED_ORDERS = {"ORDER_FLIP": ("ORDER_GEOMETRY", 0), "ORDER_TRANSLATE": ("ORDER_GEOMETRY + 10", 10),
                      "ORDER_COLOR_JITTER": ("ORDER_COLOR", 15), "ORDER_CUTOUT": ("ORDER_OCCLUSION", 20),
                      "ORDER_CUTMIX": ("ORDER_MIXING", 30)}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED_ORDERS:
        import warnings

        instead, value = _DEPRECATED_ORDERS[name]
        warnings.warn(f"hlbcli.contract.{name} is deprecated: use {instead} (the contract names slots, not tricks)",
                      DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class TrickInfo:
    """What a trick says about itself (``hlb_trick_info``)."""

    name: str
    summary: str
    version: str = ""
    #: tricks that must be active too
    requires: tuple[str, ...] = ()
    #: tricks that cannot be active at the same time
    conflicts: tuple[str, ...] = ()
    #: core settings the trick sets itself while active (dotted keys, e.g. ``model.bn_eps``):
    #: a value the user writes for one of them would do nothing, so it is refused
    overrides: tuple[str, ...] = ()
    #: tricks this one takes the place of (names): ``--enable`` of this trick turns those off,
    #: and the config's ``replaced`` (in each run record) says so
    replaces: tuple[str, ...] = ()
    #: the contract version it was written for (:data:`CONTRACT`; 0: not said): ``hlb tricks
    #: list`` flags an older one with what changed since (:mod:`hlbcli.contract_history`)
    contract: int = 0


@dataclass(frozen=True)
class DataSpec:
    """What is known of a dataset before it is loaded (``hlb_validate``, ``--dry-run``)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    test_size: int


@dataclass
class Dataset:
    """A labelled image dataset held as uint8 tensors (N, C, H, W) on one device."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    #: per channel, in fractions of 255: the training images' mean of ``images / 255`` (e.g.
    #: CIFAR-10's red channel 0.4914); the net sees ``(images / 255 - mean) / std``
    #: (:func:`hlbcli.evaluation.normalize`)
    mean: tuple[float, ...]
    #: per channel, in fractions of 255: the standard deviation of ``images / 255``
    std: tuple[float, ...]

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(
            self.name,
            self.train_images.to(device),
            self.train_labels.to(device),
            self.test_images.to(device),
            self.test_labels.to(device),
            self.num_classes,
            self.mean,
            self.std,
        )

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    def spec(self) -> DataSpec:
        return DataSpec(self.name, self.num_classes, self.in_channels, int(self.train_images.shape[-1]),
                        len(self.train_labels), len(self.test_labels))


class PerInput:
    """``fn(x)`` computed once per input tensor and kept for the last ``keep`` inputs: for an
    epoch transform that would otherwise redo the same work on the same set every epoch (the
    alternating flip's two sets, translate's reflect pad).

    An input counts as the same only while it is the same live tensor object, unchanged in
    place since (its version). Keys are weak references, not addresses: a set freed at the end
    of an epoch whose memory comes back as the next epoch's new set (the CUDA caching
    allocator does exactly that) is a new input, never a stale hit."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], keep: int = 1):
        self.fn, self.keep = fn, max(1, keep)
        self.entries: list[tuple[Any, int, torch.Tensor]] = []  # (weak ref, version, fn(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for ref, version, out in self.entries:
            if ref() is x and x._version == version:
                return out
        out = self.fn(x)
        self.entries = [*self.entries[len(self.entries) - self.keep + 1:], (weakref.ref(x), x._version, out)]
        return out


@dataclass(frozen=True)
class Transform:
    """A data augmentation returned by ``hlb_batch_transforms``.

    ``level="epoch"``: ``fn(images, epoch, generator) -> images`` runs once per epoch on the
    whole normalised training set (N, C, H, W), outside the step (flip, translate);
    ``generator`` is the run's :attr:`RunContext.generator` (on the run's device). It returns
    a new tensor (or one it keeps between epochs) and never changes its input in place: the
    built-in flip and translate keep sets between epochs, keyed on their input.
    ``level="batch"``: ``fn(images, targets) -> (images, targets)`` runs inside the fused step
    on every batch, with soft targets (B, K) (CutMix). Active for epochs in
    ``[start_epoch, stop_epoch)``, epochs counted from 0 (as ``hlb_epoch_start`` gets them);
    lower ``order`` runs first.
    """

    name: str
    fn: Callable[..., Any]
    level: Literal["epoch", "batch"] = "batch"
    order: int = 0
    start_epoch: int = 0
    stop_epoch: int | None = None

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (self.stop_epoch is None or epoch < self.stop_epoch)


@dataclass(frozen=True)
class StepAction:
    """A function placed in the fused training step (``hlb_step_actions``).

    ``where``: ``"before_forward"``, ``"after_backward"`` (gradients present, before the
    optimizer) or ``"after_step"`` (after the optimizer step). ``fn(step)`` gets a Python int
    counted on the host (reading it costs no sync) and must not sync with the device: the
    0-based index of the current step for ``before_forward``/``after_backward``, the number
    of steps completed for ``after_step`` (so ``every=5`` runs after steps 5, 10, ...). It
    runs when ``step % every == 0`` and ``start_step <= step`` (and ``step < stop_step``
    when set). ``at_end`` actions run once after the last step of a run that completed (not
    one that diverged), with the total, before ``hlb_train_end``.
    """

    name: str
    fn: Callable[[int], None]
    where: Literal["before_forward", "after_backward", "after_step", "at_end"] = "after_step"
    every: int = 1
    start_step: int = 0
    stop_step: int | None = None

    def active(self, step: int) -> bool:
        return (
            step >= self.start_step
            and (self.stop_step is None or step < self.stop_step)
            and step % self.every == 0
        )


@dataclass
class RunContext:
    """Everything a run knows, handed to hooks: built by the trainer once per run, before the
    per-run hooks; ``state`` is free space for tricks."""

    cfg: Any
    device: torch.device
    #: the dtype of the images the net sees (and of its weights, batchnorm aside, in the
    #: ``*-weights`` precisions)
    dtype: torch.dtype
    dataset: Dataset
    seed: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    epochs: float
    num_epochs: int
    model: torch.nn.Module | None = None
    #: the first optimizer (the core's SGD unless a trick replaced it); ``optimizers`` has all
    optimizer: torch.optim.Optimizer | None = None
    optimizers: list = field(default_factory=list)
    #: the run's generator, for code that draws random numbers outside the step (epoch
    #: transforms get it as their ``generator`` argument; build-time hooks may use it): a
    #: ``torch.Generator`` on ``device`` (draw with ``device=ctx.device, generator=...``),
    #: seeded with ``seed`` when the run starts, so a seed draws the same numbers every time on
    #: one device. Each epoch draws its epoch transforms' numbers first, in ``order``, then the
    #: epoch's shuffle. Batch transforms inside the step use torch's global generators, seeded
    #: with ``seed`` too (``torch.manual_seed``)
    generator: torch.Generator | None = None
    #: the training images normalised, in ``dtype`` and the run's memory format (channels_last
    #: with ``train.channels_last``): what data-aware init reads (whitening) and what the epoch
    #: transforms receive
    train_images: torch.Tensor | None = None
    #: True in the untimed warm-up run that compiles every phase's graphs before the timed runs
    #: (two steps per epoch, no per-epoch output); False in every timed run
    warmup: bool = False
    #: the evaluation batch size: ``train.eval_batch_size`` with ``auto`` resolved by the session
    #: for its device and C allocator (see :func:`hlbcli.config.eval_batch_size`)
    eval_batch_size: int = EVAL_BATCH
    #: free space for tricks: the core puts nothing here
    state: dict[str, Any] = field(default_factory=dict)
    #: Set by ``hlb_epoch_start`` implementations that need the trainer to rebuild the step (a
    #: phase boundary that transforms and actions do not already mark). The trainer clears it
    #: just before each ``hlb_epoch_start`` and reads it just after, so setting it in
    #: ``hlb_epoch_end`` has no effect.
    rebuild_step: bool = False
    #: the autocast dtype (``train.precision`` fp16/bf16), None when the run uses no autocast
    autocast_dtype: torch.dtype | None = None
    #: the ablation arm this run belongs to (``baseline``, ``-NAME``, ``+NAME``: ``hlb ablate``,
    #: either backend), None in a plain ``hlb train``
    arm: str | None = None
    #: the folder this run's record is written to (``hlb train --out DIR``: DIR; an ablation
    #: arm of the local backend: ``DIR/arms/<arm folder>``), None when there is none (no
    #: ``--out``; a Ray task, whose records the driver writes on its own machine)
    out: Path | None = None
    #: the progress display's, during the final evaluation only: called by
    #: :func:`hlbcli.evaluation.eval_logits` with (images done, images) after each batch of a
    #: pass (0 as it starts), host-side; None otherwise. The core's: a trick leaves it alone
    eval_progress: Callable[[int, int], None] | None = None

    def autocast(self):
        """The autocast context of this run (a no-op without autocast)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def settings(self, name: str) -> Any:
        """The settings section of trick ``name`` (its pydantic model instance)."""
        return getattr(self.cfg, name)


@dataclass(frozen=True)
class Selection:
    """Which examples of each batch the step trains on, and with what weight (``hlb_select``),
    for every step of the run, made before the loop. The step reads row ``step`` of each by a
    Python int (a view: no host sync).

    ``keep``: int64 positions in the batch (0 to ``batch_size - 1``), shape ``(total_steps, k)``:
    step ``i`` gathers those k examples of its batch and trains on them alone (the forward,
    batchnorm's statistics, the loss and its gradient see only them; batch transforms come
    after). None: every example.
    ``weights``: floats, shape ``(total_steps, k)`` (k the batch size without ``keep``): each
    example's loss is multiplied by its weight before the sum. None: weight 1."""

    keep: torch.Tensor | None = None
    weights: torch.Tensor | None = None


@dataclass
class ProxyNet:
    """A second net for one run, built by the run's own hooks with other model settings
    (``hlb_select``'s ``build_proxy``, :func:`hlbcli.selection.proxy_net`): the seed's weights,
    initialised by ``hlb_model_init``, on the run's device and precision, with its loss,
    optimizers and lr tables from the run's hooks. The trick that asked for it trains it:
    the trainer never does."""

    #: the net (``hlbcli.model``'s names), in training mode
    model: torch.nn.Module
    #: its forward: compiled when the run's net is (once per session), else ``model`` itself
    forward: Callable[[torch.Tensor], torch.Tensor]
    #: ``loss(logits, targets) -> per-example loss`` (``hlb_loss_build``'s)
    loss_fn: Callable
    optimizers: list
    #: each optimizer group's lr at build time, in the order of the groups of ``optimizers``
    base_lrs: list[float]
    #: each group's lr multiplier per step (the run's ``hlb_lr_schedule`` or its own)
    lr_tables: list[list[float]]
    #: the proxy's own context (its hooks saw this one: ``state`` apart from the run's)
    ctx: "RunContext"

    def set_lr(self, step: int) -> None:
        """Every group's lr for step ``step``, as the trainer sets the run's (:func:`set_lrs`)."""
        set_lrs([g for opt in self.optimizers for g in opt.param_groups], self.base_lrs, self.lr_tables, step)


def set_lrs(groups: list[dict], base_lrs: list[float], lr_tables: list, step: int) -> None:
    """The lr rule, the one copy of it: each optimizer group's lr at ``step`` is its lr at build
    time times its table's multiplier for ``step`` (host numbers: no device work, no sync). The
    trainer's step, a proxy net's :meth:`ProxyNet.set_lr` and the benchmarks' hand-written
    references all set their lrs through it."""
    for g, base, table in zip(groups, base_lrs, lr_tables):
        g["lr"] = base * table[step]


@dataclass(frozen=True)
class CrossEntropy:
    """The core's loss: per-example cross-entropy, ``label_smoothing`` as in
    ``F.cross_entropy``. ``targets`` are class indices (B,) when no batch transform is active
    in the phase, else probabilities (B, K) (CutMix, mixup), and the logits then come in fp32.
    A loss wrapper that knows this class can fold its change in (label smoothing does) and keep
    the step at one loss kernel; any other wrapper receives both kinds of targets."""

    label_smoothing: float = 0.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)


def trick(
    name: str,
    summary: str,
    settings: type | None = None,
    *,
    version: str = "",
    requires: tuple[str, ...] = (),
    conflicts: tuple[str, ...] = (),
    overrides: tuple[str, ...] = (),
    replaces: tuple[str, ...] = (),
    contract: int = 0,
):
    """The two setup hooks every trick has, to assign at module level::

        hlb_trick_info, hlb_config_model = trick("flip", "horizontal flips", FlipSettings)

    or on a trick class (``class MyTrick: hlb_trick_info, hlb_config_model = trick(...)``,
    registered as an instance). ``settings`` (a :class:`hlbcli.config.Settings` subclass)
    becomes the config section ``name``; without it the trick has no settings. ``contract``:
    the contract version the trick was written for (:data:`CONTRACT`)."""
    info = TrickInfo(name, summary, version, tuple(requires), tuple(conflicts), tuple(overrides), tuple(replaces), contract)

    # ``*_self``: the same functions work at module level and as attributes of a trick class
    # (where Python passes the instance)
    @hookimpl
    def hlb_trick_info(*_self) -> TrickInfo:
        return info

    @hookimpl
    def hlb_config_model(*_self):
        return (name, settings) if settings is not None else None

    return hlb_trick_info, hlb_config_model


# --- the core's optimizer parametrisation, for tricks that build groups or optimizers ----------


def kilostep_scale(momentum: float) -> float:
    """How much larger (Nesterov) momentum makes steps than the gradients, times 1024: the
    decoupled lr is divided by it (airbench's parametrisation)."""
    return 1024 * (1 + 1 / (1 - momentum))


def sgd_hparams(train) -> tuple[float, float]:
    """(PyTorch SGD lr, absolute per-step weight decay) from the decoupled ``cfg.train``
    settings. The loss is summed over the batch, so the step scales with the batch size. A
    group at lr ``a`` decays by ``wd`` per step with ``weight_decay=wd / a``."""
    scale = kilostep_scale(train.momentum)
    return train.lr / scale, train.weight_decay * train.batch_size / scale
