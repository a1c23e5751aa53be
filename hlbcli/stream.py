"""The run's batch stream: each epoch's augmented training set and shuffle, and the steps each
epoch runs, in one place for the training loop (:func:`hlbcli.run.fit`) and for the selection
stage (:mod:`hlbcli.selection`), which sees the same batches before the run trains
(:class:`BatchStream`, ``hlb_select``)."""

from __future__ import annotations

from typing import Iterator

import torch

from hlbcli.contract import RunContext, Transform


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
