"""Stop signals (Ctrl-C, SIGTERM, SIGHUP): raised as :class:`Interrupted` where training can
stop politely, or held while something must not be cut short (a summary, a cache file).

Every handler of hlb's notes the signals it gets (:data:`received`), so a ``KeyboardInterrupt``
that no Ctrl-C caused (a trick's hook or a tracker raising it) is told from a real one
(:func:`raised_by_code`)."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

#: the stop signals hlb's handlers got in this process (:func:`hlb_handlers` clears it)
received: list[int] = []
#: whether training started (:func:`interruptible` was entered) in this process
started: list[bool] = []
#: the line a Ctrl-C during start-up ends with (exit 130)
START_UP_LINE = "error: interrupted during start-up; nothing was trained"


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: the batch writes what it has and exits 128 + signal.

    A ``BaseException``, like ``KeyboardInterrupt``: the signal handler raises it wherever the
    process happens to be, and an ``except Exception`` there (the dataset reader turning any
    error into "file is corrupt", a plugin's fallback) must not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: the signals that stop a batch politely: Ctrl-C, kill, a closed terminal
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _ours(handler):
    """``handler``, marked as hlb's: it notes the signal in :data:`received` first."""

    def noted(signum, frame):
        received.append(signum)
        return handler(signum, frame)

    noted.hlb = True
    return noted


def raised_by_code(e: BaseException) -> bool:
    """Whether ``e`` is a ``KeyboardInterrupt`` that no signal caused: hlb's handler holds
    SIGINT and got none, so code raised it (outside hlb's handlers this cannot be told: False)."""
    if not isinstance(e, KeyboardInterrupt) or signal.SIGINT in received:
        return False
    return getattr(signal.getsignal(signal.SIGINT), "hlb", False)


def _start_up_handler(signum, frame):
    """Ctrl-C while ``hlb`` imports itself, before :func:`hlb_handlers`: one line, exit 130
    (``SystemExit`` unwinds the imports without a traceback)."""
    received.append(signum)
    print(START_UP_LINE, file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def hold_start_up():
    """From here to :func:`hlb_handlers` (``hlb``'s own imports): Ctrl-C is one line, exit 130;
    returns the handler it replaced (give it to :func:`release_start_up`)."""
    try:
        return signal.signal(signal.SIGINT, _start_up_handler)
    except ValueError:  # not the main thread
        return None


def release_start_up(old) -> None:
    if old is not None and signal.getsignal(signal.SIGINT) is _start_up_handler:
        signal.signal(signal.SIGINT, old)


def _interrupt(signum, frame):
    raise Interrupted(signum)


@contextmanager
def hlb_handlers():
    """While a command runs (``hlb``'s main): Ctrl-C raises :class:`Interrupted` (never caught
    as a ``KeyboardInterrupt`` on the way), noted in :data:`received`. Nothing is received or
    started when it begins."""
    received.clear()
    started.clear()
    old = _install(_interrupt, (signal.SIGINT,))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _install(handler, signals: tuple = STOP_SIGNALS) -> dict:
    """Set ``handler`` (noting what it gets) for ``signals``; returns the handlers it replaced."""
    old = {}
    handler = _ours(handler)
    for s in signals:
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread
            pass
    return old


@contextmanager
def interruptible():
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` while training."""

    started.append(True)
    old = _install(_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def held_signals():
    """While a batch stops (children asked to end, the summary written): a stop signal is
    noted in the yielded list, not obeyed, so a second Ctrl-C or SIGTERM cannot cut the
    summary short. :func:`interruptible` may be nested inside."""
    got: list[int] = []

    def handler(signum, frame):
        got.append(signum)

    old = _install(handler)
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
