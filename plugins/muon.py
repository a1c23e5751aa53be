"""Muon for the conv filters (airbench94_muon): the 3x3 filters of the conv groups (not the
whitening stem) leave the core's SGD for an optimizer of their own. Each step: Nesterov
momentum on the gradient, the update reshaped to (out, in*k*k) and orthogonalised by a few
Newton-Schulz iterations, and each filter bank rescaled to norm sqrt(out_channels) before the
update (as airbench94_muon does, so the step size does not shrink as weights grow). Every
other parameter stays with the core's SGD in the groups the other tricks made; all groups,
Muon's too, follow the run's lr schedule. Built on the optimizer composition of the contract:
a wrapper of ``hlb_param_groups`` takes the filters out, a wrapper of ``hlb_optimizer_build``
adds the Muon optimizer beside the core's."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick
from hlbcli.model import group_convs

NAME = "muon"

#: quintic Newton-Schulz coefficients (airbench94_muon): steep at zero, so a few iterations
#: bring every singular value into roughly [0.7, 1.2] instead of converging exactly to 1
NS_COEFFS = (3.4445, -4.7750, 2.0315)


class MuonSettings(Settings):
    lr: float = Field(0.24, gt=0, description="step size of the orthogonalised update (PyTorch units; times the run's lr schedule)")
    momentum: float = Field(0.6, ge=0, lt=1, description="momentum of the gradient")
    nesterov: bool = Field(True, description="Nesterov momentum")
    ns_steps: int = Field(3, ge=1, le=10, description="Newton-Schulz iterations")
    renormalize: bool = Field(True, description="rescale each filter bank to norm sqrt(out_channels) before every update")
    ns_dtype: Literal["auto", "bf16", "fp32"] = Field("auto", description="Newton-Schulz precision: auto = bf16 on CUDA, fp32 on the CPU")
    compile: bool = Field(True, description="torch.compile the Newton-Schulz iteration on CUDA (one graph per filter shape)")


def orthogonalize(g: torch.Tensor, steps: int = 3, dtype: torch.dtype = torch.float32, eps: float = 1e-7) -> torch.Tensor:
    """An approximate orthogonalisation U V^T of the 2D ``g`` = U S V^T by ``steps``
    Newton-Schulz iterations in ``dtype`` (the result stays in ``dtype``)."""
    x = g.to(dtype)
    x = x / (x.norm() + eps)  # every singular value <= 1
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon over 4D conv filters. Groups read ``lr`` at every step (the trainer rewrites it
    from the run's schedule), ``momentum``, ``nesterov``, ``ns_steps`` and ``renormalize``;
    the state of each parameter is its ``momentum_buffer``."""

    def __init__(self, params, lr: float, momentum: float = 0.6, nesterov: bool = True, ns_steps: int = 3,
                 renormalize: bool = True, ns_dtype: torch.dtype = torch.float32, orthogonalize_fn=orthogonalize):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, renormalize=renormalize)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        self.orthogonalize_fn = orthogonalize_fn

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                bufs.append(state["momentum_buffer"])
            m = group["momentum"]
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=m) if group["nesterov"] else bufs
            if group["renormalize"]:
                norms = torch._foreach_norm(params)
                for p, n in zip(params, norms):
                    p.mul_(math.sqrt(p.shape[0]) / n)
            for p, u in zip(params, updates):
                o = self.orthogonalize_fn(u.reshape(len(u), -1), group["ns_steps"], self.ns_dtype)
                p.add_(o.view(p.shape).to(p.dtype), alpha=-group["lr"])
        return None


def ns_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if setting == "bf16" else torch.float32


_compiled = {}


def orthogonalize_for(device: torch.device, compile_on: bool):
    """The Newton-Schulz function to use: compiled once per process on CUDA."""
    if device.type != "cuda" or not compile_on:
        return orthogonalize
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(orthogonalize)
    return _compiled["fn"]


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
        orthogonalize_fn=orthogonalize_for(ctx.device, s.compile),
    )
    return others + [muon]
