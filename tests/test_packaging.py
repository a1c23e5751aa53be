"""The distribution ships every package of the source tree: a subpackage missing from
pyproject's list works from a checkout (the tests import from it) and fails once installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_in_the_distribution():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hlbcli").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert "hlb_plugins" in listed and setup["package-dir"]["hlb_plugins"] == "plugins"
    for name in listed - {"hlb_plugins"}:
        assert (ROOT / name.replace(".", "/")).is_dir(), name
