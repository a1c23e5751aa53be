"""The run's batch stream: each epoch's augmented training set and shuffle, and the steps each
epoch runs, in one place for the training loop (:func:`hlbcli.run.fit`) and for the selection
stage, which sees the same batches before the run trains (:class:`BatchStream`,
``hlb_select``); and the proxy nets that stage may train (:func:`proxy_net`)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from hlbcli.contract import ProxyNet, RunContext, Transform
from hlbcli.errors import UsageError


def epoch_set(ctx: RunContext, transforms: list[Transform], epoch: int, gen: torch.Generator,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's training set after its epoch-level transforms (in ``order``), and its
    shuffle: the draws from ``gen`` in the contract's order (transforms first, then the
    shuffle)."""
    images = ctx.train_images
    for tr in transforms:
        if tr.level == "epoch" and tr.active(epoch):
            images = tr.fn(images, epoch, gen)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    perm = torch.randperm(len(images), device=ctx.device, generator=gen)
    return images, perm


def epoch_steps(ctx: RunContext, step: int) -> int:
    """How many steps the epoch that starts at ``step`` runs: a whole epoch, or what is left of
    ``total_steps``; two in the warm-up run (it only compiles)."""
    n = min(ctx.steps_per_epoch, ctx.total_steps - step)
    return min(n, 2) if ctx.warmup else n


class BatchStream:
    """The batches the run is about to train on, replayed before it does (``hlb_select``):
    iterating yields ``(step, images, labels)`` for every step of the run, ``step`` counted from
    0 as the step functions count it, ``images`` normalised and augmented by the epoch-level
    transforms exactly as the run's epoch will be, in the run's dtype and memory format.
    Batch-level transforms (CutMix) are not applied: they run inside the step, after selection.

    It draws from a copy of the run's generator taken when the stream is made, so the run
    itself draws the same numbers afterwards: the stream and the run see the same batches,
    provided nothing else draws from ``ctx.generator`` between ``hlb_select`` and the end of
    the run (the contract's order: epoch transforms, then the shuffle). ``epochs`` stops the
    stream early (after that many epochs)."""

    def __init__(self, ctx: RunContext, transforms: list[Transform], labels: torch.Tensor, channels_last: bool):
        self.ctx, self.transforms, self.labels, self.channels_last = ctx, transforms, labels, channels_last
        self.state = ctx.generator.get_state()

    @property
    def batch_size(self) -> int:
        return self.ctx.batch_size

    @property
    def total_steps(self) -> int:
        return self.ctx.total_steps

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        ctx, bs = self.ctx, self.ctx.batch_size
        gen = torch.Generator(device=ctx.device)
        gen.set_state(self.state)
        step = 0
        for epoch in range(ctx.num_epochs):
            images, perm = epoch_set(ctx, self.transforms, epoch, gen, self.channels_last)
            for i in range(epoch_steps(ctx, step)):
                idx = perm[i * bs:(i + 1) * bs]
                yield step, images[idx], self.labels[idx]
                step += 1


def run_selection(session: Any, ctx: RunContext, transforms: list[Transform]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """The selection stage of a run (``hlb_select``), once, before the loop: its result
    checked, as ``(keep, weights, k)`` (:func:`check_selection`)."""
    stream = BatchStream(ctx, transforms, session.dataset.train_labels, session.cfg.train.channels_last)

    def build_proxy(model: dict | None = None, freeze: tuple[str, ...] = (), steps: int | None = None) -> ProxyNet:
        return proxy_net(session, ctx, dict(model or {}), tuple(freeze), steps)

    sel = session.tm.hook.hlb_select(stream=stream, build_proxy=build_proxy, cfg=session.cfg, ctx=ctx)
    return check_selection(sel, ctx, session.tm.owners().get("hlb_select", "core"))


def check_selection(sel: Any, ctx: RunContext, who: str = "a trick") -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """What ``hlb_select`` returned (``who``: the trick), checked once before the loop:
    ``(keep, weights, k)``, k the examples each step trains on."""
    from hlbcli.contract import Selection
    from hlbcli.errors import TrickError

    if sel is None:
        return None, None, ctx.batch_size
    if not isinstance(sel, Selection):
        raise TrickError(f"hlb_select of {who} returned {type(sel).__name__}, not a hlbcli.contract.Selection",
                         "return Selection(keep=..., weights=...) or None")
    keep, w, k = sel.keep, sel.weights, ctx.batch_size
    if keep is not None:
        if keep.dim() != 2 or keep.shape[0] < ctx.total_steps or keep.dtype != torch.long or not 0 < keep.shape[1] <= k:
            raise TrickError(f"the Selection of {who} has keep of shape {tuple(keep.shape)} and dtype {keep.dtype}",
                             f"give int64 positions in the batch, shape (total_steps={ctx.total_steps}, k) with 0 < k <= {k}")
        k = keep.shape[1]
    if w is not None and (w.dim() != 2 or w.shape[0] < ctx.total_steps or w.shape[1] != k or not w.is_floating_point()):
        raise TrickError(f"the Selection of {who} has weights of shape {tuple(w.shape)} and dtype {w.dtype}",
                         f"give floats of shape (total_steps={ctx.total_steps}, {k}): one per example the step trains on")
    return (keep.to(ctx.device) if keep is not None else None), (w.to(ctx.device) if w is not None else None), k


def proxy_net(session: Any, ctx: RunContext, model: dict, freeze: tuple[str, ...] = (), steps: int | None = None) -> ProxyNet:
    """A second net for this run (``hlb_select``'s ``build_proxy``), built and set up by the
    run's own hooks with ``cfg.model`` changed by ``model`` (e.g. ``{"widths": [32, 64, 64],
    "depth": 2}``): built and given the seed's weights (``hlb_model_build``), on the run's
    device and precision, initialised (``hlb_model_init``: whitening, dirac), the parameters
    named in ``freeze`` frozen, then its loss, parameter groups, optimizers and lr tables, the
    lr schedule spread over ``steps`` (default: the run's ``total_steps``).
    Step actions, transforms and the run events are not called for it: the trick that asked
    trains it. Its hooks see a context of its own (``state`` empty, ``model`` the proxy)."""
    from dataclasses import replace

    from hlbcli.model import check_fits, half_weights
    from hlbcli.session import reset_weights
    from hlbcli.step import group_schedules

    cfg, tm, ds = session.cfg, session.tm, session.dataset
    try:
        settings = type(cfg.model).model_validate({**cfg.model.model_dump(), **model})
    except Exception as e:  # pydantic's words, on one line
        raise UsageError(f"the proxy's model settings {model} are invalid: {str(e).splitlines()[-1].strip()}",
                         "fix the trick's proxy settings") from None
    check_fits(list(settings.widths), ds.train_images.shape[-1], settings.stem_kernel)
    pcfg = cfg.model_copy(update={"model": settings})
    key = repr(sorted(settings.model_dump().items()))
    if key not in session.proxies:  # built and compiled once per session, as the run's net
        net = tm.hook.hlb_model_build(cfg=pcfg, num_classes=ds.num_classes, in_channels=ds.in_channels).to(ctx.device)
        if session.dtype != torch.float32:
            half_weights(net, session.dtype)
        if cfg.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        session.proxies[key] = (net, _forward(session, net))
    net, forward = session.proxies[key]
    reset_weights(session, ctx.seed, net, pcfg)
    net.train()
    gen = torch.Generator(device=ctx.device)
    gen.set_state(ctx.generator.get_state())  # its hooks' draws leave the run's stream alone
    total = ctx.total_steps if steps is None else int(steps)
    if not 0 < total <= ctx.total_steps:
        raise UsageError(f"a proxy of {total} steps in a run of {ctx.total_steps}", f"give 1 to {ctx.total_steps} steps")
    pctx = replace(ctx, cfg=pcfg, model=net, optimizer=None, optimizers=[], state={}, generator=gen, total_steps=total)
    tm.hook.hlb_model_init(model=net, ctx=pctx)
    params = dict(net.named_parameters())
    for name in freeze:
        if name not in params:
            raise UsageError(f"the proxy has no parameter {name!r} to freeze", "name one of the model API's parameters")
        params[name].requires_grad_(False)
    loss_fn = tm.hook.hlb_loss_build(cfg=pcfg, ctx=pctx)
    groups = tm.hook.hlb_param_groups(model=net, cfg=pcfg, ctx=pctx)
    built = tm.hook.hlb_optimizer_build(param_groups=groups, cfg=pcfg, ctx=pctx)
    optimizers = list(built) if isinstance(built, (list, tuple)) else [built]
    pctx.optimizer, pctx.optimizers = optimizers[0], optimizers
    table = [float(v) for v in tm.hook.hlb_lr_schedule(total_steps=total, cfg=pcfg, ctx=pctx).tolist()]
    all_groups = [g for opt in optimizers for g in opt.param_groups]
    return ProxyNet(net, forward, loss_fn, optimizers, [g["lr"] for g in all_groups],
                    group_schedules(all_groups, table, total), pctx)


def _forward(session: Any, net: torch.nn.Module) -> Callable:
    """The proxy's forward: compiled as the session's net is (``train.compile``), else eager."""
    if not session.compiled:
        return net
    return torch.compile(net, mode=session.cfg.train.compile_mode)
