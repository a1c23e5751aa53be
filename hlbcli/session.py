"""A session: what is built once per process and reused by every seed's run: the device and
precision, the C allocator's mode, the data on the device and the model (compiled where asked).
The run levels: resolve a config (:mod:`hlbcli.resolve`) -> open a session (here) -> run a seed
(:mod:`hlbcli.run`) -> the step (:mod:`hlbcli.step`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from hlbcli.config import eval_batch_size
from hlbcli.contract import Dataset, DataSpec
from hlbcli.errors import UsageError
from hlbcli.hostmem import apply_host_memory
from hlbcli.model import check_fits, half_weights
from hlbcli.plugins import TrickManager
from hlbcli.record import source_commit
from hlbcli.step import fused_forward_loss


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


def cast_half(model: torch.nn.Module, dtype: torch.dtype, precision: str) -> torch.nn.Module:
    """:func:`hlbcli.model.half_weights` as the resolved ``precision`` asks: batchnorm kept in
    fp32, or (``fp16-all`` / ``bf16-all``) in ``dtype`` too."""
    return half_weights(model, dtype, batchnorm_fp32=not precision.endswith("-all"))


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the images and weights, autocast dtype or None) for ``train.precision``.
    The explicit choices hold on any device (half precision on the CPU is slow, but it is
    what tests and the ops benchmark use to follow the CUDA path)."""
    precision = precision_name(precision, device)
    if precision == "fp32":
        return torch.float32, None
    if precision.endswith(("-weights", "-all")):
        return HALF[precision.split("-")[0]], None
    return torch.float32, HALF[precision]


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
    #: what times the runs' phases: ``wall`` or ``cuda-events`` (:data:`hlbcli.timers.TIMERS`; ``hlb bench --timer``)
    timer: str = "wall"
    #: ``train.compile_loss``: the compiled forward+loss graphs, one per (loss, soft targets),
    #: kept for every seed of the session (:meth:`hlbcli.run.RunPlan.step_fn`)
    fused: dict = field(default_factory=dict)
    #: the proxy nets of the selection stage (:func:`hlbcli.selection.proxy_net`), built and
    #: compiled once per session and model settings, given each seed's weights per run
    proxies: dict = field(default_factory=dict)
    #: :func:`hlbcli.record.source_commit`, read once when the session opens: each run record
    #: says which code trained it
    source: tuple = ("not a git checkout", False)
    #: ``hlb profile``: each run's step assembled with profiler ranges (:func:`hlbcli.step.build_step`)
    profiling: bool = False

    @property
    def precision(self) -> str:
        """The resolved ``train.precision`` (fp32, fp16, bf16, fp16-weights, bf16-weights, fp16-all, bf16-all)."""
        return precision_name(self.cfg.train.precision, self.device)

    @property
    def eval_batch_size(self) -> int:
        """The resolved ``train.eval_batch_size`` (``auto``: by device and host memory)."""
        return eval_batch_size(self.cfg.train.eval_batch_size, self.device, self.host_memory == "keep")

    @property
    def train_size(self) -> int:
        return len(self.dataset.train_labels)

    def forward_loss(self, loss_fn: Any, soft: bool, ctx: Any):
        """``train.compile_loss`` on a compiled session: the forward and the summed loss as one
        compiled graph (:func:`hlbcli.step.fused_forward_loss`), built once per session and
        loss (a loss equal to an earlier run's reuses its graph, so seeds do not recompile);
        else None (the step calls the forward and the loss apart)."""
        if not (self.compiled and self.cfg.train.compile_loss):
            return None
        key: tuple = (loss_fn, soft)
        try:
            hash(key)
        except TypeError:
            key = (id(loss_fn), soft)
        if key not in self.fused:
            self.fused[key] = fused_forward_loss(self.model, loss_fn, soft, ctx, self.cfg.train.compile_mode)
        return self.fused[key]


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


def open_session(
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
    check_session(cfg, tm, dataset.spec())
    t0 = time.perf_counter()
    model = tm.hook.hlb_model_build(cfg=cfg, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    model = model.to(dev)
    if dtype != torch.float32:
        cast_half(model, dtype, precision_name(cfg.train.precision, dev))
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compile_on = cfg.train.compile == "on" or (cfg.train.compile == "auto" and dev.type == "cuda")
    forward_model = torch.compile(model, mode=cfg.train.compile_mode) if compile_on else model
    build_s = time.perf_counter() - t0
    return Session(
        cfg, tm, dev, dtype, autocast_dtype, dataset, model, forward_model, compile_on,
        deterministic or dev.type == "cpu", load_s, build_s, host_memory, source=source_commit(),
    )


def reset_weights(session: Session, seed: int, model: torch.nn.Module | None = None, cfg: Any = None) -> None:
    """Give the built model (or ``model``, a net of ``cfg``'s: a proxy net of
    :func:`hlbcli.selection.proxy_net`) the seed's fresh initial weights in place (the compiled
    graph keeps pointing at the same tensors)."""
    torch.manual_seed(seed)
    cfg, ds = cfg if cfg is not None else session.cfg, session.dataset
    model = model if model is not None else session.model
    fresh = session.tm.hook.hlb_model_build(cfg=cfg, num_classes=ds.num_classes, in_channels=ds.in_channels)
    with torch.no_grad():
        model.load_state_dict(fresh.state_dict())
    for p, q in zip(model.parameters(), fresh.parameters()):
        p.requires_grad_(q.requires_grad)
        p.grad = None


def data_spec(cfg: Any) -> DataSpec:
    """The dataset's shape from the config alone (no data loaded): for ``--dry-run``."""
    d = cfg.data
    if d.dataset == "synthetic":
        return DataSpec("synthetic", d.synthetic_classes, 3, d.synthetic_size, d.synthetic_train, d.synthetic_test)
    classes = 100 if d.dataset == "cifar100" else 10
    return DataSpec(d.dataset, classes, 3, 32, 50000, 10000)


def check_session(cfg: Any, tm: TrickManager, spec: DataSpec | None = None) -> None:
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


