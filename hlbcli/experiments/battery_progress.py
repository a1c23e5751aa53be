"""Progress of an ablation over the whole battery, the same for every backend: runs done of the
total, time elapsed, an estimate of the time left, and the arm table filling in as runs and
arms finish. On a terminal it is one live rich display; otherwise (a log file, CI, a pipe) it
is plain lines: one per finished run, one per finished arm, and between them, at most every
:func:`hlbcli.progress.plain_every` seconds, a line with where each running run is (its step,
or its final evaluation, as its process reports it: :meth:`BatteryProgress.run_progress`)."""

from __future__ import annotations

import time
from typing import Callable

from hlbcli.experiments.summary import COLUMNS, table_rows
from hlbcli.progress import LiveDisplay, clock, plain_every, run_fraction, run_text


class BatteryProgress(LiveDisplay):
    """Fed by the backend as runs finish; renders itself.

    ``total`` counts every run of the battery; ``kept`` those already finished before this
    process started (``--resume``): they count as done but not towards the rate behind the
    estimate. ``table`` returns the current summary (an ablation summary dict), rendered with
    ``render`` (rows for the live table) when on a terminal. ``every``: seconds between two
    plain lines (:func:`hlbcli.progress.plain_every` when None)."""

    def __init__(self, total: int, kept: int = 0, console=None, quiet: bool = False,
                 render: Callable[[dict], object] | None = None, now: Callable[[], float] = time.monotonic,
                 every: float | None = None):
        self.total, self.kept, self.done_here = total, kept, 0
        self.console, self.quiet, self.render = console, quiet, render
        self.now = now
        self.t0 = self.last = now()
        self.every = plain_every() if every is None else every
        self.live = None
        self.summary: dict | None = None
        #: each running run by (arm, seed): where it is (:meth:`hlbcli.progress.StepProgress.state`)
        self.running: dict[tuple[str, object], dict] = {}

    # --- figures ---------------------------------------------------------------------------

    @property
    def done(self) -> int:
        return self.kept + self.done_here

    def elapsed(self) -> float:
        return self.now() - self.t0

    def eta(self) -> float | None:
        """Seconds left at this process's rate so far, the running runs counted by the share
        of their steps done; None before a run has ended or reported a rate."""
        part = sum(run_fraction(s) for s in self.running.values())
        if not self.done_here and not (part and any(s.get("rate") for s in self.running.values())):
            return None
        return self.elapsed() / (self.done_here + part) * max(0.0, self.total - self.done - part)

    def line(self) -> str:
        head = f"{self.done}/{self.total} runs, {clock(self.elapsed())} elapsed, ETA {clock(self.eta())}"
        return "; ".join([head, *(f"{arm} seed {seed}: {run_text(s, elapsed=False)}"
                                  for (arm, seed), s in self.running.items())])

    # --- events ----------------------------------------------------------------------------

    def live_wanted(self) -> bool:
        return not self.quiet and self.console is not None and self.console.is_terminal

    def say(self, text: str) -> None:
        """A line of its own (above the live display on a terminal)."""
        if not self.quiet and self.console is not None:
            self.last = self.now()
            self.console.print(text, markup=False)

    def run_progress(self, arm: str, state: dict) -> None:
        """Where a run of ``arm`` is (the seed is the state's), as its process reported it."""
        self.running[arm, state.get("seed")] = state
        self.tick()

    def tick(self) -> None:
        """Called often (each look of a backend's loop): a plain line with where the running
        runs are when :attr:`every` seconds have passed without one; the live display keeps its
        own clock."""
        t = self.now()
        if self.live is None and t - self.last >= self.every:
            self.say(f"[{self.line()}]")

    def run_finished(self, arm: str, rec: dict) -> None:
        self.done_here += 1
        self.running.pop((arm, rec.get("seed")), None)
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
        for key in [k for k in self.running if k[0] == row["name"]]:
            del self.running[key]
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
