"""How long work takes, said to the person waiting, the one progress display: within a run
(:class:`StepProgress`: steps done of the total, steps per second, the time left) and over an
ablation's battery (:class:`BatteryProgress`), live on a terminal and as a plain line now and
then otherwise. (The rough time of a GPU recipe on this CPU is :mod:`hlbcli.estimate`'s.)

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


# --- over an ablation's battery ------------------------------------------------------------------

# Progress of an ablation over the whole battery, the same for every backend: runs done of the
# total, time elapsed, an estimate of the time left, and the arm table filling in as runs and
# arms finish. On a terminal it is one live rich display; otherwise (a log file, CI, a pipe) it
# is plain lines: one per finished run, one per finished arm.


class BatteryProgress(LiveDisplay):
    """Fed by the backend as runs finish; renders itself.

    ``total`` counts every run of the battery; ``kept`` those already finished before this
    process started (``--resume``): they count as done but not towards the rate behind the
    estimate. ``table`` returns the current summary (an ablation summary dict), rendered with
    ``render`` (rows for the live table) when on a terminal."""

    def __init__(self, total: int, kept: int = 0, console=None, quiet: bool = False,
                 render: Callable[[dict], object] | None = None, now: Callable[[], float] = time.monotonic):
        self.total, self.kept, self.done_here = total, kept, 0
        self.console, self.quiet, self.render = console, quiet, render
        self.now = now
        self.t0 = now()
        self.live = None
        self.summary: dict | None = None

    # --- figures ---------------------------------------------------------------------------

    @property
    def done(self) -> int:
        return self.kept + self.done_here

    def elapsed(self) -> float:
        return self.now() - self.t0

    def eta(self) -> float | None:
        """Seconds left at this process's rate so far; None before its first run ends."""
        if not self.done_here:
            return None
        return self.elapsed() / self.done_here * max(0, self.total - self.done)

    def line(self) -> str:
        return f"{self.done}/{self.total} runs, {clock(self.elapsed())} elapsed, ETA {clock(self.eta())}"

    # --- events ----------------------------------------------------------------------------

    def live_wanted(self) -> bool:
        return not self.quiet and self.console is not None and self.console.is_terminal

    def say(self, text: str) -> None:
        """A line of its own (above the live display on a terminal)."""
        if not self.quiet and self.console is not None:
            self.console.print(text, markup=False)

    def run_finished(self, arm: str, rec: dict) -> None:
        self.done_here += 1
        if self.live is not None:
            self.live.refresh()
            return
        acc = rec.get("accuracy")
        what = f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else rec.get("status", "?")
        secs = rec.get("train_seconds")
        what += f" in {secs:.1f} s" if isinstance(secs, (int, float)) else ""
        self.say(f"[{self.line()}] arm {arm}, seed {rec.get('seed')}: {what}")

    def arm_finished(self, row: dict) -> None:
        """An arm has all its runs (or has stopped): its row of the table, as plain text."""
        if self.live is not None:
            return
        from hlbcli.experiments.summary import COLUMNS, table_rows

        cells = table_rows({"arms": [row]})[0]
        self.say(f"arm {cells[0]} done: " + ", ".join(f"{c} {v}" for c, v in zip(COLUMNS[1:], cells[1:]) if v != "-"))

    def update(self, summary: dict) -> None:
        """The current summary, for the live table."""
        self.summary = summary
        if self.live is not None:
            self.live.refresh()

    def __rich__(self):
        """Built again at every refresh of the live display, so the clock moves."""
        from rich.console import Group
        from rich.text import Text

        parts = []
        if self.summary is not None and self.render is not None:
            parts.append(self.render(self.summary))
        parts.append(Text(self.line()))
        return Group(*parts)
