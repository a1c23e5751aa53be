"""``hlb ablate``: a baseline arm and one arm per trick switched off (or on), N paired seeds
each, compared with Welch's test and, seed by seed, with the paired t-test. Each arm is trained
by ``hlb train`` in a process of its own (the local backend) or in (arm, block of seeds) tasks
on a Ray cluster (``--backend ray``, :mod:`hlbcli.ray_backend`).

Layout of ``--out DIR``::

    DIR/summary.json           arms, their statistics and every run record
    DIR/summary.md             the table in Markdown
    DIR/arms/<arm>/run-*.json  written by each arm's ``hlb train`` as its runs finish
    DIR/arms/<arm>/train.log   that process's stderr
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hlbcli import readback, record, stats
from hlbcli.errors import EXIT_INTERRUPTED, HlbError, UsageError

BASELINE = "baseline"
SIGNIFICANCE = 0.05


@dataclass
class Arm:
    """One arm: the preset's tricks minus ``disabled`` plus ``enabled``."""

    name: str
    disabled: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    #: tricks other arms enable and this one does not: passed as ``--disable`` too (a no-op on
    #: the trick list) so that ``--set``/``--config`` settings for them are accepted here
    silenced: list[str] = field(default_factory=list)
    #: the arm's resolved config (what its run records carry), set by :func:`validate_arms`
    config: dict | None = field(default=None, repr=False)
    #: where each of its tricks comes from (``hlb tricks list``'s origin), set with ``config``
    sources: dict | None = field(default=None, repr=False)

    @property
    def folder(self) -> str:
        if self.name == BASELINE:
            return BASELINE
        parts = [f"no-{d}" for d in self.disabled] + [f"with-{e}" for e in self.enabled]
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", "_".join(parts))


@dataclass
class AblateOptions:
    preset: str
    config: str | None = None
    sets: list[str] = field(default_factory=list)
    disable: list[str] = field(default_factory=list)
    enable: list[str] = field(default_factory=list)
    leave_one_out: bool = False
    runs: int = 3
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    data_dir: str | None = None
    download: bool = True
    out: Path | None = None
    plot: bool = False
    quiet: bool = False
    resume: bool = False
    #: where arms train: "local" (a process per arm on this machine) or "ray" (a Ray cluster)
    backend: str = "local"
    #: the Ray cluster to join ("auto", "ray://host:10001", "host:6379"); None: $RAY_ADDRESS,
    #: else a Ray instance of this machine started for this run
    address: str | None = None
    #: seeds per Ray task (built and compiled once, then trained in turn); None: all of an arm's
    #: seeds in blocks of at most DEFAULT_BLOCK
    block: int | None = None
    #: CPU cores per Ray task (its torch threads on the CPU)
    cpus_per_task: int = 1
    #: how many times a Ray task lost with its worker (a killed process, a dead node) is
    #: started again for the seeds it had not finished
    retries: int = 3


def plan_arms(active: list[str], disable: Iterable[str], enable: Iterable[str], leave_one_out: bool) -> list[Arm]:
    """The baseline, then one arm per ``--disable``, per ``--enable`` and (with
    ``leave_one_out``) per active trick not already named."""
    arms = [Arm(BASELINE)]
    seen: set[str] = set()
    for name in disable:
        if name not in active:
            raise UsageError(
                f"--disable {name}: the preset does not turn '{name}' on, so there is nothing to take away",
                f"active tricks: {', '.join(active) or 'none'}; use --enable {name} to measure adding it",
            )
        if name not in seen:
            seen.add(name)
            arms.append(Arm(f"-{name}", disabled=[name]))
    for name in enable:
        if name in active:
            raise UsageError(
                f"--enable {name}: the preset already turns '{name}' on",
                f"use --disable {name} to measure taking it away",
            )
        if f"+{name}" not in {a.name for a in arms}:
            arms.append(Arm(f"+{name}", enabled=[name]))
    if leave_one_out:
        for name in active:
            if name not in seen:
                seen.add(name)
                arms.append(Arm(f"-{name}", disabled=[name]))
    if len(arms) == 1:
        raise UsageError(
            "nothing to compare: no arm besides the baseline",
            "name tricks with --disable NAME or --enable NAME, or pass --leave-one-out",
        )
    added = [e for a in arms for e in a.enabled]
    for a in arms:
        a.silenced = [e for e in added if e not in a.enabled]
    return arms


def validate_arms(opts: AblateOptions, arms: list[Arm], spec=None) -> list[str]:
    """Resolve every arm's config in this process, so that a bad ``--set``, an unknown name or
    a trick another one needs fails now, not after hours of training. ``spec``: the shape of
    the data on disk, where it was read (else the config's). Returns the baseline's active
    tricks."""
    from hlbcli.config import to_dict
    from hlbcli.session import resolve
    from hlbcli.train import check_run

    active = []
    for arm in arms:
        try:
            cfg, tm = resolve(opts.preset, opts.config, opts.sets, arm.enabled, arm.disabled + arm.silenced)
            own_data = tm.owners().get("hlb_dataset_build", "core") != "core"  # a trick brings its data
            # sizes, and each trick's hlb_validate against the data's shape and the model
            check_run(cfg, tm, None if own_data else spec)
            arm.config = to_dict(cfg)
            arm.sources = {n: tm.origins[n] for n in tm.trick_names()}
        except HlbError as e:
            if arm.name == BASELINE:
                raise
            raise UsageError(f"arm '{arm.name}' cannot be built: {e.message}", e.hint) from None
        if arm.name == BASELINE:
            active = list(cfg.tricks)
    return active


def check_environment(opts: AblateOptions, dataset: str, fetch: bool):
    """The device and the data, once, before any arm starts (each arm would fail alike).
    With ``fetch``, a missing dataset is downloaded here, once, not by every arm at once.
    Returns the shape of the data on disk (read, checked and cached here, once) where it is
    there, else None."""
    from hlbcli.train import resolve_device

    resolve_device(opts.device)
    if dataset in ("cifar10", "cifar100"):
        from hlbcli.data import load_cifar, locate_cifar

        files = locate_cifar(dataset, opts.data_dir, opts.download, fetch=fetch)
        if all(f.is_file() for f in files):
            return load_cifar(dataset, opts.data_dir, opts.download).spec()
    return None


#: each arm's resolved config, written before its process starts: what the arm trains
ARM_CONFIG = "config.json"


def child_command(opts: AblateOptions, arm: Arm, arm_dir: Path) -> list[str]:
    """The arm's ``hlb train``: its config is the file :data:`ARM_CONFIG` in ``arm_dir``,
    resolved when the battery started, so a ``--config`` or preset file edited while the
    battery runs changes nothing (``--resume`` then refuses records of another config)."""
    cmd = [sys.executable, "-m", "hlbcli.cli", "train", "--preset", str(arm_dir / ARM_CONFIG)]
    cmd += ["--runs", str(opts.runs), "--seed", str(opts.seed), "--device", opts.device]
    if opts.data_dir:
        cmd += ["--data-dir", str(opts.data_dir)]
    if not opts.download:
        cmd += ["--no-download"]
    cmd += ["--out", str(arm_dir), "--quiet"]
    if opts.resume:
        cmd += ["--resume"]
    return cmd


def worker_slots(device: str, workers: int) -> list[dict[str, str]]:
    """The environment of each parallel slot: one GPU each on CUDA, else an equal share of
    the CPU cores."""
    workers = max(1, workers)
    if device in ("auto", "cuda"):
        try:
            import torch

            ngpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            ngpu = 0
        if ngpu:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(ngpu)]
            return [{"CUDA_VISIBLE_DEVICES": ids[i]} for i in range(min(workers, ngpu, len(ids)))]
    cores = os.cpu_count() or 1
    if workers == 1:
        return [{}]
    threads = str(max(1, cores // workers))
    return [{"HLB_THREADS": threads, "OMP_NUM_THREADS": threads} for _ in range(workers)]


# --- reading results -------------------------------------------------------------------------


def run_path(arm_dir: Path, first_seed: int, seed: int) -> Path:
    """Where the record of ``seed`` goes: ``hlb train --seed FIRST`` names its i-th run so."""
    return arm_dir / f"run-{seed - first_seed:03d}-seed{seed}.json"


def arm_stats(arm: Arm, runs: list[dict], base: dict | None) -> dict:
    done = [r for r in runs if r.get("status") == "completed" and r.get("accuracy") is not None]
    accs = [r["accuracy"] for r in done]
    times = [r["train_seconds"] for r in done if r.get("train_seconds") is not None]
    mean, std = stats.mean_std(accs)
    lo, hi = stats.ci95(accs)
    tmean, _ = stats.mean_std(times)
    row: dict[str, Any] = {
        "name": arm.name,
        "disabled": list(arm.disabled),
        "enabled": list(arm.enabled),
        "n": len(done),
        "n_started": len(runs),
        "seeds": [r.get("seed") for r in done],
        "mean_accuracy": mean,
        "std_accuracy": std,
        "ci95": [lo, hi],
        "delta_accuracy": None,
        "p_value": None,
        "mean_train_seconds": tmean,
        "delta_train_seconds": None,
    }
    by_seed = {r["seed"]: r["accuracy"] for r in done if isinstance(r.get("seed"), int)}
    row["p_paired"], row["n_paired"], row["delta_paired"] = None, 0, None
    if base is not None:
        base_accs = base["_accs"]
        row["delta_accuracy"] = mean - base["mean_accuracy"] if accs and base_accs else None
        row["p_value"] = stats.welch(base_accs, accs)[1]
        _, row["p_paired"], row["n_paired"] = stats.paired(base["_by_seed"], by_seed)
        common = sorted(set(base["_by_seed"]) & set(by_seed))
        if common:
            row["delta_paired"] = stats.mean_std([by_seed[k] - base["_by_seed"][k] for k in common])[0]
        if times and base["_times"]:
            row["delta_train_seconds"] = tmean - base["mean_train_seconds"]
    row["_accs"], row["_times"], row["_by_seed"] = accs, times, by_seed
    return row


def arm_records(arm: Arm, opts: AblateOptions, out: Path, strict: bool = False) -> readback.Records:
    """The arm's run records of this ablation's seeds, one per seed (:mod:`hlbcli.readback`)."""
    return readback.read_records(out / "arms" / arm.folder, range(opts.seed, opts.seed + opts.runs), strict=strict)


def summarize(opts: AblateOptions, arms: list[Arm], out: Path, status: dict[str, str], partial: bool,
              strict: bool = False) -> dict:
    """The summary from the arms' records; those left out are named in its ``rejected``.
    ``strict`` (``hlb summary``): also the records' versions and config are checked."""
    rows, left = [], []
    base_row = None
    for arm in arms:
        found = arm_records(arm, opts, out, strict)
        runs, left = found.sorted_runs(), left + found.left_out()
        row = arm_stats(arm, runs, base_row)
        if base_row is None:
            base_row = row
        row["status"] = status.get(arm.name, "not started")
        row["dir"] = f"arms/{arm.folder}"
        row["runs"] = runs
        rows.append(row)
    for row in rows:
        row.pop("_accs"), row.pop("_times"), row.pop("_by_seed")
    return {
        "kind": "ablation",
        "out": str(out),
        "preset": opts.preset,
        "config": opts.config,
        "sets": list(opts.sets),
        "runs_per_arm": opts.runs,
        "seeds": list(range(opts.seed, opts.seed + opts.runs)),
        "baseline": BASELINE,
        "significance": SIGNIFICANCE,
        "partial": partial,
        "arms": rows,
        "rejected": [{"file": str(p), "why": why} for p, why in left],
    }


# --- the table -------------------------------------------------------------------------------

COLUMNS = ["arm", "n", "accuracy", "std", "ci95", "Δ acc", "p Welch", "p paired", "time s", "Δ time s"]


def _f(v: Any, spec: str, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, ("+" if signed else "") + spec)


def _p(p: float | None, alpha: float) -> str:
    return _f(p, ".3g") + (" *" if p is not None and p == p and p < alpha else "")


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    for a in summary["arms"]:
        lo, hi = a["ci95"]
        alpha = summary.get("significance", SIGNIFICANCE)
        rows.append([
            a["name"],
            f"{a['n']}" + (f"/{a['n_started']}" if a.get("n_started", a["n"]) != a["n"] else ""),
            _f(a["mean_accuracy"], ".4f"),
            _f(a["std_accuracy"], ".4f"),
            f"[{_f(lo, '.4f')}, {_f(hi, '.4f')}]" if a["n"] else "-",
            _f(a["delta_accuracy"], ".4f", signed=True),
            _p(a.get("p_value"), alpha),
            _p(a.get("p_paired"), alpha),
            _f(a["mean_train_seconds"], ".2f"),
            _f(a["delta_train_seconds"], ".2f", signed=True),
        ])
    return rows


def footnote(summary: dict) -> str:
    alpha = summary.get("significance", SIGNIFICANCE)
    note = (
        f"Δ: arm minus baseline; p Welch: Welch's t-test against the baseline; p paired: the paired "
        f"t-test of the per-seed differences (seeds both arms finished); * where p < {alpha:g}; "
        f"seeds {summary['seeds'][0]}..{summary['seeds'][-1]} in every arm"
    ) if summary["seeds"] else "no seeds"
    if summary.get("partial"):
        note += "; PARTIAL: interrupted or failed before every run finished"
    return note


def markdown(summary: dict) -> str:
    rows = table_rows(summary)
    lines = [
        f"# Ablation of preset `{summary['preset']}`",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += ["", footnote(summary), ""]
    return "\n".join(lines)


def rich_table(summary: dict, live: bool = False):
    """The table as a rich ``Table``; ``live`` marks the arms still training (the progress
    display)."""
    from rich.table import Table

    t = Table(title=f"ablation of {summary['preset']}", title_justify="left")
    for i, c in enumerate(COLUMNS):
        t.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for a, r in zip(summary["arms"], table_rows(summary)):
        if live and a.get("status") not in ("completed",):
            r = [f"{r[0]} ({a.get('status', 'waiting')})", *r[1:]]
        t.add_row(*r)
    return t


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console(highlight=False, soft_wrap=True)
    rows = table_rows(summary)
    if console.is_terminal:
        console.print(rich_table(summary))
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
        fmt = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()
        console.print(fmt(COLUMNS), markup=False)
        for r in rows:
            console.print(fmt(r), markup=False)
    console.print(footnote(summary), markup=False)


# --- running ---------------------------------------------------------------------------------


def default_out(preset: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(preset).stem if preset.endswith(".toml") else preset)
    return Path(f"hlb-ablate-{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


PLAN_NAME = readback.PLAN_NAME


def plan_of(opts: AblateOptions, arms: list[Arm]) -> dict:
    """What ``--resume`` must find unchanged, and what ``hlb summary`` needs to rebuild the
    summary: written to ``DIR/ablation.json`` before any arm starts."""
    return {
        "kind": "ablation-plan",
        "preset": opts.preset,
        "config": opts.config,
        "sets": list(opts.sets),
        "seed": opts.seed,
        "runs": opts.runs,
        "arms": [{"name": a.name, "disabled": a.disabled, "enabled": a.enabled, "silenced": a.silenced} for a in arms],
    }


def prepare_out(out: Path, plan: dict, resume: bool = False) -> record.Claim:
    """Claim ``out`` for this process; refuse one that holds an ablation unless ``resume``
    and its plan is this one. Writes the plan."""
    hold = record.claim(out)
    try:
        arms_dir = hold.folder / "arms"
        if arms_dir.exists() and any(arms_dir.iterdir()):
            if not resume:
                raise UsageError(
                    f"--out {hold.folder} already holds an ablation",
                    "pass --resume to keep its finished runs and train the rest, or choose a new folder",
                )
            if (hold.folder / PLAN_NAME).exists() or not readback.arms_hold_records(hold.folder):
                old = readback.read_plan(hold.folder)
                if {k: v for k, v in old.items() if k != "runs"} != {k: v for k, v in plan.items() if k != "runs"}:
                    raise UsageError(
                        f"--resume: {hold.folder} holds an ablation of another plan ({readback.plan_difference(old, plan)})",
                        "rerun the command that started it with --resume, the same --disable/--enable in the same order, or choose a new folder",
                    )
            else:  # deleted: this command's plan, and each arm's --resume checks its records' config
                print(f"warning: {hold.folder} had no {PLAN_NAME}; written again from this command", file=sys.stderr, flush=True)
            opts, arms = _opts_arms(plan, hold.folder)
            readback.refuse_rejected([arm_records(a, opts, hold.folder, strict=True) for a in arms])
        arms_dir.mkdir(exist_ok=True)
        record.write_json(hold.folder / PLAN_NAME, plan)
    except BaseException:
        hold.release()
        raise
    return hold


def _opts_arms(plan: dict, out: Path) -> tuple[AblateOptions, list[Arm]]:
    """The options and arms of a plan (one checked by :func:`readback.read_plan`, or ours)."""
    opts = AblateOptions(preset=plan["preset"], config=plan.get("config"), sets=list(plan.get("sets", [])),
                         runs=plan["runs"], seed=plan["seed"], out=out)
    arms = [Arm(a["name"], list(a.get("disabled", [])), list(a.get("enabled", [])), list(a.get("silenced", [])))
            for a in plan["arms"]]
    return opts, arms


def write_summary(opts: AblateOptions, arms: list[Arm], out: Path, status: dict[str, str], partial: bool,
                  wall_seconds: float | None = None, strict: bool = False) -> dict:
    summary = summarize(opts, arms, out, status, partial, strict)
    if wall_seconds is not None:
        summary["wall_seconds"] = wall_seconds
    record.write_json(out / "summary.json", summary)
    record.write_text(out / "summary.md", markdown(summary))
    return summary


def rebuild_summary(folder: Path) -> dict:
    """``hlb summary DIR`` for an ablation: the summary again from its plan and the arms' run
    records (after a crash, a SIGKILL, or by hand). Records that fail the checks are left out
    and named in its ``rejected``; none valid among some: exit 2."""
    opts, arms = _opts_arms(readback.read_plan(folder), Path(folder))
    status, left, valid = {}, [], 0
    for arm in arms:
        found = arm_records(arm, opts, Path(folder), strict=True)
        done = sum(1 for _, r in found.runs.values() if r["status"] in readback.FINISHED)
        status[arm.name] = "completed" if done == opts.runs else ("incomplete" if found.runs else "not started")
        left, valid = left + found.left_out(), valid + len(found.runs)
    if left and not valid:
        raise UsageError(f"no valid run records in {folder}: {len(left)} left out, the first {left[0][0]}: {left[0][1]}",
                         "move them away and rerun the ablation command with --resume to train them again, or use the hlbcli and torch that wrote them")
    partial = any(v != "completed" for v in status.values())
    return write_summary(opts, arms, Path(folder), status, partial, strict=True)


class _Job:
    def __init__(self, arm: Arm, proc: subprocess.Popen, log, slot: int):
        self.arm, self.proc, self.log, self.slot = arm, proc, log, slot


def _stop(jobs: list[_Job], grace: float = 15.0) -> None:
    """Ask every running child to stop (SIGINT: it keeps its finished runs), then make sure."""
    for j in jobs:
        if j.proc.poll() is None:
            try:
                j.proc.send_signal(signal.SIGINT)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for j in jobs:
        try:
            j.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            j.proc.kill()
            j.proc.wait()
        j.log.close()


def _last_error(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith("error:")]
    return (errs or lines or [""])[-1]


PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """A ``preexec_fn`` for each arm on Linux: the kernel sends the child SIGTERM when this
    process dies, however it dies (SIGKILL included), so no arm trains on with parent 1. A
    child whose parent is already gone stops at once. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def prepare(opts: AblateOptions, fetch: bool = False) -> list[Arm]:
    """Check everything that can be checked before training: names, ``--set`` values, every
    arm's config and sizes, the device, the data (downloaded here with ``fetch``), the
    plotting extra. Returns the arms, the baseline first."""
    from hlbcli.plugins import check_names

    if opts.runs < 1:
        raise UsageError(f"--runs {opts.runs}: need at least one seed per arm", "use --runs 3 or more for a p-value")
    check_names(opts.disable, "--disable")
    check_names(opts.enable, "--enable")
    if opts.plot:
        from hlbcli.plot import require_matplotlib

        require_matplotlib()
    from hlbcli.config import active_tricks, layered

    # the baseline's tricks from the layered data alone: its settings are validated below,
    # once it is known which tricks other arms add
    data = layered(opts.preset, opts.config, list(opts.sets))
    active = active_tricks(data, [], [])
    check_names(active, "the preset's tricks")
    arms = plan_arms(active, opts.disable, opts.enable, opts.leave_one_out)
    validate_arms(opts, arms)
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    if opts.backend == "local":
        # on Ray, each worker has its own device and data: its tasks check them there
        spec = check_environment(opts, section.get("dataset", "cifar10"), fetch)  # the settings are validated by now
        if spec is not None:  # the data on disk may be smaller than the config says (a batch larger than it)
            validate_arms(opts, arms, spec)
    return arms


def finished_seeds(arm: Arm, opts: AblateOptions, out: Path) -> dict[int, dict]:
    """The arm's records already over (completed or diverged) for this ablation's seeds."""
    return {s: r for s, (_, r) in arm_records(arm, opts, out).runs.items() if r["status"] in readback.FINISHED}


def run_ablation(opts: AblateOptions, say=None, console=None) -> tuple[dict, int]:
    """Validate, train every arm (a process each, or Ray tasks), write and return the
    summary. Local children and Ray tasks end with this process, whatever ends it.
    ``console`` (rich) shows the progress; ``say`` gets the lines worth a log."""
    if opts.backend not in BACKENDS:
        raise UsageError(f"--backend {opts.backend}: unknown backend", f"choose one of: {', '.join(BACKENDS)}")
    if opts.backend == "ray":
        from hlbcli.ray_backend import check_ray

        check_ray(opts)
    arms = prepare(opts, fetch=opts.backend == "local")
    joined = False
    if opts.backend == "ray":
        from hlbcli.ray_backend import connect, resources

        joined = connect(opts)  # an unreachable cluster or one without the GPUs asked for: before --out
    try:
        if opts.backend == "ray":
            resources(opts)
        return _run_claimed(opts, arms, say, console)
    finally:
        if joined:
            import ray

            ray.shutdown()


def _run_claimed(opts: AblateOptions, arms: list[Arm], say, console) -> tuple[dict, int]:
    from hlbcli.progress import Progress

    hold = prepare_out(opts.out or default_out(opts.preset), plan_of(opts, arms), opts.resume)
    try:
        out = hold.folder
        kept = sum(len(finished_seeds(a, opts, out)) for a in arms) if opts.resume else 0
        progress = Progress(len(arms) * opts.runs, kept, console, opts.quiet,
                            render=lambda summary: rich_table(summary, live=True))
        if say is not None:
            progress.say = say
        with progress:
            if opts.backend == "ray":
                from hlbcli.ray_backend import run_arms_ray

                return run_arms_ray(opts, arms, out, progress, connected=True)
            return _run_arms(opts, arms, out, progress)
    finally:
        hold.release()


BACKENDS = ("local", "ray")


def interrupted_line(e, kept: int, out: Path) -> str:
    """What an interrupted battery says (every backend): what was kept, how to go on."""
    return (f"interrupted by {signal.Signals(e.signum).name}: {kept} finished run(s) kept in {out} "
            f"(rerun the same command with --resume to train the rest)")


def _run_arms(opts: AblateOptions, arms: list[Arm], out: Path, progress) -> tuple[dict, int]:
    from hlbcli.signals import Interrupted, held_signals, interruptible

    say = progress.say
    slots = worker_slots(opts.device, opts.workers)
    say(
        f"{len(arms)} arms x {opts.runs} seeds (seeds {opts.seed}..{opts.seed + opts.runs - 1}), "
        f"{len(slots)} at a time; results in {out}"
    )
    status: dict[str, str] = {}
    pending = list(arms)
    running: list[_Job] = []
    failed: list[str] = []
    t0 = time.monotonic()
    seen = {a.name: set(finished_seeds(a, opts, out)) if opts.resume else set() for a in arms}

    def write(partial: bool) -> dict:
        summary = write_summary(opts, arms, out, status, partial, time.monotonic() - t0)
        progress.update(summary)
        return summary

    def poll() -> None:
        """Runs the arms' processes finished since the last look: progress."""
        new = False
        for j in running:
            for seed, rec in finished_seeds(j.arm, opts, out).items():
                if seed not in seen[j.arm.name]:
                    seen[j.arm.name].add(seed)
                    progress.run_finished(j.arm.name, rec)
                    new = True
        if new:
            progress.update(summarize(opts, arms, out, {**status}, True))

    def start(arm: Arm, slot: int) -> None:
        arm_dir = out / "arms" / arm.folder
        arm_dir.mkdir(parents=True, exist_ok=True)
        record.write_json(arm_dir / ARM_CONFIG, arm.config)
        cmd = child_command(opts, arm, arm_dir)
        record.write_text(arm_dir / "command.txt", shlex.join(cmd) + "\n")
        log = open(arm_dir / "train.log", "a" if opts.resume else "w", encoding="utf-8")
        env = dict(os.environ, **slots[slot])
        # a session of its own: a terminal's Ctrl-C reaches only this process, which then asks
        # each child once to stop (a second SIGINT could cut its last write)
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, preexec_fn=_die_with_parent())
        except BaseException:
            log.close()
            raise
        running.append(_Job(arm, proc, log, slot))
        status[arm.name] = "running"
        say(f"arm {arm.name}: started ({len(arms) - len(pending)}/{len(arms)} arms)")

    def reap(j: _Job) -> None:
        poll()
        running.remove(j)
        j.log.close()
        n = len([r for r in finished_seeds(j.arm, opts, out).values() if r["status"] == "completed"])
        if j.proc.returncode == 0:
            status[j.arm.name] = "completed"
        else:
            status[j.arm.name] = f"failed (exit {j.proc.returncode})"
            failed.append(j.arm.name)
            why = _last_error(out / "arms" / j.arm.folder / "train.log")
            say(f"arm {j.arm.name}: exit {j.proc.returncode} after {n}/{opts.runs} runs: {why}")
        summary = write(partial=True)
        progress.arm_finished(next(a for a in summary["arms"] if a["name"] == j.arm.name))

    with held_signals():  # from here until the summary is written, no signal cuts it short
        try:
            with interruptible():
                last_look = time.monotonic()
                while pending or running:
                    free = [i for i in range(len(slots)) if i not in {j.slot for j in running}]
                    while pending and free:
                        start(pending.pop(0), free.pop(0))
                    time.sleep(0.1)
                    if time.monotonic() - last_look > 1.0:
                        poll()
                        last_look = time.monotonic()
                    for j in [j for j in running if j.proc.poll() is not None]:
                        reap(j)
        except Interrupted as e:
            _stop(running)
            for j in running:
                status[j.arm.name] = "interrupted"
            summary = write(partial=True)
            kept = sum(a["n"] for a in summary["arms"])
            # the CLI prints it on stderr, --quiet or not
            summary["error"] = interrupted_line(e, kept, out)
            return summary, EXIT_INTERRUPTED if e.signum == signal.SIGINT else e.exit_code
        except BaseException:
            _stop(running)  # an error here must not leave arms training without a parent
            for j in running:
                status[j.arm.name] = "stopped"
            try:
                write(partial=True)
            except HlbError:
                pass  # the write may be what failed; the error that ended the run goes up
            raise
        summary = write(partial=bool(failed))
    if failed:
        summary["error"] = f"arm(s) {', '.join(failed)} failed; see train.log in {out / 'arms'}/<arm>"
        return summary, 1
    return summary, 0
