"""The one interrupt-and-summary tail of every batch of runs (``hlb train --runs``, and both
backends of ``hlb ablate``): whatever ends it, the runs that finished are kept and the summary is
written, and a stop signal that comes while it is written waits for it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable

from hlbcli.errors import HlbError, RunsKept
from hlbcli.signals import Interrupted, held_signals

#: what an interrupted batch says to do next
RESUME_HINT = "rerun the same command with --resume to train the rest"


def kept_line(e: BaseException, kept: int, out: Path | None, hint: str) -> str:
    """The error line of a batch that ended early, with what it kept and how to go on."""
    where = f"kept in {out}" if out else "not saved (no --out)"
    if isinstance(e, Interrupted):
        return f"interrupted by {signal.Signals(e.signum).name}: {kept} finished run(s) {where} ({hint})"
    return f"{e.message}; {kept} finished run(s) {where} ({e.hint or hint})"


def run_to_summary(
    train: Callable[[list[int]], None],
    write: Callable[[bool], dict],
    finish: Callable[[], tuple[dict, int]],
    stop: Callable[[str], None] = lambda status: None,
    out: Path | None = None,
    hint: Callable[[dict], str] = lambda summary: RESUME_HINT,
) -> tuple[dict, int]:
    """Run ``train(got)`` with stop signals held (noted in ``got``; ``train`` raises
    :class:`Interrupted` where it can stop, e.g. inside :func:`hlbcli.signals.interruptible`),
    then return ``finish()``. Interrupted, or ended by a :class:`RunsKept` error: ``stop`` what
    still runs (with that status), write the partial summary and return it with its ``error``
    line and the exit code (128 + signal). Any other error: stop, write what there is (a write
    that fails again is dropped), and let the error go up."""
    with held_signals() as got:
        try:
            train(got)
        except (Interrupted, RunsKept) as e:
            stop("interrupted" if isinstance(e, Interrupted) else "stopped")
            summary = write(True)
            kept = summary["n"] if "n" in summary else sum(a["n"] for a in summary["arms"])
            summary["error"] = kept_line(e, kept, out, hint(summary))
            return summary, e.exit_code
        except BaseException:
            stop("stopped")  # an error here must not leave runs going without a parent
            try:
                write(True)
            except HlbError:
                pass  # the write may be what failed (a full disk): the error that ended it goes up
            raise
        return finish()
