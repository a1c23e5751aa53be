"""A battery (``hlb ablate``) run by a backend, and the tail every batch of runs shares.

:class:`Backend` is the interface: the local backend (a process per arm on this machine,
:mod:`hlbcli.experiments.local_backend`) and the Ray backend ((arm, block of seeds) tasks on a
cluster, :mod:`hlbcli.experiments.ray_backend`) implement it. :class:`Battery` is what they share:
the plan, the arms' statuses, the progress display and the summary on disk. :func:`run_to_summary`
(in :mod:`hlbcli.experiments.tail`) is the one interrupt-and-summary tail of ``hlb train --runs`` and of both backends: whatever ends
a batch, the runs that finished are kept, the summary is written, and a stop signal that comes
while it is written waits for it (:mod:`hlbcli.experiments.tail`).

Layout of ``--out DIR``::

    DIR/ablation.json          the plan (what --resume and hlb summary read back)
    DIR/summary.json           arms, their statistics and every run record
    DIR/summary.md             the table in Markdown
    DIR/arms/<arm>/run-*.json  each run's record, written as it finishes
    DIR/arms/<arm>/train.log   what the arm's process or tasks said
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields
from importlib import import_module
from pathlib import Path
from typing import Callable, Protocol

from hlbcli.errors import UsageError
from hlbcli.machine import runs_machine, warn_different
from hlbcli.experiments.plan import (AblateOptions, Arm, claim_out, default_out, finished_seeds, plan_battery, plan_of,
                                     plan_runs)
from hlbcli.experiments.summary import rich_table, summarize, write_summary
from hlbcli.experiments.tail import run_to_summary
from hlbcli.tracking import Command, around
from hlbcli.experiments.battery_progress import BatteryProgress as Progress
from hlbcli.experiments.sequential import looks, run_rounds
from hlbcli.stats import cs_bounded_from


@dataclass
class Battery:
    """What a backend trains and reports into: the plan, each arm's status, the arms that
    failed (and why), the progress display, the summary on disk."""

    opts: AblateOptions
    arms: list[Arm]
    out: Path
    progress: object
    status: dict[str, str] = field(default_factory=dict)
    #: arm name -> the error that ended it (None: see its train.log)
    failed: dict[str, str | None] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)
    #: the whole plan (options, arms) while a round of ``--until-resolved`` trains part of it
    #: (:mod:`hlbcli.experiments.sequential`): what the summary is of
    whole: tuple[AblateOptions, list[Arm]] | None = None
    #: the trackers (:class:`hlbcli.tracking.Trackers`; None: none): each finished run is
    #: reported from its record, here in the parent, whichever backend trained it
    track: object = None

    def _plan(self) -> tuple[AblateOptions, list[Arm]]:
        return self.whole or (self.opts, self.arms)

    def say(self, text: str) -> None:
        self.progress.say(text)

    def arm_dir(self, arm: Arm) -> Path:
        return self.out / "arms" / arm.folder

    def finished(self, arm: Arm) -> dict[int, dict]:
        """The arm's finished (completed or diverged) records of the plan's seeds, by seed."""
        return finished_seeds(arm, self.opts, self.out)

    def write(self, partial: bool) -> dict:
        summary = write_summary(*self._plan(), self.out, self.status, partial, time.monotonic() - self.t0)
        self.progress.update(summary)
        return summary

    def run_done(self, arm: Arm, rec: dict) -> None:
        """A run finished: the progress line and the live table."""
        self.progress.run_finished(arm.name, rec)
        self.progress.update(summarize(*self._plan(), self.out, dict(self.status), True))
        if self.track:
            path = next(iter(sorted(self.arm_dir(arm).glob(f"run-*-seed{rec.get('seed')}.json"))), None)
            self.track.replay(arm.name, rec, path, arm.folder)

    def run_progress(self, arm: Arm, state: dict) -> None:
        """Where ``arm``'s current run is, as its process reported it."""
        self.progress.run_progress(arm.name, state)

    def tick(self) -> None:
        """A backend's loop looked: the plain line that keeps a log from going silent
        (:meth:`hlbcli.experiments.battery_progress.BatteryProgress.tick`)."""
        self.progress.tick()

    def arm_done(self, arm: Arm) -> None:
        """An arm has all its runs (or has stopped): the summary, and its row."""
        summary = self.write(partial=True)
        self.progress.arm_finished(next(a for a in summary["arms"] if a["name"] == arm.name))

    def fail(self, arm: Arm, status: str, why: str | None = None) -> None:
        self.status[arm.name] = status
        self.failed.setdefault(arm.name, why)

    def end(self) -> tuple[dict, int]:
        """Every arm over: the final summary, exit 1 with the first error if an arm failed."""
        summary = self.write(partial=bool(self.failed))
        if self.failed:
            why = next((w for w in self.failed.values() if w), None)
            summary["error"] = why or f"arm(s) {', '.join(self.failed)} failed; see train.log in {self.out / 'arms'}/<arm>"
            return summary, 1
        return summary, 0


class Backend(Protocol):
    """Where a battery's arms train (docs/backends.md). One object per battery, made with the
    battery's options; the calls come in this order. A backend is registered by one line in
    :data:`BACKENDS`; what it declares of itself is read without making one."""

    #: how a message names it ("the Ray backend")
    TITLE: str
    #: its own options: the :class:`~hlbcli.experiments.plan.AblateOptions` field -> the flag that
    #: sets it. Another backend's options given with this one are refused in one line.
    OPTIONS: dict[str, str]
    #: whether this process checks (and, where allowed, downloads) the data before any arm
    #: starts; False where each worker reads its own (a cluster's nodes)
    DATA_HERE: bool

    def check(self) -> None:
        """Its options' values, before anything else is checked (a one-line error)."""

    def describe(self, arms: list[Arm], out: Path) -> list[str]:
        """``--dry-run``: a line per unit of work (an arm's command, a task), nothing started."""

    def connect(self) -> Callable[[], None] | None:
        """Reach the machines it trains on, before ``--out`` is claimed; returns what leaves
        them again at the end (None: nothing to leave)."""

    def train(self, battery: Battery, got: list[int]) -> None:
        """Train every arm's missing seeds, recording each run where the summary reads it
        (``battery.arm_dir(arm)``), and ``battery.fail`` the arms that fail. Raise
        :class:`Interrupted` once ``got`` (the stop signals noted) is not empty."""

    def stop(self, status: str) -> None:
        """Stop what still trains (children, tasks), marking their arms with ``status``."""


#: the backends, registered: ``--backend NAME`` -> the module and class that implement
#: :class:`Backend` (imported when chosen, or when their options are looked up)
BACKENDS = {
    "local": "hlbcli.experiments.local_backend:LocalBackend",
    "ray": "hlbcli.experiments.ray_backend:RayBackend",
}


def backend_class(name: str) -> type:
    """The class registered as ``name`` in :data:`BACKENDS` (an unknown name: one line)."""
    if name not in BACKENDS:
        raise UsageError(f"--backend {name}: unknown backend", f"choose one of: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(import_module(module), cls)


def backend_for(opts: AblateOptions) -> Backend:
    """The chosen backend, made with ``opts``, after refusing the options of another one (each
    backend declares its own, :attr:`Backend.OPTIONS`)."""
    chosen = backend_class(opts.backend)
    defaults = {f.name: f.default for f in fields(AblateOptions)}
    for name in BACKENDS:
        if name == opts.backend:
            continue
        other = backend_class(name)
        for key, flag in other.OPTIONS.items():
            if key not in chosen.OPTIONS and getattr(opts, key) != defaults[key]:
                raise UsageError(f"{flag} is an option of the {other.TITLE} backend", f"add --backend {name}, or drop it")
    return chosen(opts)


def dry_run_lines(opts: AblateOptions, out: Path) -> list[str]:
    """``--dry-run``: everything checked, a line per arm's command or task (the backend's), and
    with ``--until-resolved`` its looks; nothing trains."""
    backend = backend_for(opts)
    lines = backend.describe(plan_battery(opts, data_here=backend.DATA_HERE), out)
    if opts.until_resolved:
        at, first = looks(opts), cs_bounded_from(opts.alpha)
        lines.append(f"until resolved: looks at {', '.join(map(str, at))} seeds per unresolved arm (alpha {opts.alpha:g}"
                     + (f", no effect within +-{opts.delta:g})" if opts.delta else ")")
                     + (f"; the interval is bounded from {first} seeds on, so the look at {at[0]} resolves nothing"
                        f" (--runs {first} makes it count)" if at[0] < first else ""))
    return lines


def run_ablation(opts: AblateOptions, say=None, console=None, track=None, arms: list[Arm] | None = None,
                 leaves=None) -> tuple[dict, int]:
    """Check, train every arm on the chosen backend, write and return the summary (and the
    exit code). Whatever ends this process, what trains for it ends too. ``console`` (rich)
    shows the progress; ``say`` gets the lines worth a log; ``track``: the trackers
    (:class:`hlbcli.tracking.Trackers`), told of the battery, each finished run and the end.
    ``arms``: arms planned and checked by the caller (a search's confirmation), instead of the
    options' ``--disable``/``--enable``/``--swap``/``--vary``; ``leaves``: with
    ``--until-resolved``, when an arm leaves the rounds (:func:`~hlbcli.experiments.sequential.run_rounds`)."""
    backend = backend_for(opts)
    backend.check()
    if arms is None:
        arms = plan_battery(opts, fetch=backend.DATA_HERE, data_here=backend.DATA_HERE)
    leave = backend.connect()  # an unreachable cluster, or one without what a task needs: before --out
    try:
        hold = claim_out(opts.out or default_out(opts.preset), plan_of(opts, arms), opts.resume)
        try:
            out = hold.folder
            kept_runs = {(a.name, s): r for a in arms for s, r in finished_seeds(a, opts, out).items()} if opts.resume else {}
            kept = len(kept_runs)
            progress = Progress(len(arms) * plan_runs(opts), kept, console, opts.quiet,
                                render=lambda summary: rich_table(summary, live=True))
            if say is not None:
                progress.say = say
            battery = Battery(opts, arms, out, progress, track=track)
            command = Command("ablate", opts.preset, out, opts.runs, opts.seed, [a.name for a in arms],
                              arms[0].config or {}, sys.argv[1:])
            with progress:
                train = lambda got: backend.train(battery, got)  # noqa: E731
                if opts.until_resolved:
                    train = lambda got: run_rounds(backend, battery, got, **({"leaves": leaves} if leaves else {}))  # noqa: E731
                summary, code = around(track, command, lambda: run_to_summary(train, battery.write, battery.end,
                                                                              stop=backend.stop, out=out))
            if kept_runs:  # --resume: the runs kept and the runs trained now, on another machine?
                now = [r for row in summary.get("arms", []) for r in row.get("runs", [])
                       if (row.get("name"), r.get("seed")) not in kept_runs]
                warn_different(f"the runs kept in {out}", runs_machine(list(kept_runs.values())),
                               "the runs trained now", runs_machine(now))
            return summary, code
        finally:
            hold.release()
    finally:
        if leave is not None:
            leave()
