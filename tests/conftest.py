"""Shared fixtures: tiny configs on synthetic data, and the CLI in-process or as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# small and fast: tiny widths, synthetic data, few steps
TINY = [
    "data.dataset=\"synthetic\"",
    "data.synthetic_train=256",
    "data.synthetic_test=128",
    "model.widths=[8,16,16]",
    "train.batch_size=64",
    "train.epochs=2",
    "train.compile=\"off\"",
    "whitening.num_images=128",
]


def tiny_sets(*more: str) -> list[str]:
    return [*TINY, *more]


@pytest.fixture
def cli(capsys):
    """Run ``hlb ARGS`` in-process through the real entry function: (code, out, err)."""
    from hlbcli.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


@pytest.fixture
def hlb_proc():
    """Run the installed ``hlb`` console script as a real process."""

    def run(*args: str, timeout: float = 300, env: dict | None = None, **kw):
        e = dict(os.environ)
        e.update(env or {})
        exe = Path(sys.executable).with_name("hlb")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hlbcli.cli"]
        return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e, **kw)

    return run


def set_args(sets: list[str]) -> list[str]:
    out = []
    for s in sets:
        out += ["--set", s]
    return out


def write_distribution(proj: Path, dist: str, package: str, modules: dict[str, str],
                       entry_points: dict[str, str], version: str = "0.1.0") -> Path:
    """A tiny installable distribution in ``proj``: the package ``package`` with ``modules``
    (module name -> source, ``__init__`` included) and ``entry_points`` in the ``hlb.tricks``
    group (name -> target); returns ``proj``, for :func:`pip_venv`."""
    (proj / package).mkdir(parents=True)
    for name, src in {"__init__": "", **modules}.items():
        (proj / package / f"{name}.py").write_text(textwrap.dedent(src))
    eps = "".join(f'{name} = "{target}"\n' for name, target in entry_points.items())
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{dist}"\nversion = "{version}"\n\n'
        f'[tool.setuptools]\npackages = ["{package}"]\n\n'
        f'[project.entry-points."hlb.tricks"]\n{eps}'
    )
    return proj


def pip_venv(root: Path, projects: list[Path]):
    """A virtual environment in ``root`` with ``projects`` installed by pip (one call, no index),
    that sees the packages of the environment running the tests (hlbcli, torch, pip,
    setuptools) through a .pth file; returns a runner of `python -m hlbcli.cli ARGS` in it
    (``run.root`` is ``root``, its working folder)."""
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    # wherever they live: a venv made from a venv would only see the base interpreter's
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    parent = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()]
    # addsitedir, not a bare path: the .pth files there (an editable install's) take effect too
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parent)
    (Path(site_dir) / "_hlb_test_parent.pth").write_text(lines)
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", *map(str, projects)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr

    def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(py), "-m", "hlbcli.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=root)

    run.root = root
    return run
