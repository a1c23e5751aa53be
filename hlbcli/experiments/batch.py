"""``hlb train`` (and ``hlb bench``): N seeds in one process on one session, a table as
epochs finish, a record per run and the summary on disk."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hlbcli import readback, record, stats
from hlbcli.config import config_defaults, to_dict
from hlbcli.errors import UsageError
from hlbcli.machine import fingerprint, runs_machine, warn_different
from hlbcli.output import Printer
from hlbcli.readback import FINISHED, config_difference
from hlbcli.run import run_seed, warm_up
from hlbcli.session import device_name, open_session
from hlbcli.experiments.options import RunOptions
from hlbcli.experiments.tail import run_to_summary
from hlbcli.signals import interruptible
from hlbcli.estimate import gpu_recipe_note
from hlbcli.tracking import Command, Run, around


@dataclass(kw_only=True)
class TrainOptions(RunOptions):
    """``hlb train`` and ``hlb bench``: the shared options (:class:`RunOptions`) and theirs."""

    deterministic: bool = False
    stop_on_failure: bool = False
    #: the ablation arm these runs belong to (``ctx.arm``; ``hlb ablate``'s local backend passes
    #: it to each arm's ``hlb train`` with the hidden ``--label``); "" outside an ablation
    label: str = ""
    #: progress within each run: None shows it unless quiet; True shows it on stderr when quiet
    #: (``hlb bench``)
    progress: bool | None = None
    #: the command (``train`` or ``bench``) and its trackers (:mod:`hlbcli.tracking`; None: none)
    command: str = "train"
    track: Any = None
    #: the settings changed from the preset, furthest first (:func:`hlbcli.resolve.changed_settings`):
    #: a divergence's message names them as its likeliest cause
    changed: tuple[str, ...] = ()
    #: what times the runs: ``wall`` or ``cuda-events`` (``hlb bench --timer``; :data:`hlbcli.timers.TIMERS`)
    timer: str = "wall"


def summarize(runs: list[dict], **extra: Any) -> dict:
    """A batch's summary (summary.json of ``hlb train`` and ``hlb bench``, and of each arm and
    side), from the one statistics block (:func:`hlbcli.stats.run_block`): n, mean, std, min,
    max and the 95% interval of the completed runs' accuracies (clipped to [0, 1], named
    ``ci95_method``), their train seconds, the machine they ran on (:func:`hlbcli.machine.runs_machine`);
    ``extra`` and the records after them."""
    b = stats.run_block(runs)
    return {"n": b["n"], "n_started": b["n_started"], "mean_accuracy": b["mean"], "std_accuracy": b["std"],
            "min_accuracy": b["min"], "max_accuracy": b["max"], "ci95": b["ci95"], "mean_train_seconds": b["time_mean"],
            "std_train_seconds": b["time_std"], "median_train_seconds": b["time_median"],
            "machine": runs_machine(runs), **extra, "runs": runs, "ci95_method": b["ci95_method"]}


def earlier_runs(out: Path, config: dict, resume: bool, check: bool = True,
                 seeds: range | None = None, defaults: dict | None = None) -> dict[int, tuple[Path, dict]]:
    """The run records already in ``out``, by seed (of ``seeds``, the batch's, when given).
    Records there are refused without ``resume``, and so is a folder of another command
    (:func:`hlbcli.record.check_out`); with it, a record that fails the checks of
    :mod:`hlbcli.readback` or (``check``) of another config is refused (a key the record
    predates reads as its ``defaults``), and records of other seeds are named in a warning and
    left out."""
    if not record.check_out(out, "batch", resume):
        return {}
    found = readback.read_records(out, seeds)
    readback.refuse_rejected([found])
    for p, rec in found.runs.values():
        why = check and config_difference(rec.get("config"), config, defaults)
        if why:
            raise UsageError(
                f"--resume: {p} was trained with another config ({why})",
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
    summary = summarize(runs, partial=partial, runs_requested=requested, rebuilt=True,
                        rejected=[{"file": str(p), "why": why} for p, why in left],
                        **({"first_seed": first} if first is not None else {}))
    record.write_json(out / "summary.json", summary)
    return summary


def train_batch(cfg: Any, tm, opts: TrainOptions, printer: Printer | None = None) -> tuple[dict, int]:
    """Train ``opts.runs`` seeds; write records as each finishes. Returns (summary, exit code).
    ``opts.out`` is claimed for the whole batch (one hlb at a time per folder)."""
    printer = printer or Printer(quiet=opts.quiet, progress=opts.progress)
    hold = record.claim(opts.out) if opts.out else None
    try:
        seeds = range(opts.seed, opts.seed + opts.runs)
        earlier = earlier_runs(hold.folder, to_dict(cfg), opts.resume, seeds=seeds,
                               defaults=config_defaults(cfg)) if hold else {}
        return _train_claimed(cfg, tm, opts, printer, hold.folder if hold else None, earlier)
    finally:
        if hold:
            hold.release()


def _train_claimed(cfg: Any, tm, opts: TrainOptions, printer: Printer, out: Path | None,
                   earlier: dict[int, tuple[Path, dict]]) -> tuple[dict, int]:
    batch = Batch(cfg, tm, opts, printer, out, earlier)
    return around(opts.track, Command(opts.command, opts.preset, out, opts.runs, opts.seed, [], to_dict(cfg), sys.argv[1:]),
                  batch.run, lambda: summarize(batch.runs, partial=True))


class Batch:
    """A batch of seeds on one session, its ``--out`` claimed: each seed trained in turn (or kept
    from an earlier batch with ``--resume``), each run's record kept by :meth:`keep`, the one run
    tail, whatever ended the run; the summary written after each run and at the end by the tail
    every batch shares (:func:`hlbcli.experiments.tail.run_to_summary`)."""

    def __init__(self, cfg: Any, tm, opts: TrainOptions, printer: Printer, out: Path | None,
                 earlier: dict[int, tuple[Path, dict]]):
        self.cfg, self.tm, self.opts, self.printer, self.out, self.earlier = cfg, tm, opts, printer, out, earlier
        self.runs: list[dict] = []
        self.exit_code = 0
        self.tricks = list(tm.trick_names())
        self.session = None
        self.track = opts.track

    def write_summary(self, partial: bool) -> dict:
        opts, session = self.opts, self.session
        extra = {"preset_tricks": self.tricks, "partial": partial, "runs_requested": opts.runs, "first_seed": opts.seed}
        if session is not None:
            extra.update(
                device=device_name(session.device),
                load_seconds=session.load_seconds,
                build_seconds=session.build_seconds,
                warmup_seconds=session.warmup_seconds,
                compiled=session.compiled,
            )
        summary = summarize(self.runs, **extra)
        if self.out:
            record.write_json(self.out / "summary.json", summary)
        return summary

    def keep(self, rec: dict, path: Path | None, run: Any) -> None:
        """The run tail: the record among the batch's, on disk where ``path`` is, and told to
        the trackers (``run``: the tracked run, or None)."""
        self.runs.append(rec)
        if path:
            record.write_json(path, rec)
        if run:
            self.track.run_end(run, rec, path)

    def train(self, got: list[int]) -> None:
        opts, printer, out = self.opts, self.printer, self.out
        with interruptible():
            self.session = session = open_session(self.cfg, self.tm, opts.device, opts.data_dir, opts.download, opts.deterministic)
            session.timer = opts.timer
            if self.earlier:  # --resume: the records kept, timed on another machine?
                warn_different(f"the records kept in {out}", runs_machine([r for _, r in self.earlier.values()]),
                               "this machine", fingerprint(session.device))
            printer.info(
                f"{len(session.dataset.train_labels)} training images ({session.dataset.name}) on "
                f"{device_name(session.device)}; tricks: {', '.join(self.tricks) or 'none'}; load {session.load_seconds:.2f}s"
            )
            note = _cpu_note(session, opts)
            if note:
                printer.note(note)
            if session.compiled:
                printer.info("compiling and warming up (untimed)...")
                w = warm_up(session, opts.seed, opts.label or None, out)
                printer.info(f"warm-up {w:.1f}s")
            for i in range(opts.runs):
                how = self.train_seed(i)
                if how == "kept":
                    continue
                if how == "failed" and opts.stop_on_failure:
                    break
                self.write_summary(partial=i + 1 < opts.runs)

    def train_seed(self, i: int) -> str:
        """The batch's ``i``-th seed, trained or kept from an earlier batch (``--resume``):
        ``kept``, ``completed``, or ``failed`` (a run that did not complete: its line printed)."""
        opts, printer, out, session = self.opts, self.printer, self.out, self.session
        seed = opts.seed + i
        path = out / f"run-{i:03d}-seed{seed}.json" if out else None
        if seed in self.earlier:
            path, old = self.earlier[seed]
            if old.get("status") in FINISHED:
                self.runs.append(old)
                printer.info(f"\nrun {i + 1}/{opts.runs} (seed {seed}): {old['status']}, kept from {path.name}")
                self.exit_code = self.exit_code or (0 if old["status"] == "completed" else 1)
                return "kept"
        printer.run_header(i, opts.runs, seed)
        run = tracked_run(session, seed, opts.label or None) if self.track else None

        def on_epoch(row):
            printer.epoch_row(row)
            if run:
                self.track.epoch(run, row)

        if run:
            self.track.run_start(run)
        with printer.steps(f"run {i + 1}/{opts.runs} (seed {seed})", seed) as on_step:
            # a run that fails or is stopped keeps its record first, then raises
            rec = run_seed(session, seed, on_epoch, lambda r: self.keep(r, path, run), arm=opts.label or None, out=out,
                           on_step=on_step)
        if rec["status"] == "diverged" and opts.changed:
            rec["message"] += f"; likeliest cause, the settings changed from the preset: {', '.join(opts.changed[:3])}"
        self.keep(rec, path, run)
        printer.run_done(rec)
        if rec["status"] == "completed":
            return "completed"
        self.exit_code = 1
        then = "--stop-on-failure ends the batch here" if opts.stop_on_failure else "the batch goes on"
        printer.error(f"run {i + 1} (seed {seed}) {rec['status']}: {rec['message']} ({f'its record: {path}; ' if out else ''}{then})")
        return "failed"

    def finish(self) -> tuple[dict, int]:
        return self.write_summary(partial=len(self.runs) < self.opts.runs), self.exit_code  # --stop-on-failure may end early

    def rest(self, summary: dict) -> str:
        opts, out = self.opts, self.out
        done = sum(1 for r in self.runs if r.get("status") != "interrupted")
        if out:
            return f"rerun the same command with --resume to train the other {opts.runs - done} seed(s) into {out}"
        return f"the rest: --seed {opts.seed + done} --runs {opts.runs - done}"

    def run(self) -> tuple[dict, int]:
        summary, code = run_to_summary(self.train, self.write_summary, self.finish, out=self.out, hint=self.rest)
        if summary.get("error"):
            self.printer.error(summary["error"])
        self.printer.summary(summary)
        self.printer.saved(self.out, len(list(self.out.glob("run-*.json"))) if self.out else 0)
        return summary, code


def tracked_run(session: Any, seed: int, arm: str | None):
    """The :class:`hlbcli.tracking.Run` of a seed about to train on ``session``."""
    return Run(seed, arm, to_dict(session.cfg), list(session.tm.trick_names()), device_name(session.device))


def _cpu_note(session: Any, opts: TrainOptions) -> str | None:
    """A recipe made for a GPU, training on the CPU: roughly how long (:mod:`hlbcli.progress`)."""
    if session.device.type != "cpu" or session.dataset.name == "synthetic":
        return None
    import torch

    ds = session.dataset
    return gpu_recipe_note(opts.preset or "this recipe", session.cfg.model, session.cfg.train.epochs,
                           len(ds.train_labels), len(ds.test_labels), torch.get_num_threads(), opts.runs)
