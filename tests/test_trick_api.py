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
    assert (c.ORDER_FLIP, c.ORDER_TRANSLATE, c.ORDER_CUTOUT, c.ORDER_CUTMIX) == (0, 10, 20, 30)
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
