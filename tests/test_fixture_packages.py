"""The third-party packages under tests/packages, installed by pip into a fresh environment and
used through the command line as their users would: a change of the contract that breaks
them fails here (tests/packages/README.md says what each is)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import pip_venv, set_args, tiny_sets

PACKAGES = Path(__file__).parent / "packages"
FAST = tiny_sets("data.synthetic_train=128", "data.synthetic_test=64", "train.epochs=2")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixture_packages")
    copies = []
    for name in ("hlb-fixture-tricks", "hlb-fixture-tracker"):  # built from copies: the repository stays clean
        shutil.copytree(PACKAGES / name, root / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        copies.append(root / name)
    return pip_venv(root, copies)


def test_listed_with_their_origin_and_current_contract(venv):
    r = venv("tricks", "list", "--preset", "smoke", "--swap", "tta=mytta", "--enable", "accumulate")
    assert r.returncode == 0, r.stderr
    for name in ("mytta", "accumulate", "warm_restarts"):
        row = next(line for line in r.stdout.splitlines() if line.startswith(name + " "))
        assert "hlb-fixture-tricks 1.0.0" in row and not row.startswith(name + " *")
    assert "older trick contract" not in r.stdout
    owners = r.stdout[r.stdout.index("first-result hooks"):]
    assert "hlb_update_build       accumulate" in owners and "hlb_eval_forward       mytta" in owners


def test_a_step_owning_trick_trains(venv, tmp_path):
    r = venv("train", "--preset", "smoke", "--enable", "accumulate", "--set", "accumulate.parts=4",
             *set_args(FAST), "--out", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "summary.json").read_text())["runs"][0]
    assert rec["status"] == "completed" and rec["config"]["accumulate"] == {"parts": 4}
    assert rec["trick_sources"]["accumulate"] == "hlb-fixture-tricks 1.0.0"


def test_an_lr_schedule_of_its_own_refuses_the_keys_it_makes_idle_except_for_other_arms(venv):
    r = venv("train", "--preset", "smoke", "--enable", "warm_restarts", "--set", "train.lr_end=0.1", *set_args(FAST), "--quiet")
    assert r.returncode == 2 and "does nothing while trick 'warm_restarts' is active" in r.stderr
    r = venv("ablate", "--preset", "smoke", "--enable", "warm_restarts", "--set", "train.lr_end=0.1", *set_args(FAST),
             "--dry-run")
    assert r.returncode == 0, r.stderr


def test_a_swapped_in_trick_and_a_tracker_through_an_ablation(venv, tmp_path):
    out = tmp_path / "abl"
    r = venv("ablate", "--preset", "smoke", "--swap", "tta=mytta", "--set", "mytta.mirror_weight=0.25", *set_args(FAST),
             "--runs", "1", "--out", out, "--track", "csv", timeout=600)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert sorted(row["arm"] for row in rows) == ["baseline", "tta->mytta"]
    assert all(row["status"] == "completed" and row["epochs"] == "2" for row in rows)
    rec = json.loads(next((out / "arms" / "no-tta_with-mytta").glob("run-*.json")).read_text())
    assert rec["config"]["replaced"] == {"tta": "mytta"} and rec["config"]["mytta"] == {"mirror_weight": 0.25}
