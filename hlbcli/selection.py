"""The selection stage of a run (``hlb_select``), once, before the loop: the trick that owns it
sees the run's batches replayed (:class:`hlbcli.stream.BatchStream`) and may build proxy nets
(:func:`proxy_net`) by the run's own hooks; what it returns is checked (:func:`check_selection`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from hlbcli.build import build_optimization
from hlbcli.contract import ProxyNet, RunContext, Selection, Transform
from hlbcli.errors import TrickError, UsageError
from hlbcli.model import check_fits
from hlbcli.session import cast_half, reset_weights
from hlbcli.stream import BatchStream


def run_selection(session: Any, ctx: RunContext, transforms: list[Transform]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """The selection stage of a run (``hlb_select``), once, before the loop: its result
    checked, as ``(keep, weights, k)`` (:func:`check_selection`). The run's generator is put
    back as it was before the hook, so the run trains on the batches ``stream`` replayed
    whatever the trick drew from ``ctx.generator``."""
    stream = BatchStream(ctx, transforms, session.dataset.train_labels, session.cfg.train.channels_last)

    def build_proxy(model: dict | None = None, freeze: tuple[str, ...] = (), steps: int | None = None) -> ProxyNet:
        return proxy_net(session, ctx, dict(model or {}), tuple(freeze), steps)

    before = ctx.generator.get_state()
    sel = session.tm.hook.hlb_select(stream=stream, build_proxy=build_proxy, cfg=session.cfg, ctx=ctx)
    ctx.generator.set_state(before)  # a draw from ctx.generator here leaves the run on the stream it replayed
    return check_selection(sel, ctx, session.tm.owners().get("hlb_select", "core"))


def check_selection(sel: Any, ctx: RunContext, who: str = "a trick") -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """What ``hlb_select`` returned (``who``: the trick), checked once before the loop:
    ``(keep, weights, k)``, k the examples each step trains on."""
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
            cast_half(net, session.dtype, session.precision)
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
    o = build_optimization(tm, pcfg, pctx, net, total)
    return ProxyNet(net, forward, o.loss_fn, o.optimizers, o.base_lrs, o.lr_tables, pctx)


def _forward(session: Any, net: torch.nn.Module) -> Callable:
    """The proxy's forward: compiled as the session's net is (``train.compile``), else eager."""
    if not session.compiled:
        return net
    return torch.compile(net, mode=session.cfg.train.compile_mode)
