"""The built-in tricks use the declared trick API and nothing else of the core, so a third
party can do whatever they do the same way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = sorted((Path(__file__).parent.parent / "plugins").glob("*.py"))
#: the trick API: hookimpl and TrickError, the settings base, the contract, the model API, the evaluation
API = {"hlbcli": {"hookimpl", "TrickError"}, "hlbcli.config": {"Settings"}, "hlbcli.contract": None, "hlbcli.model": None,
       "hlbcli.evaluation": None}


def _core_imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hlbcli":
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "hlbcli"]
    return out


@pytest.mark.parametrize("path", PLUGINS, ids=lambda p: p.stem)
def test_builtin_trick_imports_only_the_trick_api(path):
    for module, names in _core_imports(path):
        assert module in API, f"{path.name} imports {module}, which is not part of the trick API"
        allowed = API[module]
        if allowed is not None:
            assert set(names) <= allowed, f"{path.name} imports {set(names) - allowed} from {module}"


def test_the_api_modules_export_what_the_readme_names():
    import hlbcli
    import hlbcli.contract as c
    import hlbcli.model as m

    assert issubclass(hlbcli.TrickError, Exception)
    for name in ["Transform", "StepAction", "RunContext", "Dataset", "DataSpec", "CrossEntropy", "trick",
                 "sgd_hparams", "kilostep_scale"]:
        assert hasattr(c, name), name
    assert (c.ORDER_GEOMETRY, c.ORDER_COLOR, c.ORDER_OCCLUSION, c.ORDER_MIXING) == (0, 15, 20, 30)
    for name in m.__all__:
        assert hasattr(m, name), name
    assert {"batchnorms", "group_convs", "half_weights"} <= set(m.__all__)
    import hlbcli.evaluation as ev

    assert set(ev.__all__) == {"normalize", "net_input", "eval_logits", "scores", "evaluate"}
    assert all(callable(getattr(ev, name)) for name in ev.__all__)


def test_object_trick_with_trick_helpers_registers(tmp_path):
    """trick() assigned on a class works when an instance is registered (issue: 'takes 0
    positional arguments but 1 was given')."""
    from hlbcli import hookimpl, testing
    from hlbcli.config import Settings
    from hlbcli.contract import trick

    class S(Settings):
        k: int = 3

    class Obj:
        hlb_trick_info, hlb_config_model = trick("obj", "an object trick", S)

        @hookimpl
        def hlb_train_start(self, ctx):
            ctx.state["obj"] = ctx.cfg.obj.k

    cfg, tm = testing.resolve_config(Obj(), sets=["obj.k=5"])
    assert cfg.obj.k == 5 and tm.info("obj").summary == "an object trick"
    result = testing.train(cfg, tm)
    assert result["runs"][0]["status"] == "completed"


def test_each_trick_declares_its_order_and_the_old_names_warn_with_their_values():
    """The contract names order slots, not tricks (issue 32); contract 1's ORDER_FLIP ... still
    import, with a DeprecationWarning, at the values the built-ins keep."""
    import hlbcli.contract as c
    from hlb_plugins import color_jitter, cutmix, cutout, flip, translate

    assert [m.ORDER for m in (flip, translate, color_jitter, cutout, cutmix)] == [0, 10, 15, 20, 30]
    for old, value in [("ORDER_FLIP", 0), ("ORDER_TRANSLATE", 10), ("ORDER_COLOR_JITTER", 15),
                       ("ORDER_CUTOUT", 20), ("ORDER_CUTMIX", 30)]:
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use ORDER_"):
            assert getattr(c, old) == value
    with pytest.raises(AttributeError):
        c.ORDER_NOSUCH
    core = Path(c.__file__).read_text()
    for trick_name in ("FLIP", "TRANSLATE", "JITTER", "CUTOUT", "CUTMIX"):
        assert f"ORDER_{trick_name} =" not in core


CORE = Path(__file__).parent.parent / "hlbcli"
#: the modules below the experiments layer that records, statistics and pictures live in
LOW = ["record.py", "readback.py", "stats.py", "plot.py", "output.py", "claims.py"]


def _imported(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
    return mods


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_the_core_imports_no_trick(path):
    """The core knows no single trick: only the registry (``hlb_plugins.BUILTINS``, in
    catalog) names the package, imports inside functions included."""
    tricks = {m for m in _imported(path) if m.split(".")[0] == "hlb_plugins"}
    assert tricks <= ({"hlb_plugins"} if path.name == "catalog.py" else set()), f"{path.name} imports {tricks}"


@pytest.mark.parametrize("name", LOW)
def test_records_statistics_and_pictures_import_nothing_of_the_experiments_layer(name):
    up = {m for m in _imported(CORE / name) if m.startswith("hlbcli.experiments")}
    assert not up, f"hlbcli/{name} imports {up}: records, statistics and pictures sit below the experiments layer"


def test_the_core_has_no_import_circle():
    """No module of hlbcli reaches itself through hlbcli's imports, those inside functions
    included (CONTRIBUTING, "The house")."""
    mods = {str(p.relative_to(CORE.parent))[:-3].replace("/", ".").replace(".__init__", ""): p for p in CORE.rglob("*.py")}
    graph = {}
    for m, p in mods.items():
        out = set()
        for name in _imported(p):
            if name.startswith("hlbcli"):
                out.add(name if name in mods else name.rsplit(".", 1)[0] if name.rsplit(".", 1)[0] in mods else name)
        for node in ast.walk(ast.parse(p.read_text())):  # from hlbcli import record: the module hlbcli.record
            if isinstance(node, ast.ImportFrom) and node.module in ("hlbcli", "hlbcli.experiments", "hlbcli.tracking"):
                out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods}
        graph[m] = {t for t in out if t in mods and t != m and t not in ("hlbcli", "hlbcli.experiments", "hlbcli.tracking")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, "import circle: " + " -> ".join(path[path.index(t):] + [t]) if t in path else t
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
