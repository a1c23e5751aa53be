"""The ``hlb`` command line."""

from __future__ import annotations

from hlbcli import signals

_BEFORE_START_UP = signals.hold_start_up()  # Ctrl-C while hlb imports: one line, exit 130 (released below)

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from hlbcli.cli_options import (ConfigOpt, DataDirOpt, DeviceOpt, DisableOpt, EnableOpt, NoDownloadOpt, PresetOpt,
                                ResumeOpt, SetOpt, TrackOpt, VaryOpt, bare_flags, check_resume, check_seeds, global_options,
                                threads_from_env)
from hlbcli.cli_search import search
from hlbcli.cli_show import config_app, tricks_app
from hlbcli.cli_tail import run
from hlbcli.config import MAX_RUNS, MAX_SEED
from hlbcli.errors import UsageError


app = typer.Typer(
    name="hlb",
    help="Fast CIFAR training where every trick is a plugin: train, ablate, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    callback=global_options,
)
app.add_typer(tricks_app, name="tricks")
app.add_typer(config_app, name="config")
app.command()(search)

@app.command()
def train(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    disable: Optional[List[str]] = DisableOpt,
    enable: Optional[List[str]] = EnableOpt,
    runs: int = typer.Option(1, "--runs", "-n", min=1, max=MAX_RUNS, help="seeds to train, one after another in this process"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="seed of the first run; run i uses seed + i"),
    device: str = DeviceOpt,
    data_dir: Optional[Path] = DataDirOpt,
    no_download: bool = NoDownloadOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write one JSON record per run and summary.json here"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing but errors"),
    deterministic: bool = typer.Option(False, "--deterministic", help="ask CUDA for deterministic kernels"),
    stop_on_failure: bool = typer.Option(False, "--stop-on-failure", help="stop the batch at the first diverged run"),
    resume: bool = ResumeOpt,
    label: str = typer.Option("", "--label", hidden=True, help="the ablation arm these runs belong to (ctx.arm): set by hlb ablate"),
    track: Optional[List[str]] = TrackOpt,
) -> None:
    """Train a preset for one or more seeds."""
    from hlbcli.experiments.batch import TrainOptions, train_batch
    from hlbcli.resolve import changed_settings, resolve
    from hlbcli.tracking import open_trackers

    threads_from_env()
    check_seeds(seed, runs)
    check_resume(resume, out)

    cfg, tm = resolve(preset, str(config) if config else None, set_ or [], enable or [], disable or [], only_on=True)
    opts = TrainOptions(
        runs=runs, seed=seed, device=device, data_dir=str(data_dir) if data_dir else None,
        download=not no_download, out=out, quiet=quiet, deterministic=deterministic,
        stop_on_failure=stop_on_failure, resume=resume, label=label, preset=preset, track=open_trackers(track or [], config, quiet),
        changed=changed_settings(preset, str(config) if config else None, set_ or [], cfg),
    )
    _, code = train_batch(cfg, tm, opts)
    raise typer.Exit(code)


#: the most CPU threads ``HLB_THREADS`` may ask for
@app.command()
def ablate(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    disable: Optional[List[str]] = typer.Option(None, "--disable", "-d", help="an arm without this trick; repeatable"),
    enable: Optional[List[str]] = typer.Option(None, "--enable", "-e", help="an arm with this trick added (in the place of those it declares it replaces); repeatable"),
    swap: Optional[List[str]] = typer.Option(None, "--swap", help="OLD=NEW: an arm with NEW in the place of OLD (arm OLD->NEW); repeatable"),
    vary: Optional[List[str]] = VaryOpt,
    leave_one_out: bool = typer.Option(False, "--leave-one-out", help="one arm per active trick, each without it"),
    runs: int = typer.Option(3, "--runs", "-n", min=1, max=MAX_RUNS, help="seeds per arm (the same seeds in every arm)"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="first seed; arm runs use seed .. seed + runs - 1"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="arms trained at once: one per visible GPU, or CPU processes sharing the cores"),
    device: str = DeviceOpt,
    data_dir: Optional[Path] = DataDirOpt,
    no_download: bool = NoDownloadOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="results folder (default: ./hlb-ablate-PRESET-TIME)"),
    plot: bool = typer.Option(False, "--plot", help="also write accuracy.png"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the table and errors"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything, print the arms and their commands, train nothing"),
    resume: bool = typer.Option(False, "--resume", help="--out holds this ablation, stopped: keep its finished runs, train the rest"),
    backend: str = typer.Option("local", "--backend", help="local: a process per arm on this machine; ray: (arm, block of seeds) tasks on a Ray cluster (extra 'ray')"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray backend: the cluster to join (HOST:PORT, ray://HOST:10001 or auto; default: $RAY_ADDRESS, else a Ray instance on this machine)"),
    block: Optional[int] = typer.Option(None, "--block", min=1, help="Ray backend: seeds per task, built and compiled once (default: 10)"),
    cpus_per_task: int = typer.Option(1, "--cpus-per-task", min=1, help="Ray backend: CPU cores per task (its threads when it trains on the CPU)"),
    retries: int = typer.Option(3, "--retries", min=0, help="Ray backend: times a task lost with its worker starts again for the seeds it had left"),
    until_resolved: bool = typer.Option(False, "--until-resolved", help="add --runs seeds per round to the baseline and each arm not yet resolved: its anytime-valid interval of the paired difference excludes 0, lies within +-D, or --max-runs is spent"),
    max_runs: Optional[int] = typer.Option(None, "--max-runs", min=1, max=MAX_RUNS, help="--until-resolved: the most seeds per arm (default: 20)"),
    delta: Optional[float] = typer.Option(None, "--delta", help="--until-resolved: an interval within +-D resolves an arm as no effect (accuracy as a fraction, e.g. 0.002; default: never)"),
    alpha: float = typer.Option(0.05, "--alpha", help="--until-resolved: error rate of the confidence sequence (two-sided)"),
    track: Optional[List[str]] = TrackOpt,
) -> None:
    """Baseline vs arms with tricks off, on or swapped, or settings changed, N paired seeds each, with statistics."""
    from rich.console import Console

    from hlbcli.experiments.battery import backend_for, dry_run_lines, run_ablation
    from hlbcli.experiments.plan import AblateOptions
    from hlbcli.experiments.summary import print_table
    from hlbcli.tracking import open_trackers

    threads_from_env()  # the arms inherit it: a bad one would end each of them
    check_seeds(seed, runs)
    check_resume(resume, out)
    opts = AblateOptions(
        preset=preset, config=str(config) if config else None, sets=set_ or [], disable=disable or [],
        enable=enable or [], swap=swap or [], vary=vary or [], leave_one_out=leave_one_out, runs=runs, seed=seed, workers=workers, device=device,
        data_dir=str(data_dir) if data_dir else None, download=not no_download, out=out, plot=plot, quiet=quiet,
        resume=resume, backend=backend, address=address, block=block, cpus_per_task=cpus_per_task, retries=retries,
        until_resolved=until_resolved, max_runs=max_runs, delta=delta, alpha=alpha,
    )
    backend_for(opts).check()  # an unknown backend, or options of another one
    trackers = open_trackers(track or [], config, quiet)
    console = Console(highlight=False, soft_wrap=True)
    say = (lambda text: None) if quiet else (lambda text: console.print(text, markup=False))
    if dry_run:
        typer.echo("\n".join(dry_run_lines(opts, Path(str(out or "OUT")))))
        raise typer.Exit(0)
    summary, code = run_ablation(opts, console=console, track=trackers)
    print_table(summary, console)
    out_dir = Path(summary["out"])
    if plot and any(a["n"] for a in summary["arms"]):
        from hlbcli.plot import PNG_NAME, plot_summary

        say(f"plot: {plot_summary(summary, out_dir / PNG_NAME)}")
    say(f"summary: {out_dir / 'summary.json'} and {out_dir / 'summary.md'}")
    if summary.get("error"):
        typer.echo(f"error: {summary['error']}", err=True)
    raise typer.Exit(code)


def _arm_path(folder: Path) -> Path:
    """``OUT/arms/-ema`` (an arm's name, as every table shows it) read as its folder
    ``OUT/arms/no-ema``, said in a note (:func:`hlbcli.experiments.plan.arm_path`)."""
    if folder.exists():
        return folder
    from hlbcli.experiments.plan import arm_path

    return arm_path(folder)


@app.command("summary")
def summary_cmd(
    folder: Path = typer.Argument(..., help="an --out folder of hlb ablate, hlb train or hlb search"),
) -> None:
    """Rebuild a folder's summary.json (and summary.md) from its run records: after a crash,
    a kill, or a hand edit. Refused while another hlb holds the folder."""
    from rich.console import Console

    from hlbcli import record
    from hlbcli.experiments.batch import rebuild_train_summary
    from hlbcli.experiments.summary import print_table, rebuild_summary
    from hlbcli.output import Printer
    from hlbcli.readback import PLAN_NAME

    folder = _arm_path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", "point at the --out folder of hlb ablate or hlb train")
    if (folder / "search.json").is_file():  # a search: its study and its trials' records
        from hlbcli.experiments.search import rebuild_search_summary
        from hlbcli.experiments.search_summary import print_search

        print_search(rebuild_search_summary(folder), Console(highlight=False, soft_wrap=True))
        typer.echo(f"summary: {folder / 'summary.json'}")
        return
    with record.claim(folder, "folder"):
        summary = rebuild_summary(folder) if (folder / PLAN_NAME).exists() else rebuild_train_summary(folder)
        for r in summary.get("rejected", []):  # records that fail the checks: left out, each named
            typer.echo(f"warning: left out {r['file']}: {r['why']}", err=True)
        if summary.get("kind") == "ablation":
            print_table(summary, Console(highlight=False, soft_wrap=True))
        else:
            Printer().summary(summary)
    typer.echo(f"summary: {folder / 'summary.json'}")


@app.command("plot")
def plot_cmd(
    folder: Path = typer.Argument(..., help="an --out folder of hlb ablate or hlb train (or its summary.json)"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="PNG to write, or a folder to write accuracy.png into (default: FOLDER/accuracy.png)"),
) -> None:
    """Draw each arm's accuracies (points, mean, 95% CI) as a PNG."""
    from hlbcli.plot import plot_dir, require_matplotlib

    require_matplotlib()
    typer.echo(str(plot_dir(_arm_path(folder), out)))


@app.command("compare")
def compare_cmd(
    dir_a: Path = typer.Argument(..., help="folder A: an --out folder of hlb train, or an ablation's DIR/arms/ARM"),
    dir_b: Path = typer.Argument(..., help="folder B, trained on the same data and seeds"),
    json_: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
) -> None:
    """Compare two folders of runs seed by seed: B - A (mean, 95% CI), paired t-test and Welch's."""
    from hlbcli.compare import compare, format_table, to_json

    rep = compare(_arm_path(dir_a), _arm_path(dir_b))
    typer.echo(to_json(rep) if json_ else format_table(rep))


@app.command("report")
def report_cmd(
    folder: Path = typer.Argument(..., help="an --out folder of hlb train, hlb bench, hlb ablate or hlb search"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="the HTML file to write, or a folder for report.html (default: FOLDER/report.html)"),
) -> None:
    """Write one self-contained HTML page of a folder's results (opens offline): table, pictures, configs, environment, records."""
    from hlbcli.report import write_report
    from hlbcli.report_search import is_search, write_search_report

    folder = _arm_path(folder)
    typer.echo(str(write_search_report(folder, out) if is_search(folder) else write_report(folder, out)))


@app.command("profile")
def profile_cmd(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    disable: Optional[List[str]] = DisableOpt,
    enable: Optional[List[str]] = EnableOpt,
    steps: int = typer.Option(20, "--steps", min=1, max=100_000, help="training steps to record"),
    skip: int = typer.Option(5, "--skip", min=0, max=1_000_000, help="steps to train first, unrecorded (first-call costs)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="stop after the steps: no final evaluation recorded (the run ends there)"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="the run's seed"),
    device: str = DeviceOpt,
    data_dir: Optional[Path] = DataDirOpt,
    no_download: bool = NoDownloadOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write profile.json and the traces here (default ./hlb-profile-PRESET-TIME)"),
) -> None:
    """Where a run's time goes (torch.profiler): the kernels, the time by phase, and traces for Perfetto and TensorBoard."""
    threads_from_env()
    from hlbcli import record
    from hlbcli.experiments.plan import default_out
    from hlbcli.profile import format_profile, profile
    from hlbcli.resolve import resolve

    cfg, tm = resolve(preset, str(config) if config else None, set_ or [], enable or [], disable or [], only_on=True)
    folder = Path(out) if out else default_out(preset, "profile")
    hold = record.claim(folder)
    try:
        record.check_out(hold.folder, "profile", False)
        p = profile(cfg, tm, device, str(data_dir) if data_dir else None, not no_download, steps, skip, not no_eval,
                    hold.folder, seed, say=lambda text: typer.echo(text, err=True))
    finally:
        hold.release()
    typer.echo(format_profile(p).lstrip("\n"))
    typer.echo(f"traces: {folder}/trace-*.json (ui.perfetto.dev or chrome://tracing); "
               f"tensorboard --logdir {folder}/tensorboard (torch-tb-profiler); tables in {folder}/profile.json")


@app.command()
def bench(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    disable: Optional[List[str]] = DisableOpt,
    enable: Optional[List[str]] = EnableOpt,
    runs: int = typer.Option(5, "--runs", "-n", min=1, max=MAX_RUNS, help="seeds to time"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="seed of the first run"),
    device: str = DeviceOpt,
    data_dir: Optional[Path] = DataDirOpt,
    no_download: bool = NoDownloadOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write records, summary.json and bench.json here"),
    resume: bool = ResumeOpt,
    target: Optional[float] = typer.Option(None, "--target", min=0, max=1, help="claim a mean accuracy of at least this: the one-sided t-test's p-value and the runs p < 0.01 needs"),
    against: Optional[str] = typer.Option(None, "--against", help="B: time the preset against this one (name or file) in alternation A B B A ..., --runs pairs"),
    against_set: Optional[List[str]] = typer.Option(None, "--against-set", help="like --set, side B only (B defaults to --preset); repeatable"),
    against_disable: Optional[List[str]] = typer.Option(None, "--against-disable", help="like --disable, side B only; repeatable"),
    against_enable: Optional[List[str]] = typer.Option(None, "--against-enable", help="like --enable, side B only; repeatable"),
    track: Optional[List[str]] = TrackOpt,
    timer: str = typer.Option("wall", "--timer", help="what times the phases: wall (the wall clock, synchronized) or cuda-events (CUDA events, on a GPU)"),
) -> None:
    """Time a preset over N seeds: accuracy and time statistics, and each timed phase.

    Compile and warm-up are excluded from the timed figure and reported beside it."""
    threads_from_env()
    check_seeds(seed, runs)
    from hlbcli.timers import check_timer

    check_timer(timer, device)
    if against or against_set or against_disable or against_enable:
        from hlbcli.experiments.alternate import bench_against
        from hlbcli.tracking import open_trackers

        raise typer.Exit(bench_against(preset, against or preset, config, set_ or [], enable or [], disable or [],
                                       against_set or [], against_enable or [], against_disable or [], runs, seed,
                                       device, data_dir, not no_download, out, resume, target,
                                       open_trackers(track or [], config), timer))
    from hlbcli import record
    from hlbcli.bench import bench_report, format_report
    from hlbcli.claims import claim_line, claim_report, folder_runs, format_claim
    from hlbcli.config import config_defaults, to_dict
    from hlbcli.experiments.batch import TrainOptions, train_batch
    from hlbcli.resolve import changed_settings, resolve
    from hlbcli.tracking import open_trackers

    check_resume(resume, out)
    cfg, tm = resolve(preset, str(config) if config else None, set_ or [], enable or [], disable or [], only_on=True)
    opts = TrainOptions(
        runs=runs, seed=seed, device=device, data_dir=str(data_dir) if data_dir else None, download=not no_download,
        out=out, quiet=True, resume=resume, preset=preset, progress=True, command="bench", track=open_trackers(track or [], config),
        changed=changed_settings(preset, str(config) if config else None, set_ or [], cfg), timer=timer,
    )
    summary, code = train_batch(cfg, tm, opts)
    if out:  # the claim covers every record of the folder trained with this config
        summary = {**summary, "runs": folder_runs(Path(out), to_dict(cfg), config_defaults(cfg))}
    rep = bench_report(summary)
    rep.update(claim_report(summary["runs"], target, summary.get("device")))
    rep.update(preset=preset, command="hlb " + " ".join(sys.argv[1:]) if sys.argv else "", summary_line=claim_line(rep, preset))
    if out:
        record.write_json(Path(out) / "bench.json", rep)
    typer.echo(f"{format_report(rep, preset)}\n{format_claim(rep)}\n{rep['summary_line']}")
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: errors become one line and an exit code; --debug shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HLB_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    cmd = typer.main.get_command(app)
    bare_flags(cmd)
    with signals.hlb_handlers():
        code = run(cmd, args, debug)
    if argv is None:
        sys.exit(code)
    return code


signals.release_start_up(_BEFORE_START_UP)

if __name__ == "__main__":
    main()
