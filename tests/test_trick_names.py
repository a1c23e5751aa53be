"""Trick names: a name shared by two tricks (a built-in and a distribution's, or two
distributions') is never dropped, qualified names ``DIST:NAME`` pick one; a trick that declares
``replaces``, and ``hlb ablate --swap OLD=NEW``.

The fast part registers test tricks as built-ins (in-process); the clashes need installed
distributions: two tiny ones, pip-installed once into a venv for this module (as in
test_third_party)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from conftest import pip_venv, set_args, tiny_sets, write_distribution
from hlbcli import catalog as catalogs
from hlbcli import hookimpl, testing
from hlbcli.config import to_dict
from hlbcli.contract import ORDER_MIXING, Transform, TrickInfo, trick
from hlbcli.errors import UsageError
from hlbcli.experiments.plan import AblateOptions, Arm, plan_arms, plan_battery
from hlbcli.resolve import resolve, resolve_data

SMOKE = ["whitening", "dirac", "noisy_bn", "bias_lr", "label_smoothing", "flip", "translate", "ema", "tta"]
FAST = tiny_sets("data.synthetic_train=128", "data.synthetic_test=64", "train.epochs=1")


def _identity_forward(model, cfg):
    return model


def install(monkeypatch, name: str, replaces: tuple[str, ...] = (), **hooks) -> None:
    """``name`` as a built-in trick for this test: ``trick()``'s info plus the given hooks."""
    import hlb_plugins

    mod = types.ModuleType(f"hlb_test_names_{name}")
    mod.hlb_trick_info, mod.hlb_config_model = trick(name, f"test trick {name}", replaces=replaces)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(hlb_plugins.BUILTINS, name, mod.__name__)


@pytest.fixture
def mytta(monkeypatch):
    """``mytta``: its own hlb_eval_forward, declared to replace tta; ``othertta``: the same,
    undeclared."""
    install(monkeypatch, "mytta", replaces=("tta",), hlb_eval_forward=_identity_forward)
    install(monkeypatch, "othertta", hlb_eval_forward=_identity_forward)


def one_line(code: int, err: str, want: int = 2) -> str:
    assert code == want, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, err
    return lines[0]


# --- replaces and --swap (in-process) ----------------------------------------------------------


def test_trick_info_declares_replaces():
    info, _ = trick("x", "y", replaces=["tta"])
    assert info().replaces == ("tta",) and TrickInfo("a", "b").replaces == ()


def test_enable_of_a_replacing_trick_turns_the_replaced_one_off(mytta):
    cfg, tm = resolve("smoke", enable=["mytta"])
    assert "tta" not in tm.trick_names() and "mytta" in tm.trick_names()
    assert cfg.replaced == {"tta": "mytta"} and to_dict(cfg)["replaced"] == {"tta": "mytta"}
    assert tm.owners()["hlb_eval_forward"] == "mytta"
    # the resolved config reads back as itself (an arm's config.json, a Ray worker)
    again, tm2 = resolve_data(to_dict(cfg))
    assert to_dict(again) == to_dict(cfg) and tm2.trick_names() == tm.trick_names()
    # nothing replaced: no key at all (records and configs as before)
    assert "replaced" not in to_dict(resolve("smoke")[0])
    # a trick that does not declare it clashes on the first-result hook, as before
    with pytest.raises(UsageError, match="both implement hlb_eval_forward"):
        resolve("smoke", enable=["othertta"])
    # where tta is off anyway, nothing is replaced
    cfg, _ = resolve("smoke", enable=["mytta"], disable=["tta"])
    assert cfg.replaced == {}


def test_plan_arms_swaps(mytta):
    arms = plan_arms(SMOKE, ["ema"], [], False, [("tta", "othertta")])
    assert [a.name for a in arms] == ["baseline", "-ema", "tta->othertta"]
    swap = arms[-1]
    assert (swap.disabled, swap.enabled, swap.replaced) == (["tta"], ["othertta"], {"tta": "othertta"})
    assert swap.folder == "no-tta_with-othertta" and arms[0].silenced == ["othertta"]
    # --enable of a trick that declares it replaces an active one is that swap (one arm)
    arms = plan_arms(SMOKE, [], ["mytta"], False, [("tta", "mytta")], {"tta": "mytta"})
    assert [a.name for a in arms] == ["baseline", "tta->mytta"]
    assert Arm("x->hlb-y:z", ["x"], ["hlb-y:z"]).folder == "no-x_with-hlb-y_z"


@pytest.mark.parametrize("swap,needle", [
    ("tta", "--swap tta: not OLD=NEW"),
    ("tta=nope", "unknown trick 'nope' in --swap"),
    ("nope=mytta", "unknown trick 'nope' in --swap"),
    ("tta=tta", "--swap tta=tta: a trick cannot replace itself"),
    ("tta=builtin:tta", "a trick cannot replace itself"),
    ("cutmix=mytta", "the preset does not turn 'cutmix' on, so there is nothing to replace"),
    ("tta=ema", "the preset already turns 'ema' on"),
])
def test_bad_swaps_are_one_line_exit_2(cli, mytta, swap, needle):
    code, out, err = cli("ablate", "--preset", "smoke", "--swap", swap, "--dry-run")
    assert needle in one_line(code, err)
    code, out, err = cli("tricks", "list", "--preset", "smoke", "--swap", swap)
    assert needle in one_line(code, err)


def test_ablate_dry_run_with_swap_and_replacing_enable(cli, mytta):
    code, out, err = cli("ablate", "--preset", "smoke", "--swap", "tta=othertta", "--enable", "mytta", "--dry-run")
    assert code == 0, err
    lines = {ln.split("\t")[0]: ln.split("\t") for ln in out.strip().splitlines()}
    assert list(lines) == ["baseline", "tta->mytta", "tta->othertta"]
    _, cmd, tricks = lines["tta->othertta"]
    assert "arms/no-tta_with-othertta/config.json" in cmd
    names = tricks.removeprefix("tricks: ").split(", ")
    assert "othertta" in names and "tta" not in names and "mytta" not in names
    arms = plan_battery(AblateOptions(preset="smoke", swap=["tta=othertta"], enable=["mytta"]))
    assert [a.config.get("replaced") for a in arms] == [None, {"tta": "mytta"}, {"tta": "othertta"}]


def test_tricks_list_shows_the_owners_of_the_combination(cli, mytta):
    def owners(*flags):
        code, out, err = cli("tricks", "list", "--preset", "smoke", *flags)
        assert code == 0, err
        head, _, rest = out.partition("first-result hooks in smoke")
        rows = {ln.split()[0]: ln.split()[-1] for ln in head.splitlines()[1:] if ln.strip()}
        return rest.splitlines()[0], dict(ln.split() for ln in rest.splitlines()[1:] if ln.strip()), rows

    _, own, rows = owners()
    assert own["hlb_eval_forward"] == "tta" and rows["tta"] == "on" and rows["mytta"] == "off"
    head, own, rows = owners("--swap", "tta=othertta")
    assert own["hlb_eval_forward"] == "othertta" and rows["tta"] == "off" and rows["othertta"] == "on"
    assert "--swap tta=othertta" in head and "othertta in the place of tta" in head
    _, own, _ = owners("--enable", "mytta", "--disable", "ema")
    assert own["hlb_eval_forward"] == "mytta"
    code, _, err = cli("tricks", "list", "--swap", "tta=mytta")
    assert "need --preset" in one_line(code, err)


def test_swap_arm_on_the_ray_backend_worker(mytta, tmp_path):
    """What a Ray task does with a swap arm (in-process): its config resolves to the same
    tricks, and its records say what replaced what."""
    from hlbcli.experiments import ray_backend
    import hlbcli

    opts = AblateOptions(preset="smoke", swap=["tta=othertta"], sets=FAST, runs=1, backend="ray")
    arm = plan_battery(opts)[1]
    task = {"config": arm.config, "seeds": [0], "device": "cpu", "data_dir": None, "download": False,
            "threads": None, "hlb_version": hlbcli.__version__, "trick_sources": arm.sources, "arm": arm.name}
    msgs = list(ray_backend.train_block(task))
    ray_backend._LAST.clear()
    assert [m["kind"] for m in msgs] == ["start", "run"], msgs
    rec = msgs[1]["record"]
    assert rec["status"] == "completed" and rec["config"]["replaced"] == {"tta": "othertta"}
    assert "othertta" in rec["tricks"] and "tta" not in rec["tricks"]


# --- names, in-process (a fake distribution's entry points) -----------------------------------


class _Dist:
    def __init__(self, name: str):
        self.metadata, self.version = {"Name": name}, "9.9"


def _fake_eps(monkeypatch, *pairs):
    import importlib.metadata as md

    eps = [md.EntryPoint(name, f"mod_{dist}_{name}", catalogs.ENTRY_POINT_GROUP)._for(_Dist(dist)) for dist, name in pairs]
    monkeypatch.setattr(catalogs, "third_party_entry_points", lambda: eps)
    monkeypatch.setattr(catalogs, "_said", set())


def test_catalog_names_both_and_qualifies_the_other(monkeypatch, capsys):
    _fake_eps(monkeypatch, ("hlb-Alpha", "tta"), ("hlb-alpha", "solo"), ("hlb_alpha", "both"), ("hlb.beta", "both"))
    cat = catalogs.catalog()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: trick name 'tta' is both built-in (hlbcli) and in hlb-Alpha 9.9: --enable tta (and a preset's 'tta') trains the "
        "built-in one; write hlb-alpha:tta for the other",
        "warning: trick name 'both' is in both hlb_alpha 9.9 and hlb.beta 9.9: write hlb-alpha:both or hlb-beta:both "
        "(a bare 'both' is an error)",
    ]
    catalogs.catalog()
    assert capsys.readouterr().err == ""  # once per process
    assert cat.lookup("tta").builtin and cat.lookup("builtin:tta").ref == "tta"
    assert cat.lookup("HLB_alpha:tta").ref == "hlb-alpha:tta" and cat.lookup("hlb-alpha:solo").ref == "solo"
    assert {"tta", "hlb-alpha:tta", "solo", "hlb-alpha:both", "hlb-beta:both"} <= set(cat.refs())
    with pytest.raises(UsageError, match="trick name 'both' in --enable is ambiguous") as e:
        cat.lookup("both", "--enable")
    assert "write hlb-alpha:both or hlb-beta:both" in e.value.hint
    with pytest.raises(UsageError, match="unknown trick 'hlb-beta:tta'"):
        cat.lookup("hlb-beta:tta")


# --- installed distributions ------------------------------------------------------------------


ALPHA = {
    # a trick named like a built-in, with settings of its own
    "tta": """
        from pydantic import Field
        from hlbcli import hookimpl
        from hlbcli.config import Settings
        from hlbcli.contract import trick

        class AlphaTta(Settings):
            views: int = Field(1, ge=1, description="views")

        hlb_trick_info, hlb_config_model = trick("tta", "alpha's tta", AlphaTta)

        @hookimpl
        def hlb_eval_forward(model, cfg):
            return model
    """,
    "shared": """
        from hlbcli.contract import trick
        hlb_trick_info, hlb_config_model = trick("shared", "alpha's shared")
    """,
    "mytta": """
        from hlbcli import hookimpl
        from hlbcli.contract import trick
        hlb_trick_info, hlb_config_model = trick("mytta", "an evaluation of its own", replaces=("tta",))

        @hookimpl
        def hlb_eval_forward(model, cfg):
            return model
    """,
}
BETA = {
    "shared": """
        from hlbcli.contract import trick
        hlb_trick_info, hlb_config_model = trick("shared", "beta's shared")
    """,
}


def _write_dist(root: Path, dist: str, package: str, tricks: dict[str, str]) -> Path:
    return write_distribution(root / dist, dist, package, tricks, {name: f"{package}.{name}" for name in tricks})


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv with hlb-alpha and hlb-beta installed by pip (one pip call); returns a runner of
    `python -m hlbcli.cli` in it."""
    root = tmp_path_factory.mktemp("trick_names")
    return pip_venv(root, [_write_dist(root, "hlb-alpha", "hlbx_alpha", ALPHA), _write_dist(root, "hlb-beta", "hlbx_beta", BETA)])


WARN_TTA = ("warning: trick name 'tta' is both built-in (hlbcli) and in hlb-alpha 0.1.0: --enable tta (and a preset's 'tta') trains the "
            "built-in one; write hlb-alpha:tta for the other")
WARN_SHARED = ("warning: trick name 'shared' is in both hlb-alpha 0.1.0 and hlb-beta 0.1.0: "
               "write hlb-alpha:shared or hlb-beta:shared (a bare 'shared' is an error)")


def test_list_shows_both_with_origins_and_warns(venv):
    r = venv("tricks", "list", "--preset", "smoke")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [WARN_TTA, WARN_SHARED]
    rows = {ln.split()[0]: ln for ln in r.stdout.split("first-result")[0].splitlines()[1:] if ln.strip()}
    assert "built-in" in rows["tta"] and rows["tta"].split()[-1] == "on"
    assert "alpha's tta" in rows["hlb-alpha:tta"] and rows["hlb-alpha:tta"].split()[-3:] == ["hlb-alpha", "0.1.0", "off"]
    assert "alpha's shared" in rows["hlb-alpha:shared"] and "beta's shared" in rows["hlb-beta:shared"]
    assert "shared" not in rows and "mytta" in rows


def test_every_command_that_loads_tricks_warns_once(venv, tmp_path):
    for args in (["config", "show", "--preset", "smoke"], ["tricks", "show", "tta"],
                 ["ablate", "--preset", "smoke", "--disable", "ema", "--dry-run"]):
        r = venv(*args)
        assert r.returncode == 0, r.stderr
        assert [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")] == [WARN_TTA, WARN_SHARED], args


def test_bare_name_means_the_builtin_and_qualified_names_pick(venv):
    r = venv("tricks", "show", "tta")
    assert r.returncode == 0 and "origin: built-in" in r.stdout and "level" in r.stdout
    for name in ("hlb-alpha:tta", "HLB_Alpha:tta"):
        r = venv("tricks", "show", name)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("hlb-alpha:tta: alpha's tta") and "origin: hlb-alpha 0.1.0" in r.stdout
        assert "views: int (>= 1) = 1" in r.stdout
    r = venv("tricks", "show", "builtin:tta")
    assert r.returncode == 0 and "origin: built-in" in r.stdout


def test_bare_name_of_two_distributions_is_an_error(venv):
    for args in (["train", "--preset", "smoke", "--enable", "shared"], ["tricks", "show", "shared"],
                 ["ablate", "--preset", "smoke", "--enable", "shared", "--dry-run"]):
        r = venv(*args)
        line = one_line(r.returncode, r.stderr)
        assert "trick name 'shared'" in line and "is ambiguous" in line, args
        assert "hlb-alpha 0.1.0 and hlb-beta 0.1.0" in line and "write hlb-alpha:shared or hlb-beta:shared" in line


def test_two_tricks_of_one_name_cannot_both_be_active(venv):
    r = venv("config", "show", "--preset", "smoke", "--enable", "hlb-alpha:tta")
    line = one_line(r.returncode, r.stderr)
    assert "tricks 'tta' (built-in) and 'hlb-alpha:tta' (hlb-alpha 0.1.0) are both named 'tta'" in line
    assert "--disable tta" in line
    r = venv("config", "show", "--preset", "smoke", "--enable", "hlb-alpha:shared", "--enable", "hlb-beta:shared")
    assert "'hlb-alpha:shared' (hlb-alpha 0.1.0) and 'hlb-beta:shared' (hlb-beta 0.1.0)" in one_line(r.returncode, r.stderr)


def test_qualified_name_in_a_preset_and_in_a_run(venv, tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('tricks = ["flip", "hlb-beta:shared"]\n')
    r = venv("config", "show", "--preset", preset, "--enable", "hlb-alpha:tta", "--set", "tta.views=3")
    assert r.returncode == 0, r.stderr
    assert 'tricks = ["flip", "hlb-beta:shared", "hlb-alpha:tta"]' in r.stdout and "views = 3" in r.stdout
    r = venv("train", "--preset", "smoke", "--disable", "builtin:tta", "--enable", "hlb-alpha:tta",
             *set_args(FAST), "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "run" / "summary.json").read_text())["runs"][0]
    assert rec["status"] == "completed" and rec["tricks"][-1] == "hlb-alpha:tta"
    assert rec["trick_sources"]["hlb-alpha:tta"] == "hlb-alpha 0.1.0" and rec["config"]["tta"] == {"views": 1}


def test_swap_ablation_on_the_local_backend(venv, tmp_path):
    """--enable of a trick declaring replaces=("tta",) and --swap tta=hlb-alpha:tta: two swap
    arms trained for real with the baseline's seeds; their records say what replaced what."""
    out = tmp_path / "ab"
    r = venv("ablate", "--preset", "smoke", "--enable", "mytta", "--swap", "tta=hlb-alpha:tta", "--runs", "1",
             *set_args(FAST), "--out", out, "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert [a["name"] for a in s["arms"]] == ["baseline", "tta->mytta", "tta->hlb-alpha:tta"]
    assert [a["replaced"] for a in s["arms"]] == [{}, {"tta": "mytta"}, {"tta": "hlb-alpha:tta"}]
    assert [a["dir"] for a in s["arms"]] == ["arms/baseline", "arms/no-tta_with-mytta", "arms/no-tta_with-hlb-alpha_tta"]
    for arm, new in zip(s["arms"][1:], ["mytta", "hlb-alpha:tta"]):
        (rec,) = arm["runs"]
        assert rec["status"] == "completed" and rec["seed"] == s["arms"][0]["runs"][0]["seed"]
        assert rec["config"]["replaced"] == {"tta": new} and new in rec["tricks"] and "tta" not in rec["tricks"]
    assert "replaced" not in s["arms"][0]["runs"][0]["config"]


# --- where a shared name bites: a setting of the other, two transforms on one order slot ----------


MUON_FAKE = """
from pydantic import Field
from hlbcli.config import Settings
from hlbcli.contract import trick

class Theirs(Settings):
    spectral: bool = Field(False, description="a setting the built-in muon lacks")

hlb_trick_info, hlb_config_model = trick("muon", "a third party's muon", Theirs)
"""


def test_a_setting_of_the_other_namesake_says_whose_it_is(monkeypatch):
    mod = types.ModuleType("mod_hlb_theirs_muon")
    exec(MUON_FAKE, mod.__dict__)
    monkeypatch.setitem(sys.modules, "mod_hlb_theirs_muon", mod)
    _fake_eps(monkeypatch, ("hlb_theirs", "muon"))
    with pytest.raises(UsageError) as e:
        resolve("smoke", sets=tiny_sets("muon.spectral=true"), enable=["muon"])
    line = e.value.line()
    assert "muon.spectral: a setting of hlb-theirs:muon (hlb_theirs 9.9), not of the 'muon' that is active (muon, built-in)" in line
    assert "write --enable hlb-theirs:muon" in line
    # a key neither has stays the plain unknown-key error
    with pytest.raises(UsageError, match="unknown key"):
        resolve("smoke", sets=tiny_sets("muon.nonesuch=1"), enable=["muon"])


def _at(name: str, order: int):
    class At:
        hlb_trick_info, hlb_config_model = trick(name, f"a transform at order {order}")

        @hookimpl
        def hlb_batch_transforms(self):
            return [Transform(name, lambda x, y: (x, y), level="batch", order=order)]

    return At()


@pytest.mark.parametrize("listed", [("zeta", "alpha"), ("alpha", "zeta")])
def test_two_transforms_on_one_order_slot_run_by_name_and_are_said(listed, capsys, monkeypatch):
    import hlbcli.run as run_mod

    monkeypatch.setattr(run_mod, "_TIES_SAID", set())
    cfg, tm = testing.resolve_config(*[_at(n, ORDER_MIXING) for n in listed], disable=["flip", "translate"])
    plan = testing.plan(testing.session(cfg, tm))
    assert [t.name for t in plan.transforms] == ["alpha", "zeta"]
    err = capsys.readouterr().err
    assert f"note: transforms 'alpha', 'zeta' share order {ORDER_MIXING}: they run in that order (ties go by name)" in err
    testing.plan(testing.session(cfg, tm))
    assert "share order" not in capsys.readouterr().err  # once per process
