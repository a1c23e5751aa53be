"""The two test tiers (tests/conftest.py's SLOW): every test named there exists, so a renamed
test cannot slip into the fast tier unnoticed; and the fast tier still runs every command."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import SLOW, TIMING

HERE = Path(__file__).parent


def test_every_slow_test_named_exists():
    for file, names in SLOW.items():
        text = (HERE / file).read_text()
        for name in names:
            assert re.search(rf"^def {name}\(", text, re.M), f"{file}: no test {name}"
    assert TIMING <= set(SLOW)


def test_the_fast_tier_still_runs_every_command():
    """Each command of README's list appears in a test the fast tier keeps (a file not wholly
    slow, in a test not named slow)."""
    commands = ["train", "bench", "ablate", "search", "compare", "config", "tricks", "plot", "report", "summary",
                "profile"]
    kept: dict[str, str] = {}
    for path in sorted(HERE.glob("test_*.py")):
        if path.name in SLOW and not SLOW[path.name]:
            continue
        for m in re.finditer(r"^def (test_\w+)\(.*?(?=^def |\Z)", path.read_text(), re.M | re.S):
            if m.group(1) in SLOW.get(path.name, set()):
                continue
            for c in commands:
                if re.search(rf'cli\(\s*"{c}"|"hlbcli\.cli", "{c}"|\["{c}"', m.group(0)):
                    kept.setdefault(c, f"{path.name}::{m.group(1)}")
    assert set(commands) == set(kept), sorted(set(commands) - set(kept))
    assert "--against" in Path(HERE / "test_alternate.py").read_text()  # bench --against: its pairs test stays
