"""The options that several ``hlb`` commands share."""

import os
from pathlib import Path
from typing import Optional

import typer

from hlbcli.config import MAX_SEED
from hlbcli.errors import UsageError

PresetOpt = typer.Option("94", "--preset", "-p", help="preset name (see `hlb config presets`) or a .toml path")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML file layered over the preset")
SetOpt = typer.Option(None, "--set", "-s", help="override one key: section.key=value (TOML value); repeatable")
DisableOpt = typer.Option(None, "--disable", "-d", help="turn a trick off; repeatable")
EnableOpt = typer.Option(None, "--enable", "-e", help="turn a trick on; repeatable")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda")
DataDirOpt = typer.Option(None, "--data-dir", help="dataset folder (default: $HLB_DATA_DIR, else a user cache)")
NoDownloadOpt = typer.Option(False, "--no-download", help="fail instead of downloading a missing dataset")
ResumeOpt = typer.Option(False, "--resume", help="--out holds an earlier batch of this config: keep its finished runs, train the rest")
TrackOpt = typer.Option(None, "--track", help="NAME[:TARGET]: also log the runs to a tracker (mlflow, tensorboard, or an "
                        "installed one; TARGET: its store or folder, default in --out); repeatable")
VaryOpt = typer.Option(None, "--vary", help="KEY=VALUE: an arm with this setting changed (TOML value, as --set; "
                       "KEY=VALUE,KEY=VALUE changes several in one arm); repeatable")


def click_classes(name: str) -> tuple[type, ...]:
    """``name`` from click and from the click that typer vendors (typer >= 0.2x raises its
    own ``typer._click`` exceptions, which ``click.ClickException`` does not catch)."""
    import importlib

    found: list[type] = []
    for mod in ("click.exceptions", "typer.exceptions", "typer._click.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            cls = None
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def version_line() -> str:
    """``hlb 0.1.0 (torch 2.5.1)``: the installed distribution's version and torch's."""
    import importlib.metadata as md

    try:
        hlb = md.version("hlbcli")
    except md.PackageNotFoundError:  # run from a checkout that is not installed
        from hlbcli import __version__ as hlb
    try:
        torch = md.version("torch")
    except md.PackageNotFoundError:
        torch = "not installed"
    return f"hlb {hlb} (torch {torch})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


def global_options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="print hlb's and torch's versions and exit"),
    debug: bool = typer.Option(False, "--debug", help="on an error, print the traceback behind its one-line message "
                               "(goes anywhere on the line: hlb train --debug ...; or set HLB_DEBUG=1)"),
) -> None:
    """The options before a command. ``--debug`` is taken out of the words by ``hlbcli.cli.main``
    before typer sees them (so it works after a command too); it is declared here to be shown."""


def bare_flags(cmd) -> None:
    """A flag takes no value, so ``--help`` shows it no ``<bool>`` type: each flag of ``cmd``
    and of its subcommands (their ``--help`` included) gets an empty metavar."""
    for param in [*cmd.params, cmd.get_help_option(cmd.context_class(cmd))]:
        if getattr(param, "is_flag", False):  # (typer's options are of its own copy of click)
            param.metavar = ""
    for sub in getattr(cmd, "commands", {}).values():
        bare_flags(sub)


MAX_THREADS = 1024


def threads_from_env() -> None:
    """``HLB_THREADS=K`` (set by ``hlb ablate --workers``): this process uses K CPU threads.
    Checked first by train, bench and ablate (whose arms and sides inherit it)."""
    k = os.environ.get("HLB_THREADS", "").strip()
    if not k:
        return
    if not (k.isascii() and k.isdigit() and 1 <= int(k) <= MAX_THREADS):
        raise UsageError(f"HLB_THREADS={k!r} is not a thread count", f"set it to an integer from 1 to {MAX_THREADS}, or unset it")
    import torch

    torch.set_num_threads(int(k))


def check_resume(resume: bool, out: Optional[Path]) -> None:
    if resume and out is None:
        raise UsageError("--resume needs --out: the folder of the batch to go on with", "add --out DIR, the folder the stopped command wrote")


def check_seeds(seed: int, runs: int) -> None:
    """The last seed must fit torch's generators too."""
    if seed + runs - 1 > MAX_SEED:
        raise UsageError(f"--seed {seed} with --runs {runs} goes past the largest seed {MAX_SEED}", "use a smaller --seed")
