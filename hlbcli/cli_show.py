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
) -> None:
    """Every registered trick: name, stages, summary, origin, and whether the preset uses it."""
    from rich.console import Console
    from rich.table import Table

    from hlbcli.layers import load_preset
    from hlbcli.plugins import build_manager, check_names, known_tricks

    check_names(disable or [], "--disable")
    tm = build_manager([n for n in known_tricks() if n not in (disable or [])], check_relations=False, skip_broken=True)
    on = set(load_preset(preset).get("tricks", [])) if preset else None
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ["name", "stages", "summary", "origin"] + ([f"in {preset}"] if preset else []):
        table.add_column(col, overflow="fold")
    for name in tm.trick_names():
        info = tm.info(name)
        row = [name, ",".join(tm.stages(name)), info.summary, tm.origins[name]]
        if on is not None:
            row.append("on" if name in on else "off")
        table.add_row(*row)
    for name, why in tm.broken.items():  # listed, marked, and the others still usable
        table.add_row(name, "-", f"BROKEN: {why}", "-", *(["-"] if preset else []))
    console = Console(highlight=False, width=200 if not sys.stdout.isatty() else None)
    console.print(table)
    if preset:
        from hlbcli.plugins import build_manager as build

        try:
            owners = build(sorted(on or []), check_relations=True).owners()
        except HlbError as e:  # two of the preset's tricks claim one first-result hook
            console.print(f"\nfirst-result hooks in {preset}: {e.line()}", markup=False)
        else:
            console.print(f"\nfirst-result hooks in {preset} (the trick whose result is used; wrappers build on it):", markup=False)
            for hook, owner in owners.items():
                console.print(f"  {hook:22} {owner}", markup=False)


@tricks_app.command("show")
def tricks_show(name: str = typer.Argument(..., help="trick name")) -> None:
    """A trick's settings: type, default and meaning of each field."""
    from hlbcli.plugins import build_manager, check_names

    check_names([name], "tricks show")
    tm = build_manager([name], check_relations=False)
    info = tm.info(name)
    typer.echo(f"{name}: {info.summary}")
    typer.echo(f"origin: {tm.origins[name]}; stages: {', '.join(tm.stages(name))}")
    if info.requires:
        typer.echo(f"requires: {', '.join(info.requires)}")
    if info.conflicts:
        typer.echo(f"conflicts with: {', '.join(info.conflicts)}")
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
