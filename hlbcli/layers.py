"""Layered configuration: preset < ``--config FILE`` < ``--set key=value``, as plain data (the
models that validate it are :mod:`hlbcli.config`'s): presets and config files read, ``--set``
values parsed, tables merged, what the user wrote (and where) for the messages about settings
that would do nothing, the active tricks, and what one resolved config adds, removes and changes
against another (:func:`changes`: an arm against its baseline)."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from hlbcli.config import unknown_key_message
from hlbcli.errors import ConfigError, UsageError
from hlbcli.paths import path_error

# --- TOML helpers ----------------------------------------------------------------------------


#: the deepest nesting of tables and lists a config may have (the core's is two levels)
MAX_DEPTH = 32


def check_depth(data: Any, where: str) -> None:
    """Refuse a config nested deeper than :data:`MAX_DEPTH` (counted without recursion)."""
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UsageError(f"{where} is nested more than {MAX_DEPTH} levels deep", "a config is sections of keys: flatten it")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_value(text: str) -> Any:
    """Parse a --set value as a TOML value; anything else is a plain string, except what
    looks like a list or a table (``[...]``, ``{...}``): that must be valid TOML."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except RecursionError:
        raise UsageError(f"--set value is nested more than {MAX_DEPTH} levels deep", "a config is sections of keys: flatten it") from None
    except tomllib.TOMLDecodeError:
        if text[:1] and text[0] in "[{":
            raise UsageError(
                f"{text!r} is not a valid TOML list or table",
                'quote strings inside lists, e.g. [16,"abc"]; numbers and true/false go bare',
            ) from None
        return text


def toml_value(v: Any) -> str:
    """A value as TOML writes it (what `--set KEY=VALUE` reads back)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: JSON's escapes are TOML's, plus DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    return k if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k) else toml_value(str(k))


def dump_toml(data: dict, _prefix: str = "") -> str:
    """Write a nested dict as TOML (scalars first, then one table per sub-dict)."""
    lines = [f"{_toml_key(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = "\n".join(lines)
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{_prefix}{_toml_key(k)}"
            body = dump_toml(v, name + ".")
            out += ("\n\n" if out else "") + f"[{name}]\n" + body
    return out


# --- layering --------------------------------------------------------------------------------


def preset_names() -> list[str]:
    files = resources.files("hlbcli.presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".toml"))


#: config and preset files larger than this are refused (a preset is a few KiB)
MAX_TOML_BYTES = 1 << 20


def load_toml_file(path: str | Path, what: str) -> dict:
    p = Path(path)
    try:
        p.stat()
    except OSError as e:  # a name too long, a link loop: one line naming the option
        err = path_error(e, {"config file": "--config", "preset file": "--preset"}.get(what, what), p)
        if err:
            raise err from None
    if not p.exists():
        raise UsageError(f"{what} not found: {p}", "check the path")
    if p.is_dir():
        raise UsageError(f"{what} is a directory, not a TOML file: {p}", "name a .toml file")
    if not p.is_file():  # a device (/dev/zero reads forever) or a FIFO (blocks until written)
        raise UsageError(f"{what} is not a regular file: {p}", "name a .toml file")
    if p.stat().st_size > MAX_TOML_BYTES:
        raise UsageError(f"{what} is too large for a config ({p.stat().st_size} bytes): {p}", f"a config is a TOML file under {MAX_TOML_BYTES // 1024} KiB")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} cannot be read: {p}: {e.__class__.__name__}", "check its permissions and encoding") from None
    try:
        if p.suffix == ".json":  # a resolved config hlb wrote (an ablation arm's config.json)
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object of sections")
            return data
        return tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "JSON" if p.suffix == ".json" else "TOML"
        raise UsageError(f"{what} is not valid {kind}: {p}: {e}", "fix the syntax at that line") from None
    except RecursionError:
        raise UsageError(f"{what} is nested more than {MAX_DEPTH} levels deep: {p}", "a config is sections of keys: flatten it") from None


def load_preset(name: str) -> dict:
    """A preset by name (shipped in the package) or by path to a TOML file (or to a resolved
    config as JSON, as ``hlb ablate`` writes for each arm)."""
    if name.endswith((".toml", ".json")) or "/" in name:
        return load_toml_file(name, "preset file")
    ref = resources.files("hlbcli.presets").joinpath(f"{name}.toml")
    if not ref.is_file():
        raise UsageError(unknown_key_message(name, [], f"preset '{name}'", preset_names()),
                         f"choose one of: {', '.join(preset_names())}")
    return tomllib.loads(ref.read_text(encoding="utf-8"))


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_set(data: dict, assignment: str) -> dict:
    """Apply one ``a.b=value`` override."""
    if "=" not in assignment:
        raise UsageError(f"--set {assignment!r} has no '='", "write --set section.key=value, e.g. --set train.epochs=5")
    key, _, raw = assignment.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise UsageError(f"--set {assignment!r} has an empty key", "write --set section.key=value")
    if not raw.strip():
        raise UsageError(f"--set {key}= has no value", f'write --set {key}=VALUE; an empty string is {key}=""')
    value = parse_value(raw.strip())
    check_depth(value, f"--set {key}")
    out = copy.deepcopy(data)
    node = out
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UsageError(f"--set {key}: '{p}' is a value, not a section", "set the value itself, not a key below it")
        node = nxt
    old = node.get(parts[-1])
    # a table merges into the section it names (``train={epochs=1}`` changes epochs, keeps the rest)
    node[parts[-1]] = deep_merge(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def layered(preset: str, config_file: str | None, sets: list[str]) -> dict:
    return layered_sources(preset, config_file, sets)[0]


def leaf_keys(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict's values (``train.epochs``); a list is one value."""
    if not isinstance(data, dict) or not data:
        return [prefix] if prefix else []
    return [k for key, v in data.items() for k in leaf_keys(v, f"{prefix}.{key}" if prefix else str(key))]


#: the ``--config`` file's table of trackers (:mod:`hlbcli.tracking` reads it): not a setting
#: of what a run trains, so never part of the resolved config
TRACK_SECTION = "track"


def _not_trackers(where: str) -> None:
    raise UsageError(f"{where}: trackers are not settings, and a preset or --set does not choose them",
                     f"choose them with --track NAME[:TARGET] or a [{TRACK_SECTION}] table in the --config file")


def layered_sources(preset: str, config_file: str | None, sets: list[str]) -> tuple[dict, dict[str, str]]:
    """The merged dict, and each key the user wrote (not the preset), dotted
    (``train.epochs``), with where: ``--config FILE`` or ``--set KEY``."""
    data = load_preset(preset)
    check_depth(data, f"preset {preset}")
    if TRACK_SECTION in data:
        _not_trackers(f"a [{TRACK_SECTION}] table in preset {preset}")
    user: dict[str, str] = {}
    if config_file:
        over = load_toml_file(config_file, "config file")
        over.pop(TRACK_SECTION, None)
        check_depth(over, f"config file {config_file}")
        data = deep_merge(data, over)
        user.update({k: f"--config {config_file}" for k in leaf_keys(over)})
    for s in sets:
        key = s.partition("=")[0].strip()
        if key.split(".")[0] == TRACK_SECTION:
            _not_trackers(f"--set {key}")
        data = apply_set(data, s)
        value = parse_value(s.partition("=")[2].strip())
        user.update({k: f"--set {key}" for k in leaf_keys(value, key)})
    return data, user


def check_overridden(user: dict[str, str], overrides: dict[str, str], spare: Iterable[str] = ()) -> None:
    """A key the user wrote that an active trick sets itself (``model.bn_eps`` under
    ``noisy_bn``: ``overrides`` maps it to the trick) would do nothing: an error. ``spare``:
    tricks an ablation arm turns on (``--enable``, a swap) whose overridden keys the user wrote
    for the other arms (the baseline trains with them): accepted there."""
    spare = set(spare)
    rows = [(k, f"does nothing while trick '{overrides[k]}' is active (it sets this itself; {where})")
            for k, where in user.items() if k in overrides and overrides[k] not in spare]
    if rows:
        trick = overrides[rows[0][0]]
        raise ConfigError(rows, f"set it in the [{trick}] section (see `hlb tricks show {trick}`), or add --disable {trick}")


def check_inactive_sections(user: dict[str, str], inactive: set[str], disable: list[str]) -> None:
    """A section the user wrote for a known trick that is off is an error (the setting would
    silently do nothing), unless ``--disable`` names that trick: the preset's and the user's
    settings for a trick switched off on purpose (an ablation arm) stay accepted."""
    stray: list[tuple[str, str]] = []
    for key, where in user.items():
        k = key.split(".")[0]
        if k in inactive and k not in disable and k not in {s for s, _ in stray}:
            stray.append((k, where))
    if stray:
        rows = [(k, f"trick '{k}' is not active, so {where} would do nothing") for k, where in stray]
        name = stray[0][0]
        raise ConfigError(rows, f"add --enable {name} to turn it on, or drop the setting")


def active_tricks(data: dict, enable: list[str], disable: list[str]) -> list[str]:
    """The preset's trick list plus --enable, minus --disable, in order, without repeats."""
    tricks = data.get("tricks", [])
    if not isinstance(tricks, list) or not all(isinstance(t, str) for t in tricks):
        raise ConfigError([("tricks", "must be a list of trick names")], "e.g. tricks = [\"flip\", \"ema\"]")
    out: list[str] = []
    for t in [*tricks, *enable]:
        if t not in out and t not in disable:
            out.append(t)
    return out


# --- one config against another --------------------------------------------------------------


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` as ``{"train.lr": 1}``."""
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changes(base: dict, other: dict) -> dict[str, list[str]]:
    """What the resolved config ``other`` does that ``base`` does not, in words: ``adds`` and
    ``removes`` (the tricks, each trick's settings going with it), ``sets`` (every other setting
    that differs: ``train.lr 0.2 -> 0.3``; a key only one side has: ``(absent)``)."""
    had, has = list(base.get("tricks", [])), list(other.get("tricks", []))
    gone, new = [t for t in had if t not in has], [t for t in has if t not in had]
    fb, fo = flatten(base), flatten(other)
    own = tuple(f"{t}." for t in gone + new)
    absent = object()

    def shown(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)

    sets = [f"{k} {shown(fb[k]) if k in fb else '(absent)'} -> {shown(fo[k]) if k in fo else '(absent)'}"
            for k in dict.fromkeys([*fb, *fo])
            if k != "tricks" and not k.startswith(own) and fb.get(k, absent) != fo.get(k, absent)]
    if [t for t in had if t in has] != [t for t in has if t in had]:
        sets.insert(0, f"the tricks' order: {', '.join(t for t in has if t in had)}")
    return {"adds": new, "removes": gone, "sets": sets}
