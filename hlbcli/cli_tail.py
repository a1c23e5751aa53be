"""The ``hlb`` command line's error tail: a command run with its errors as one line each and
an exit code (``--debug`` adds the traceback), Ctrl-C outside training as one line."""

from __future__ import annotations

import os
import signal
import traceback

import typer

from hlbcli import signals
from hlbcli.cli_options import click_classes
from hlbcli.errors import ConfigError, HlbError

_CLICK_EXIT = click_classes("Exit")
_CLICK_ABORT = click_classes("Abort")
_CLICK_NO_ARGS = click_classes("NoArgsIsHelpError")
_CLICK_ERROR = click_classes("ClickException")


def _one_line(text: str) -> str:
    """Control characters (a newline in a --set value, say) shown escaped: one line stays one."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _print_error(e: HlbError) -> None:
    typer.echo(f"error: {_one_line(e.line())}", err=True)
    if isinstance(e, ConfigError) and len(e.rows) > 1:
        w = max(len(r[0]) for r in e.rows)
        for where, what in e.rows:
            typer.echo(f"  {_one_line(where):<{w}}  {_one_line(what)}", err=True)


def _invoke(cmd, args: list[str]):
    """Run the command; an OSError a path gets for its shape (a name longer than the
    filesystem takes, a link loop) becomes a one-line error naming the option that gave it."""
    try:
        return cmd.main(args=args, prog_name="hlb", standalone_mode=False)
    except OSError as e:
        from hlbcli.paths import argument_path_error

        err = argument_path_error(e, args)
        if err is None:
            raise
        raise err from None


def _from_the_cli_library(e: SystemExit) -> bool:
    """A ``sys.exit`` of typer's, click's or rich's own (a closed pipe on stdout, as in ``hlb
    train --help | head``): its code, silently."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and any(f"{os.sep}{lib}{os.sep}" in frames[-1].filename for lib in ("typer", "click", "rich"))


#: the commands that train: Ctrl-C before their training starts says that nothing was trained
_TRAINING = ("train", "bench", "ablate")


def _interrupted(e: signals.Interrupted, args: list[str]) -> int:
    """Ctrl-C outside training: one line, exit 130; before a training command's training
    started, it says that nothing was trained."""
    start_up = not signals.started and next((a for a in args if not a.startswith("-")), "") in _TRAINING
    typer.echo(signals.START_UP_LINE if start_up else f"error: interrupted by {e}", err=True)
    return e.exit_code


def _no_silent_interrupt(cmd):
    """``cmd`` with a ``KeyboardInterrupt`` from its commands (typer would make it a silent exit
    130) as one line: no Ctrl-C came (code raised it: exit 1), or a handler not hlb's turned a
    Ctrl-C into it (:class:`Interrupted`)."""
    invoke = cmd.invoke

    def guarded(ctx):
        try:
            return invoke(ctx)
        except KeyboardInterrupt as e:
            if signals.raised_by_code(e):
                raise HlbError("code run by hlb raised KeyboardInterrupt, but no Ctrl-C came", "rerun with --debug to see where") from e
            raise signals.Interrupted(signal.SIGINT) from None

    cmd.invoke = guarded
    return cmd


def run(cmd, args: list[str], debug: bool) -> int:
    """The command's exit code: its errors as one line each."""
    cmd = _no_silent_interrupt(cmd)
    try:
        rv = _invoke(cmd, args)
        code = rv if isinstance(rv, int) else 0
    except HlbError as e:
        if debug:
            traceback.print_exc()
        _print_error(e)
        code = e.exit_code
    except _CLICK_EXIT as e:
        code = e.exit_code
    except _CLICK_ABORT:
        typer.echo("error: aborted", err=True)
        code = 130
    except _CLICK_NO_ARGS as e:  # a bare group: typer has printed its help already
        if e.format_message().strip():
            typer.echo(e.format_message(), err=True)
        code = e.exit_code
    except _CLICK_ERROR as e:
        if debug:
            traceback.print_exc()
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path if ctx is not None else 'hlb'} --help')"
        msg = " ".join(e.format_message().split())
        typer.echo(f"error: {msg}{where}", err=True)
        code = e.exit_code
    except signals.Interrupted as e:
        code = _interrupted(e, args)
    except SystemExit as e:
        if not _from_the_cli_library(e):  # foreign code (a trick, a data file) called sys.exit
            if debug:
                traceback.print_exc()
            typer.echo(f"error: code run by hlb called sys.exit({e.code!r}) (rerun with --debug to see where)", err=True)
        code = e.code if isinstance(e.code, int) and _from_the_cli_library(e) else 1
    except Exception as e:  # SystemExit: foreign code (a trick, a data file) called sys.exit
        if debug:
            traceback.print_exc()
        from hlbcli.blame import memory_error
        from hlbcli.errors import out_of_memory

        words = memory_error(e)
        if words is not None:
            _print_error(out_of_memory("", words))
        else:
            typer.echo(f"error: internal error: {e.__class__.__name__}: {e} (rerun with --debug for the traceback and report it)", err=True)
        code = 1
    return code
