"""Progress of an ablation over the whole battery, the same for every backend: runs done of the
total, time elapsed, an estimate of the time left, and the arm table filling in as runs and
arms finish. On a terminal it is one live rich display; otherwise (a log file, CI, a pipe) it
is plain lines: one per finished run, one per finished arm."""

from __future__ import annotations

import time
from typing import Callable

from hlbcli.experiments.summary import COLUMNS, table_rows
from hlbcli.progress import LiveDisplay, clock


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
