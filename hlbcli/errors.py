"""User-facing errors: one line, a hint, an exit code."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_RUNTIME = 1
EXIT_INTERRUPTED = 130


class HlbError(Exception):
    """An error meant for the user: printed as one line, never as a traceback."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(HlbError):
    """Bad input from the user: exit code 2."""

    exit_code = EXIT_USAGE


class TrickError(UsageError):
    """Raise it from a trick's hook for a value the user got wrong (a setting that does not
    fit the data or the model, say): ``hlb`` prints ``error: MESSAGE (HINT)`` on one line and
    exits with code 2, as for any bad input. Any other exception from a hook is a bug of the
    trick, named as that trick's (:class:`TrickBug`), also exit code 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint)


class ConfigError(UsageError):
    """A config that does not validate: carries rows of (where, what) for a short table."""

    def __init__(self, rows: list[tuple[str, str]], hint: str | None = None):
        self.rows = rows
        first = rows[0] if rows else ("config", "invalid")
        more = f" (+{len(rows) - 1} more)" if len(rows) > 1 else ""
        super().__init__(f"invalid config: {first[0]}: {first[1]}{more}", hint)


class TrickBug(HlbError):
    """A trick's code failed or broke the hook contract (raised, called ``sys.exit``, returned
    the wrong thing): named as that trick's bug, not hlb's, with exit code 2. Raised by hlb
    (:mod:`hlbcli.blame`), not by tricks: a trick raises :class:`TrickError` for a bad value."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, trick: str):
        super().__init__(message, f"a bug of trick '{trick}': report it to its author, or run with --disable {trick}")
        self.trick = trick


def out_of_memory(where: str, words: str) -> HlbError:
    """The one-line error for an allocator that ran out of memory, naming what sizes it."""
    return HlbError(
        f"out of memory{' ' + where if where else ''}: {words}",
        "lower model.widths, train.batch_size or train.eval_batch_size, or run fewer --workers at once",
    )


class RunsKept(HlbError):
    """An error that ends a batch of runs after some finished (a Ray cluster lost midway): the
    summary of what finished is written and the error line says how many were kept."""
