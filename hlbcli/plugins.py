"""The plugin manager: block what is off, register the core and built-in tricks, load
third-party tricks from the ``hlb.tricks`` entry-point group, validate."""

from __future__ import annotations

import importlib
import re
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Iterable

import pluggy

from hlbcli import PROJECT, hookspecs
from hlbcli.catalog import ENTRY_POINT_GROUP, Catalog, builtin_tricks, catalog  # noqa: F401 (re-exported)
from hlbcli.contract import STAGES, TrickInfo
from hlbcli.blame import guard_impls, guarded, trick_files, what_it_is
from hlbcli.errors import HlbError, TrickBug, UsageError
from hlbcli import core_plugin

CORE_NAME = "core"


def known_tricks() -> list[str]:
    """Every trick that can be enabled, by the name hlb knows it by (``DIST:NAME`` where a
    name is shared: :mod:`hlbcli.catalog`), without importing any of them."""
    return catalog().refs()


def check_names(names: Iterable[str], flag: str) -> list[str]:
    """The names hlb knows ``names`` by (bare or ``DIST:NAME``); one line for an unknown one,
    or a bare name two distributions share."""
    return catalog().refs_of(names, flag)


@dataclass
class TrickManager:
    """A pluggy manager plus where each registered trick came from."""

    pm: pluggy.PluginManager
    origins: dict[str, str] = field(default_factory=dict)
    #: tricks that could not be registered (``build_manager(skip_broken=True)``): name -> why
    broken: dict[str, str] = field(default_factory=dict)
    #: what each trick uses that the contract deprecates (pluggy's warnings at registration)
    deprecated: dict[str, list[str]] = field(default_factory=dict)

    @property
    def hook(self):
        return self.pm.hook

    def trick_names(self) -> list[str]:
        return [n for n in self.origins]

    def info(self, name: str) -> TrickInfo:
        plugin = self.pm.get_plugin(name)
        fn = getattr(plugin, "hlb_trick_info", None)
        if fn is None:
            return TrickInfo(name=name, summary="(no hlb_trick_info)")
        info = guarded(fn, name, self.origins.get(name, "?"), "hlb_trick_info")()
        if info is None:
            raise TrickBug(f"trick '{name}' ({self.origins.get(name, '?')}) returned None from hlb_trick_info, where a TrickInfo is due", name)
        return info

    def files(self) -> dict[str, tuple[str, ...]]:
        """Each registered trick's source files: whose code a traceback passes through."""
        return {n: trick_files(self.pm.get_plugin(n)) for n in self.origins}

    def stages(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        hooks = {c.name for c in self.pm.get_hookcallers(plugin) or []}
        used = {hookspecs.HOOK_STAGES[h] for h in hooks if h in hookspecs.HOOK_STAGES} - {"setup"}
        return [s for s in STAGES if s in used]

    def owners(self) -> dict[str, str]:
        """First-result hook -> the trick whose implementation gives the result (``core`` where
        no trick implements it). Wrappers build on the result and own nothing."""
        out = {}
        for hook in first_result_hooks():
            impls = [i for i in getattr(self.pm.hook, hook).get_hookimpls() if not (i.wrapper or i.hookwrapper)]
            # pluggy calls the last registered (tryfirst before plain before trylast) first
            if impls:
                out[hook] = impls[-1].plugin_name
        return out

    def settings_models(self) -> dict:
        out = {}
        for name in self.origins:
            plugin = self.pm.get_plugin(name)
            fn = getattr(plugin, "hlb_config_model", None)
            result = guarded(fn, name, self.origins[name], "hlb_config_model")() if fn is not None else None
            if result is not None:
                section, model = result
                out[section] = model
        return out


def first_result_hooks() -> list[str]:
    """The hooks whose first non-None result is the only one used."""
    return [
        name for name in hookspecs.HOOK_STAGES
        if getattr(getattr(hookspecs, name), f"{PROJECT}_spec", {}).get("firstresult")
    ]


def _check_single_owner(tm: "TrickManager") -> None:
    """Two active tricks implementing one first-result hook: one result would be dropped
    without a word (the other trick stays listed as active), so it is an error."""
    for hook in first_result_hooks():
        impls = [i for i in getattr(tm.pm.hook, hook).get_hookimpls()
                 if i.plugin_name != CORE_NAME and not (i.wrapper or i.hookwrapper)]
        if len(impls) > 1:
            a, b = impls[-1].plugin_name, impls[-2].plugin_name
            raise UsageError(
                f"tricks '{a}' and '{b}' both implement {hook}, whose first result alone is used",
                f"run with --disable {b} or --disable {a}, or make one of them a wrapper (@hookimpl(wrapper=True))",
            )


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def build_manager(
    active: Iterable[str] | None = None, extra: dict[str, object] | None = None, check_relations: bool = True,
    skip_broken: bool = False,
) -> TrickManager:
    """Register the core and the tricks in ``active`` (all known tricks when None).

    Every known trick that is not active is blocked *before* anything registers, so a
    disabled trick is never imported. ``extra`` registers given plugin objects by name
    (tests, :mod:`hlbcli.testing`). ``check_relations=False`` skips the requires/conflicts
    check (listing tricks is not running them together).
    """
    pm = new_plugin_manager()
    cat = catalog()
    known = cat.refs()
    extra = dict(extra or {})
    want = known + [n for n in extra if n not in known] if active is None else cat.refs_of(active, "", extra)
    if active is not None and check_relations:
        _check_one_per_name(cat, want)
    for n in known:
        if n not in want:
            pm.set_blocked(n)
    tm = TrickManager(pm)
    pm.register(core_plugin, name=CORE_NAME)
    for name in want:
        try:
            _load_and_register(tm, name, extra, cat)
        except HlbError as e:
            if not skip_broken:
                raise
            tm.broken[name] = e.message
            tm.origins.pop(name, None)
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as e:
            name = pm.get_name(e.plugin) or "?"
            err = UsageError(
                f"trick '{name}' ({tm.origins.get(name, '?')}) implements a hook hlb does not have: {_one_line(e)}",
                f"update the trick for this hlb version, or run with --disable {name}",
            )
            if not skip_broken or name not in tm.origins:
                raise err from None
            tm.broken[name] = err.message
            tm.origins.pop(name)
            pm.unregister(e.plugin)
    if active is not None and check_relations:
        _check_relations(tm)
        _check_single_owner(tm)
    return tm


def _one_line(e: Exception) -> str:
    """pluggy's validation messages span lines and quote module reprs: make them one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Plugin "):
        lines = lines[1:]
    return re.sub(r" in plugin <[^>]*>", "", "; ".join(lines))


def _load_and_register(tm: TrickManager, name: str, extra: dict, cat: Catalog) -> None:
    if name in extra:
        _register(tm, extra[name], name, "given", name)
        return
    entry = cat.entries[name]
    if entry.builtin:
        _register(tm, importlib.import_module(entry.target), name, entry.origin, entry.name)
        return
    try:
        module = entry.target.load()
    except (Exception, SystemExit) as e:  # the third party's import error, whatever it is
        why = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else f"{e.__class__.__name__}: {e}"
        raise UsageError(
            f"trick '{name}' from {entry.origin} failed to import: {why}",
            f"fix or uninstall that distribution, or run with --disable {name}",
        ) from None
    if not callable(getattr(module, "hlb_trick_info", None)):  # the entry point names something else
        raise UsageError(
            f"trick '{name}' from {entry.origin}: its entry point {entry.target.value} is {what_it_is(module)}, "
            "not a trick (a module or class with hlb_trick_info)",
            f"point the {ENTRY_POINT_GROUP} entry point at the trick's module or class, or run with --disable {name}",
        )
    _register(tm, module, name, entry.origin, entry.name)


def _register(tm: TrickManager, plugin: object | ModuleType, name: str, origin: str, section: str) -> None:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tm.pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:
        raise UsageError(
            f"trick '{name}' ({origin}) does not match the hook contract: {_one_line(e)}",
            f"update the trick for this hlb version, or run with --disable {name}",
        ) from None
    except ValueError as e:
        raise UsageError(f"trick '{name}' ({origin}) could not register: {e}", f"run with --disable {name}") from None
    for w in caught:  # kept for hlb tricks list, and warned on as pluggy warned (the filters decide)
        if issubclass(w.category, DeprecationWarning):
            tm.deprecated.setdefault(name, []).append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    tm.origins[name] = origin
    guard_impls(tm.pm, plugin, name, origin)
    info = tm.info(name)
    if info.name != section:
        raise UsageError(
            f"trick registered as '{section}' ({origin}) calls itself '{info.name}'",
            "make the entry-point name and hlb_trick_info's name agree",
        )


def _check_one_per_name(cat: Catalog, refs: list[str]) -> None:
    """Two active tricks of one name would share its settings section: an error naming both."""
    seen: dict[str, str] = {}
    for ref in refs:
        name = cat.name_of(ref)
        if name in seen:
            a, b = seen[name], ref
            origin = {r: cat.entries[r].origin if r in cat.entries else "given" for r in (a, b)}
            raise UsageError(
                f"tricks '{a}' ({origin[a]}) and '{b}' ({origin[b]}) are both named '{name}' and cannot both be active "
                f"(one settings section [{name}])",
                f"run with --disable {a} or --disable {b}",
            )
        seen[name] = ref


def replaces_of(refs: Iterable[str], extra: dict[str, object] | None = None) -> dict[str, tuple[str, ...]]:
    """What each of ``refs`` declares it replaces (``TrickInfo.replaces``, trick names): only
    those tricks are imported."""
    refs = list(refs)
    if not refs:
        return {}
    tm = build_manager(refs, extra=extra, check_relations=False)
    return {r: tuple(getattr(tm.info(r), "replaces", ())) for r in refs}


def _check_relations(tm: TrickManager) -> None:
    """``requires``/``conflicts`` name tricks by their names (sections), whichever their origin."""
    active = {tm.info(n).name for n in tm.origins}
    for name in tm.origins:
        info = tm.info(name)
        for need in getattr(info, "requires", ()):
            if need not in active:
                raise UsageError(f"trick '{name}' needs trick '{need}'", f"add --enable {need} or --disable {name}")
        for other in getattr(info, "conflicts", ()):
            if other in active:
                raise UsageError(f"tricks '{name}' and '{other}' conflict", f"add --disable {other} or --disable {name}")
