"""Whitening init: the stem conv's filters are the eigenvectors of the covariance of k x k
training patches, scaled by 1/sqrt(eigenvalue + eps), each paired with its negation. The
filters are frozen; the stem's bias trains for the first ``bias_epochs`` epochs."""

from __future__ import annotations

import torch
from pydantic import Field

from hlbcli import TrickError, hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick

NAME = "whitening"


class WhiteningSettings(Settings):
    eps: float = Field(5e-4, gt=0, description="added to each eigenvalue before the inverse square root")
    num_images: int = Field(5000, gt=0, description="training images whose patches feed the covariance")
    bias_epochs: int = Field(3, ge=0, description="epochs the stem bias trains before it is frozen (0: frozen from the start)")


# --- functional core -------------------------------------------------------------------------


def patches(images: torch.Tensor, k: int) -> torch.Tensor:
    """All k x k patches of (N, C, H, W) images as rows (M, C*k*k), channel-major like a conv
    filter's flattening."""
    n, c, _, _ = images.shape
    p = images.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)


def whitening_filters(images: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """(2*C*k*k, C, k, k) conv filters: W and -W, where W @ patch has near-identity covariance.

    The covariance is the uncentred second moment of the patches (the inputs are already
    normalised per channel), computed in float64 in one pass: no averaging across chunks."""
    c = images.shape[1]
    x = patches(images.double(), k)
    cov = x.T @ x / len(x)
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
        stem.weight.copy_(whitening_filters(images, k, s.eps).to(stem.weight.device))
        if stem.bias is not None:
            stem.bias.zero_()
            stem.bias.requires_grad_(s.bias_epochs > 0)
    stem.weight.requires_grad_(False)


@hookimpl
def hlb_epoch_start(epoch, ctx):
    s = ctx.settings(NAME)
    bias = ctx.model.stem.bias
    if bias is not None and epoch >= s.bias_epochs and bias.requires_grad:
        bias.requires_grad_(False)
        bias.grad = None
