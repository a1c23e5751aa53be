"""``hlb ablate --vary KEY=VALUE``: arms that change settings, not tricks.

Each ``--vary`` value is one arm: the baseline's config (preset < ``--config`` < the common
``--set``) with its override(s) on top, parsed and merged by the one ``--set`` mechanism
(:func:`hlbcli.layers.parse_value`, :func:`hlbcli.layers.apply_set`). Several settings in one
arm are separated by commas outside brackets, braces and quotes, each piece ``KEY=VALUE``
(``--vary "muon.batched=true,tta.fraction=0.5"``); a comma inside a list (``[32,64,64]``) or a
quoted string stays in its value, and a value that has a comma without a ``KEY=`` after it
(``data.name=a,b``) is one bare string, as with ``--set``.

The arm is named by its settings as written (whitespace around ``=`` and ``,`` dropped):
``muon.nesterov=false``; its folder is ``set-`` and that name, characters unsafe in a file
name replaced (and then a short hash of the name added, so that two names never share one).

Before anything trains, each arm is refused (one line, exit 2) when a key names no section
of the baseline (``tricks``, an unknown section, a trick the baseline does not turn on),
when its config does not validate (an unknown key, a bad value), when a setting changes
nothing (the baseline's value already) and when two ``--vary`` make the same config. The
same value written twice is one arm (merged, like ``--disable X`` twice)."""

from __future__ import annotations

import hashlib
import json
import re

from hlbcli.errors import HlbError, UsageError
from hlbcli.config import unknown_key_message
from hlbcli.layers import check_depth, layered_sources, leaf_keys, parse_value
from hlbcli.plugins import catalog
from hlbcli.resolve import resolve_data

#: the start of one setting in a --vary value: a key, then '='
_PIECE = re.compile(r"\s*[^\s=,\[\]{}\"']+\s*=")
#: the longest folder name made from an arm's name before it is cut and hashed
MAX_FOLDER = 96
#: top-level keys of a config that are not settings: tricks change with --disable/--enable/--swap
NOT_SETTINGS = ("tricks", "replaced", "description")


def split_settings(text: str) -> list[str]:
    """``a.b=1, c.d=[1,2]`` -> ``["a.b=1", "c.d=[1,2]"]``: split at commas outside brackets,
    braces and quotes, where every piece starts with ``KEY=``; else the whole, one setting."""
    pieces, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    if len(pieces) > 1 and all(_PIECE.match(p) for p in pieces):
        return [p.strip() for p in pieces]
    return [text.strip()]


def parse_vary(word: str) -> tuple[str, list[str]]:
    """One ``--vary`` value: the arm's name and its ``KEY=VALUE`` settings (for
    :func:`hlbcli.layers.apply_set`). One line for a piece without ``=``, an empty key, a bad
    TOML list or table, a key given twice."""
    sets: list[str] = []
    keys: list[str] = []
    for piece in split_settings(word):
        key, eq, raw = piece.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq:
            raise UsageError(f"--vary {word}: no '='", "write --vary section.key=value, e.g. --vary model.depth=3")
        if not key or any(not p for p in key.split(".")):
            raise UsageError(f"--vary {word}: an empty key", "write --vary section.key=value, e.g. --vary model.depth=3")
        try:
            check_depth(parse_value(raw), f"--vary {key}")
        except UsageError as e:
            raise UsageError(f"--vary {word}: {e.message}", e.hint) from None
        same = next((k for k in keys if k == key or key.startswith(k + ".") or k.startswith(key + ".")), None)
        if same is not None:
            what = key if same == key else f"{min(same, key, key=len)} and {max(same, key, key=len)} inside it"
            raise UsageError(f"--vary {word}: sets {what} twice" if same == key else f"--vary {word}: sets {what}",
                             "one value per key in an arm; give another value its own --vary")
        keys.append(key)
        sets.append(f"{key}={raw}")
    return ",".join(sets), sets


def folder_of(name: str) -> str:
    """``set-`` and the name, each character unsafe in a file name replaced by ``_``; where
    that lost anything, or the name is long, a hash of the whole name follows."""
    safe = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)
    if safe == name and len(safe) <= MAX_FOLDER:
        return f"set-{safe}"
    return f"set-{safe[:MAX_FOLDER]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def check_sections(sets: list[str], base: dict) -> None:
    """Each key of the arm names a section of the baseline's resolved config ``base``: a core
    section or one of a trick the baseline turns on."""
    sections = [k for k, v in base.items() if isinstance(v, dict)]
    for s in sets:
        key = s.partition("=")[0]
        top = key.split(".")[0]
        if top in sections:
            continue
        if top in NOT_SETTINGS:
            raise UsageError(f"'{top}' is not a setting",
                             "--vary changes settings (section.key=value); measure tricks with --disable, --enable or --swap")
        cat = catalog()
        active = [cat.name_of(r) for r in base.get("tricks", [])]
        if top in active:
            raise UsageError(f"trick '{top}' has no settings", f"see `hlb tricks show {top}`")
        if top in {cat.name_of(r) for r in cat.refs()}:
            raise UsageError(f"trick '{top}' is not active in the baseline, so {key} would do nothing",
                             f"vary settings of data, model, train or of a trick the baseline turns on: "
                             f"{', '.join(active) or 'none'}; measure adding '{top}' with --enable {top}")
        raise UsageError(f"'{top}': {unknown_key_message(top, sections, 'section')}",
                         "see `hlb config show --preset NAME` for the sections and keys")


_MISSING = object()


def value_at(config: dict, key: str, missing=_MISSING):
    """The value at the dotted ``key`` of a config (``missing`` where there is none)."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def check_changes(name: str, sets: list[str], config: dict, base: dict) -> None:
    """Each setting of the arm changes the baseline's resolved config (``config`` is the
    arm's)."""
    for s in sets:
        key = s.partition("=")[0]
        mine, theirs = value_at(config, key), value_at(base, key)
        if mine == theirs:
            shown = "" if theirs is _MISSING else f" is already {json.dumps(theirs)}"
            raise UsageError(f"--vary {name} changes nothing: the baseline's {key}{shown}",
                             "drop it, or give a value the baseline does not have")


def check_distinct(arms: list) -> None:
    """No two ``--vary`` arms train the same config (``1e-3`` and ``0.001``, say)."""
    seen: dict[str, str] = {}
    for arm in arms:
        if not arm.sets:
            continue
        key = json.dumps(arm.config, sort_keys=True)
        if key in seen:
            raise UsageError(f"--vary {seen[key]} and --vary {arm.name} make the same arm (the same config)",
                             "keep one of them")
        seen[key] = arm.name


def resolve_arm(opts, arm):
    """The arm's config and plugin manager: ``opts.sets`` then the arm's own settings, each
    named ``--vary KEY`` in the messages about settings that would do nothing."""
    data, user = layered_sources(opts.preset, opts.config, [*opts.sets, *arm.sets])
    for s in arm.sets:
        key, _, raw = s.partition("=")
        user.update({k: f"--vary {key}" for k in leaf_keys(parse_value(raw), key)})
    return resolve_data(data, user, arm.enabled, arm.disabled + arm.silenced, replaced=arm.replaced, arm=True)


def arm_error(arm, e: HlbError) -> UsageError:
    """An arm that cannot be built, as one line naming the option that made it."""
    if arm.sets:
        return UsageError(f"--vary {arm.name}: {e.message}", e.hint)
    return UsageError(f"arm '{arm.name}' cannot be built: {e.message}", e.hint)
