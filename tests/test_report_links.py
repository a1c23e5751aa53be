"""`hlb report DIR` reads and links only what lies inside DIR once links are resolved: a run
record, summary.md, bench.json, an arm folder or config.json that links outside is left out of
the page (never embedded, never linked) and named in one warning line; a link that stays inside
DIR is fine. Checked on the page's HTML text (no browser needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import set_args, tiny_sets
from hlbcli.cli import main

FAST = set_args(tiny_sets("data.synthetic_train=128", "data.synthetic_test=64"))
MARKER = "OUTSIDE-MARKER-7f3a"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A hlb bench folder and a hlb ablate folder, made by the real commands."""
    root = tmp_path_factory.mktemp("made")
    assert main(["bench", "--preset", "smoke", *FAST, "--runs", "2", "--out", str(root / "bench")]) == 0
    assert main(["ablate", "--preset", "smoke", *FAST, "--disable", "ema", "--runs", "1", "--quiet",
                 "--out", str(root / "ablate")]) == 0
    return root


def _copy(made: Path, kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """The folder of ``kind`` copied to ``tmp_path/DIR``, and a folder beside it, outside."""
    folder, elsewhere = tmp_path / "DIR", tmp_path / "elsewhere"
    shutil.copytree(made / kind, folder)
    (folder / "report.html").unlink(missing_ok=True)
    elsewhere.mkdir()
    return folder, elsewhere


def _link_out(path: Path, target: Path, text: str) -> None:
    """``path`` becomes a link to ``target``, outside, that holds ``text``."""
    target.write_text(text)
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def _page(cli, folder: Path) -> tuple[str, str]:
    code, out, err = cli("report", folder)
    assert code == 0, err
    html = Path(out.strip()).read_text()
    assert MARKER not in html and "elsewhere" not in html
    assert all(not h.startswith("/") and ".." not in h for h in re.findall(r'href="([^"]+)"', html))
    return html, err


def _warned(err: str, folder: Path, names: list[str]) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warning: hlb report: left out {len(names)} file(s) that link outside {folder}: ")
    assert all(n in lines[0] for n in names)


def test_a_record_and_bench_json_linking_outside_are_left_out(made, cli, tmp_path):
    folder, elsewhere = _copy(made, "bench", tmp_path)
    rec = json.loads((folder / "run-001-seed1.json").read_text())
    _link_out(folder / "run-001-seed1.json", elsewhere / "secret.json", json.dumps({**rec, "device": MARKER}))
    claim = json.loads((folder / "bench.json").read_text())
    _link_out(folder / "bench.json", elsewhere / "bench.json", json.dumps({**claim, "summary_line": MARKER}))
    # a link that stays inside DIR is kept
    (folder / "kept").mkdir()
    (folder / "run-000-seed0.json").rename(folder / "kept" / "run-000-seed0.json")
    (folder / "run-000-seed0.json").symlink_to(Path("kept") / "run-000-seed0.json")
    # a link loop is the reader's to refuse, on the page, not an internal error
    (folder / "run-007-seed7.json").symlink_to("loop")
    (folder / "loop").symlink_to("run-007-seed7.json")
    html, err = _page(cli, folder)
    assert 'href="run-007-seed7.json">run-007-seed7.json</a>: cannot be read' in html
    _warned(err, folder, ["run-001-seed1.json", "bench.json"])
    assert "run-001-seed1.json" not in html and 'href="bench.json"' not in html and "Claim (bench.json)" not in html
    assert 'href="kept/run-000-seed0.json"' in html and 'href="summary.json"' in html


def test_an_arm_folder_config_json_and_summary_md_linking_outside_are_left_out(made, cli, tmp_path):
    folder, elsewhere = _copy(made, "ablate", tmp_path)
    arm = folder / "arms" / "no-ema"
    shutil.copytree(arm, elsewhere / "no-ema")
    config = json.loads((elsewhere / "no-ema" / "config.json").read_text())
    (elsewhere / "no-ema" / "config.json").write_text(json.dumps({**config, "marker": MARKER}))
    shutil.rmtree(arm)
    arm.symlink_to(elsewhere / "no-ema", target_is_directory=True)
    base = folder / "arms" / "baseline" / "config.json"
    _link_out(base, elsewhere / "config.json", json.dumps({**json.loads(base.read_text()), "marker": MARKER}))
    _link_out(folder / "summary.md", elsewhere / "notes.md", f"# {MARKER}\n")
    html, err = _page(cli, folder)
    _warned(err, folder, [f"arms{os.sep}no-ema", f"arms{os.sep}baseline{os.sep}config.json", "summary.md"])
    assert 'href="summary.md"' not in html and 'href="summary.json"' in html
    assert "arms/no-ema/run-000-seed0.json" not in html and 'href="arms/baseline/run-000-seed0.json"' in html


def test_a_summary_json_linking_outside_is_one_line(made, cli, tmp_path):
    folder, elsewhere = _copy(made, "bench", tmp_path)
    _link_out(folder / "summary.json", elsewhere / "summary.json", (folder / "summary.json").read_text())
    code, out, err = cli("report", folder)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {folder / 'summary.json'} links outside {folder} (") and f"hlb summary {folder}" in err
    assert not (folder / "report.html").exists()
