"""``hlb train``: N seeds in one process, a table as epochs finish, records on disk."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hlbcli import readback, record
from hlbcli.config import to_dict
from hlbcli.readback import FINISHED  # statuses of a run that is over: --resume keeps these, trains the rest
from hlbcli.readback import first_difference as _first_difference
from hlbcli.errors import EXIT_INTERRUPTED, HlbError, UsageError
from hlbcli.output import Printer
from hlbcli.signals import Interrupted, interruptible
from hlbcli.train import RunResult, prepare, run_one, warm_up


@dataclass
class TrainOptions:
    runs: int = 1
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    download: bool = True
    out: Path | None = None
    quiet: bool = False
    deterministic: bool = False
    stop_on_failure: bool = False
    resume: bool = False
    label: str = ""


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _numeric_failure(e: BaseException) -> bool:
    """An exception a training step raises when a value overflowed or went non-finite (lr
    1e300: "value cannot be converted to type float without overflow"): a divergence. Only
    torch's own: raised by an op or in torch's Python code. A trick's ``raise`` or its own
    Python arithmetic (``int(math.inf)``) is the trick's bug, whatever its words."""
    from hlbcli.blame import raised_in_torch, raised_natively

    if not isinstance(e, (RuntimeError, OverflowError, FloatingPointError)):
        return False
    if re.search(r"\b(overflow|nan|inf|infinity|non-finite)\b", str(e).lower()) is None:
        return False
    return raised_in_torch(e) or (type(e) is RuntimeError and raised_natively(e))


def run_error(session: Any, seed: int, e: BaseException) -> HlbError | None:
    """The one-line error for what ended a run, when it can be named: the machine's memory,
    a trick's code (found from the traceback), foreign code calling ``sys.exit``. None: hlb's
    own bug (an internal error, reported as such)."""
    from hlbcli.blame import culprit, memory_error, raised
    from hlbcli.errors import out_of_memory

    if isinstance(e, HlbError):
        return e
    words = memory_error(e)
    if words is not None:
        return out_of_memory(f"on {device_name(session.device)} while training seed {seed}", words)
    name = culprit(e, session.tm.files())
    if name is not None:
        return raised(name, session.tm.origins[name], "the training run (a transform or step action)", e)
    if isinstance(e, SystemExit):
        return HlbError(f"code run by hlb called sys.exit({e.code!r}) during seed {seed}", "rerun with --debug to see where")
    return None


def earlier_runs(out: Path, config: dict, resume: bool, check: bool = True,
                 seeds: range | None = None) -> dict[int, tuple[Path, dict]]:
    """The run records already in ``out``, by seed (of ``seeds``, the batch's, when given).
    Records there are refused without ``resume``; with it, a record that fails the checks of
    :mod:`hlbcli.readback` or (``check``) of another config is refused, and records of other
    seeds are named in a warning and left out."""
    if not resume:
        if any(out.glob("run-*.json")) or (out / "summary.json").exists():
            raise UsageError(
                f"--out {out} already holds the records of an earlier batch",
                "pass --resume to keep its finished runs and train the rest, or choose a new folder",
            )
        return {}
    found = readback.read_records(out, seeds)
    readback.refuse_rejected([found])
    for p, rec in found.runs.values():
        if check and rec.get("config") != config:
            raise UsageError(
                f"--resume: {p} was trained with another config ({_first_difference(rec.get('config'), config)})",
                "rerun with the same preset, --config, --set, --enable and --disable, or choose a new folder",
            )
    return found.runs


def _batch_of(out: Path) -> tuple[int | None, int | None, list[tuple[Path, str]]]:
    """``runs_requested`` and ``first_seed`` of the last summary.json, each checked (a bad one
    is named and not used)."""
    path, bad = out / "summary.json", []
    try:
        old = readback.read_json(path)
    except FileNotFoundError:
        return None, None, []
    except (OSError, readback.Bad) as e:
        return None, None, [(path, f"{getattr(e, 'strerror', None) or e}; not used")]
    old = old if isinstance(old, dict) else {}
    got = []
    for key, lo, hi in (("runs_requested", 1, readback.MAX_RUNS), ("first_seed", 0, readback.MAX_SEED)):
        v = old.get(key)
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        if v is not None and not ok:
            bad.append((path, f"{key} {v!r} is not an integer in {lo}..{hi}; not used"))
        got.append(v if ok else None)
    return got[0], got[1], bad


def rebuild_train_summary(out: Path) -> dict:
    """``hlb summary DIR`` for ``hlb train``: summary.json again from the run records that pass
    the checks (the others are named in its ``rejected``), of the last batch's seeds when its
    summary.json says which."""
    requested, first, bad = _batch_of(out)
    seeds = range(first, first + requested) if requested is not None and first is not None else None
    found = readback.read_records(out, seeds, first)
    runs, left = found.sorted_runs(), found.left_out() + bad
    if not runs:
        if found.left_out():
            p, why = found.left_out()[0]
            raise UsageError(f"no valid run records in {out}: {len(found.left_out())} left out, the first {p}: {why}",
                             "point at the --out folder of hlb train or hlb ablate, made by this hlbcli and torch")
        if readback.arms_hold_records(out):
            readback.read_plan(out)  # no ablation.json: says so
        raise UsageError(f"no run records in {out}", "point at the --out folder of hlb train or hlb ablate")
    requested = requested or len(runs)
    partial = any(r.get("status") not in FINISHED for r in runs) or len(runs) < requested
    summary = record.summarize(runs, partial=partial, runs_requested=requested, rebuilt=True,
                               rejected=[{"file": str(p), "why": why} for p, why in left],
                               **({"first_seed": first} if first is not None else {}))
    record.write_json(out / "summary.json", summary)
    return summary


def train_seed(session: Any, seed: int, on_epoch: Callable[[dict], None] | None = None,
               keep: Callable[[dict], None] | None = None) -> dict:
    """Train one seed of a prepared session and return its run record: ``completed``, or
    ``diverged`` when a step overflowed. Any other error, and an interruption, first hand the
    record (``failed`` with the message, or ``interrupted``) to ``keep``, then go up: what a
    run was is never lost. ``hlb train`` and the Ray backend's tasks write the same records."""
    tm = session.tm
    tricks = list(tm.trick_names())
    rows: list[dict] = []

    def epoch(row: dict) -> None:
        rows.append(row)
        if on_epoch:
            on_epoch(row)

    rec = {
        "seed": seed, "status": "interrupted", "accuracy": None, "train_seconds": None,
        "tricks": tricks, "trick_sources": {n: tm.origins[n] for n in tricks}, "config": to_dict(session.cfg),
        "device": device_name(session.device), "versions": record.versions(),
        "deterministic": session.deterministic, "compiled": session.compiled,
        "precision": session.precision, "compile_mode": session.cfg.train.compile_mode if session.compiled else None,
        "eval_batch_size": session.eval_batch_size, "host_memory": session.host_memory,
        "epochs": rows,
    }
    keep = keep or (lambda rec: None)
    try:
        res = run_one(session, seed, epoch)
    except (Exception, SystemExit) as e:
        if not _numeric_failure(e):
            err = run_error(session, seed, e)
            rec.update(status="failed", message=err.line() if err else f"{e.__class__.__name__}: {e}")
            keep(rec)
            if err is not None and err is not e:
                raise err from e
            raise
        res = RunResult(seed, "diverged", float("nan"), None, {}, rows,
                        f"a training step failed in epoch {len(rows) + 1}: {e}")
    except Interrupted:
        rec["message"] = "interrupted during this run"
        keep(rec)
        raise
    rec.update(
        status=res.status, accuracy=res.accuracy if res.status == "completed" else None,
        train_seconds=res.train_seconds, phases=res.phases, message=res.message, final=res.final,
    )
    return rec


def train_runs(cfg: Any, tm, opts: TrainOptions, printer: Printer | None = None) -> tuple[dict, int]:
    """Train ``opts.runs`` seeds; write records as each finishes. Returns (summary, exit code).
    ``opts.out`` is claimed for the whole batch (one hlb at a time per folder)."""
    printer = printer or Printer(quiet=opts.quiet)
    hold = record.claim(opts.out) if opts.out else None
    try:
        seeds = range(opts.seed, opts.seed + opts.runs)
        earlier = earlier_runs(hold.folder, to_dict(cfg), opts.resume, seeds=seeds) if hold else {}
        return _train_batch(cfg, tm, opts, printer, hold.folder if hold else None, earlier)
    finally:
        if hold:
            hold.release()


def _train_batch(cfg: Any, tm, opts: TrainOptions, printer: Printer, out: Path | None,
                 earlier: dict[int, tuple[Path, dict]]) -> tuple[dict, int]:
    runs: list[dict] = []
    exit_code = 0
    tricks = list(tm.trick_names())
    session = None

    def write_summary(partial: bool) -> dict:
        extra = {"preset_tricks": tricks, "partial": partial, "runs_requested": opts.runs, "first_seed": opts.seed}
        if session is not None:
            extra.update(
                device=device_name(session.device),
                load_seconds=session.load_seconds,
                build_seconds=session.build_seconds,
                warmup_seconds=session.warmup_seconds,
                compiled=session.compiled,
            )
        summary = record.summarize(runs, **extra)
        if out:
            record.write_json(out / "summary.json", summary)
        return summary

    try:
        with interruptible():
            session = prepare(cfg, tm, opts.device, opts.data_dir, opts.download, opts.deterministic)
            printer.info(
                f"{len(session.dataset.train_labels)} training images ({session.dataset.name}) on "
                f"{device_name(session.device)}; tricks: {', '.join(tricks) or 'none'}; load {session.load_seconds:.2f}s"
            )
            if session.compiled:
                printer.info("compiling and warming up (untimed)...")
                w = warm_up(session, opts.seed)
                printer.info(f"warm-up {w:.1f}s")
            for i in range(opts.runs):
                seed = opts.seed + i
                path = out / f"run-{i:03d}-seed{seed}.json" if out else None
                if seed in earlier:
                    path, old = earlier[seed]
                    if old.get("status") in FINISHED:
                        runs.append(old)
                        printer.info(f"\nrun {i + 1}/{opts.runs} (seed {seed}): {old['status']}, kept from {path.name}")
                        exit_code = exit_code or (0 if old["status"] == "completed" else 1)
                        continue
                printer.run_header(i, opts.runs, seed)

                def keep(rec, path=path):  # a run that failed or was stopped: its record first
                    runs.append(rec)
                    if path:
                        record.write_json(path, rec)

                rec = train_seed(session, seed, printer.epoch_row, keep)
                runs.append(rec)
                if path:
                    record.write_json(path, rec)
                printer.run_done(rec)
                if rec["status"] != "completed":
                    exit_code = 1
                    then = "--stop-on-failure ends the batch here" if opts.stop_on_failure else "the batch goes on"
                    printer.error(f"run {i + 1} (seed {seed}) {rec['status']}: {rec['message']} ({'its record says so; ' if out else ''}{then})")
                    if opts.stop_on_failure:
                        break
                write_summary(partial=i + 1 < opts.runs)
    except Interrupted as e:
        summary = write_summary(partial=True)
        done = sum(1 for r in runs if r.get("status") != "interrupted")
        if done >= opts.runs:
            rest = ""
        elif out:
            rest = f"(rerun the same command with --resume to train the other {opts.runs - done} seed(s) into {out})"
        else:
            rest = f"(the rest: --seed {opts.seed + done} --runs {opts.runs - done})"
        printer.error(
            f"interrupted by {signal.Signals(e.signum).name}: {summary['n']} finished run(s) kept"
            + (f" in {out}" if out else "") + (f" {rest}" if rest else "")
        )
        printer.summary(summary)
        return summary, e.exit_code if e.signum != signal.SIGINT else EXIT_INTERRUPTED
    except BaseException:
        try:
            write_summary(partial=True)  # what finished is not lost
        except HlbError:
            pass  # the write may be what failed (a full disk): the error that ended the batch goes up
        raise
    summary = write_summary(partial=len(runs) < opts.runs)  # --stop-on-failure may end early
    printer.summary(summary)
    return summary, exit_code
