"""Trackers: where a command's runs are logged besides their records (MLflow, TensorBoard, a
third party's). A tracker is not a trick: it is never registered with the trick plugin manager,
``--disable`` and ``--leave-one-out`` never see it, and it changes nothing a run trains.

Chosen with ``--track NAME[:TARGET]`` (repeatable) on ``hlb train``, ``hlb bench`` and ``hlb
ablate``, or a ``[track]`` table in the ``--config`` file (``NAME = true`` or ``NAME =
"TARGET"``; read here, never part of the resolved config). Built-ins: :data:`BUILTINS`; a
third party adds one through the entry-point group :data:`GROUP`.

Every call goes through :class:`Trackers`: per command (:meth:`Tracker.start`,
:meth:`Tracker.end`), per run and per epoch, never inside a step, each tracker handed its own
copy of what it is told (what it changes never reaches hlb's records). A tracker that raises
(``sys.exit``, ``os._exit`` and a ``KeyboardInterrupt`` no Ctrl-C sent included) says so in
one line on stderr and is left out for the rest of the process; the run and its record go on."""

from __future__ import annotations

import copy
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from hlbcli.blame import what_it_is
from hlbcli.catalog import origin
from hlbcli.errors import HlbError, UsageError
from hlbcli.signals import raised_by_code
from hlbcli.layers import TRACK_SECTION, load_toml_file
from hlbcli.record import source_commit as checkout

#: the entry-point group a third-party tracker is declared in: ``NAME = "module:Class"``
GROUP = "hlb.trackers"

#: the built-in trackers (their extras: ``pip install 'hlbcli[NAME]'``)
BUILTINS = {
    "mlflow": "hlbcli.tracking.mlflow_tracker:MlflowTracker",
    "tensorboard": "hlbcli.tracking.tensorboard_tracker:TensorBoardTracker",
}


@dataclass(frozen=True)
class Command:
    """What a tracker is told at :meth:`Tracker.start`: the command whose runs follow."""

    #: ``train``, ``bench`` or ``ablate``
    kind: str
    #: ``--preset`` as the user gave it
    preset: str
    #: the ``--out`` folder (None: ``hlb train`` without ``--out``)
    out: Path | None
    #: seeds per arm (``--runs``) and the first seed
    runs: int
    seed: int
    #: the arms' names (``hlb ablate``; ``A`` and ``B`` for ``hlb bench --against``), ``[]`` for
    #: ``hlb train`` and ``hlb bench``
    arms: list[str] = field(default_factory=list)
    #: the baseline's resolved config (a run record's ``config``)
    config: dict = field(default_factory=dict)
    #: the command line, as typed
    argv: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """One seed's run, as :meth:`Tracker.run_start`, :meth:`Tracker.epoch` and
    :meth:`Tracker.run_end` see it."""

    seed: int
    #: the arm it belongs to (``hlb ablate``; ``A`` or ``B`` for ``hlb bench --against``), else None
    arm: str | None
    #: the resolved config it trains (its record's ``config``)
    config: dict
    #: its active tricks, in order
    tricks: list[str]
    #: where it trains (``cpu``, the GPU's name)
    device: str | None = None
    #: its arm's folder under ``OUT/arms/`` (``no-ema`` for the arm ``-ema``), else None
    folder: str | None = None


class Tracker:
    """The tracker interface: subclass it and override what you need (every method does
    nothing by default). Called in this order, from one thread: ``start``, then for each run
    ``run_start``, ``epoch`` per finished epoch, ``run_end``; ``end`` last. ``hlb ablate``
    reports each run once it has finished (its record's epochs, in order), so the runs of
    different arms may interleave."""

    #: the Python packages it needs (checked when the command starts: a missing one is a
    #: one-line error, exit 2, before anything trains), and the extra that brings them
    requires: tuple[str, ...] = ()
    extra: str | None = None

    def __init__(self, target: str | None = None):
        #: ``TARGET`` of ``--track NAME:TARGET`` (None: the tracker's default)
        self.target = target
        #: where it tracks, once it has started (said at the end of the command)
        self.where: str | None = None

    def start(self, command: Command) -> None:
        """The command starts, before its first run."""

    def run_start(self, run: Run) -> None:
        """A run starts."""

    def epoch(self, run: Run, metrics: dict) -> None:
        """An epoch ended: ``metrics`` is the record's row (``epoch`` from 1, ``steps``,
        ``train_loss``, ``train_acc``, ``val_acc`` (test accuracy; None where the epoch was
        not evaluated; the last epoch's is the final accuracy), ``elapsed`` (seconds))."""

    def run_end(self, run: Run, record: dict, path: Path | None) -> None:
        """A run ended: its record (``status``, ``accuracy``, ``train_seconds``, ``phases``,
        ``epochs`` ...) and the file it is written to (None without ``--out``)."""

    def end(self, summary: dict, exit_code: int) -> None:
        """The command ended: its summary (``summary.json``'s) and its exit code."""


def parse(words: Iterable[str]) -> list[tuple[str, str | None]]:
    """``NAME[:TARGET]`` words as (name, target); a TARGET may hold ``:`` itself."""
    out = []
    for word in words:
        name, colon, target = word.partition(":")
        name = name.strip()
        if not name or (colon and not target.strip()):
            raise UsageError(f"--track {word!r}: not NAME[:TARGET]", "write e.g. --track mlflow or --track tensorboard:runs/tb")
        out.append((name, target.strip() or None))
    return out


def from_config(path: str | Path | None) -> list[tuple[str, str | None]]:
    """The ``[track]`` table of a ``--config`` file as (name, target): ``NAME = true`` (its
    default target), ``NAME = "TARGET"``, ``NAME = false`` (off)."""
    if path is None:
        return []
    table = load_toml_file(path, "config file").get(TRACK_SECTION, {})
    if not isinstance(table, dict):
        raise UsageError(f"[{TRACK_SECTION}] in {path} is not a table", 'write e.g. [track] then mlflow = true or tensorboard = "runs/tb"')
    out = []
    for name, v in table.items():
        if v is False:
            continue
        if v is not True and not (isinstance(v, str) and v.strip()):
            raise UsageError(f"[{TRACK_SECTION}] {name} = {v!r} in {path}: not true, false or a target",
                             f'write {name} = true (its default) or {name} = "TARGET"')
        out.append((str(name), None if v is True else v.strip()))
    return out


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in md.entry_points(group=GROUP)}


def known() -> dict[str, str]:
    """Every tracker there is, name -> where it comes from (``builtin`` or its distribution);
    a built-in's name is never taken by an entry point."""
    out = {n: "builtin" for n in BUILTINS}
    for name, ep in sorted(_entry_points().items()):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        out.setdefault(name, dist or ep.value)
    return out


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _load(name: str, where: str) -> tuple[type, str]:
    """The tracker class ``name`` names, and where it comes from (``built-in``, ``DIST
    VERSION``); ``where`` says where the user chose it (``--track NAME``, ``[track] NAME in
    FILE``)."""
    if name in BUILTINS:
        module, _, attr = BUILTINS[name].partition(":")
        return getattr(importlib.import_module(module), attr), "built-in"
    eps = _entry_points()
    if name not in eps:
        raise UsageError(f"{where}: unknown tracker", f"known trackers: {', '.join(known())}")
    ep = eps[name]
    dist = origin(ep)[1]
    fix = f"fix or uninstall {dist}, or leave out {where}"
    try:
        cls = ep.load()
    except (Exception, SystemExit) as e:  # a third party's broken package (sys.exit at import too): named, one line
        raise UsageError(f"tracker '{name}' from {dist} failed to import: {why(e)}", fix) from None
    if not (isinstance(cls, type) and issubclass(cls, Tracker)):
        raise UsageError(f"tracker '{name}' from {dist}: its entry point {ep.value} is {what_it_is(cls)}, "
                         f"not a Tracker subclass", f"point the {GROUP} entry point at the tracker's class, or leave out {where}")
    return cls, dist


def open_trackers(words: Iterable[str], config_file: str | Path | None = None, quiet: bool = False) -> "Trackers":
    """The trackers of ``--track`` words and the ``--config`` file's ``[track]`` table (a
    ``--track`` of the same name wins), each loaded and checked for its packages: an unknown
    name or a missing package is a one-line error before anything trains, naming where the
    tracker was chosen."""
    chosen: dict[str, tuple[str | None, str]] = {}
    for name, target in from_config(config_file):
        chosen[name] = target, f"[track] {name} in {config_file}"
    for name, target in parse(words):
        chosen[name] = target, f"--track {name}{':' + target if target else ''}"
    trackers = []
    for name, (target, where) in chosen.items():
        cls, dist = _load(name, where)
        missing = [p for p in getattr(cls, "requires", ()) if not _has_module(p)]
        if missing:
            extra = getattr(cls, "extra", None)
            fix = f"pip install 'hlbcli[{extra}]'" if extra else f"pip install {' '.join(missing)}"
            raise UsageError(f"{where} needs the {missing[0]} package", fix)
        try:
            with _exit_caught():
                trackers.append((name, cls(target)))
        except HlbError as e:  # the tracker's own one line (a TARGET it cannot use)
            raise UsageError(f"{where}: {e.message}", e.hint) from None
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) and not raised_by_code(e):
                raise
            if dist == "built-in":
                raise UsageError(f"{where}: {why(e)}", "check its TARGET") from None
            raise UsageError(f"{where}: tracker '{name}' from {dist} failed to start: {why(e)}",
                             f"a bug of that tracker: report it to its author, or leave out {where}") from None
    return Trackers(trackers, quiet)


def one_line(e: BaseException) -> str:
    text = f"{e.__class__.__name__}: {e}".strip()
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:500]


def why(e: BaseException) -> str:
    """What a tracker's code did, in one line: ``called sys.exit(5)``, ``called os._exit(9)``,
    ``raised KeyboardInterrupt``, else the exception."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    if isinstance(e, _Exited):
        return f"called os._exit({e.code!r})"
    if isinstance(e, KeyboardInterrupt):
        return "raised KeyboardInterrupt (no Ctrl-C came)"
    return one_line(e)


class _Exited(BaseException):
    """``os._exit`` called by a tracker's code (:func:`_exit_caught`)."""

    def __init__(self, code: Any):
        super().__init__(code)
        self.code = code


@contextmanager
def _exit_caught():
    """While a tracker's code runs: ``os._exit`` called from this thread of this process (not
    a thread or a forked child of the tracker's) raises :class:`_Exited`, so the tracker is
    named and left out instead of ending the process with nothing written and nothing said.
    (A tracker that took ``os._exit`` before, ``from os import _exit``, or kills its own
    process, cannot be caught.)"""
    real, pid, thread = os._exit, os.getpid(), threading.get_ident()

    def stand_in(code):
        if os.getpid() != pid or threading.get_ident() != thread:
            real(code)
        raise _Exited(code)

    os._exit = stand_in
    try:
        yield
    finally:
        os._exit = real


class Trackers:
    """The chosen trackers, each call made for each: a tracker that raises is named in one
    warning line on stderr and left out from then on; the command goes on."""

    def __init__(self, trackers: list[tuple[str, Tracker]] = (), quiet: bool = False, strict: bool = False):
        self.trackers = list(trackers)
        self.quiet = quiet
        #: a tracker's exception goes up instead (``hlbcli.testing.track``: its author's test)
        self.strict = strict
        self.failed: dict[str, str] = {}
        self.ended = False

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def names(self) -> list[str]:
        return [n for n, _ in self.trackers]

    def _each(self, method: str, *args: Any) -> None:
        for name, t in self.trackers:
            if name in self.failed:
                continue
            mine = copy.deepcopy(args)  # what a tracker changes in what it is handed stays its own
            try:
                with _exit_caught():
                    getattr(t, method)(*mine)
            except BaseException as e:  # never a stop signal, nor a Ctrl-C's KeyboardInterrupt
                if self.strict or not isinstance(e, (Exception, SystemExit, _Exited)) and not raised_by_code(e):
                    raise
                self.failed[name] = why(e)
                print(f"warning: tracker {name} failed: {self.failed[name]} (the run and its record are kept; "
                      f"{name} tracks nothing more in this command)", file=sys.stderr, flush=True)

    def start(self, command: Command) -> None:
        self._each("start", command)

    def run_start(self, run: Run) -> None:
        self._each("run_start", run)

    def epoch(self, run: Run, metrics: dict) -> None:
        self._each("epoch", run, metrics)

    def run_end(self, run: Run, record: dict, path: Path | None) -> None:
        self._each("run_end", run, record, path)

    def replay(self, arm: str | None, record: dict, path: Path | None, folder: str | None = None) -> None:
        """A finished run from its record alone (``hlb ablate``: the parent reports each run
        its arm's process or task wrote): start, its epochs in order, end. ``folder``: the
        arm's folder under ``OUT/arms/``."""
        run = run_of(record, arm, folder)
        self.run_start(run)
        for row in record.get("epochs") or []:
            if isinstance(row, dict):
                self.epoch(run, row)
        self.run_end(run, record, path)

    def end(self, summary: dict, exit_code: int) -> None:
        """Once per command (a second call does nothing); then where each tracker wrote."""
        if self.ended:
            return
        self.ended = True
        self._each("end", summary, exit_code)
        if not self.quiet:
            for name, t in self.trackers:
                if name not in self.failed and getattr(t, "where", None):
                    print(f"tracked: {name}: {t.where}", file=sys.stderr, flush=True)


def around(track: Trackers | None, command: Command, body: Callable[[], tuple[dict, int]],
           partial: Callable[[], dict] = dict) -> tuple[dict, int]:
    """``body()`` (a command's runs: its summary and exit code) between ``track.start(command)``
    and ``track.end(summary, code)``. An error that ends it goes up after ``track.end(partial(),
    1)``: the trackers close what they opened. Without trackers, ``body()`` alone."""
    if not track:
        return body()
    track.start(command)
    try:
        summary, code = body()
    except BaseException:
        track.end(partial(), 1)
        raise
    track.end(summary, code)
    return summary, code


def run_of(record: dict, arm: str | None = None, folder: str | None = None) -> Run:
    """The :class:`Run` a record is of."""
    return Run(seed=int(record.get("seed", 0)), arm=arm, config=dict(record.get("config") or {}),
               tricks=list(record.get("tricks") or []), device=record.get("device"), folder=folder)


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """A resolved config as flat ``section.key`` -> value (a list as JSON; an empty table is
    left out): what trackers log as parameters."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def source_commit() -> str | None:
    """The git commit of hlb's own source (:func:`hlbcli.record.source_commit`), None when it
    does not run from a git checkout."""
    commit, _ = checkout()
    return None if commit == "not a git checkout" else commit
