"""The documentation tells the truth about the code: the stage table has one source
(``hlbcli.hookspecs.HOOK_STAGES``, ordered by ``hlbcli.contract.STAGES``), and every path,
preset, trick and command option the user documents exists."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TRICKS_GUIDE = ROOT / "docs" / "tricks.md"
DOCS = [README, ROOT / "CONTRIBUTING.md", TRICKS_GUIDE, ROOT / "docs" / "benchmarks.md"]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    """The body of the ``## title`` section (up to the next ``## `` heading)."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, f"no '## {title}' section"
    return m.group(1)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells, the header first (the --- row dropped)."""
    tables, current = [], []
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            if not re.fullmatch(r"\s*\|[\s\-|:]+\|\s*", line):
                current.append(_cells(line))
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def stage_tables(path: Path) -> list[list[tuple[str, list[str]]]]:
    """The tables whose columns start ``stage | hook``: (stage, hooks named in the row)."""
    out = []
    for table in _tables(_text(path)):
        header = [c.lower() for c in table[0]]
        if len(header) >= 2 and header[0] == "stage" and header[1] in ("hook", "hooks"):
            out.append([(row[0], re.findall(r"`(hlb_\w+)`", row[1])) for row in table[1:]])
    return out


# --- the stage table: one source -----------------------------------------------------------------


def _hookspec_names() -> set[str]:
    from hlbcli import PROJECT, hookspecs

    return {n for n in dir(hookspecs) if n.startswith("hlb_") and hasattr(getattr(hookspecs, n), f"{PROJECT}_spec")}


def test_hook_stages_cover_every_hookspec_in_stage_order():
    from hlbcli.contract import STAGES
    from hlbcli.hookspecs import HOOK_STAGES

    assert set(HOOK_STAGES) == _hookspec_names(), "every hookspec has a stage in HOOK_STAGES, and only those"
    assert set(HOOK_STAGES.values()) <= set(STAGES), set(HOOK_STAGES.values()) - set(STAGES)
    order = [STAGES.index(s) for s in HOOK_STAGES.values()]
    assert order == sorted(order), "HOOK_STAGES lists the hooks in the order of contract.STAGES"


def test_hookspecs_docstring_holds_no_copy_of_the_stage_table():
    import hlbcli.hookspecs as hs

    copied = re.findall(r"\bhlb_\w+", hs.__doc__ or "")
    assert not copied, f"hookspecs' module docstring names hooks {copied}: point to HOOK_STAGES instead"


@pytest.mark.parametrize("path", [README, TRICKS_GUIDE], ids=lambda p: p.name)
def test_documented_stage_tables_agree_with_hook_stages(path):
    from hlbcli.contract import STAGES
    from hlbcli.hookspecs import HOOK_STAGES

    for table in stage_tables(path):
        seen: dict[str, str] = {}
        for stage, hooks in table:
            assert hooks, f"{path.name}: a row of stage '{stage}' names no hook"
            for hook in hooks:
                assert hook not in seen, f"{path.name}: {hook} is in the stage table twice"
                seen[hook] = stage
        assert seen == HOOK_STAGES, (
            f"{path.name}'s stage table disagrees with HOOK_STAGES: "
            + ", ".join(f"{h}: {seen.get(h)} vs {HOOK_STAGES.get(h)}" for h in sorted(set(seen) | set(HOOK_STAGES))
                        if seen.get(h) != HOOK_STAGES.get(h))
        )
        order = [STAGES.index(stage) for stage, _ in table]
        assert order == sorted(order), f"{path.name}: the stage table's rows are not in contract.STAGES order"


def test_the_stage_table_is_documented_somewhere():
    assert stage_tables(README) or stage_tables(TRICKS_GUIDE), "README.md or docs/tricks.md shows the stage table"


def _declared_hooks(plugin: object) -> set[str]:
    """The hooks a plugin implements, read from its attributes (not from the plugin manager)."""
    from hlbcli import PROJECT

    return {n for n in dir(plugin) if n.startswith("hlb_") and hasattr(getattr(plugin, n), f"{PROJECT}_impl")}


def test_tricks_list_stages_follow_hook_stages(cli):
    from hlbcli.contract import STAGES
    from hlbcli.hookspecs import HOOK_STAGES
    from hlbcli.plugins import builtin_tricks

    code, out, err = cli("tricks", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["name", "stages"]
    listed = {cells[0]: cells[1] for cells in (ln.split() for ln in lines[1:]) if cells}
    for name, module in builtin_tricks().items():
        used = {HOOK_STAGES[h] for h in _declared_hooks(importlib.import_module(module))} - {"setup"}
        want = ",".join(s for s in STAGES if s in used)
        assert want, f"{name} implements no hook beyond setup"
        assert listed.get(name) == want, f"hlb tricks list: {name} has stages {listed.get(name)}, HOOK_STAGES says {want}"


# --- what the README (and the other docs) name exists ----------------------------------------------

#: paths of this repository that the docs name, in backticks or as links
PATH = re.compile(r"(?<![\w./-])((?:docs|scripts|tests|hlbcli|plugins|\.ci)/[\w./*-]*\w/?|[A-Z]+\.md)(?![\w/])")


def _named_paths(path: Path) -> list[str]:
    text = _text(path)
    found = []
    for span in re.findall(r"`([^`\n]+)`", text):
        found += PATH.findall(span)
    for link in re.findall(r"\]\(([^)#\s]+)", text):
        if "://" not in link:
            found.append(str((path.parent / link).resolve().relative_to(ROOT)))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_doc_names_exists(doc):
    assert doc.exists(), f"{doc.relative_to(ROOT)} is missing"
    named = _named_paths(doc)
    if doc == README:
        assert "docs/benchmarks.md" in named, "README points to docs/benchmarks.md"
    for p in named:
        matches = list(ROOT.glob(p.rstrip("/"))) if "*" in p else [ROOT / p]
        assert matches and all(m.exists() for m in matches), f"{doc.name} names {p}, which does not exist"


def _readme_presets() -> list[str]:
    table = next(t for t in _tables(_section(_text(README), "Presets")) if t[0][0] == "preset")
    return [re.fullmatch(r"`([^`]+)`", row[0]).group(1) for row in table[1:]]


def test_readme_presets_are_the_shipped_presets():
    shipped = sorted(p.stem for p in (ROOT / "hlbcli" / "presets").glob("*.toml"))
    assert sorted(_readme_presets()) == shipped


def test_presets_the_readme_runs_exist():
    shipped = {p.stem for p in (ROOT / "hlbcli" / "presets").glob("*.toml")}
    used = set(re.findall(r"--preset[ =]([\w.-]+)(?![\w./-])", _text(README))) - {"NAME", "P"}  # (not a file's path)
    assert used and used <= shipped, used - shipped


def test_tricks_the_readme_names_exist():
    from hlbcli.plugins import builtin_tricks

    example = re.findall(r'^(\w+) = "', _text(ROOT / "tests" / "example_trick" / "pyproject.toml"), flags=re.M)
    known = set(builtin_tricks()) | set(example)
    text = "\n".join(ln.split(" #")[0] for ln in _text(README).splitlines())  # not in comments
    named = set(re.findall(r"--(?:disable|enable)[ =]([\w-]+)", text)) - {"NAME"}
    assert named and named <= known, named - known


def _command_lines() -> list[str]:
    """The Commands section's block, continuation lines joined to their command."""
    block = re.search(r"\n((?: {4}.*\n|\n)+)", _section(_text(README), "Commands")).group(1)
    commands: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        line = line.split(" # ")[0].strip() if " # " in line else line.strip()
        if line.startswith("[") and commands:
            commands[-1] += " " + line
        else:
            commands.append(line)
    return commands


def _options(line: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line))


def _click_command(words: list[str]):
    import typer.main

    from hlbcli.cli import app

    cmd = typer.main.get_command(app)
    for w in words:
        sub = getattr(cmd, "commands", {}).get(w)
        if sub is None:
            break
        cmd = sub
    return cmd


def test_every_command_and_option_the_readme_lists_exists():
    lines = _command_lines()
    assert any(ln.startswith("hlb train") for ln in lines) and any(ln.startswith("hlb ablate") for ln in lines)
    for line in lines:
        words = shlex.split(re.sub(r"[\[\]]", " ", line))
        if words[0] == "hlb":
            cmd = _click_command(words[1:])
            assert not hasattr(cmd, "commands"), f"README: '{line}' names no hlb command"
            have = {o for p in cmd.params for o in p.opts + p.secondary_opts}
            assert _options(line) <= have, f"README: '{line}': hlb has no {sorted(_options(line) - have)}"
        elif words[:3] == ["python", "-m", "hlbcli.bench"]:
            from hlbcli import bench

            with pytest.raises(SystemExit) as done:
                bench.main([words[3], "--help"])
            assert done.value.code == 0, f"README: python -m hlbcli.bench has no '{words[3]}'"
        elif words[0] in ("python", "bash") and words[1].startswith("scripts/"):
            script = ROOT / words[1]
            assert script.exists(), f"README names {words[1]}, which does not exist"
            source = _text(script)
            for opt in _options(line):
                assert f'"{opt}"' in source, f"README: {words[1]} has no option {opt}"
        else:
            pytest.fail(f"README's Commands list a line this test does not know how to check: {line}")


def test_bench_options_the_readme_names_exist(capsys):
    from hlbcli import bench

    for line in _command_lines():
        words = line.split()
        if words[:3] == ["python", "-m", "hlbcli.bench"]:
            with pytest.raises(SystemExit):
                bench.main([words[3], "--help"])
            help_text = capsys.readouterr().out
            for opt in _options(line):
                assert opt in help_text, f"README: python -m hlbcli.bench {words[3]} has no {opt}"


def test_readme_test_command_is_what_ci_runs():
    """The first command is the fast tier (a newcomer's), the last the full suite, which CI runs."""
    block = re.search(r"```bash\n(.*?)```", _section(_text(README), "Test"), flags=re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert commands == ['python -m pytest -m "not slow"', "python -m pytest"]
    command = commands[-1]
    ci = [ln.strip() for ln in _text(ROOT / ".ci" / "run").splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1] == command, ".ci/run ends with the README's test command"


def test_readme_set_up_and_run_come_first():
    text = _text(README)
    first = re.search(r"^## (.+)$", text, flags=re.M).group(1)
    assert first == "Set up and run"
    block = re.search(r"```bash\n(.*?)```", _section(text, "Set up and run"), flags=re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert commands == ["pip install .", "hlb train --preset 94"]


# --- the guide's examples run as written ---------------------------------------------------------


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def test_the_guides_own_tracker_runs_as_written(cli, tmp_path, monkeypatch):
    """docs/trackers.md "A tracker of your own": its entry point and its class, as a third party
    would ship them, track a real ``hlb train``; what it wrote matches the run's record."""
    import importlib.metadata as md
    import json
    import tomllib

    import hlbcli.tracking as tracking

    section = _section(_text(ROOT / "docs" / "trackers.md"), "A tracker of your own")
    (toml,), (source,) = _code_blocks(section, "toml"), _code_blocks(section, "python")
    ((name, target),) = tomllib.loads(toml)["project"]["entry-points"][tracking.GROUP].items()
    module = target.split(":")[0]
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, module, raising=False)
    real = md.entry_points
    ep = md.EntryPoint(name, target, tracking.GROUP)
    monkeypatch.setattr(md, "entry_points", lambda **kw: md.EntryPoints([ep]) if kw.get("group") == tracking.GROUP else real(**kw))

    out = tmp_path / "run"
    code, _, err = cli("train", "--preset", "smoke", "-q", "--set", "train.epochs=2", "--set", "data.synthetic_train=1024",
                       "--track", name, "--out", out)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    (rec_path,) = out.glob("run-*.json")
    rec = json.loads(rec_path.read_text())
    assert [r["epoch"] for r in rows[:-1]] == [1, 2] and all(r["arm"] is None and r["seed"] == 0 for r in rows)
    assert [r["val_acc"] for r in rows[:-1]] == [e["val_acc"] for e in rec["epochs"]]
    assert rows[-1] == {"arm": None, "seed": 0, "status": "completed", "accuracy": rec["accuracy"]}


def test_the_recipe_page_of_94_is_what_the_code_generates(cli):
    """docs/recipe-94.md is ``hlb config recipe --preset 94``: one page that says what the
    preset does, top to bottom, from the preset and the tricks' docstrings, never by hand."""
    code, out, err = cli("config", "recipe", "--preset", "94")
    assert code == 0, err
    page = (ROOT / "docs" / "recipe-94.md").read_text()
    assert out == page, "docs/recipe-94.md is stale: hlb config recipe --preset 94 > docs/recipe-94.md"
    for trick in ("whitening", "flip", "ema", "tta", "label_smoothing"):
        assert f"### `{trick}`" in page
    assert page.index("### `flip`") < page.index("### `translate`") < page.index("### `whitening`") < page.index("### `tta`")
