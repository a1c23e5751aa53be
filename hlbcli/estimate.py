"""Roughly how long a recipe made for a GPU takes on this CPU, said up front (``note: 94 is a
GPU recipe; on this CPU a run takes roughly ...``): preset ``mini``'s measured time scaled by
image passes and multiply-adds per image. An estimate: CPUs differ."""

from __future__ import annotations

from typing import Any

#: preset ``mini``'s seconds per run on the 2-core development CPU at 2 threads, loading
#: included (docs/benchmarks.md: 79-82 s timed for seed 0 on 2026-12-01, plus a few seconds of
#: loading): the reference the estimate scales
MINI_CPU_SECONDS = 85.0
REFERENCE_THREADS = 2
#: more threads than this are not counted as faster (convs this size scale poorly beyond it)
MAX_THREADS_COUNTED = 8
MINI = {"widths": [32, 64, 64], "depth": 2, "stem_width": 24, "stem_kernel": 2, "epochs": 4, "train": 50000, "test": 10000}
#: forward passes per test image in the final evaluation (TTA level 2: six views), counted for
#: every recipe alike
EVAL_VIEWS = 6
#: how a run's time grows with the net's multiply-adds per image at the same number of images:
#: wider convs use a CPU better. Fitted to two runs on the 2-core development CPU, 2 threads:
#: mini (85 s) and full-width 94 (0.595 steps/s over its first 108 steps on 2026-12-01, about
#: 14 minutes a run with the final evaluation), 6.9 times mini's multiply-adds per image
WIDTH_EXPONENT = 0.75
#: a run estimated at this many times mini's time or more is a GPU recipe on the CPU
GPU_RECIPE_RATIO = 3.0


def _get(m: Any, key: str):
    return m[key] if isinstance(m, dict) else getattr(m, key)


def forward_macs(model: Any, size: int = 32, in_channels: int = 3) -> int:
    """Multiply-adds of one image's forward pass through :class:`hlbcli.model.Net` with these
    ``model`` settings (a settings object or dict): the stem and the 3x3 convs (the rest is
    small beside them)."""
    widths, depth = list(_get(model, "widths")), int(_get(model, "depth"))
    stem, k = int(_get(model, "stem_width")), int(_get(model, "stem_kernel"))
    side = size - k + 1
    macs = side * side * stem * in_channels * k * k
    c = stem
    for w in widths:
        macs += side * side * c * w * 9  # conv1, before the pool
        side //= 2
        macs += (depth - 1) * side * side * w * w * 9
        c = w
    return macs


def image_passes(epochs: float, n_train: int, n_test: int) -> float:
    """A run's image passes in forwards: forward and backward (3 forwards) of every training
    image, then :data:`EVAL_VIEWS` forwards of every test image."""
    return 3 * epochs * n_train + EVAL_VIEWS * n_test


def cpu_seconds(model: Any, epochs: float, n_train: int, n_test: int, threads: int) -> float:
    """Roughly the seconds of a run on this CPU with ``threads`` threads: mini's measured time
    scaled by the image passes and by the multiply-adds per image (to :data:`WIDTH_EXPONENT`).
    An estimate: CPUs differ."""
    passes = image_passes(epochs, n_train, n_test) / image_passes(MINI["epochs"], MINI["train"], MINI["test"])
    width = (forward_macs(model) / forward_macs(MINI)) ** WIDTH_EXPONENT
    threads = max(1, min(threads, MAX_THREADS_COUNTED))
    return MINI_CPU_SECONDS * passes * width * REFERENCE_THREADS / threads


def minutes(seconds: float) -> str:
    m = seconds / 60
    if m < 2:
        return f"{m:.1f} minutes"
    if m < 120:
        return f"{m:.0f} minutes"
    return f"{m / 60:.1f} hours"


def gpu_recipe_note(name: str, model: Any, epochs: float, n_train: int, n_test: int, threads: int,
                    runs: int = 1) -> str | None:
    """``note: NAME is a GPU recipe; on this CPU a run takes roughly N minutes (--preset mini:
    about M minutes)`` when a run is estimated at :data:`GPU_RECIPE_RATIO` times mini's time or
    more; None otherwise. ``runs`` > 1 adds the whole batch's time."""
    one = cpu_seconds(model, epochs, n_train, n_test, threads)
    mini = cpu_seconds(MINI, MINI["epochs"], MINI["train"], MINI["test"], threads)
    if one < GPU_RECIPE_RATIO * mini:
        return None
    every = f", {runs} runs roughly {minutes(runs * one)}" if runs > 1 else ""
    return (f"note: {name} is a GPU recipe; on this CPU a run takes roughly {minutes(one)}{every} "
            f"(--preset mini: about {minutes(mini)})")
