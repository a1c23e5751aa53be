"""Third-party tricks through the `hlb.tricks` entry point, installed for real with pip into a
fresh virtual environment (that sees the packages of the environment running the tests,
hlbcli included, through a .pth file): the
example `hlb-mixup` project, and three broken distributions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import pip_venv, set_args, tiny_sets, write_distribution

EXAMPLE = Path(__file__).parent / "example_trick"
BROKEN = ["broken_import", "bad_hook", "bad_name"]
DISABLE_BROKEN = [x for n in BROKEN for x in ("--disable", n)]
# the trick API through an installed distribution: an object trick with its own optimizer
# (wrappers of hlb_param_groups and hlb_optimizer_build), hlb_validate, TrickError; a clash

BROKEN_SOURCES = {
    # the module itself fails to import
    "broken_import": 'raise ImportError("needs libfoo, which is not installed")\n',
    # a hookimpl asks for an argument its spec does not have
    "bad_hook": textwrap.dedent(
        """
        from hlbcli import hookimpl
        from hlbcli.contract import TrickInfo

        @hookimpl
        def hlb_trick_info():
            return TrickInfo("bad_hook", "asks for an argument no spec has")

        @hookimpl
        def hlb_model_init(model, ctx, strength):
            pass
        """
    ),
    # a hookimpl for a hook that does not exist
    "bad_name": textwrap.dedent(
        """
        from hlbcli import hookimpl
        from hlbcli.contract import TrickInfo

        @hookimpl
        def hlb_trick_info():
            return TrickInfo("bad_name", "implements a hook hlb does not have")

        @hookimpl
        def hlb_step_finish(ctx):
            pass
        """
    ),
}


# A distribution with two tricks, written the way the README tells a trick author to: the
# declared API only (hlbcli, hlbcli.config, hlbcli.contract, hlbcli.model).
FILTERS_SOURCE = textwrap.dedent(
    """
    import torch
    from pydantic import Field

    from hlbcli import TrickError, hookimpl
    from hlbcli.config import Settings
    from hlbcli.contract import sgd_hparams, trick
    from hlbcli.model import group_convs


    class FilterSgdSettings(Settings):
        lr_scale: float = Field(1.0, ge=0, description="lr of the conv filters, relative to the core's")
        max_width: int = Field(4096, ge=1, description="refuse nets with a wider group conv")
        fail_in_init: bool = Field(False, description="raise a TrickError when the run starts")


    class FilterSgd:
        # an object trick: the group convs' filters get an SGD of their own

        hlb_trick_info, hlb_config_model = trick("sgdfilters", "conv filters on an optimizer of their own", FilterSgdSettings)

        @hookimpl
        def hlb_validate(self, cfg, data, model):
            widest = max(c.out_channels for c in group_convs(model))
            if widest > cfg.sgdfilters.max_width:
                raise TrickError(f"sgdfilters.max_width {cfg.sgdfilters.max_width} is below the widest group conv ({widest})",
                                 f"use --set sgdfilters.max_width={widest}")

        @hookimpl
        def hlb_model_init(self, model, ctx):
            if ctx.cfg.sgdfilters.fail_in_init:
                raise TrickError("sgdfilters was told to fail", "drop --set sgdfilters.fail_in_init=true")

        @hookimpl(wrapper=True)
        def hlb_param_groups(self, model, ctx):
            groups = yield
            filters = {id(c.weight) for c in group_convs(model)}
            ctx.state["sgdfilters"] = [c.weight for c in group_convs(model)]
            out = []
            for g in groups:
                g = dict(g, params=[p for p in g["params"] if id(p) not in filters])
                if g["params"]:
                    out.append(g)
            return out

        @hookimpl(wrapper=True)
        def hlb_optimizer_build(self, cfg, ctx):
            core = yield
            lr, wd = sgd_hparams(cfg.train)
            lr *= cfg.sgdfilters.lr_scale
            own = torch.optim.SGD([dict(params=ctx.state["sgdfilters"], lr=lr, weight_decay=wd / lr if lr else 0.0,
                                        name="filters")], momentum=cfg.train.momentum, nesterov=True)
            return [core, own]


    TRICK = FilterSgd()


    class Clash:
        hlb_trick_info, hlb_config_model = trick("clash", "a second owner of hlb_param_groups")

        @hookimpl
        def hlb_param_groups(self, model):
            return [dict(params=[p for p in model.parameters() if p.requires_grad], lr=0.01, weight_decay=0.0)]


    CLASH = Clash()
    """
)


def _write_filters(root: Path) -> Path:
    return write_distribution(root / "filters", "hlb-filters", "hlbx_filters", {"__init__": FILTERS_SOURCE},
                              {"sgdfilters": "hlbx_filters:TRICK", "clash": "hlbx_filters:CLASH"})


def _dist_name(trick: str) -> str:
    return "hlb-" + trick.replace("_", "-") + "-dist"


def _write_broken(root: Path, trick: str) -> Path:
    return write_distribution(root / trick, _dist_name(trick), f"hlbx_{trick}", {"__init__": BROKEN_SOURCES[trick]},
                              {trick: f"hlbx_{trick}"}, version="1.2.3")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv with the example trick and the broken ones installed by pip; returns a runner of
    `python -m hlbcli.cli` in it."""
    root = tmp_path_factory.mktemp("third_party")
    example = root / "example_trick"  # build from a copy: the repository stays clean
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    run = pip_venv(root, [example, _write_filters(root)] + [_write_broken(root, t) for t in BROKEN])
    # installed into the venv only, not into the environment running the tests
    check = subprocess.run([sys.executable, "-m", "pip", "show", "hlb-mixup"], capture_output=True, text=True)
    assert check.returncode != 0
    return run


def test_example_trick_is_listed_with_distribution_and_version(venv):
    r = venv("tricks", "list", "--preset", "smoke", *DISABLE_BROKEN)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("mixup "))
    cells = row.split()
    assert cells[1] == "data"
    assert cells[-3:] == ["hlb-mixup", "0.2.0", "off"]
    assert "Beta(alpha, alpha)" in row
    assert "built-in" in next(line for line in r.stdout.splitlines() if line.startswith("ema "))


def test_example_trick_show(venv):
    r = venv("tricks", "show", "mixup")
    assert r.returncode == 0, r.stderr
    assert "origin: hlb-mixup 0.2.0; stages: data" in r.stdout
    assert "alpha: float (> 0) = 0.2" in r.stdout and "start_epoch: int (>= 0) = 0" in r.stdout


def test_smoke_run_with_the_example_trick(venv, tmp_path):
    r = venv("train", "--preset", "smoke", "--enable", "mixup", "--set", "mixup.alpha=0.4",
             *set_args(tiny_sets("train.epochs=1")), "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "summary.json").read_text())["runs"][0]
    assert rec["status"] == "completed"
    assert "mixup" in rec["tricks"]
    assert rec["trick_sources"]["mixup"] == "hlb-mixup 0.2.0"
    assert rec["config"]["mixup"] == {"alpha": 0.4, "start_epoch": 0}


def test_example_trick_disabled_from_a_preset_that_uses_it(venv):
    preset = venv.root / "with_mixup.toml"
    preset.write_text('tricks = ["flip", "mixup"]\n\n[mixup]\nalpha = 0.3\n')
    r = venv("config", "show", "--preset", preset, "--disable", "mixup")
    assert r.returncode == 0, r.stderr
    assert 'tricks = ["flip"]' in r.stdout and "[mixup]" not in r.stdout and "[flip]" in r.stdout


@pytest.mark.parametrize("trick,why", [
    ("broken_import", "failed to import: ImportError: needs libfoo"),
    ("bad_hook", "does not match the hook contract"),
    ("bad_name", "implements a hook hlb does not have: unknown hook 'hlb_step_finish'"),
])
def test_broken_trick_is_one_clear_error(venv, trick, why):
    r = venv("train", "--preset", "smoke", "--enable", trick, "--quiet")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: trick '{trick}'")
    assert f"{_dist_name(trick)} 1.2.3" in lines[0]
    assert why in lines[0]
    assert f"--disable {trick}" in lines[0]


def test_listing_with_a_broken_trick_installed_names_it(venv):
    """The list survives broken tricks: each is marked BROKEN with why, the rest are listed."""
    r = venv("tricks", "list")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    for name in BROKEN:
        assert "BROKEN" in rows[name], r.stdout
    assert "needs libfoo" in rows["broken_import"]
    assert "mixup" in rows and "BROKEN" not in rows["mixup"] and "whitening" in rows


# --- the example trick's own code, tested with hlbcli.testing --------------------------------


@pytest.fixture
def mixup_module(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    import hlb_mixup

    return hlb_mixup


def test_mixup_blends_images_and_targets_alike(mixup_module):
    n = 16
    torch.manual_seed(0)
    images = torch.rand(n, 3, 8, 8)
    targets = torch.eye(n)  # one class per image: the mixed targets reveal partner and weight
    mixed, mt = mixup_module.mixup(images, targets, alpha=0.5)
    assert torch.allclose(mt.sum(1), torch.ones(n))
    for i in range(n):
        lam = mt[i, i]
        others = [j for j in range(n) if j != i and mt[i, j] > 0]
        if not others:  # paired with itself
            assert torch.allclose(mixed[i], images[i], atol=1e-6)
            continue
        (j,) = others
        assert torch.allclose(mt[i, j], 1 - lam)
        assert torch.allclose(mixed[i], lam * images[i] + (1 - lam) * images[j], atol=1e-5)
    lam = mixup_module.beta_sample(20000, 0.5, "cpu")
    assert 0 <= lam.min() and lam.max() <= 1 and abs(lam.mean().item() - 0.5) < 0.02


def test_mixup_through_the_testing_helpers(mixup_module):
    from hlbcli import testing

    cfg, _ = testing.resolve_config(mixup_module, sets=["mixup.start_epoch=1"])
    assert cfg.mixup.start_epoch == 1 and cfg.tricks[-1] == "mixup"
    tm = testing.manager(mixup_module)
    assert tm.trick_names() == ["mixup"] and tm.origins["mixup"] == "given"
    with testing.HookRecorder(tm) as rec:
        results = tm.hook.hlb_batch_transforms(cfg=cfg, ctx=None)
    assert rec.count("hlb_batch_transforms") == 1
    (t,) = [x for ts in results for x in ts if x.name == "mixup"]
    assert t.level == "batch" and t.start_epoch == 1 and not t.active(0) and t.active(1)
    images, targets = torch.rand(4, 3, 8, 8), torch.eye(10)[:4]
    mixed, mt = t.fn(images, targets)
    assert mixed.shape == images.shape and torch.allclose(mt.sum(1), torch.ones(4))


# --- the trick API through an installed distribution (hlb-filters) ----------------------------


def _one_error_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_object_trick_with_its_own_optimizer_trains(venv, tmp_path):
    r = venv("train", "--preset", "smoke", "--enable", "sgdfilters", *set_args(tiny_sets("train.epochs=1")),
             "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "summary.json").read_text())["runs"][0]
    assert rec["status"] == "completed" and rec["trick_sources"]["sgdfilters"] == "hlb-filters 0.1.0"


def test_trick_error_from_a_hook_is_one_line_and_exit_2(venv):
    r = venv("train", "--preset", "smoke", "--enable", "sgdfilters", "--set", "sgdfilters.fail_in_init=true",
             *set_args(tiny_sets("train.epochs=1")), "--quiet")
    assert r.returncode == 2
    assert _one_error_line(r) == "error: sgdfilters was told to fail (drop --set sgdfilters.fail_in_init=true)"


def test_validate_hook_runs_in_ablate_dry_run(venv):
    r = venv("ablate", "--preset", "smoke", "--enable", "sgdfilters", "--set", "sgdfilters.max_width=8", "--dry-run")
    assert r.returncode == 2
    line = _one_error_line(r)
    assert "sgdfilters.max_width 8 is below the widest group conv (32)" in line
    assert "--set sgdfilters.max_width=32" in line


def test_two_owners_of_a_first_result_hook_is_an_error(venv):
    r = venv("train", "--preset", "smoke", "--enable", "clash", *set_args(tiny_sets("train.epochs=1")), "--quiet")
    assert r.returncode == 2
    line = _one_error_line(r)
    assert "tricks 'clash' and 'bias_lr' both implement hlb_param_groups" in line
    assert "--disable bias_lr" in line and "wrapper" in line
    ok = venv("train", "--preset", "smoke", "--enable", "clash", "--disable", "bias_lr",
              *set_args(tiny_sets("train.epochs=1")), "--quiet")
    assert ok.returncode == 0, ok.stderr


def test_tricks_list_names_the_owner_of_each_first_result_hook(venv):
    r = venv("tricks", "list", "--preset", "smoke", *DISABLE_BROKEN)
    assert r.returncode == 0, r.stderr
    owners = dict(line.split() for line in r.stdout.split("first-result hooks in smoke")[1].splitlines()[1:] if line.strip())
    assert owners["hlb_param_groups"] == "bias_lr" and owners["hlb_eval_forward"] == "tta"
    assert owners["hlb_optimizer_build"] == "core"


def test_own_optimizer_takes_the_filters_and_the_rest_stay_with_sgd(venv):
    """In-process, through hlbcli.testing: two optimizers, the filters only in the second,
    and with lr_scale=0 the filters never move while the other parameters do."""
    import importlib
    import sys as _sys

    from hlbcli import testing
    from hlbcli.model import group_convs

    src = venv.root / "filters"
    _sys.path.insert(0, str(src))
    try:
        mod = importlib.import_module("hlbx_filters")
        cfg, tm = testing.resolve_config(mod.TRICK, sets=["sgdfilters.lr_scale=0"], preset="smoke")
        testing.check(cfg, tm)  # hlb_validate passes at these widths
        session = testing.session(cfg, tm)
        plan = testing.plan(session, seed=0)
        assert len(plan.optimizers) == 2 and plan.ctx.optimizers == plan.optimizers
        filters = {id(c.weight) for c in group_convs(session.model)}
        first = {id(p) for g in plan.optimizers[0].param_groups for p in g["params"]}
        second = [p for g in plan.optimizers[1].param_groups for p in g["params"]]
        assert not (filters & first) and {id(p) for p in second} == filters
        before = [p.detach().clone() for p in second]
        head = session.model.head.weight.detach().clone()
        res = testing.run(session, seed=0)  # the same seed: the same initial weights
        assert res.status == "completed"
        assert all(torch.equal(a, b) for a, b in zip(before, second))
        assert not torch.equal(head, session.model.head.weight)
    finally:
        _sys.path.remove(str(src))
        _sys.modules.pop("hlbx_filters", None)
