"""Helpers for trick authors' tests.

    from hlbcli import testing

    tm = testing.manager(my_trick)                 # the core plus only my_trick
    with testing.HookRecorder(tm) as rec:
        tm.hook.hlb_batch_transforms(cfg=cfg, ctx=ctx)
    assert rec.count("hlb_batch_transforms") == 1

    cfg, tm = testing.resolve_config(my_trick, sets=["my_trick.strength=0.5"])
    summary = testing.train(cfg, tm)               # one tiny run on synthetic data, in-process

    testing.check(cfg, tm)                         # what --dry-run checks (hlb_validate included)
    s = testing.session(cfg, tm)                   # data loaded, model built
    plan = testing.plan(s, seed=0)                 # the build-time hooks: plan.optimizers, ...
    result = testing.run(s, seed=0)                # one run; s.model holds the final weights
    rec = testing.run_record(s, seed=0)            # one run as hlb train records it, hlb_run_end included
    summary = testing.track(MyTracker(target))     # tiny runs with a tracker, as hlb train --track calls it

Nothing here touches the installed third-party tricks unless asked: a manager built by
:func:`manager` holds the core and the plugins given, with every other trick blocked.
"""

from __future__ import annotations

from collections import Counter
from types import ModuleType
from typing import Any, Iterable

from hlbcli.data import synthetic
from hlbcli.errors import ConfigError, UsageError
from hlbcli.plugins import TrickManager, build_manager
from hlbcli.experiments.batch import TrainOptions, train_batch
from hlbcli.resolve import resolve
from hlbcli.run import fit, plan_run, run_seed
from hlbcli.session import check_session, open_session

__all__ = ["ConfigError", "HookRecorder", "TINY_SETS", "UsageError", "check", "manager", "plan", "plugin_name",
           "resolve_config", "run", "run_record", "session", "synthetic", "track", "train"]

#: ``--set`` overrides that make any preset tiny: synthetic data, small widths, two epochs.
TINY_SETS = [
    'data.dataset="synthetic"',
    "data.synthetic_train=256",
    "data.synthetic_test=128",
    "model.widths=[8,16,16]",
    "train.batch_size=64",
    "train.epochs=2",
    'train.compile="off"',
]


def plugin_name(plugin: object) -> str:
    """The trick name a plugin gives itself (``hlb_trick_info().name``), else its ``NAME``."""
    fn = getattr(plugin, "hlb_trick_info", None)
    if fn is not None:
        return fn().name
    name = getattr(plugin, "NAME", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"{plugin!r} has neither hlb_trick_info nor NAME: pass names=[...] to say what it is called")


def _named(plugins: Iterable[object], names: Iterable[str] | None) -> dict[str, object]:
    plugins = list(plugins)
    names = list(names) if names is not None else [plugin_name(p) for p in plugins]
    if len(names) != len(plugins):
        raise ValueError(f"{len(plugins)} plugins but {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError(f"two plugins share a name: {names}")
    return dict(zip(names, plugins))


def manager(*plugins: object | ModuleType, names: Iterable[str] | None = None, builtins: Iterable[str] = ()) -> TrickManager:
    """A plugin manager holding the core, the given plugin objects (modules or instances) and
    the built-in tricks named in ``builtins``; every other built-in or installed trick is
    blocked and never imported. The contract is checked as in real use."""
    extra = _named(plugins, names)
    return build_manager([*builtins, *extra], extra=extra)


def resolve_config(
    *plugins: object | ModuleType,
    preset: str = "smoke",
    sets: Iterable[str] = (),
    names: Iterable[str] | None = None,
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    tiny: bool = True,
) -> tuple[Any, TrickManager]:
    """The config and manager ``hlb train --preset PRESET`` would build, with the given
    plugins added as active tricks (their settings sections validated, ``sets`` applied).
    ``tiny`` prepends :data:`TINY_SETS`.

    Raises :class:`ConfigError` (``testing.ConfigError``; its ``rows`` are ``(where, what)``
    pairs, e.g. ``("my_trick.strength", "Input should be less than 1")``) when a setting does
    not validate, and :class:`UsageError` (``testing.UsageError``, which ``ConfigError`` and
    ``hlbcli.TrickError`` subclass) for anything else the user could get wrong: an unknown
    preset or trick, a ``sets`` item that is not ``key=value``."""
    extra = _named(plugins, names)
    all_sets = [*(TINY_SETS if tiny else []), *sets]
    if tiny and preset == "smoke":
        all_sets.insert(len(TINY_SETS), "whitening.num_images=128")
    return resolve(preset, None, all_sets, [*enable, *extra], list(disable), extra=extra)


def train(cfg: Any, tm: TrickManager, runs: int = 1, seed: int = 0, device: str = "cpu") -> dict:
    """Train in this process, quietly; return the summary (``runs`` holds each run record)."""
    summary, _ = train_batch(cfg, tm, TrainOptions(runs=runs, seed=seed, device=device, quiet=True, download=False))
    return summary


def track(tracker: Any, cfg: Any = None, tm: TrickManager | None = None, out: Any = None, runs: int = 1,
          seed: int = 0) -> dict:
    """Train ``runs`` tiny runs in this process with ``tracker`` (an instance of a
    :class:`hlbcli.tracking.Tracker` subclass, its ``target`` set) called as ``hlb train
    --track`` calls it: ``start``, then per run ``run_start``, ``epoch`` per epoch, ``run_end``,
    and ``end`` last. ``cfg, tm``: default :func:`resolve_config` (the smoke preset, tiny);
    ``out``: the ``--out`` folder (records written there, ``command.out``; None: none). Returns
    the summary; read back what the tracker wrote. An exception the tracker raises goes up here
    (``hlb train`` would name it in a warning and go on without the tracker)."""
    from pathlib import Path

    from hlbcli.tracking import Trackers

    if cfg is None:
        cfg, tm = resolve_config()
    trackers = Trackers([(type(tracker).__name__, tracker)], quiet=True, strict=True)
    opts = TrainOptions(runs=runs, seed=seed, device="cpu", quiet=True, download=False, track=trackers,
                        out=Path(out) if out is not None else None)
    summary, _ = train_batch(cfg, tm, opts)
    return summary


def check(cfg: Any, tm: TrickManager) -> None:
    """What ``--dry-run`` checks: sizes, and every trick's ``hlb_validate`` on the built model
    with the data's shape from the config. Raises the trick's :class:`hlbcli.TrickError`."""
    check_session(cfg, tm)


def session(cfg: Any, tm: TrickManager, device: str = "cpu"):
    """Load the data and build the model once, as ``hlb train`` does before its runs."""
    return open_session(cfg, tm, device, download=False)


def plan(session: Any, seed: int = 0):
    """Reset the weights to ``seed``'s and call every build-time hook, as a run starts: the
    returned plan holds ``optimizers``, ``transforms``, ``actions``, ``loss_fn``, ``lr_table``
    and ``ctx``. Nothing trains."""
    return plan_run(session, seed)


def run(session: Any, seed: int = 0):
    """One run on a :func:`session`, in this process: a result with ``status``, ``accuracy``,
    ``epochs`` (per-epoch metrics) and ``phases``; the session's model holds the final weights.
    The loop alone: ``hlb_run_end`` is not called (:func:`run_record` calls it), and an error
    goes up as it is."""
    return fit(session, seed)


def run_record(session: Any, seed: int = 0, arm: str | None = None, out: Any = None) -> dict:
    """One run on a :func:`session` as ``hlb train`` makes it: its record (a dict with
    ``status``, ``accuracy``, ``epochs``, ``final``, ``phases``, ``message``), ``hlb_run_end``
    called last whatever the outcome. A failed run's error goes up (a trick's bug as a
    ``TrickBug``); ``arm`` and ``out`` become ``ctx.arm`` and ``ctx.out``."""
    return run_seed(session, seed, arm=arm, out=out)


class HookRecorder:
    """Records every hook call on a manager: ``calls`` is a list of ``(hook, kwargs)``;
    ``counts`` a Counter by hook name. Use as a context manager, or call :meth:`stop`."""

    def __init__(self, tm: TrickManager | Any):
        self.pm = getattr(tm, "pm", tm)
        self.calls: list[tuple[str, dict]] = []
        self.counts: Counter[str] = Counter()
        self._undo = self.pm.add_hookcall_monitoring(self._before, self._after)

    def _before(self, hook_name: str, hook_impls, kwargs: dict) -> None:
        self.calls.append((hook_name, dict(kwargs)))
        self.counts[hook_name] += 1

    def _after(self, outcome, hook_name: str, hook_impls, kwargs: dict) -> None:
        pass

    def count(self, hook_name: str) -> int:
        return self.counts[hook_name]

    def names(self) -> list[str]:
        """Hook names in call order, one per call."""
        return [name for name, _ in self.calls]

    def clear(self) -> None:
        self.calls.clear()
        self.counts.clear()

    def stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def __enter__(self) -> "HookRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
