"""Resolve a config and its plugin manager from the command line's words: the first of the run
levels (resolve a config -> open a :class:`~hlbcli.session.Session` once per process -> run a seed
(:mod:`hlbcli.run`) -> the step (:mod:`hlbcli.step`))."""

from __future__ import annotations

import math
from typing import Any, Iterable

from hlbcli.config import validate
from hlbcli.layers import active_tricks, check_inactive_sections, check_overridden, layered_sources
from hlbcli.errors import ConfigError, HlbError, UsageError
from hlbcli.plugins import TrickManager, build_manager, catalog, check_names, replaces_of


def resolve(
    preset: str,
    config_file: str | None = None,
    sets: Iterable[str] = (),
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    extra: dict[str, object] | None = None,
    replaced: dict[str, str] | None = None,
    only_on: bool = False,
    arm: bool = False,
) -> tuple[Any, TrickManager]:
    """preset < --config FILE < --set; then the active tricks (preset list + --enable -
    --disable, each key of ``replaced`` swapped for its value) are registered, each
    contributing its settings section, and the whole is validated. ``only_on`` (``hlb train``,
    ``hlb bench``): a ``--disable`` of a trick that is not on is refused (:func:`check_disable`).
    ``arm`` (an ablation arm): the ``--set``s are every arm's, so a key that a trick ``enable``
    turns on sets itself is accepted (:func:`~hlbcli.layers.check_overridden`)."""
    enable, disable = list(enable), list(disable)
    extra = extra or {}
    on = check_names([n for n in enable if n not in extra], "--enable")
    off = check_names([n for n in disable if n not in extra], "--disable")
    data, user = layered_sources(preset, config_file, list(sets))
    if only_on:
        check_disable(catalog().refs_of(active_tricks(data, on, []), "the tricks list", extra), off, "drop --disable {name}")
    return resolve_data(data, user, enable, disable, extra, replaced, arm)


def check_disable(active: list[str], disable: Iterable[str], fix: str) -> None:
    """Each ``--disable`` name is a trick of ``active`` (the preset's, with ``--enable``): one
    line for the first that is not, nothing to take away (``fix``: what to do, ``{name}`` in it)."""
    for name in disable:
        if name not in active:
            raise UsageError(
                f"--disable {name}: the preset does not turn '{name}' on, so there is nothing to take away",
                f"active tricks: {', '.join(active) or 'none'}; {fix.format(name=name)}",
            )


def resolve_data(
    data: dict,
    user: dict[str, str] | None = None,
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    extra: dict[str, object] | None = None,
    replaced: dict[str, str] | None = None,
    arm: bool = False,
) -> tuple[Any, TrickManager]:
    """:func:`resolve` from the merged settings themselves: also how a resolved config
    (a run record's ``config``, what the Ray backend sends its workers) becomes a config and
    a plugin manager again, in another process or on another machine. ``user`` maps each
    top-level key the user wrote to where (for the message about inactive sections)."""
    import copy

    data, user = copy.deepcopy(data), dict(user or {})
    extra = extra or {}
    active, replaced, off = choose_tricks(data, enable, disable, replaced, extra)
    cat = catalog()
    inactive = ({cat.name_of(r) for r in cat.refs()} | set(extra)) - {cat.name_of(r) for r in active}
    check_inactive_sections(user, inactive, [cat.name_of(r) for r in off])
    tm = build_manager(active, extra=extra)
    spare = [cat.name_of(r) for r in cat.refs_of(enable, "--enable", extra)] + list((replaced or {}).values()) if arm else []
    check_overridden(user, {k: n for n in tm.trick_names() for k in getattr(tm.info(n), "overrides", ())}, spare)
    data["tricks"], data["replaced"] = active, replaced
    try:
        cfg = validate(data, tm.settings_models(), inactive, user)
    except ConfigError as e:
        raise _namesake_setting(e, cat, active) or e from None
    return cfg, tm


def _namesake_setting(e: ConfigError, cat, active: list[str]) -> ConfigError | None:
    """An unknown key in a section whose name two tricks share, that the active one lacks and
    the other has (``--enable muon --set muon.foo=1``, foo being a third party's ``muon``'s):
    one line saying whose setting it is and how to train that one; else None. The other trick
    is imported here, on this error's path only."""
    for where, what in e.rows:
        section, _, key = where.partition(".")
        if not what.startswith("unknown key") or section not in cat.shared or "." in key:
            continue
        mine = next((r for r in active if cat.name_of(r) == section), None)
        for other in (x.ref for x in cat.shared[section] if x.ref != mine):
            try:
                model = build_manager([other], check_relations=False).settings_models().get(section)
            except HlbError:
                continue
            if model is not None and key in model.model_fields:
                return ConfigError(
                    [(where, f"a setting of {other} ({cat.entries[other].origin}), not of the '{section}' that is "
                             f"active ({mine}, {cat.entries[mine].origin if mine in cat.entries else 'given'})")],
                    f"to train {other}, write --enable {other} (with --disable {mine} where the preset turns it on)")
    return None


def choose_tricks(
    data: dict,
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    replaced: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> tuple[list[str], dict[str, str], list[str]]:
    """The active tricks, by the names hlb knows them by (bare, or ``DIST:NAME`` where a name
    is shared): the config's ``tricks`` plus ``enable`` minus ``disable``; each key of
    ``replaced`` (and of the config's own ``replaced``) taken out and its value put in, and
    so for each trick an enabled one declares it replaces (``TrickInfo.replaces``). Returns
    them, what replaced what among them, and every trick taken out on purpose."""
    extra = extra or {}
    cat = catalog()
    listed = cat.refs_of(active_tricks(data, [], []), "the tricks list", extra)
    enable, disable = cat.refs_of(enable, "--enable", extra), cat.refs_of(disable, "--disable", extra)
    both = [n for n in enable if n in disable]
    if both:
        raise UsageError(f"--enable {both[0]} and --disable {both[0]} contradict each other", "keep one of them")
    own = data.get("replaced") or {}
    if not (isinstance(own, dict) and all(isinstance(v, str) for v in own.values())):
        raise UsageError("replaced must be a table of trick names (OLD = \"NEW\")", "drop it, or write e.g. replaced = {tta = \"mytta\"}")
    swaps: dict[str, str] = {}
    for old, new in [*own.items(), *(replaced or {}).items()]:
        o, n = cat.refs_of([old, new], "replaced", extra)
        swaps[o] = n
    on = [n for n in listed if n not in disable]
    for old, new in replaced_by(enable, on, extra).items():
        swaps.setdefault(old, new)
    off = disable + [o for o in swaps if o not in disable]
    active = active_tricks({"tricks": listed}, enable + [n for n in swaps.values() if n not in enable], off)
    return active, {o: n for o, n in swaps.items() if n in active and o not in active}, off


def replaced_by(enable: Iterable[str], on: list[str], extra: dict[str, object] | None = None) -> dict[str, str]:
    """Trick of ``on`` -> the trick of ``enable`` that declares it replaces it (by name:
    ``replaces=("tta",)`` takes the place of whichever trick named ``tta`` is on)."""
    cat = catalog()
    out: dict[str, str] = {}
    for new, names in replaces_of([e for e in enable if e not in on], extra).items():
        for old in on:
            if cat.name_of(old) in names and old != new and old not in enable:
                out.setdefault(old, new)
    return out


def parse_swaps(words: Iterable[str], flag: str = "--swap") -> list[tuple[str, str]]:
    """``OLD=NEW`` words as (OLD, NEW) by the names hlb knows them by: one line for a word
    without ``=``, an unknown name, or a trick swapped with itself."""
    cat = catalog()
    out = []
    for word in words:
        old, eq, new = (w.strip() for w in word.partition("="))
        if not (eq and old and new):
            raise UsageError(f"{flag} {word}: not OLD=NEW", f"write {flag} OLD=NEW, e.g. {flag} tta=mytta: NEW takes OLD's place")
        old, new = cat.refs_of([old, new], flag)
        if old == new:
            raise UsageError(f"{flag} {word}: a trick cannot replace itself", "name another trick after '='")
        out.append((old, new))
    return out


def check_swaps(swaps: Iterable[tuple[str, str]], active: list[str], flag: str = "--swap") -> None:
    """Each swap takes out a trick ``active`` has and puts in one it has not."""
    for old, new in swaps:
        if old not in active:
            raise UsageError(
                f"{flag} {old}={new}: the preset does not turn '{old}' on, so there is nothing to replace",
                f"active tricks: {', '.join(active) or 'none'}; use --enable {new} to measure adding it",
            )
        if new in active:
            raise UsageError(f"{flag} {old}={new}: the preset already turns '{new}' on",
                             f"use --disable {old} to measure taking '{old}' away")


def changed_settings(preset: str, config_file: str | None, sets: Iterable[str], cfg: Any) -> tuple[str, ...]:
    """The settings the user changed from the preset (``--config``, ``--set``), as
    ``key=value (preset: before)``, the furthest from the preset's value first (numbers by their
    ratio's order of magnitude, then the rest): the likeliest causes of a divergence. A key the
    preset leaves out is compared with the settings model's default."""
    user = layered_sources(preset, config_file, list(sets))[1]
    base = layered_sources(preset, None, [])[0]

    def at(data: Any, key: str) -> Any:
        for part in key.split("."):
            if not isinstance(data, dict) or part not in data:
                return None
            data = data[part]
        return data

    rows = []
    for key in user:
        section, _, name = key.partition(".")
        now = getattr(getattr(cfg, section, None), name, None) if name else None
        if now is None:
            continue
        before = at(base, key)
        if before is None:
            field = type(getattr(cfg, section)).model_fields.get(name)
            before = field.default if field is not None else None
        if before == now:
            continue
        num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (now, before))
        if num and now and before:
            far = abs(math.log10(abs(now) / abs(before)))
        else:
            far = math.inf if num else -1.0
        rows.append((far, f"{key}={now!r} (preset: {before!r})"))
    return tuple(text for _, text in sorted(rows, key=lambda r: -r[0]))
