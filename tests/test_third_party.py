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

from conftest import set_args, tiny_sets

EXAMPLE = Path(__file__).parent / "example_trick"
BROKEN = ["broken_import", "bad_hook", "bad_name"]
DISABLE_BROKEN = [x for n in BROKEN for x in ("--disable", n)]

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


def _dist_name(trick: str) -> str:
    return "hlb-" + trick.replace("_", "-") + "-dist"


def _write_broken(root: Path, trick: str) -> Path:
    proj = root / trick
    pkg = proj / f"hlbx_{trick}"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(BROKEN_SOURCES[trick])
    (proj / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{_dist_name(trick)}"
        version = "1.2.3"

        [project.entry-points."hlb.tricks"]
        {trick} = "hlbx_{trick}"

        [tool.setuptools]
        packages = ["hlbx_{trick}"]
    """))
    return proj


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv with the example trick and the broken ones installed by pip; returns a runner of
    `python -m hlbcli.cli` in it."""
    root = tmp_path_factory.mktemp("third_party")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    # See the packages of the environment running the tests (hlbcli, torch, pip, setuptools),
    # wherever they live: a venv made from a venv would only see the base interpreter's.
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    parent = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()]
    # addsitedir, not a bare path: the .pth files there (an editable install's) take effect too
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parent)
    (Path(site_dir) / "_hlb_test_parent.pth").write_text(lines)
    example = root / "example_trick"  # build from a copy: the repository stays clean
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    projects = [example] + [_write_broken(root, t) for t in BROKEN]
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", *map(str, projects)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    # installed into the venv only, not into the environment running the tests
    check = subprocess.run([sys.executable, "-m", "pip", "show", "hlb-mixup"], capture_output=True, text=True)
    assert check.returncode != 0

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(py), "-m", "hlbcli.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=root)

    run.root = root
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
    r = venv("tricks", "list")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert any(_dist_name(t) in r.stderr for t in BROKEN) and "--disable" in r.stderr


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
