"""Muon for the conv filters (airbench94_muon): the 3x3 filters of the conv groups (not the
whitening stem) leave the core's SGD for an optimizer of their own. Each step: Nesterov
momentum on the gradient, the update reshaped to (out, in*k*k) and orthogonalised by a few
Newton-Schulz iterations, and each filter bank rescaled to norm sqrt(out_channels) before the
update (as airbench94_muon does, so the step size does not shrink as weights grow). Every
other parameter stays with the core's SGD in the groups the other tricks made; all groups,
Muon's too, follow the run's lr schedule. Built on the optimizer composition of the contract:
a wrapper of ``hlb_param_groups`` takes the filters out, a wrapper of ``hlb_optimizer_build``
adds the Muon optimizer beside the core's.

hiverge's cifar10-speedrun record (``cifar10_speedrun.py``) changes Muon in six ways, each a
setting here whose default keeps airbench94_muon's behaviour: ``batched`` (one zero-padded
Newton-Schulz over all filters at once), ``ns_coefficients``, ``anneal_target`` (an annealed
target norm for each update, which the normalisation right after it cancels: it changes the
update only by rounding), ``renorm_schedule = "progressive"`` (rescale the filter banks every
2 + int(15 * progress) steps instead of every step), ``momentum_dtype`` (fp16 buffers) and
``weight_decay`` (decoupled, after the update)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick
from hlbcli.model import group_convs

NAME = "muon"

#: quintic Newton-Schulz coefficients (airbench94_muon): steep at zero, so a few iterations
#: bring every singular value into roughly [0.7, 1.2] instead of converging exactly to 1
NS_COEFFS = (3.4445, -4.7750, 2.0315)
#: hiverge's eps of the target scaling, X * target / (||X|| + TARGET_EPS)
TARGET_EPS = 1e-5


class MuonSettings(Settings):
    lr: float = Field(0.24, gt=0, le=10, description="step size of the orthogonalised update (PyTorch units; times the run's lr schedule)")
    momentum: float = Field(0.6, ge=0, lt=1, description="momentum of the gradient")
    nesterov: bool = Field(True, description="Nesterov momentum")
    ns_steps: int = Field(3, ge=1, le=10, description="Newton-Schulz iterations")
    renormalize: bool = Field(True, description="rescale each filter bank to norm sqrt(out_channels) before an update (when: renorm_schedule)")
    ns_dtype: Literal["auto", "update", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Newton-Schulz precision: auto = bf16 on CUDA, fp32 on the CPU; update = the update's own dtype (hiverge: fp16 on the GPU)")
    compile: bool = Field(True, description="torch.compile the Newton-Schulz iteration on CUDA (one graph per filter shape, or one for all with batched)")
    batched: bool = Field(False, description="one batched Newton-Schulz for all filters, zero-padded to a common (out, in*k*k) shape (hiverge: true)")
    ns_coefficients: list[float] = Field(list(NS_COEFFS), min_length=3, max_length=3,
                                         description="quintic Newton-Schulz coefficients a, b, c (hiverge: [3.4576, -4.7391, 2.0843])")
    anneal_target: bool = Field(False, description="scale each update to a norm annealed linearly target_start -> target_end before its normalisation, which cancels it up to rounding (hiverge: true)")
    target_start: float = Field(0.5012, gt=0, le=100, description="anneal_target: the target norm at progress 0 (hiverge's value)")
    target_end: float = Field(0.0786, gt=0, le=100, description="anneal_target: the target norm at progress 1 (hiverge's value)")
    renorm_schedule: Literal["every_step", "progressive"] = Field(
        "every_step", description="when to rescale: every step, or progressive: when renorm_start + int(renorm_growth * progress) steps have passed (hiverge: progressive)")
    renorm_start: int = Field(2, ge=1, description="progressive: the rescaling period at progress 0 (hiverge's value)")
    renorm_growth: float = Field(15.0, ge=0, description="progressive: how many steps the period grows by over the run (hiverge's value)")
    momentum_dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field("auto", description="dtype of the momentum buffers: auto = the gradient's (hiverge: fp16)")
    weight_decay: float = Field(0.0, ge=0, le=1, description="decoupled decay of the filters after each update, p *= 1 - lr * weight_decay, scheduled lr (hiverge: 1.0418e-6 * 1536)")


def orthogonalize(g: torch.Tensor, steps: int = 3, dtype: torch.dtype = torch.float32, eps: float = 1e-7,
                  coeffs: tuple[float, float, float] = NS_COEFFS) -> torch.Tensor:
    """An approximate orthogonalisation U V^T of the 2D ``g`` = U S V^T by ``steps``
    Newton-Schulz iterations in ``dtype`` (the result stays in ``dtype``)."""
    x = g.to(dtype)
    x = x / (x.norm() + eps)  # every singular value <= 1
    tall = x.shape[0] > x.shape[1]
    x = newton_schulz(x.T if tall else x, steps, coeffs)
    return x.T if tall else x


def newton_schulz(x: torch.Tensor, steps: int, coeffs: tuple[float, float, float]) -> torch.Tensor:
    """``steps`` quintic Newton-Schulz iterations on ``x``, a normalised wide matrix (rows <=
    columns) or a batch of them (3-D): the one iteration both paths use."""
    a, b, c = coeffs
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return x


def padded_shape(shapes) -> tuple[int, int]:
    """The common (maxD, maxK) of the 2D matrices (out, in*k*k) of filters of ``shapes``, maxK
    rounded up to a multiple of 16 (as hiverge)."""
    d = max([s[0] for s in shapes], default=1)
    k = max([math.prod(s[1:]) for s in shapes], default=1)
    return d, -(-k // 16) * 16


def orthogonalize_batched(mats: list[torch.Tensor], max_d: int, max_k: int, steps: int = 3,
                          dtype: torch.dtype = torch.float32, eps: float = 1e-7,
                          coeffs: tuple[float, float, float] = NS_COEFFS) -> list[torch.Tensor]:
    """:func:`orthogonalize` of each 2D matrix of ``mats`` by one batched Newton-Schulz: each
    zero-padded to (max_d, max_k) (zero rows and columns stay zero and leave the other
    entries' result unchanged), normalised by its own norm, the batch transposed when
    max_d > max_k; each result cut back to its matrix's shape (in ``dtype``)."""
    x = torch.stack([F.pad(m.to(dtype), (0, max_k - m.shape[1], 0, max_d - m.shape[0])) for m in mats])
    x = x / (x.norm(dim=(1, 2), keepdim=True) + eps)
    tall = max_d > max_k
    x = newton_schulz(x.mT if tall else x, steps, coeffs)
    if tall:
        x = x.mT
    return [x[i, : m.shape[0], : m.shape[1]] for i, m in enumerate(mats)]


def target_norm(progress: float, start: float, end: float) -> float:
    """hiverge's target norm of an update: linear from ``start`` (progress 0) to ``end`` (1)."""
    return start * (1 - progress) + end * progress


def renorm_period(step: int, total_steps: int, start: int, growth: float) -> int:
    """The progressive rescaling period at optimizer step ``step`` (from 1)."""
    return start + int(growth * step / total_steps)


def renorm_steps(total_steps: int, start: int = 2, growth: float = 15.0) -> list[int]:
    """The optimizer steps (counted from 1) at which the progressive schedule rescales the
    filter banks: step s does when s - (the last such step, 0 at first) >= its period."""
    out, last = [], 0
    for s in range(1, total_steps + 1):
        if s - last >= renorm_period(s, total_steps, start, growth):
            out.append(s)
            last = s
    return out


class Muon(torch.optim.Optimizer):
    """Muon over 4D conv filters. Groups read ``lr`` at every step (the trainer rewrites it
    from the run's schedule), ``momentum``, ``nesterov``, ``ns_steps``, ``renormalize`` and
    ``weight_decay``; the state of each parameter is its ``momentum_buffer``. The options of
    hiverge's record (see the module docstring) are the optimizer's: ``anneal_target`` and the
    ``progressive`` rescaling need ``total_steps``, counted against a host-side step counter."""

    def __init__(self, params, lr: float, momentum: float = 0.6, nesterov: bool = True, ns_steps: int = 3,
                 renormalize: bool = True, ns_dtype: torch.dtype = torch.float32, orthogonalize_fn=orthogonalize,
                 *, weight_decay: float = 0.0, batched: bool = False, batched_fn=orthogonalize_batched,
                 ns_coefficients=NS_COEFFS, anneal_target: bool = False, target_start: float = 0.5012,
                 target_end: float = 0.0786, renorm_schedule: str = "every_step", renorm_start: int = 2,
                 renorm_growth: float = 15.0, momentum_dtype: torch.dtype | None = None, total_steps: int | None = None):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, renormalize=renormalize,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        if (anneal_target or renorm_schedule == "progressive") and not total_steps:
            raise ValueError("anneal_target and renorm_schedule='progressive' need total_steps")
        if renorm_schedule not in ("every_step", "progressive"):
            raise ValueError(f"unknown renorm_schedule {renorm_schedule!r}")
        self.ns_dtype = ns_dtype
        self.orthogonalize_fn = orthogonalize_fn
        self.batched, self.batched_fn = batched, batched_fn
        self.coeffs = tuple(float(c) for c in ns_coefficients)
        self.anneal_target, self.target_start, self.target_end = anneal_target, target_start, target_end
        self.renorm_schedule, self.renorm_start, self.renorm_growth = renorm_schedule, renorm_start, renorm_growth
        self.momentum_dtype = momentum_dtype
        self.total_steps = total_steps
        self.step_count = 0  # optimizer steps taken, on the host
        self.last_renorm_step = 0
        # the padding plan of the batched Newton-Schulz: one common shape per group
        self.pad_plan = [padded_shape([p.shape for p in g["params"]]) for g in self.param_groups]

    def renorm_this_step(self) -> bool:
        """Whether this step (``step_count``, already counted) rescales the filter banks (a
        progressive rescale is recorded in ``last_renorm_step``)."""
        if self.renorm_schedule == "every_step":
            return True
        s = self.step_count
        if s - self.last_renorm_step >= renorm_period(s, self.total_steps, self.renorm_start, self.renorm_growth):
            self.last_renorm_step = s
            return True
        return False

    @torch.no_grad()
    def step(self, closure=None):
        self.step_count += 1
        renorm = self.renorm_this_step()
        for group, (max_d, max_k) in zip(self.param_groups, self.pad_plan):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, dtype=self.momentum_dtype)
                bufs.append(state["momentum_buffer"])
            m = group["momentum"]
            torch._foreach_mul_(bufs, m)
            if self.momentum_dtype is not None:  # hiverge: the gradient cast into the buffer's dtype
                torch._foreach_add_(bufs, [g.to(b.dtype) for g, b in zip(grads, bufs)])
            else:
                torch._foreach_add_(bufs, grads)
            # the Nesterov update from the gradient as it is (hiverge: an fp32 gradient plus fp16
            # buffers gives an fp32 update)
            updates = torch._foreach_add(grads, bufs, alpha=m) if group["nesterov"] else bufs
            if self.anneal_target:
                t = target_norm(self.step_count / self.total_steps, self.target_start, self.target_end)
                updates = [u * (t / (n + TARGET_EPS)) for u, n in zip(updates, torch._foreach_norm(updates))]
            if group["renormalize"] and renorm:
                norms = torch._foreach_norm(params)
                for p, n in zip(params, norms):
                    p.mul_(math.sqrt(p.shape[0]) / n)
            ns_dt = self.ns_dtype if self.ns_dtype is not None else updates[0].dtype
            if self.batched:
                outs = self.batched_fn([u.reshape(len(u), -1) for u in updates], max_d, max_k, group["ns_steps"],
                                       ns_dt, coeffs=self.coeffs)
                for p, o in zip(params, outs):
                    p.add_(o.reshape(p.shape).to(p.dtype), alpha=-group["lr"])
            else:
                for p, u in zip(params, updates):
                    o = self.orthogonalize_fn(u.reshape(len(u), -1), group["ns_steps"], ns_dt, coeffs=self.coeffs)
                    p.add_(o.view(p.shape).to(p.dtype), alpha=-group["lr"])
            if group["weight_decay"] != 0:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        return None


def ns_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if setting == "update":
        return None  # the update's own dtype, whatever it is
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting, torch.float32)


MOMENTUM_DTYPES = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

_compiled = {}


def compiled_for(fn, device: torch.device, compile_on: bool):
    """``fn`` (a Newton-Schulz function) as the run uses it: compiled once per process on CUDA."""
    if device.type != "cuda" or not compile_on:
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn)
    return _compiled[fn]


def orthogonalize_for(device: torch.device, compile_on: bool):
    """The per-filter Newton-Schulz function to use: compiled once per process on CUDA."""
    return compiled_for(orthogonalize, device, compile_on)


hlb_trick_info, hlb_config_model = trick(NAME, "Muon (orthogonalised momentum) for the conv filters, SGD for the rest", MuonSettings)


@hookimpl(wrapper=True)
def hlb_param_groups(model, ctx):
    groups = yield
    filters = [c.weight for c in group_convs(model) if c.weight.requires_grad]
    taken = {id(p) for p in filters}
    ctx.state[NAME] = filters
    out = []
    for g in groups:
        kept = [p for p in g["params"] if id(p) not in taken]
        if kept:
            out.append(dict(g, params=kept))
    return out


@hookimpl(wrapper=True)
def hlb_optimizer_build(cfg, ctx):
    built = yield
    others = list(built) if isinstance(built, (list, tuple)) else [built]
    s = getattr(cfg, NAME)
    filters = ctx.state[NAME]
    if not filters:
        return others
    muon = Muon(
        [dict(params=filters, name="muon")], lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, ns_steps=s.ns_steps,
        renormalize=s.renormalize, ns_dtype=ns_dtype(s.ns_dtype, ctx.device),
        orthogonalize_fn=orthogonalize_for(ctx.device, s.compile), weight_decay=s.weight_decay, batched=s.batched,
        batched_fn=compiled_for(orthogonalize_batched, ctx.device, s.compile), ns_coefficients=s.ns_coefficients,
        anneal_target=s.anneal_target, target_start=s.target_start, target_end=s.target_end,
        renorm_schedule=s.renorm_schedule, renorm_start=s.renorm_start, renorm_growth=s.renorm_growth,
        momentum_dtype=MOMENTUM_DTYPES[s.momentum_dtype], total_steps=ctx.total_steps,
    )
    return others + [muon]
