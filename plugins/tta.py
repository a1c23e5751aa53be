"""Test-time augmentation, in the final evaluation only (``hlb_eval_forward``; the per-epoch
evaluation sees the plain net): the logits averaged over views of each test batch. Level 1: the
image and its mirror, 1/2 each. Level 2 (the default): the image and its mirror, and both
shifted by ``shift`` pixels (default 1, reflect padding) up-left and down-right: six forwards
per batch (:func:`tta_views`), weighted 1/4 image and mirror, 1/8 each shifted view
(``weighting="airbench"``) or 1/6 each (``"uniform"``, hiverge's cifar10-speedrun).

Selective TTA (``fraction`` < 1, hiverge's: 0.25): one plain forward over the whole test set;
the ``int(N * fraction)`` images with the lowest confidence (largest softmax probability) get
the TTA logits, the others keep the plain ones (:func:`selective_logits`). The selection is
global over the test set, so ``hlb_eval_forward`` returns a :class:`SelectiveTta` (called, the
plain net), the evaluation that runs (the core's) makes the plain pass with it, and this
trick's ``hlb_evaluate``, a wrapper around that evaluation, reuses those logits, runs the TTA
views on the chosen images and reports ``accuracy`` and ``loss`` of the result. At ``fraction``
1 nothing of this runs: the core evaluates the averaging forward on every image, as without the
setting."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from hlbcli import TrickError, hookimpl
from hlbcli.config import Settings
from hlbcli.contract import trick
from hlbcli.evaluation import eval_logits, scores

NAME = "tta"


class TtaSettings(Settings):
    level: int = Field(2, ge=0, le=2, description=(
        "views averaged (weights of the logits): 0 the image alone; 1 the image and its mirror, 1/2 each; "
        "2 also both shifted up-left and down-right (weights: see weighting)"))
    shift: int = Field(1, ge=1, le=4, description="level 2: the shift in pixels (reflect padding), up-left and down-right")
    fraction: float = Field(1.0, ge=0, le=1, description=(
        "share of the test set given the TTA views: the least confident of one plain pass (hiverge: 0.25); 1 every image"))
    weighting: Literal["airbench", "uniform"] = Field("airbench", description=(
        "level 2's view weights: airbench 1/4 image and mirror, 1/8 each shifted view; uniform 1/6 each (hiverge)"))


def tta_views(x: torch.Tensor, level: int, shift: int = 1, weighting: str = "airbench") -> list[tuple[torch.Tensor, float]]:
    """The views of a batch and each one's weight in the average: level 1 the image and its
    mirror (1/2 each); level 2 also both mirrored copies shifted by ``shift`` pixels up-left
    and down-right (``airbench``: 1/4 for the image and its mirror, 1/8 for each shifted view;
    ``uniform``: 1/6 each)."""
    if level == 0:
        return [(x, 1.0)]
    if level == 1:
        return [(x, 0.5), (x.flip(-1), 0.5)]
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    up_left = padded[..., :h, :w]
    down_right = padded[..., 2 * shift : 2 * shift + h, 2 * shift : 2 * shift + w]
    if weighting == "uniform":
        views = [(x, 1 / 6), (up_left, 1 / 6), (down_right, 1 / 6)]
    else:
        views = [(x, 0.25), (up_left, 0.125), (down_right, 0.125)]
    return views + [(v.flip(-1), wt) for v, wt in views]


def tta_forward(net, level: int, shift: int = 1, weighting: str = "airbench"):
    """A forward that averages the logits over the test-time views: one forward per view at
    the evaluation batch's size (``train.eval_batch_size``), as airbench does. Stacking all
    views into one batch of 6x that size saves launches only where launches cost: on the CPU
    it was 1.9x slower (35.0 s against airbench's 18.7 s for the final evaluation of the
    narrowed ``94``), and on the GPU a batch of 2000 already fills the device."""
    if level == 0:
        return net

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = None
        for view, weight in tta_views(x, level, shift, weighting):
            logits = net(view) * weight
            out = logits if out is None else out.add_(logits)
        return out

    return forward


class SelectiveTta:
    """The final-evaluation forward of selective TTA (``fraction`` < 1). Called, it is the
    net's plain forward (``plain``): the evaluation that tta's ``hlb_evaluate`` wraps (the
    core's) makes the plain pass over the whole test set with it, and while that runs the
    forward keeps a copy of each batch's fp32 logits (``seen``). ``full`` averages the views."""

    def __init__(self, plain: Callable[[torch.Tensor], torch.Tensor], full: Callable[[torch.Tensor], torch.Tensor],
                 fraction: float):
        self.plain, self.full, self.fraction = plain, full, fraction
        self.seen: list[torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.plain(x)
        if self.seen is not None:
            # a copy: a compiled net that replays CUDA graphs reuses its output buffer
            self.seen.append(out.to(torch.float32, copy=True))
        return out


def seen_logits(seen: list[torch.Tensor], n: int, batch_size: int) -> torch.Tensor | None:
    """The plain logits (N, K) of the test set from the batches a :class:`SelectiveTta` saw,
    when they are exactly :func:`hlbcli.evaluation.eval_logits`' batches over ``n`` images
    (sizes ``batch_size``, ..., the rest); None otherwise (an evaluator that called the forward
    some other way: the plain pass is then made again)."""
    if [len(t) for t in seen] != [min(batch_size, n - i) for i in range(0, n, batch_size)] or not seen:
        return None
    return seen[0] if len(seen) == 1 else torch.cat(seen)


def selective_logits(model: torch.nn.Module, images: torch.Tensor, forward: SelectiveTta, ctx,
                     plain: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits (N, K) of uint8 ``images``: the plain forward's for all (``plain``, when
    already at hand, is taken over and written into), then the TTA forward's for the
    ``int(N * forward.fraction)`` images whose largest softmax probability is lowest, written
    over theirs (:func:`hlbcli.evaluation.eval_logits` for each pass, in the evaluation's
    batches). No host sync: the count is known on the host."""
    if plain is None:
        # a copy, as SelectiveTta keeps them: the TTA pass may reuse a compiled net's output buffer
        plain = eval_logits(model, images, forward.plain, ctx).clone()
    k = int(len(images) * forward.fraction)
    if k == 0:
        return plain
    confidence = plain.softmax(1).amax(1)
    idx = confidence.topk(k, largest=False).indices.sort().values  # the TTA pass in test-set order
    return plain.index_copy_(0, idx, eval_logits(model, images[idx], forward.full, ctx))


hlb_trick_info, hlb_config_model = trick(
    NAME, "final-evaluation TTA: logits averaged over image and mirror, and (level 2) both shifted by shift px two ways",
    TtaSettings)


@hookimpl
def hlb_validate(cfg):
    """Level 0 has no views to give, so a ``fraction`` below 1 would do nothing: refused, as
    other settings that do nothing are."""
    s = getattr(cfg, NAME)
    if s.level == 0 and s.fraction < 1:
        raise TrickError(f"tta.fraction {s.fraction:g} does nothing at tta.level 0 (level 0 is the image alone: no views to give)",
                         "set tta.level=1 or 2 for selective TTA, or tta.fraction=1.0, or --disable tta")


@hookimpl(tryfirst=True)
def hlb_eval_forward(model, cfg):
    s = getattr(cfg, NAME)
    full = tta_forward(model, s.level, s.shift, s.weighting)
    if s.fraction >= 1 or s.level == 0:
        return full
    return SelectiveTta(model, full, s.fraction)


@hookimpl(wrapper=True, trylast=True)
def hlb_evaluate(model, images, labels, forward, ctx, final):
    """Selective TTA's final evaluation, around the evaluation that runs (the core's): that
    one makes the plain pass with the :class:`SelectiveTta` forward, whose logits this reuses;
    then the least confident images get the TTA logits, and ``accuracy`` and ``loss`` are
    those of the result. A wrapper, so that tta owns no first-result hook beyond
    ``hlb_eval_forward``; the innermost (``trylast``), so that weights swapped in by other
    wrappers stay in for both passes. Any other evaluation passes through untouched."""
    if not final or not isinstance(forward, SelectiveTta):
        return (yield)
    forward.seen = []
    try:
        result = yield
    finally:
        seen, forward.seen = forward.seen, None
    if int(len(images) * forward.fraction) == 0:
        return result  # the evaluation that ran was the plain one
    plain = seen_logits(seen, len(images), ctx.eval_batch_size)
    logits = selective_logits(model, images, forward, ctx, plain)
    return {**result, **scores(logits, labels, ctx.eval_batch_size)}
