"""The core's own hook implementations: the defaults every trick builds on or replaces.

All are ``trylast``, so a trick's implementation of a firstresult hook wins, and wrappers see
these results.
"""

from __future__ import annotations

import torch

from hlbcli import hookimpl
from hlbcli.contract import CrossEntropy, RunContext, kilostep_scale, plain_update, sgd_hparams
from hlbcli.data import load_cifar, synthetic
from hlbcli.evaluation import evaluate
from hlbcli.model import build_net


@hookimpl(trylast=True)
def hlb_dataset_build(cfg, device, data_dir, download):
    d = cfg.data
    if d.dataset == "synthetic":
        ds = synthetic(d.synthetic_train, d.synthetic_test, d.synthetic_classes, d.synthetic_size, d.synthetic_noise, d.synthetic_seed)
    else:
        ds = load_cifar(d.dataset, data_dir, download)
    return ds.to(device)


@hookimpl(trylast=True)
def hlb_model_build(cfg, num_classes, in_channels):
    return build_net(cfg.model, num_classes, in_channels)


@hookimpl(trylast=True)
def hlb_loss_build():
    return CrossEntropy()


@hookimpl(trylast=True)
def hlb_param_groups(model, cfg):
    lr, wd = sgd_hparams(cfg.train)
    params = [p for p in model.parameters() if p.requires_grad]
    return [dict(params=params, lr=lr, weight_decay=wd / lr, name="all")]


@hookimpl(trylast=True)
def hlb_optimizer_build(param_groups, cfg):
    t = cfg.train
    impl = "fused" if t.optimizer_impl == "auto" else t.optimizer_impl
    kernels = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[impl]
    return torch.optim.SGD(param_groups, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, **kernels)


def piecewise_linear(total_steps: int, start: float, peak_at: float, end: float) -> torch.Tensor:
    """Multipliers rising linearly from ``start`` to 1 at ``peak_at`` of training, then
    falling linearly to ``end`` at the last step (``total_steps + 1`` values)."""
    peak = int(peak_at * total_steps)
    x = torch.arange(total_steps + 1, dtype=torch.float64)
    up = start + (1 - start) * x / max(peak, 1)
    down = 1 + (end - 1) * (x - peak) / max(total_steps - peak, 1)
    return torch.where(x < peak, up, down).float()


@hookimpl(trylast=True)
def hlb_lr_schedule(total_steps, cfg):
    t = cfg.train
    return piecewise_linear(total_steps, t.lr_start, t.lr_peak_at, t.lr_end)


@hookimpl(trylast=True)
def hlb_update_build(parts):
    return plain_update(parts)


@hookimpl(trylast=True)
def hlb_eval_forward(model):
    return model


@hookimpl(trylast=True)
def hlb_evaluate(model, images, labels, forward, ctx: RunContext):
    # the pieces are the trick API's (hlbcli.evaluation): one copy, the numbers tricks reuse
    return evaluate(model, images, labels, forward, ctx)


__all__ = ["kilostep_scale", "sgd_hparams", "piecewise_linear"]
