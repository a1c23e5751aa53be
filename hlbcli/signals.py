"""Stop signals (Ctrl-C, SIGTERM, SIGHUP): raised as :class:`Interrupted` where training can
stop politely, or held while something must not be cut short (a summary, a cache file)."""

from __future__ import annotations

import signal
from contextlib import contextmanager


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


def _install(handler) -> dict:
    """Set ``handler`` for every stop signal; returns the handlers it replaced."""
    old = {}
    for s in STOP_SIGNALS:
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread
            pass
    return old


@contextmanager
def interruptible():
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` while training."""

    def handler(signum, frame):
        raise Interrupted(signum)

    old = _install(handler)
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
