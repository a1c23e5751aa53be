"""The ``hlb`` command line."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from hlbcli.config import MAX_RUNS, MAX_SEED
from hlbcli.errors import ConfigError, HlbError, UsageError


def _click_classes(name: str) -> tuple[type, ...]:
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


_CLICK_EXIT = _click_classes("Exit")
_CLICK_ABORT = _click_classes("Abort")
_CLICK_NO_ARGS = _click_classes("NoArgsIsHelpError")
_CLICK_ERROR = _click_classes("ClickException")

app = typer.Typer(
    name="hlb",
    help="Fast CIFAR training where every trick is a plugin: train, ablate, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tricks_app = typer.Typer(help="The registered tricks: built-in and installed.", no_args_is_help=True)
config_app = typer.Typer(help="Resolve and show configs.", no_args_is_help=True)
app.add_typer(tricks_app, name="tricks")
app.add_typer(config_app, name="config")

PresetOpt = typer.Option("94", "--preset", "-p", help="preset name (see `hlb config presets`) or a .toml path")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML file layered over the preset")
SetOpt = typer.Option(None, "--set", "-s", help="override one key: section.key=value (TOML value); repeatable")
DisableOpt = typer.Option(None, "--disable", "-d", help="turn a trick off; repeatable")
EnableOpt = typer.Option(None, "--enable", "-e", help="turn a trick on; repeatable")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda")
DataDirOpt = typer.Option(None, "--data-dir", help="dataset folder (default: $HLB_DATA_DIR, else a user cache)")
NoDownloadOpt = typer.Option(False, "--no-download", help="fail instead of downloading a missing dataset")
ResumeOpt = typer.Option(False, "--resume", help="--out holds an earlier batch of this config: keep its finished runs, train the rest")


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
) -> None:
    """Train a preset for one or more seeds."""
    from hlbcli.runner import TrainOptions, train_runs
    from hlbcli.session import resolve

    _threads_from_env()
    _check_seeds(seed, runs)
    _check_resume(resume, out)

    cfg, tm = resolve(preset, str(config) if config else None, set_ or [], enable or [], disable or [])
    opts = TrainOptions(
        runs=runs, seed=seed, device=device, data_dir=str(data_dir) if data_dir else None,
        download=not no_download, out=out, quiet=quiet, deterministic=deterministic,
        stop_on_failure=stop_on_failure, resume=resume,
    )
    _, code = train_runs(cfg, tm, opts)
    raise typer.Exit(code)


#: the most CPU threads ``HLB_THREADS`` may ask for
MAX_THREADS = 1024


def _threads_from_env() -> None:
    """``HLB_THREADS=K`` (set by ``hlb ablate --workers``): this process uses K CPU threads."""
    k = os.environ.get("HLB_THREADS", "").strip()
    if not k:
        return
    if not (k.isascii() and k.isdigit() and 1 <= int(k) <= MAX_THREADS):
        raise UsageError(f"HLB_THREADS={k!r} is not a thread count", f"set it to an integer from 1 to {MAX_THREADS}, or unset it")
    import torch

    torch.set_num_threads(int(k))


def _check_resume(resume: bool, out: Optional[Path]) -> None:
    if resume and out is None:
        raise UsageError("--resume needs --out: the folder of the batch to go on with", "add --out DIR, the folder the stopped command wrote")


def _check_seeds(seed: int, runs: int) -> None:
    """The last seed must fit torch's generators too."""
    if seed + runs - 1 > MAX_SEED:
        raise UsageError(f"--seed {seed} with --runs {runs} goes past the largest seed {MAX_SEED}", "use a smaller --seed")


@app.command()
def ablate(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    disable: Optional[List[str]] = typer.Option(None, "--disable", "-d", help="an arm without this trick; repeatable"),
    enable: Optional[List[str]] = typer.Option(None, "--enable", "-e", help="an arm with this trick added; repeatable"),
    leave_one_out: bool = typer.Option(False, "--leave-one-out", help="one arm per active trick, each without it"),
    runs: int = typer.Option(3, "--runs", "-n", min=1, max=MAX_RUNS, help="seeds per arm (the same seeds in every arm)"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="first seed; arm runs use seed .. seed + runs - 1"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="arms trained at once: one per visible GPU, or CPU processes sharing the cores"),
    device: str = DeviceOpt,
    data_dir: Optional[Path] = DataDirOpt,
    no_download: bool = NoDownloadOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="results folder (default: ./hlb-ablate-PRESET-TIME)"),
    plot: bool = typer.Option(False, "--plot", help="also write accuracy.png (needs the 'plot' extra)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the table and errors"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything, print the arms and their commands, train nothing"),
    resume: bool = typer.Option(False, "--resume", help="--out holds this ablation, stopped: keep its finished runs, train the rest"),
    backend: str = typer.Option("local", "--backend", help="local: a process per arm on this machine; ray: (arm, block of seeds) tasks on a Ray cluster (extra 'ray')"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray backend: the cluster to join (HOST:PORT, ray://HOST:10001 or auto; default: $RAY_ADDRESS, else a Ray instance on this machine)"),
    block: Optional[int] = typer.Option(None, "--block", min=1, help="Ray backend: seeds per task, built and compiled once (default: 10)"),
    cpus_per_task: int = typer.Option(1, "--cpus-per-task", min=1, help="Ray backend: CPU cores per task (its threads when it trains on the CPU)"),
    retries: int = typer.Option(3, "--retries", min=0, help="Ray backend: times a task lost with its worker starts again for the seeds it had left"),
) -> None:
    """Baseline vs arms with tricks off (or on), N paired seeds each, with statistics."""
    from rich.console import Console

    from hlbcli.ablate import BACKENDS, AblateOptions, child_command, prepare, print_table, run_ablation

    _check_seeds(seed, runs)
    _check_resume(resume, out)
    opts = AblateOptions(
        preset=preset, config=str(config) if config else None, sets=set_ or [], disable=disable or [],
        enable=enable or [], leave_one_out=leave_one_out, runs=runs, seed=seed, workers=workers, device=device,
        data_dir=str(data_dir) if data_dir else None, download=not no_download, out=out, plot=plot, quiet=quiet,
        resume=resume, backend=backend, address=address, block=block, cpus_per_task=cpus_per_task, retries=retries,
    )
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend}: unknown backend", f"choose one of: {', '.join(BACKENDS)}")
    if backend == "local":
        given = [n for n, v in (("--address", address), ("--block", block)) if v is not None]
        given += [n for n, v, d in (("--cpus-per-task", cpus_per_task, 1), ("--retries", retries, 3)) if v != d]
        if given:
            raise UsageError(f"{given[0]} is an option of the Ray backend", "add --backend ray, or drop it")
    console = Console(highlight=False, soft_wrap=True)
    say = (lambda text: None) if quiet else (lambda text: console.print(text, markup=False))
    if dry_run:
        import shlex

        arms = prepare(opts)
        if backend == "ray":
            from hlbcli.ray_backend import DEFAULT_BLOCK, blocks, check_ray, seed_span

            check_ray(opts)
            seeds = list(range(seed, seed + runs))
            for arm in arms:
                for b in blocks(seeds, block or DEFAULT_BLOCK):
                    typer.echo(f"{arm.name}\tray task: {seed_span(b)}, tricks {', '.join(arm.config['tricks']) or 'none'}")
            raise typer.Exit(0)
        for arm in arms:
            cmd = child_command(opts, arm, Path(str(out or "OUT")) / "arms" / arm.folder)
            typer.echo(f"{arm.name}\t{shlex.join(['hlb', *cmd[3:]])}\ttricks: {', '.join(arm.config['tricks']) or 'none'}")
        raise typer.Exit(0)
    summary, code = run_ablation(opts, console=console)
    print_table(summary, console)
    out_dir = Path(summary["out"])
    if plot and any(a["n"] for a in summary["arms"]):
        from hlbcli.plot import PNG_NAME, plot_summary

        say(f"plot: {plot_summary(summary, out_dir / PNG_NAME)}")
    say(f"summary: {out_dir / 'summary.json'} and {out_dir / 'summary.md'}")
    if summary.get("error"):
        typer.echo(f"error: {summary['error']}", err=True)
    raise typer.Exit(code)


@app.command("summary")
def summary_cmd(
    folder: Path = typer.Argument(..., help="an --out folder of hlb ablate or hlb train"),
) -> None:
    """Rebuild a folder's summary.json (and summary.md) from its run records: after a crash,
    a kill, or a hand edit. Refused while another hlb holds the folder."""
    from rich.console import Console

    from hlbcli import record
    from hlbcli.ablate import PLAN_NAME, print_table, rebuild_summary
    from hlbcli.output import Printer
    from hlbcli.runner import rebuild_train_summary

    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", "point at the --out folder of hlb ablate or hlb train")
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
    typer.echo(str(plot_dir(folder, out)))


@config_app.command("show")
def config_show(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    disable: Optional[List[str]] = DisableOpt,
    enable: Optional[List[str]] = EnableOpt,
) -> None:
    """Print the resolved config as TOML."""
    from hlbcli.config import dump_toml, to_dict
    from hlbcli.session import resolve

    cfg, _ = resolve(preset, str(config) if config else None, set_ or [], enable or [], disable or [])
    typer.echo(dump_toml(to_dict(cfg)))


@config_app.command("presets")
def config_presets() -> None:
    """List the presets shipped with hlb."""
    from hlbcli.config import load_preset, preset_names

    for name in preset_names():
        desc = load_preset(name).get("description", "")
        typer.echo(f"{name:10} {desc}")


@tricks_app.command("list")
def tricks_list(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="mark the tricks this preset turns on"),
    disable: Optional[List[str]] = typer.Option(None, "--disable", "-d", help="leave a trick out (one that fails to load, say); repeatable"),
) -> None:
    """Every registered trick: name, stages, summary, origin, and whether the preset uses it."""
    from rich.console import Console
    from rich.table import Table

    from hlbcli.config import load_preset
    from hlbcli.plugins import build_manager, check_names, known_tricks

    check_names(disable or [], "--disable")
    tm = build_manager([n for n in known_tricks() if n not in (disable or [])], check_relations=False, skip_broken=True)
    on = set(load_preset(preset).get("tricks", [])) if preset else None
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ["name", "stages", "summary", "origin"] + ([f"in {preset}"] if preset else []):
        table.add_column(col, overflow="fold")
    for name in tm.trick_names():
        info = tm.info(name)
        row = [name, ",".join(tm.stages(name)), info.summary, tm.origins[name]]
        if on is not None:
            row.append("on" if name in on else "off")
        table.add_row(*row)
    for name, why in tm.broken.items():  # listed, marked, and the others still usable
        table.add_row(name, "-", f"BROKEN: {why}", "-", *(["-"] if preset else []))
    console = Console(highlight=False, width=200 if not sys.stdout.isatty() else None)
    console.print(table)
    if preset:
        from hlbcli.plugins import build_manager as build

        try:
            owners = build(sorted(on or []), check_relations=True).owners()
        except HlbError as e:  # two of the preset's tricks claim one first-result hook
            console.print(f"\nfirst-result hooks in {preset}: {e.line()}", markup=False)
        else:
            console.print(f"\nfirst-result hooks in {preset} (the trick whose result is used; wrappers build on it):", markup=False)
            for hook, owner in owners.items():
                console.print(f"  {hook:22} {owner}", markup=False)


@tricks_app.command("show")
def tricks_show(name: str = typer.Argument(..., help="trick name")) -> None:
    """A trick's settings: type, default and meaning of each field."""
    from hlbcli.plugins import build_manager, check_names

    check_names([name], "tricks show")
    tm = build_manager([name], check_relations=False)
    info = tm.info(name)
    typer.echo(f"{name}: {info.summary}")
    typer.echo(f"origin: {tm.origins[name]}; stages: {', '.join(tm.stages(name))}")
    if info.requires:
        typer.echo(f"requires: {', '.join(info.requires)}")
    if info.conflicts:
        typer.echo(f"conflicts with: {', '.join(info.conflicts)}")
    models = tm.settings_models()
    if not models:
        typer.echo("no settings")
    for section, model in models.items():
        typer.echo(f"\n[{section}]")
        for field, f in model.model_fields.items():
            ann = _type_text(f.annotation)
            bounds = ", ".join(_bound(m) for m in f.metadata if _bound(m))
            ann += f" ({bounds})" if bounds else ""
            typer.echo(f"  {field}: {ann} = {f.default!r}  {f.description or ''}".rstrip())


def _type_text(ann: object) -> str:
    """A settings field's type for people: ``list[int]``, ``one of 'a', 'b'``, ``float``."""
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return " or ".join(_type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(a) for a in args)}]" if args else name
    if ann is type(None):
        return "None"
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _bound(meta: object) -> str:
    """``Field(ge=1)`` and friends as text (``>= 1``)."""
    for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        v = getattr(meta, attr, None)
        if v is not None:
            return f"{op} {v}"
    return ""


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
) -> None:
    """Time a preset over N seeds: accuracy and time statistics, and each timed phase.

    Compile and warm-up are excluded from the timed figure and reported beside it."""
    from hlbcli import record
    from hlbcli.bench import bench_report, format_report
    from hlbcli.runner import TrainOptions, train_runs
    from hlbcli.session import resolve

    _check_seeds(seed, runs)
    _check_resume(resume, out)
    cfg, tm = resolve(preset, str(config) if config else None, set_ or [], enable or [], disable or [])
    opts = TrainOptions(
        runs=runs, seed=seed, device=device, data_dir=str(data_dir) if data_dir else None,
        download=not no_download, out=out, quiet=True, resume=resume,
    )
    summary, code = train_runs(cfg, tm, opts)
    rep = bench_report(summary)
    rep.update(preset=preset, command="hlb " + " ".join(sys.argv[1:]) if sys.argv else "")
    if out:
        record.write_json(Path(out) / "bench.json", rep)
    typer.echo(format_report(rep, preset))
    raise typer.Exit(code)


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
        err = _path_error(e, args)
        if err is None:
            raise
        raise err from None


def _path_error(e: OSError, args: list[str]) -> HlbError | None:
    import errno

    from hlbcli.paths import path_error

    if e.errno not in (errno.ENAMETOOLONG, errno.ELOOP) or not e.filename:
        return None
    name = os.fsdecode(e.filename)
    for i, a in enumerate(args):
        opt, eq, val = a.partition("=") if a.startswith("--") else ("", "", a)
        norm = str(Path(val)) if val else ""
        if norm and (name == norm or name.startswith(norm.rstrip("/") + "/")):
            what = opt if eq else args[i - 1] if i and args[i - 1].startswith("-") else f"hlb {args[0]}"
            return path_error(e, what, val)
    return path_error(e, "path", name)


def main(argv: list[str] | None = None) -> int:
    """Entry point: errors become one line and an exit code; --debug shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HLB_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    cmd = typer.main.get_command(app)
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
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = 130
    except (Exception, SystemExit) as e:  # SystemExit: foreign code (a trick, a data file) called sys.exit
        if debug:
            traceback.print_exc()
        from hlbcli.blame import memory_error
        from hlbcli.errors import out_of_memory

        words = memory_error(e)
        if words is not None:
            _print_error(out_of_memory("", words))
        elif isinstance(e, SystemExit):
            typer.echo(f"error: code run by hlb called sys.exit({e.code!r}) (rerun with --debug to see where)", err=True)
        else:
            typer.echo(f"error: internal error: {e.__class__.__name__}: {e} (rerun with --debug for the traceback and report it)", err=True)
        code = 1
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
