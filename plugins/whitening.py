"""Whitening init: the stem conv's filters are the eigenvectors of the covariance of k x k
training patches (of the first ``num_images`` images; ``solver``: eigendecomposition, or an SVD
of the same matrix as hiverge's record computes it), scaled by 1/sqrt(eigenvalue + eps), each
paired with its negation. The filters are frozen; the stem's bias (zero, or ``bias_init =
"default"`` as the conv was built) trains for the first
``bias_epochs`` epochs (fractional: the first ceil(bias_epochs * steps per epoch) steps), at
the run's lr schedule or (``bias_schedule = "linear"``, airbench94_muon and hiverge) its own,
decaying linearly from 1 to 0 over those steps."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from hlbcli import TrickError, hookimpl
from hlbcli.config import Settings
from hlbcli.contract import StepAction, trick

NAME = "whitening"


class WhiteningSettings(Settings):
    eps: float = Field(5e-4, gt=0, le=100, description="added to each eigenvalue before the inverse square root")
    num_images: int = Field(5000, gt=0, description="training images whose patches feed the covariance")
    bias_epochs: float = Field(3, ge=0, description="epochs the stem bias trains before it is frozen, fractional allowed (0: frozen from the start; hiverge: 0.19)")
    bias_schedule: Literal["run", "linear"] = Field(
        "run", description="the stem bias's lr: the run's schedule, or its own from 1 down to 0 over its training steps (airbench94_muon, hiverge)")
    solver: Literal["eigh", "svd"] = Field(
        "eigh", description="how the patch covariance is decomposed: eigh, or an SVD (hiverge's record; the same filters up to rounding and sign)")
    bias_init: Literal["zero", "default"] = Field(
        "zero", description="the stem bias at the start: zero (airbench94), or as the conv was built, PyTorch's default uniform in +-1/sqrt(fan in) (airbench94_muon and hiverge leave it so)")


# --- functional core -------------------------------------------------------------------------


def patches(images: torch.Tensor, k: int) -> torch.Tensor:
    """All k x k patches of (N, C, H, W) images as rows (M, C*k*k), channel-major like a conv
    filter's flattening."""
    n, c, _, _ = images.shape
    p = images.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)


def whitening_filters(images: torch.Tensor, k: int, eps: float, solver: str = "eigh") -> torch.Tensor:
    """(2*C*k*k, C, k, k) conv filters: W and -W, where W @ patch has near-identity covariance.

    The covariance is the uncentred second moment of the patches (the inputs are already
    normalised per channel), computed in float64 in one pass: no averaging across chunks."""
    c = images.shape[1]
    x = patches(images.double(), k)
    cov = x.T @ x / len(x)
    if solver == "svd":  # a symmetric PSD matrix: U holds its eigenvectors, S its eigenvalues, largest first
        evecs, evals, _ = torch.linalg.svd(cov)
    else:
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0), evecs.flip(1)  # largest first
    w = (evecs.T / torch.sqrt(evals.clamp_min(0) + eps)[:, None]).reshape(-1, c, k, k)
    return torch.cat([w, -w]).float()


# --- hooks -----------------------------------------------------------------------------------


hlb_trick_info, hlb_config_model = trick(NAME, "stem conv initialised to whiten 2x2 patches (frozen filters, bias trained briefly)", WhiteningSettings)


@hookimpl
def hlb_validate(model):
    stem = model.stem
    c, k = stem.in_channels, stem.kernel_size[0]
    need = 2 * c * k * k
    if stem.out_channels != need:
        raise TrickError(
            f"whitening needs model.stem_width = 2*C*k*k = {need}, but it is {stem.out_channels}",
            f"use --set model.stem_width={need} or --disable whitening",
        )


@hookimpl
def hlb_model_init(model, ctx):
    s = ctx.settings(NAME)
    stem = model.stem
    k = stem.kernel_size[0]
    images = ctx.train_images[: s.num_images].float()
    with torch.no_grad():
        stem.weight.copy_(whitening_filters(images, k, s.eps, s.solver).to(stem.weight.device))
        if stem.bias is not None:
            if s.bias_init == "zero":
                stem.bias.zero_()
            stem.bias.requires_grad_(s.bias_epochs > 0)
    stem.weight.requires_grad_(False)


def bias_steps(bias_epochs: float, steps_per_epoch: int) -> int:
    """The steps the stem bias trains: ceil(bias_epochs * steps per epoch) (3 epochs: exactly
    3 epochs of steps)."""
    return math.ceil(bias_epochs * steps_per_epoch)


def linear_decay(n: int, total_steps: int) -> list[float]:
    """lr multipliers 1 - i / n for steps i < n, then 0 (``total_steps + 1`` values)."""
    return [max(0.0, 1 - i / n) if n > 0 else 0.0 for i in range(total_steps + 1)]


@hookimpl(wrapper=True)
def hlb_param_groups(model, cfg, ctx):
    """``bias_schedule = "linear"``: the stem bias leaves whichever group holds it for a group of
    its own, with that group's lr and decay and its own ``lr_schedule`` (the contract's)."""
    groups = yield
    s = getattr(cfg, NAME)
    bias = model.stem.bias
    if s.bias_schedule != "linear" or bias is None or not bias.requires_grad:
        return groups
    out, own = [], None
    for g in groups:
        kept = [p for p in g["params"] if p is not bias]
        if len(kept) < len(g["params"]):
            own = dict(g, params=[bias], name="whitening_bias",
                       lr_schedule=linear_decay(bias_steps(s.bias_epochs, ctx.steps_per_epoch), ctx.total_steps))
        if kept:
            out.append(dict(g, params=kept))
    return out + ([own] if own is not None else [])


@hookimpl
def hlb_step_actions(model, ctx):
    """Where the bias's last step falls inside an epoch: its gradient is dropped after every
    backward pass from then on (the optimizer skips a parameter without one), until the next
    epoch's start freezes it."""
    n = bias_steps(ctx.settings(NAME).bias_epochs, ctx.steps_per_epoch)
    bias = model.stem.bias
    if bias is None or n == 0 or n % ctx.steps_per_epoch == 0 or n >= ctx.total_steps:
        return []

    def drop_grad(step: int) -> None:
        bias.grad = None

    return [StepAction("whitening_bias_stop", drop_grad, where="after_backward", start_step=n)]


@hookimpl
def hlb_epoch_start(epoch, ctx):
    s = ctx.settings(NAME)
    bias = ctx.model.stem.bias
    if bias is not None and epoch * ctx.steps_per_epoch >= bias_steps(s.bias_epochs, ctx.steps_per_epoch) and bias.requires_grad:
        bias.requires_grad_(False)
        bias.grad = None
