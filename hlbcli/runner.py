"""``hlb train``: N seeds in one process, a table as epochs finish, records on disk."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hlbcli import record
from hlbcli.config import to_dict
from hlbcli.errors import EXIT_INTERRUPTED
from hlbcli.output import Printer
from hlbcli.train import prepare, run_one, warm_up


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: the runner writes what it has and exits 128 + signal.

    A ``BaseException``, like ``KeyboardInterrupt``: the signal handler raises it wherever the
    process happens to be, and an ``except Exception`` there (the dataset reader turning any
    error into "file is corrupt", a plugin's fallback) must not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def interruptible():
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while training."""

    def handler(signum, frame):
        raise Interrupted(signum)

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
    label: str = ""


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def train_runs(cfg: Any, tm, opts: TrainOptions, printer: Printer | None = None) -> tuple[dict, int]:
    """Train ``opts.runs`` seeds; write records as each finishes. Returns (summary, exit code)."""
    printer = printer or Printer(quiet=opts.quiet)
    out = record.prepare_out_dir(opts.out) if opts.out else None
    runs: list[dict] = []
    exit_code = 0
    config = to_dict(cfg)
    tricks = list(tm.trick_names())
    trick_versions = {n: tm.origins[n] for n in tricks}
    session = None

    def write_summary(partial: bool) -> dict:
        extra = {"preset_tricks": tricks, "partial": partial, "runs_requested": opts.runs}
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
                rows: list[dict] = []
                printer.run_header(i, opts.runs, seed)

                def on_epoch(row, rows=rows):
                    rows.append(row)
                    printer.epoch_row(row)

                rec = {
                    "seed": seed, "status": "interrupted", "accuracy": None, "train_seconds": None,
                    "tricks": tricks, "trick_sources": trick_versions, "config": config,
                    "device": device_name(session.device), "versions": record.versions(),
                    "deterministic": session.deterministic, "compiled": session.compiled,
                    "precision": session.precision, "compile_mode": session.cfg.train.compile_mode if session.compiled else None,
                    "epochs": rows,
                }
                try:
                    res = run_one(session, seed, on_epoch)
                except Interrupted:
                    rec["message"] = "interrupted during this run"
                    runs.append(rec)
                    if out:
                        record.write_json(out / f"run-{i:03d}-seed{seed}.json", rec)
                    raise
                rec.update(
                    status=res.status, accuracy=res.accuracy if res.status == "completed" else None,
                    train_seconds=res.train_seconds, phases=res.phases, message=res.message, final=res.final,
                )
                runs.append(rec)
                if out:
                    record.write_json(out / f"run-{i:03d}-seed{seed}.json", rec)
                printer.run_done(rec)
                if res.status != "completed":
                    exit_code = 1
                    then = "--stop-on-failure ends the batch here" if opts.stop_on_failure else "the batch goes on"
                    printer.error(f"run {i + 1} (seed {seed}) {res.status}: {res.message} ({'its record says so; ' if out else ''}{then})")
                    if opts.stop_on_failure:
                        break
                write_summary(partial=i + 1 < opts.runs)
    except Interrupted as e:
        summary = write_summary(partial=True)
        done = sum(1 for r in runs if r.get("status") != "interrupted")
        rest = f"(the rest: --seed {opts.seed + done} --runs {opts.runs - done})" if done < opts.runs else ""
        printer.error(
            f"interrupted by {signal.Signals(e.signum).name}: {summary['n']} finished run(s) kept"
            + (f" in {out}" if out else "") + (f" {rest}" if rest else "")
        )
        printer.summary(summary)
        return summary, e.exit_code if e.signum != signal.SIGINT else EXIT_INTERRUPTED
    summary = write_summary(partial=len(runs) < opts.runs)  # --stop-on-failure may end early
    printer.summary(summary)
    return summary, exit_code
