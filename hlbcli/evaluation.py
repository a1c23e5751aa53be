"""The core's evaluation in pieces, part of the trick API: a trick that evaluates in its own
way (``hlb_evaluate``) or adds a metric builds on the same numbers the core reports.

    from hlbcli.evaluation import evaluate, eval_logits, net_input, scores

    logits = eval_logits(model, images, forward, ctx)   # (N, K) fp32, as the core computes them
    metrics = scores(logits, labels, ctx.eval_batch_size)   # {"accuracy", "loss"}: the core's
    assert metrics == evaluate(model, images, labels, forward, ctx)   # the core's hlb_evaluate

The core's ``hlb_evaluate`` is :func:`evaluate`, nothing else. What it does:

- each batch of ``ctx.eval_batch_size`` uint8 images is normalised with the dataset's per-channel
  mean and std (:func:`net_input`: into ``ctx.dtype``, channels_last with
  ``train.channels_last``), exactly as the training images are;
- ``forward`` runs on it under ``torch.no_grad()`` and ``ctx.autocast()``, with ``model`` in eval
  mode (batchnorm uses its running statistics); the model's mode is restored afterwards. On
  entry to ``hlb_evaluate`` the model is in training mode and autograd is on;
- the logits are taken in fp32; ``accuracy`` is the fraction of images whose largest logit is
  the label's, ``loss`` the mean cross-entropy (no label smoothing) over all the images, summed
  batch by batch in order (:func:`scores`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from hlbcli.contract import RunContext

__all__ = ["normalize", "net_input", "eval_logits", "scores", "evaluate"]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, normalised per channel, in ``dtype``: ``(images / 255 -
    mean) / std``, with ``mean`` and ``std`` per channel in fractions of 255 (as
    :attr:`hlbcli.contract.Dataset.mean` and ``std`` hold them)."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return ((images.float() / 255 - m) / s).to(dtype)


def net_input(images: torch.Tensor, ctx: "RunContext") -> torch.Tensor:
    """A uint8 batch as the run's net takes it: normalised with ``ctx.dataset``'s mean and std,
    in ``ctx.dtype``, channels_last when ``train.channels_last`` is on."""
    ds = ctx.dataset
    x = normalize(images, ds.mean, ds.std, ctx.dtype)
    if ctx.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def eval_logits(model: torch.nn.Module, images: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor],
                ctx: "RunContext") -> torch.Tensor:
    """``forward``'s fp32 logits (N, K) for the uint8 ``images``, as the core's evaluation
    computes them: in batches of ``ctx.eval_batch_size`` (:func:`net_input` each), under
    ``torch.no_grad()`` and ``ctx.autocast()``, with ``model`` in eval mode (its mode restored
    afterwards, also when ``forward`` raises). In the final evaluation each batch is told to
    ``ctx.eval_progress`` (the progress display's ETA), host-side: no device value is read."""
    bs = ctx.eval_batch_size
    was_training = model.training
    model.eval()
    out = []
    told = ctx.eval_progress
    try:
        with torch.no_grad(), ctx.autocast():
            if told is not None:
                told(0, len(images))
            for i in range(0, len(images), bs):
                out.append(forward(net_input(images[i : i + bs], ctx)).float())
                if told is not None:
                    told(min(i + bs, len(images)), len(images))
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros((0, ctx.dataset.num_classes), device=images.device)
    return out[0] if len(out) == 1 else torch.cat(out)


def scores(logits: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict:
    """``{"accuracy": float, "loss": float}`` of fp32 ``logits`` (N, K) against class indices
    ``labels`` (N,): the fraction right (argmax) and the mean cross-entropy. Sums are taken
    batch by batch (``batch_size``, the evaluation's) in order, so the numbers are the core's to
    the last bit. One sync."""
    correct = torch.zeros((), device=logits.device)
    loss = torch.zeros((), device=logits.device)
    with torch.no_grad():
        for i in range(0, len(logits), batch_size):
            x, y = logits[i : i + batch_size], labels[i : i + batch_size]
            correct += (x.argmax(1) == y).sum()
            loss += F.cross_entropy(x, y, reduction="sum")
    n = max(len(labels), 1)
    return {"accuracy": correct.item() / n, "loss": loss.item() / n}


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             forward: Callable[[torch.Tensor], torch.Tensor], ctx: "RunContext") -> dict:
    """The core's ``hlb_evaluate``: :func:`scores` of :func:`eval_logits`."""
    return scores(eval_logits(model, images, forward, ctx), labels, ctx.eval_batch_size)
