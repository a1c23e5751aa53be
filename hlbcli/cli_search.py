"""``hlb search``: the command line of :mod:`hlbcli.experiments.search` (docs/search.md)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hlbcli.cli_options import (ConfigOpt, DataDirOpt, DeviceOpt, NoDownloadOpt, PresetOpt, SetOpt, TrackOpt,
                                check_resume, check_seeds, threads_from_env)
from hlbcli.config import MAX_RUNS, MAX_SEED
from hlbcli.errors import UsageError


def search(
    preset: str = PresetOpt,
    space: Optional[Path] = typer.Option(None, "--space", help="TOML file: the settings' ranges and choices, the tricks on/off or swapped (docs/search.md)"),
    trials: int = typer.Option(20, "--trials", "-t", min=1, max=MAX_RUNS, help="trials in all (the preset is the first); --resume may raise it"),
    seeds: int = typer.Option(4, "--seeds", min=2, max=MAX_RUNS, help="seeds per trial, the same in every trial and the baseline"),
    objective: str = typer.Option("accuracy", "--objective", help="accuracy (at the preset's budget), pareto (accuracy and time), or time (least time at --target)"),
    target: Optional[float] = typer.Option(None, "--target", help="--objective time: the mean accuracy a trial must reach (a fraction, e.g. 0.94)"),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe (default), random (a control), or nsga2 (multi-objective, many trials)"),
    prune_alpha: float = typer.Option(0.2, "--prune-alpha", help="a trial stops early once its anytime-valid interval at this error rate is wholly worse than the baseline"),
    confirm_top: int = typer.Option(1, "--confirm-top", min=0, help="best trials confirmed on fresh seeds at the end (0: none)"),
    confirm: Optional[Path] = typer.Option(None, "--confirm", help="DIR: only confirm the best of the search in DIR (what it trains on: these options)"),
    max_runs: Optional[int] = typer.Option(None, "--max-runs", min=1, max=MAX_RUNS, help="confirmation: the most fresh seeds per trial (default: 20)"),
    alpha: float = typer.Option(0.05, "--alpha", help="confirmation: the error rate of a false winner, split over the trials confirmed"),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="first seed (the search's seeds, then the confirmation's after them); seeds the sampler too"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="trials trained at once: one per visible GPU, or CPU processes sharing the cores"),
    device: str = DeviceOpt,
    data_dir: Optional[Path] = DataDirOpt,
    no_download: bool = NoDownloadOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="results folder (default: ./hlb-search-PRESET-TIME)"),
    resume: bool = typer.Option(False, "--resume", help="--out holds this search, stopped: keep its trials and runs, go on"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the table and errors"),
    backend: str = typer.Option("local", "--backend", help="local: processes on this machine; ray: tasks on a Ray cluster (extra 'ray'), asked and told from here"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray backend: the cluster to join (default: $RAY_ADDRESS, else a Ray instance on this machine)"),
    cpus_per_task: int = typer.Option(1, "--cpus-per-task", min=1, help="Ray backend: CPU cores per task"),
    track: Optional[List[str]] = TrackOpt,
) -> None:
    """Search tricks and settings with Optuna, every trial on the baseline's seeds; confirm the best on fresh seeds."""
    from rich.console import Console

    from hlbcli.experiments.search import confirm_search, run_search
    from hlbcli.experiments.search_plan import SearchOptions
    from hlbcli.experiments.search_summary import print_search
    from hlbcli.tracking import open_trackers

    threads_from_env()
    check_seeds(seed, seeds)
    opts = SearchOptions(
        preset=preset, config=str(config) if config else None, sets=set_ or [], space=str(space) if space else "",
        trials=trials, runs=seeds, objective=objective, target=target, sampler=sampler, prune_alpha=prune_alpha,
        confirm_top=confirm_top, max_runs=max_runs, alpha=alpha, seed=seed, at_once=workers, device=device,
        workers=workers if backend == "local" else 1,
        data_dir=str(data_dir) if data_dir else None, download=not no_download, out=out, resume=resume, quiet=quiet,
        backend=backend, address=address, cpus_per_task=cpus_per_task,
    )
    console = Console(highlight=False, soft_wrap=True)
    if confirm is not None:
        if space is not None or resume or out is not None:
            raise UsageError("--confirm DIR reads the search's plan from DIR", "drop --space, --out and --resume (the confirmation resumes by itself)")
        summary, code = confirm_search(confirm, opts, console)
    else:
        if space is None:
            raise UsageError("hlb search needs --space FILE: what it may change", "see docs/search.md for the format, e.g. [settings] \"train.epochs\" = { low = 6, high = 8 }")
        check_resume(resume, out)
        trackers = open_trackers(track or [], config, quiet)
        summary, code = run_search(opts, console=console, track=trackers)
    print_search(summary, console)
    if not quiet:
        console.print(f"summary: {Path(summary['out']) / 'summary.json'}; study: optuna-dashboard sqlite:///{Path(summary['out']) / 'search.db'}",
                      markup=False)
    if summary.get("error"):
        typer.echo(f"error: {summary['error']}", err=True)
    raise typer.Exit(code)
