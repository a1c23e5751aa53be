"""``hlb tricks list|show`` and ``hlb config show|presets``: what is registered and what a config
resolves to."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from hlbcli.cli_options import ConfigOpt, DisableOpt, EnableOpt, PresetOpt, SetOpt
from hlbcli.errors import HlbError

tricks_app = typer.Typer(help="The registered tricks: built-in and installed.", no_args_is_help=True)
config_app = typer.Typer(help="Resolve and show configs.", no_args_is_help=True)


@config_app.command("show")
def config_show(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    disable: Optional[List[str]] = DisableOpt,
    enable: Optional[List[str]] = EnableOpt,
) -> None:
    """Print the resolved config as TOML."""
    from hlbcli.config import to_dict
    from hlbcli.layers import dump_toml
    from hlbcli.resolve import resolve

    cfg, _ = resolve(preset, str(config) if config else None, set_ or [], enable or [], disable or [])
    typer.echo(dump_toml(to_dict(cfg)))


@config_app.command("recipe")
def config_recipe(preset: str = PresetOpt) -> None:
    """A preset's recipe on one page, top to bottom (Markdown): each stage of a run with the core's
    settings and each trick's summary, docstring and settings (docs/recipe-94.md is 94's)."""
    from hlbcli.recipe import recipe_page

    typer.echo(recipe_page(preset), nl=False)


@config_app.command("presets")
def config_presets() -> None:
    """List the presets shipped with hlb."""
    from hlbcli.layers import load_preset, preset_names

    for name in preset_names():
        desc = load_preset(name).get("description", "")
        typer.echo(f"{name:10} {desc}")


@tricks_app.command("list")
def tricks_list(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="mark the tricks this preset turns on"),
    disable: Optional[List[str]] = typer.Option(None, "--disable", "-d", help="leave a trick out (one that fails to load, say); repeatable"),
    enable: Optional[List[str]] = typer.Option(None, "--enable", "-e", help="with --preset: the preset with this trick added; repeatable"),
    swap: Optional[List[str]] = typer.Option(None, "--swap", help="with --preset: OLD=NEW, NEW in the place of OLD; repeatable"),
) -> None:
    """Every registered trick: name, stages, summary, origin, and whether the preset (with
    --enable/--disable/--swap) uses it; then the owner of each first-result hook there."""
    from rich.console import Console
    from rich.table import Table

    from hlbcli.contract_history import CONTRACT, contract_note
    from hlbcli.errors import UsageError
    from hlbcli.plugins import build_manager, check_names, known_tricks

    disable = check_names(disable or [], "--disable")
    if (enable or swap) and not preset:
        raise UsageError("--enable and --swap change a preset's tricks: they need --preset", "add --preset NAME")
    tm = build_manager([n for n in known_tricks() if n not in disable], check_relations=False, skip_broken=True)
    active, replaced = _combination(preset, disable, enable or [], swap or []) if preset else ([], {})
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ["name", "stages", "summary", "origin"] + ([f"in {preset}"] if preset else []):
        table.add_column(col, overflow="fold")
    notes = []
    for name in tm.trick_names():
        info = tm.info(name)
        note = [n for n in [contract_note(getattr(info, "contract", 0)), *tm.deprecated.get(name, [])] if n]
        notes += [f"{name} ({tm.origins[name]}): {n}" for n in note]
        row = [name + (" *" if note else ""), ",".join(tm.stages(name)), info.summary, tm.origins[name]]
        if preset:
            row.append("on" if name in active else "off")
        table.add_row(*row)
    for name, why in tm.broken.items():  # listed, marked, and the others still usable
        table.add_row(name, "-", f"BROKEN: {why}", "-", *(["-"] if preset else []))
    console = Console(highlight=False, width=200 if not sys.stdout.isatty() else None)
    console.print(table)
    if notes:  # a trick written for an older contract, or using what this one deprecates
        console.print(f"\n* written for an older trick contract (this hlb: contract {CONTRACT}):", markup=False)
        for n in notes:
            console.print(f"  {n}", markup=False)
    if preset:
        flags = [f"--{k} {v}" for k, vs in (("enable", enable), ("disable", disable), ("swap", swap)) for v in vs or []]
        where = " ".join([preset, *flags])
        swapped = "; ".join(f"{new} in the place of {old}" for old, new in replaced.items())
        try:
            owners = build_manager(active, check_relations=True).owners()
        except HlbError as e:  # two of the tricks claim one first-result hook, or one name
            console.print(f"\nfirst-result hooks in {where}: {e.line()}", markup=False)
        else:
            console.print(f"\nfirst-result hooks in {where} ({swapped + '; ' if swapped else ''}"
                          "the trick whose result is used; wrappers build on it):", markup=False)
            for hook, owner in owners.items():
                console.print(f"  {hook:22} {owner}", markup=False)


def _combination(preset: str, disable: list[str], enable: list[str], swap: list[str]) -> tuple[list[str], dict[str, str]]:
    """The tricks of ``preset`` with --enable/--disable/--swap, and what replaced what."""
    from hlbcli.errors import UsageError
    from hlbcli.layers import load_preset
    from hlbcli.resolve import check_swaps, choose_tricks, parse_swaps

    data = load_preset(preset)
    swaps = parse_swaps(swap)
    twice = [old for i, (old, _) in enumerate(swaps) if old in [o for o, _ in swaps[:i]]]
    if twice:
        raise UsageError(f"--swap {twice[0]}=...: '{twice[0]}' is swapped twice", "swap each trick once")
    listed, _, _ = choose_tricks(data, [], disable)
    check_swaps(swaps, listed)
    active, replaced, _ = choose_tricks(data, enable, disable, dict(swaps))
    return active, replaced


@tricks_app.command("show")
def tricks_show(name: str = typer.Argument(..., help="trick name, or DIST:NAME (builtin:NAME for hlb's own)")) -> None:
    """A trick's settings: type, default and meaning of each field."""
    from hlbcli.contract_history import contract_note
    from hlbcli.plugins import build_manager, check_names

    (ref,) = check_names([name], "tricks show")
    tm = build_manager([ref], check_relations=False)
    info = tm.info(ref)
    typer.echo(f"{ref}: {info.summary}")
    typer.echo(f"origin: {tm.origins[ref]}; stages: {', '.join(tm.stages(ref))}")
    if info.requires:
        typer.echo(f"requires: {', '.join(info.requires)}")
    if info.conflicts:
        typer.echo(f"conflicts with: {', '.join(info.conflicts)}")
    if getattr(info, "replaces", ()):
        typer.echo(f"replaces: {', '.join(info.replaces)} (--enable {ref} turns those off)")
    for note in [contract_note(getattr(info, "contract", 0)), *tm.deprecated.get(ref, [])]:
        if note:
            typer.echo(f"contract: {note}")
    models = tm.settings_models()
    if not models:
        typer.echo("no settings")
    for section, model in models.items():
        typer.echo(f"\n[{section}]")
        for field, f in model.model_fields.items():
            ann = _type_text(f.annotation)
            bounds = ", ".join(_bound(m) for m in f.metadata if _bound(m))
            ann += f" ({bounds})" if bounds else ""
            typer.echo(f"  {field}: {ann} = {f.default!r}  {f.description or ''}".rstrip())


def _type_text(ann: object) -> str:
    """A settings field's type for people: ``list[int]``, ``one of 'a', 'b'``, ``float``."""
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return " or ".join(_type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(a) for a in args)}]" if args else name
    if ann is type(None):
        return "None"
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _bound(meta: object) -> str:
    """``Field(ge=1)`` and friends as text (``>= 1``)."""
    for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        v = getattr(meta, attr, None)
        if v is not None:
            return f"{op} {v}"
    return ""
