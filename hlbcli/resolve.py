"""Resolve a config and its plugin manager from the command line's words: the first of the run
levels (resolve a config -> open a :class:`~hlbcli.session.Session` once per process -> run a seed
(:mod:`hlbcli.run`) -> the step (:mod:`hlbcli.step`))."""

from __future__ import annotations

from typing import Any, Iterable

from hlbcli.config import validate
from hlbcli.layers import active_tricks, check_inactive_sections, check_overridden, layered_sources
from hlbcli.errors import UsageError
from hlbcli.plugins import TrickManager, build_manager, check_names, known_tricks


def resolve(
    preset: str,
    config_file: str | None = None,
    sets: Iterable[str] = (),
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    extra: dict[str, object] | None = None,
) -> tuple[Any, TrickManager]:
    """preset < --config FILE < --set; then the active tricks (preset list + --enable -
    --disable) are registered, each contributing its settings section, and the whole is
    validated."""
    enable, disable = list(enable), list(disable)
    extra = extra or {}
    both = [n for n in enable if n in disable]
    if both:
        raise UsageError(f"--enable {both[0]} and --disable {both[0]} contradict each other", "keep one of them")
    check_names([n for n in enable if n not in extra], "--enable")
    check_names([n for n in disable if n not in extra], "--disable")
    data, user = layered_sources(preset, config_file, list(sets))
    return resolve_data(data, user, enable, disable, extra)


def resolve_data(
    data: dict,
    user: dict[str, str] | None = None,
    enable: Iterable[str] = (),
    disable: Iterable[str] = (),
    extra: dict[str, object] | None = None,
) -> tuple[Any, TrickManager]:
    """:func:`resolve` from the merged settings themselves: also how a resolved config
    (a run record's ``config``, what the Ray backend sends its workers) becomes a config and
    a plugin manager again, in another process or on another machine. ``user`` maps each
    top-level key the user wrote to where (for the message about inactive sections)."""
    import copy

    data, user = copy.deepcopy(data), dict(user or {})
    enable, disable = list(enable), list(disable)
    extra = extra or {}
    active = active_tricks(data, enable, disable)
    check_names([n for n in active if n not in extra], "the tricks list")
    inactive = (set(known_tricks()) | set(extra)) - set(active)
    check_inactive_sections(user, inactive, disable)
    tm = build_manager(active, extra=extra)
    check_overridden(user, {k: n for n in tm.trick_names() for k in getattr(tm.info(n), "overrides", ())})
    data["tricks"] = active
    cfg = validate(data, tm.settings_models(), inactive)
    return cfg, tm
