"""How long work takes, said to the person waiting: progress within a run (steps done of the
total, steps per second, the time left), live on a terminal and as a plain line now and then
otherwise, and the rough time a recipe made for a GPU takes on this CPU, said up front.

Host-side only: the step loop (:func:`hlbcli.run.fit`) hands a :class:`StepProgress` the step
counter after each step, outside the step; it reads the wall clock and never a device value.
On CUDA the host runs ahead of the device, so the counter is the steps queued; the rate is the
device's once its queue is full."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from hlbcli.errors import UsageError

#: seconds between two plain progress lines (not a terminal): a log, a pipe, CI
PLAIN_EVERY = 30.0
#: the environment variable that changes :data:`PLAIN_EVERY` (0: a line after every step)
PLAIN_EVERY_ENV = "HLB_PROGRESS_SECONDS"


def clock(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def plain_every() -> float:
    """:data:`PLAIN_EVERY`, or ``$HLB_PROGRESS_SECONDS`` when set."""
    v = os.environ.get(PLAIN_EVERY_ENV, "").strip()
    if not v:
        return PLAIN_EVERY
    try:
        x = float(v)
    except ValueError:
        x = -1.0
    if not 0 <= x < float("inf"):
        raise UsageError(f"{PLAIN_EVERY_ENV}={v!r} is not a number of seconds", "set it to a number >= 0, or unset it")
    return x


class LiveDisplay:
    """A display that rich redraws in place while it is entered (``with``), where
    :meth:`live_wanted` says so (a terminal); it renders itself (``__rich__``) from
    ``self.console``. The one live display of both progress displays."""

    live = None

    def live_wanted(self) -> bool:
        return False

    def __enter__(self):
        if self.live_wanted():
            from rich.live import Live

            self.live = Live(self, console=self.console, refresh_per_second=2, transient=True)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class StepProgress(LiveDisplay):
    """Progress within one run, fed ``(step, total, epoch, epochs)`` after each training step.

    On a terminal (``live``) a rich display updates in place and goes when the run ends; lines
    printed meanwhile (the epoch rows) go above it. Otherwise a plain line is printed when
    :func:`plain_every` seconds have passed since the run began or since the last one."""

    def __init__(self, console: Any, label: str, live: bool | None = None, every: float | None = None,
                 now: Callable[[], float] = time.monotonic):
        self.console, self.label, self.now = console, label, now
        self.every = plain_every() if every is None else every
        self.use_live = console.is_terminal if live is None else live
        self.t0 = self.last = now()
        self.step = self.total = self.epoch = self.epochs = 0
        self.first: tuple[float, int] | None = None  # (time, step) after the first step
        self.live = None

    def __call__(self, step: int, total: int, epoch: int, epochs: int) -> None:
        t = self.now()
        self.step, self.total, self.epoch, self.epochs = step, total, epoch, epochs
        if self.first is None:
            self.first = (t, step)
        if self.live is None and t - self.last >= self.every:
            self.last = t
            self.console.print(self.line(t), markup=False)

    def rate(self, t: float) -> float | None:
        """Steps per second since the first step (which pays for first-call costs)."""
        if self.first is None or self.step <= self.first[1] or t <= self.first[0]:
            return None
        return (self.step - self.first[1]) / (t - self.first[0])

    def line(self, t: float | None = None) -> str:
        t = self.now() if t is None else t
        head = f"{self.label}: "
        if not self.total:
            return f"{head}starting, {clock(t - self.t0)} elapsed"
        if self.step >= self.total:
            return f"{head}{self.total}/{self.total} steps done, final evaluation, {clock(t - self.t0)} elapsed"
        r = self.rate(t)
        eta = (self.total - self.step) / r if r else None
        return (f"{head}epoch {self.epoch}/{self.epochs}, step {self.step}/{self.total} "
                f"({100 * self.step / self.total:.0f}%), {f'{r:.3g}' if r else '-'} steps/s, "
                f"{clock(t - self.t0)} elapsed, ETA {clock(eta)}")

    def __rich__(self):
        from rich.text import Text

        return Text(self.line())

    def live_wanted(self) -> bool:
        return self.use_live


# --- a GPU recipe on the CPU: roughly how long --------------------------------------------------

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
