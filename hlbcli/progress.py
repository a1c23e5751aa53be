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
#: seconds between two reports of a run in another process to its parent (:class:`StepProgress`)
REPORT_EVERY = 1.0
#: the environment variable naming the file an ablation's arm reports its run's progress to
PROGRESS_FILE_ENV = "HLB_PROGRESS_FILE"


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
    """Progress within one run, fed ``(step, total, epoch, epochs)`` after each training step
    and :meth:`evaluating` after each batch of the final evaluation.

    On a terminal (``live``) a rich display updates in place and goes when the run ends; lines
    printed meanwhile (the epoch rows) go above it. Otherwise a plain line is printed when
    :func:`plain_every` seconds have passed since the run began or since the last one.
    ``console`` None prints nothing. ``report``: called with :meth:`state` at most every
    ``report_every`` seconds (and when the final evaluation starts): how a run in another
    process (an ablation's arm, a side of ``bench --against``, a Ray task) tells its parent."""

    def __init__(self, console: Any, label: str, live: bool | None = None, every: float | None = None,
                 now: Callable[[], float] = time.monotonic, report: Callable[[dict], None] | None = None,
                 report_every: float = REPORT_EVERY, seed: int | None = None):
        self.console, self.label, self.now, self.seed = console, label, now, seed
        self.every = plain_every() if every is None else every
        self.use_live = console is not None and (console.is_terminal if live is None else live)
        self.report, self.report_every = report, report_every
        self.t0 = self.last = self.reported = now()
        self.step = self.total = self.epoch = self.epochs = 0
        self.first: tuple[float, int] | None = None  # (time, step) after the first step
        self.eval: tuple[float, int, int] | None = None  # (time the pass began, images done, images)
        self.live = None

    def __call__(self, step: int, total: int, epoch: int, epochs: int) -> None:
        t = self.now()
        self.step, self.total, self.epoch, self.epochs = step, total, epoch, epochs
        if self.first is None:
            self.first = (t, step)
        self._tick(t, step >= total)

    def evaluating(self, done: int, n: int) -> None:
        """The final evaluation's pass has ``done`` of its ``n`` images (0 as it starts; a trick
        that evaluates twice, as ``tta`` at a ``fraction``, makes two passes)."""
        t = self.now()
        if done == 0 or self.eval is None:
            self.eval = (t, done, n)
        else:
            self.eval = (self.eval[0], done, n)
        self._tick(t, done == 0)

    def _tick(self, t: float, now_too: bool = False) -> None:
        if self.console is not None and self.live is None and t - self.last >= self.every:
            self.last = t
            self.console.print(self.line(t), markup=False)
        if self.report is not None and (now_too or t - self.reported >= self.report_every):
            self.reported = t
            self.report(self.state(t))

    def rate(self, t: float) -> float | None:
        """Steps per second since the first step (which pays for first-call costs)."""
        if self.first is None or self.step <= self.first[1] or t <= self.first[0]:
            return None
        return (self.step - self.first[1]) / (t - self.first[0])

    def state(self, t: float | None = None) -> dict:
        """Where the run is, as plain values (JSON): what :func:`run_text` shows."""
        t = self.now() if t is None else t
        r = self.rate(t)
        s = {"seed": self.seed, "step": self.step, "total": self.total, "epoch": self.epoch, "epochs": self.epochs,
             "rate": r, "elapsed": t - self.t0, "eta": (self.total - self.step) / r if r else None}
        if self.total and self.step >= self.total:
            s["eta"] = None
            if self.eval is not None:
                t0, done, n = self.eval
                s.update(eval_done=done, eval_images=n,
                         eta=(n - done) * (t - t0) / done if done and t > t0 else None)
        return s

    def line(self, t: float | None = None) -> str:
        return f"{self.label}: {run_text(self.state(t))}"

    def __rich__(self):
        from rich.text import Text

        return Text(self.line())

    def live_wanted(self) -> bool:
        return self.use_live


def run_text(s: dict, elapsed: bool = True) -> str:
    """A run's :meth:`StepProgress.state` in words: ``epoch 1/4, step 15/200 (8%), 0.5 steps/s,
    30s elapsed, ETA 6m10s`` (without the time elapsed where ``elapsed`` is False); in the final
    evaluation, its images done and the time left."""
    spent = f"{clock(s['elapsed'])} elapsed, " if elapsed else ""
    if not s["total"]:
        return f"starting, {spent}".rstrip(", ")
    if s["step"] >= s["total"]:
        head = f"{s['total']}/{s['total']} steps done, final evaluation"
        if s.get("eval_images"):
            n = s["eval_images"]
            head += f" {s['eval_done']}/{n} images ({100 * s['eval_done'] / n:.0f}%)"
            return f"{head}, {spent}ETA {clock(s['eta'])}"
        return f"{head}, {spent}".rstrip(", ")
    r = s["rate"]
    return (f"epoch {s['epoch']}/{s['epochs']}, step {s['step']}/{s['total']} "
            f"({100 * s['step'] / s['total']:.0f}%), {f'{r:.3g}' if r else '-'} steps/s, "
            f"{spent}ETA {clock(s['eta'])}")


def run_fraction(s: dict) -> float:
    """How much of its run a :meth:`StepProgress.state` has done, 0 to 1 (the steps; the final
    evaluation counts as the last of them)."""
    return min(1.0, s["step"] / s["total"]) if s.get("total") else 0.0


def file_report(path: str | os.PathLike) -> Callable[[dict], None]:
    """A ``report`` for :class:`StepProgress` that keeps the latest state in the JSON file
    ``path`` (written whole, then renamed into place): how an ablation's arm, a process of its
    own, tells the battery where its run is."""
    import json

    path = os.fspath(path)

    def report(state: dict) -> None:
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f)
            os.replace(tmp, path)
        except OSError:
            pass  # progress is a courtesy: a full disk is told by the records, not here

    return report


def read_report(path: str | os.PathLike) -> dict | None:
    """The state :func:`file_report` last wrote to ``path``; None when there is none (yet)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            s = json.load(f)
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) and "step" in s and "total" in s else None
