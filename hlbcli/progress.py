"""How long work takes, said to the person waiting: the display every long command shows
(:class:`LiveDisplay`: live on a terminal, a plain line now and then otherwise), and progress
within a run (:class:`StepProgress`: steps done of the total, steps per second, the time left).
Over an ablation's battery it is :mod:`hlbcli.experiments.battery_progress`'s; the rough time of
a GPU recipe on this CPU is :mod:`hlbcli.estimate`'s.

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
