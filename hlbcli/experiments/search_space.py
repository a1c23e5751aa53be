"""``hlb search --space FILE``: what a search may change in the preset, read from TOML and
checked against the settings' own models before anything trains.

::

    [settings]
    "train.epochs" = { low = 6.5, high = 8.0 }                     # a range, uniform
    "muon.lr" = { low = 0.05, high = 0.5, log = true }             # log-uniform
    "train.batch_size" = { low = 512, high = 2048, step = 512 }    # whole numbers (low, high, step integers)
    "tta.fraction" = [0.25, 0.5, 1.0]                              # one of these values
    [tricks]
    ema = [true, false]                                            # on or off
    flip = [true, "my_flip"]                                       # the preset's, or another trick in its place
    cutmix = [false, true]                                         # one the preset leaves off, added

A setting may also sit in a nested table (``[settings.train]`` then ``epochs = {...}``). A
setting of a trick is drawn only in the trials where that trick is on. The preset's own value
of every key must lie in the space: it is the first trial, and the baseline every trial is
compared with."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hlbcli.errors import HlbError, UsageError
from hlbcli.experiments.vary import value_at
from hlbcli.layers import load_toml_file, toml_value
from hlbcli.plugins import catalog
from hlbcli.resolve import resolve

#: the Optuna parameter of a trick's state: ``tricks.NAME``
TRICK_PARAM = "tricks."
RANGE_KEYS = {"low", "high", "log", "step"}
CORE_SECTIONS = ("data", "model", "train")


@dataclass(frozen=True)
class Setting:
    """One setting of ``[settings]``: a range (``low``..``high``) or a list of ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    @property
    def integer(self) -> bool:
        return not self.choices and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def values_to_check(self) -> list:
        return list(self.choices) if self.choices else [self.low, self.high]

    def holds(self, value: Any) -> bool:
        if self.choices:
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.step:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(toml_value(c) for c in self.choices)
        return f"{self.low:g}..{self.high:g}" + (" (log)" if self.log else "") + (f" step {self.step:g}" if self.step else "")


@dataclass(frozen=True)
class TrickSlot:
    """One entry of ``[tricks]``: the trick ``name`` on (true), off (false) or another trick in
    its place (that trick's name)."""

    name: str
    choices: tuple


@dataclass(frozen=True)
class Space:
    settings: tuple[Setting, ...]
    tricks: tuple[TrickSlot, ...]
    #: the file's data as read (what ``search.json`` keeps, and ``--resume`` compares)
    data: dict


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b)


def _bad(where: str, why: str, hint: str = "see docs/search.md for the space's format") -> UsageError:
    return UsageError(f"space {where}: {why}", hint)


def _is_range(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and set(v) <= RANGE_KEYS


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _setting(key: str, v: Any) -> Setting:
    where = f"settings.{key}"
    if isinstance(v, list):
        if not v:
            raise _bad(where, "an empty list of choices", "give at least one value, e.g. [0.25, 0.5, 1.0]")
        if any(_same(a, b) for i, a in enumerate(v) for b in v[i + 1:]):
            raise _bad(where, f"a value is listed twice in {toml_value(v)}", "list each value once")
        return Setting(key, choices=tuple(v))
    if not isinstance(v, dict):
        raise _bad(where, f"{toml_value(v)} is neither a range nor a list of choices",
                   "write a range { low = A, high = B } or a list of values [A, B, C]")
    extra = sorted(set(v) - RANGE_KEYS)
    if extra:
        raise _bad(where, f"unknown key '{extra[0]}' in a range", "a range has low, high, and optionally log = true or step")
    for k in ("low", "high"):
        if k not in v:
            raise _bad(where, f"a range without '{k}'", "write { low = A, high = B }")
        if not _number(v[k]):
            raise _bad(where, f"{k} = {toml_value(v[k])} is not a finite number", "write { low = A, high = B } with numbers")
    low, high, log, step = v["low"], v["high"], v.get("log", False), v.get("step")
    if not low < high:
        raise _bad(where, f"low {low:g} is not below high {high:g}", "a range needs low < high; a single value is a --set")
    if not isinstance(log, bool):
        raise _bad(where, f"log = {toml_value(log)} is not true or false", "write log = true for a log-uniform range")
    if log and low <= 0:
        raise _bad(where, f"a log range from {low:g}", "a log-uniform range needs low > 0")
    if step is not None:
        if not _number(step) or step <= 0:
            raise _bad(where, f"step = {toml_value(step)} is not a positive number", "write step = 1, say")
        if log:
            raise _bad(where, "a log range with a step", "drop step, or log")
    return Setting(key, low, high, log, step)


def _flatten(table: dict, prefix: str = "") -> list[Setting]:
    out = []
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not _is_range(v) and not set(v) & RANGE_KEYS:
            if not v:
                raise _bad(f"settings.{key}", "an empty table", "give ranges or lists of values inside it, or drop it")
            out += _flatten(v, key + ".")
        else:
            out.append(_setting(key, v))
    return out


def _trick_slot(name: str, v: Any) -> TrickSlot:
    where = f"tricks.{name}"
    if not isinstance(v, list) or not v:
        raise _bad(where, f"{toml_value(v)} is not a list of choices",
                   "write [true, false] (on or off) or [true, \"other_trick\"] (swapped)")
    for c in v:
        if not isinstance(c, (bool, str)) or c == "":
            raise _bad(where, f"{toml_value(c)} is not true, false or a trick's name",
                       "each choice: true (on), false (off) or the name of a trick to put in its place")
    if len(set(map(json.dumps, v))) != len(v):
        raise _bad(where, f"a choice is listed twice in {toml_value(v)}", "list each choice once")
    if len(v) == 1:
        raise _bad(where, f"one choice {toml_value(v)} is no choice",
                   f"give two or more; to fix it for every trial use --enable/--disable {name}")
    return TrickSlot(name, tuple(v))


def parse_space(data: dict) -> Space:
    """The space of a TOML file's ``data``, its shape checked (one line per fault, naming the key)."""
    extra = sorted(set(data) - {"settings", "tricks"})
    if extra:
        raise _bad(extra[0], "not a table of a space", "a space has [settings] and [tricks] only")
    for k in ("settings", "tricks"):
        if not isinstance(data.get(k, {}), dict):
            raise _bad(k, "is not a table", f"write [{k}] and its keys below it")
    settings = _flatten(data.get("settings", {}))
    tricks = [_trick_slot(n, v) for n, v in data.get("tricks", {}).items()]
    if not settings and not tricks:
        raise _bad("", "nothing to search: no settings and no tricks", "add a [settings] or [tricks] table")
    return Space(tuple(settings), tuple(tricks), data)


def read_space(path: str) -> Space:
    return parse_space(load_toml_file(path, "space file"))


def _arm_tricks(choice: dict[str, Any], active: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """(enabled, disabled, replaced) for a trial's trick states (name -> true, false or a
    trick's name) against the preset's ``active`` tricks."""
    enabled, disabled, replaced = [], [], {}
    for name, c in choice.items():
        on = name in active
        if c is True and not on:
            enabled.append(name)
        elif c is False and on:
            disabled.append(name)
        elif isinstance(c, str):
            if on:
                disabled.append(name)
                replaced[name] = c
            enabled.append(c)
    return enabled, disabled, replaced


def _on(section: str, active: list[str], enabled: list[str], disabled: list[str]) -> bool:
    """Whether ``section`` is a core section or that of a trick on in the arm."""
    return section in CORE_SECTIONS or (section in active or section in enabled) and section not in disabled


def check_space(space: Space, opts, base: dict) -> None:
    """Before anything trains: every trick known; every setting a key of the preset's config (or
    of a trick the space turns on) whose every value the settings' own models accept; the
    preset's value of each key inside the space. ``base``: the preset's resolved config."""
    cat = catalog()
    known = {cat.name_of(r) for r in cat.refs()}
    active = [cat.name_of(r) for r in base.get("tricks", [])]
    for slot in space.tricks:
        for name in [slot.name] + [c for c in slot.choices if isinstance(c, str)]:
            if name not in known:
                raise _bad(f"tricks.{slot.name}", f"unknown trick '{name}'", "see `hlb tricks list` for the names")
        now = slot.name in active
        if not any(c is now for c in slot.choices):
            raise _bad(f"tricks.{slot.name}", f"the preset has it {'on' if now else 'off'}, which is not a choice",
                       f"add {toml_value(now)}: the preset is the first trial")
    can = {s.name: [c for c in s.choices if c is True or isinstance(c, str)] for s in space.tricks}
    for s in space.settings:
        section = s.key.split(".")[0]
        enable = []
        if section not in CORE_SECTIONS and section not in active:
            if section not in known:
                where = "a section" if "." in s.key else "a setting (section.key)"
                raise _bad(f"settings.{s.key}", f"'{section}' is not {where} of the preset",
                           f"name data, model, train or a trick: {', '.join(active)}")
            if True not in can.get(section, []) and not any(section in v for v in can.values()):
                raise _bad(f"settings.{s.key}", f"trick '{section}' is off in the preset and the space never turns it on",
                           f"add [tricks] {section} = [false, true], or drop the key")
            enable = [section]
        for value in s.values_to_check():
            try:
                resolve(opts.preset, opts.config, [*opts.sets, f"{s.key}={toml_value(value)}"], enable)
            except HlbError as e:
                raise _bad(f"settings.{s.key}", f"{toml_value(value)}: {e.message}", e.hint) from None
        if section in CORE_SECTIONS or section in active:
            now = value_at(base, s.key, None)
            if not s.holds(now):
                raise _bad(f"settings.{s.key}", f"the preset's value {toml_value(now)} lies outside {s.describe()}",
                           "widen it to hold the preset's value: the preset is the first trial")


def _encode(v: Any) -> Any:
    """A choice as Optuna keeps it: None, bool, int, float or str (a list or table as JSON)."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v)


def _decode(s: Setting, v: Any) -> Any:
    return next(c for c in s.choices if _encode(c) == v)


def suggest(trial, space: Space, base: dict) -> tuple[list[str], list[str], dict[str, str], list[str]]:
    """Draw a trial (an Optuna trial, asked): its tricks, then the settings of the sections on
    in it. Returns (enabled, disabled, replaced, sets): ``sets`` are ``KEY=VALUE`` of the values
    that differ from the preset's."""
    cat = catalog()
    active = [cat.name_of(r) for r in base.get("tricks", [])]
    choice = {t.name: trial.suggest_categorical(TRICK_PARAM + t.name, list(t.choices)) for t in space.tricks}
    enabled, disabled, replaced = _arm_tricks(choice, active)
    sets = []
    for s in space.settings:
        if not _on(s.key.split(".")[0], active, enabled, disabled):
            continue
        if s.choices:
            value = _decode(s, trial.suggest_categorical(s.key, [_encode(c) for c in s.choices]))
        elif s.integer:
            value = trial.suggest_int(s.key, s.low, s.high, step=s.step or 1, log=s.log)
        else:
            value = trial.suggest_float(s.key, s.low, s.high, step=s.step, log=s.log)
        if not _same(value, value_at(base, s.key, None)):
            sets.append(f"{s.key}={toml_value(value)}")
    return enabled, disabled, replaced, sets


def preset_params(space: Space, base: dict) -> dict[str, Any]:
    """The preset's own values, as Optuna parameters: the first trial (``enqueue_trial``)."""
    cat = catalog()
    active = [cat.name_of(r) for r in base.get("tricks", [])]
    params: dict[str, Any] = {TRICK_PARAM + t.name: t.name in active for t in space.tricks}
    for s in space.settings:
        section = s.key.split(".")[0]
        if section in CORE_SECTIONS or section in active:
            params[s.key] = _encode(value_at(base, s.key, None))
    return params
