"""What hlb reads back is checked (issue 19): run records and ablation plans, as ``--resume``,
``hlb summary`` and the ablation summary read them. A record that fails the checks stops a
``--resume`` (exit 2, one line naming the file); ``hlb summary`` leaves it out and names it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import set_args, tiny_sets
from hlbcli import readback, record
from hlbcli.experiments import plan as plans, summary as summaries
from hlbcli.experiments.plan import AblateOptions, Arm
from test_errors import assert_one_line_error

SMOKE = ["train", "--preset", "smoke", *set_args(tiny_sets())]
RESUME_HINT = "move the file away to retrain that seed"


# --- a real hlb train folder, made once -------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from hlbcli.cli import main

    out = tmp_path_factory.mktemp("made") / "run"
    assert main([*SMOKE, "--runs", "2", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def folder(made, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(made, d)
    return d


def _edit(path: Path, **changes) -> dict:
    rec = json.loads(path.read_text())
    for k, v in changes.items():
        if v is _DROP:
            rec.pop(k)
        else:
            rec[k] = v
    path.write_text(json.dumps(rec))
    return rec


_DROP = object()
_NAN = object()


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("run-*.json"))}


# --- the validator ----------------------------------------------------------------------------


def _good(seed: int = 0, acc: float = 0.9) -> dict:
    return {"seed": seed, "status": "completed", "accuracy": acc, "train_seconds": 1.5,
            "versions": record.versions(), "config": {}}


@pytest.mark.parametrize(
    "change,why",
    [
        ({"accuracy": 7.5}, "accuracy 7.5 is outside 0..1"),
        ({"accuracy": -0.1}, "accuracy -0.1 is outside 0..1"),
        ({"accuracy": None}, "accuracy None of a completed run is not a finite number"),
        ({"accuracy": float("nan")}, "accuracy nan"),
        ({"accuracy": "0.9"}, "accuracy '0.9'"),
        ({"accuracy": True}, "accuracy True"),
        ({"accuracy": _DROP}, "a completed run without an accuracy"),
        ({"train_seconds": -1}, "train_seconds -1"),
        ({"train_seconds": float("inf")}, "train_seconds inf"),
        ({"status": "done"}, "status 'done' is not one of completed, diverged, failed, interrupted"),
        ({"status": _DROP}, "status None"),
        ({"seed": -1}, "seed -1 is outside"),
        ({"seed": 2**63}, "seed 9223372036854775808 is outside"),
        ({"seed": "0"}, "seed '0' is not an integer"),
        ({"seed": False}, "seed False is not an integer"),
        ({"seed": _DROP}, "no seed"),
        ({"versions": {"hlbcli": "0.0.1", "torch": "x"}}, "written by hlbcli '0.0.1', this is hlbcli"),
        ({"versions": _DROP}, "no versions"),
        ({"config": "94"}, "no config object"),
    ],
)
def test_check_record_names_what_is_wrong(change, why):
    rec = _good()
    for k, v in change.items():
        rec.pop(k) if v is _DROP else rec.__setitem__(k, v)
    got = readback.check_record(rec)
    assert got is not None and why in got, got


def test_check_record_accepts_the_records_hlb_writes():
    assert readback.check_record(_good()) is None
    assert readback.check_record({**_good(), "train_seconds": None}) is None
    assert readback.check_record({**_good(), "status": "failed", "accuracy": None}) is None
    assert readback.check_record({**_good(), "status": "diverged", "accuracy": None}) is None
    other = {**_good(), "versions": {**record.versions(), "torch": "0.1"}}
    assert "written by torch '0.1'" in readback.check_record(other)
    assert readback.check_record(other, strict=False) is None  # the live summary reads its own
    assert readback.check_record([1, 2]) == "not a run record (the file holds an array, not an object)"


def test_max_runs_lives_beside_max_seed():
    from hlbcli import cli, config

    assert cli.MAX_RUNS is config.MAX_RUNS == 10_000 and config.MAX_SEED == 2**63 - 1
    assert config.MAX_ARMS >= 100


# --- hlb train --resume -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,why",
    [
        ({"accuracy": 7.5}, "accuracy 7.5 is outside 0..1"),
        ({"accuracy": None}, "accuracy None"),
        ({"accuracy": "0.2"}, "accuracy '0.2'"),
        ({"accuracy": _DROP}, "a completed run without an accuracy"),
        ({"accuracy": _NAN}, "accuracy nan"),
        ({"status": "unknown"}, "status 'unknown'"),
        ({"seed": "one"}, "seed 'one' is not an integer"),
        ({"versions": {"hlbcli": "0.0.1", "torch": "2.0.0"}}, "written by hlbcli '0.0.1'"),
        ({"config": _DROP}, "no config object"),
    ],
)
def test_resume_refuses_a_bad_record_before_training(cli, folder, change, why):
    path = folder / "run-001-seed1.json"
    if change.get("accuracy") is _NAN:
        path.write_text(path.read_text().replace('"accuracy": ', '"accuracy": NaN, "was": ', 1))
    else:
        _edit(path, **change)
    before = _files(folder)
    code, out, err = cli(*SMOKE, "--runs", "3", "--out", folder, "--resume", "--quiet")
    assert_one_line_error(code, err, 2, f"{path}: {why}", RESUME_HINT)
    assert _files(folder) == before  # nothing trained, nothing written


def test_resume_refuses_another_versions_torch(cli, folder):
    path = folder / "run-000-seed0.json"
    rec = json.loads(path.read_text())
    _edit(path, versions={**rec["versions"], "torch": "1.0.0"})
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", folder, "--resume", "--quiet")
    assert_one_line_error(code, err, 2, f"{path}: written by torch '1.0.0', this is torch", RESUME_HINT)


@pytest.mark.parametrize("content,why", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a run record (the file holds an array"),
    (b'{"seed": 0, "pad": "' + b"x" * (5 * 2**20) + b'"}', "5242902 bytes, more than the 4 MiB hlb reads back"),
    (b"\xff\xfe", "not UTF-8 text"),
])
def test_resume_refuses_a_file_that_is_no_record(cli, folder, content, why):
    path = folder / "run-009-seed9.json"
    path.write_bytes(content)
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", folder, "--resume", "--quiet")
    assert_one_line_error(code, err, 2, f"{path}: {why}", RESUME_HINT)


def test_resume_refuses_a_second_copy_of_a_seed(cli, folder):
    shutil.copy(folder / "run-000-seed0.json", folder / "run-000-seed0-copy.json")
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", folder, "--resume", "--quiet")
    assert_one_line_error(code, err, 2, "run-000-seed0-copy.json: a second record of seed 0 (run-000-seed0.json is kept)")
    # no copy under its own name: every copy is refused
    (folder / "run-000-seed0.json").rename(folder / "run-x.json")
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", folder, "--resume", "--quiet")
    assert_one_line_error(code, err, 2, "a second record of seed 0 (no copy under its own name", "1 more record(s) refused")


def test_resume_with_fewer_runs_leaves_the_others_out_with_a_warning(cli, folder):
    code, out, err = cli(*SMOKE, "--runs", "1", "--out", folder, "--resume", "--quiet")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines == [f"warning: left out of this batch: {folder / 'run-001-seed1.json'} (seed 1 is outside this batch's seeds 0..0)"]
    s = json.loads((folder / "summary.json").read_text())
    assert s["n"] == 1 and [r["seed"] for r in s["runs"]] == [0] and s["partial"] is False
    # hlb summary reads the same batch back: seed 1 named, not counted
    code, out, err = cli("summary", folder)
    assert code == 0, err
    assert f"warning: left out {folder / 'run-001-seed1.json'}: seed 1 is outside" in err
    s = json.loads((folder / "summary.json").read_text())
    assert s["n"] == 1 and s["runs_requested"] == 1 and s["first_seed"] == 0
    assert [r["file"] for r in s["rejected"]] == [str(folder / "run-001-seed1.json")]


# --- hlb summary of a train folder ------------------------------------------------------------


def test_summary_leaves_bad_records_out_and_names_them(cli, folder):
    good = json.loads((folder / "run-000-seed0.json").read_text())
    _edit(folder / "run-001-seed1.json", accuracy=7.5)
    shutil.copy(folder / "run-000-seed0.json", folder / "run-005-seed0.json")
    code, out, err = cli("summary", folder)
    assert code == 0, err
    assert err.splitlines() == [
        f"warning: left out {folder / 'run-001-seed1.json'}: accuracy 7.5 is outside 0..1",
        f"warning: left out {folder / 'run-005-seed0.json'}: a second record of seed 0 (run-000-seed0.json is kept)",
    ]
    s = json.loads((folder / "summary.json").read_text())
    assert s["n"] == 1 and s["mean_accuracy"] == pytest.approx(good["accuracy"]) and s["partial"] is True
    assert [r["why"] for r in s["rejected"]] == ["accuracy 7.5 is outside 0..1",
                                                "a second record of seed 0 (run-000-seed0.json is kept)"]


def test_summary_with_nothing_valid_left_is_one_line(cli, folder):
    for p in folder.glob("run-*.json"):
        _edit(p, status="done")
    code, out, err = cli("summary", folder)
    assert_one_line_error(code, err, 2, f"no valid run records in {folder}: 2 left out", "status 'done'")


@pytest.mark.parametrize("value", ["two", 10**9, True, -1])
def test_summary_checks_runs_requested(cli, folder, value):
    s = json.loads((folder / "summary.json").read_text())
    s["runs_requested"] = value
    (folder / "summary.json").write_text(json.dumps(s))
    code, out, err = cli("summary", folder)
    assert code == 0, err
    assert f"warning: left out {folder / 'summary.json'}: runs_requested {value!r} is not an integer in 1..10000" in err
    s = json.loads((folder / "summary.json").read_text())
    assert s["runs_requested"] == 2 and s["n"] == 2 and s["partial"] is False


# --- ablation folders, written by hand --------------------------------------------------------


ARMS = [Arm("baseline"), Arm("-ema", disabled=["ema"])]


def _ablation(d: Path, runs: int = 3, accs=((0.90, 0.91, 0.92), (0.80, 0.82, 0.81)), **plan_changes) -> Path:
    plan = plans.plan_of(AblateOptions(preset="smoke", runs=runs), ARMS)
    plan.update(plan_changes)
    d.mkdir(parents=True, exist_ok=True)
    (d / "ablation.json").write_text(json.dumps(plan))
    for arm, arm_accs in zip(ARMS, accs):
        a = d / "arms" / arm.folder
        a.mkdir(parents=True, exist_ok=True)
        for i, acc in enumerate(arm_accs):
            (a / f"run-{i:03d}-seed{i}.json").write_text(json.dumps(_good(i, acc)))
    return d


def _arm(s: dict, name: str) -> dict:
    return next(a for a in s["arms"] if a["name"] == name)


def test_ablation_summary_counts_one_record_per_seed_of_the_plan(cli, tmp_path):
    d = _ablation(tmp_path / "A", runs=3, accs=((0.90, 0.91, 0.92, 0.5, 0.5, 0.5), (0.80, 0.82, 0.81)))
    shutil.copy(d / "arms/no-ema/run-000-seed0.json", d / "arms/no-ema/run-000-seed0.json.bak")  # not a record name
    shutil.copy(d / "arms/no-ema/run-000-seed0.json", d / "arms/no-ema/run-0-seed0.json")
    code, out, err = cli("summary", d)
    assert code == 0, err
    s = json.loads((d / "summary.json").read_text())
    base, arm = _arm(s, "baseline"), _arm(s, "-ema")
    assert base["n"] == 3 and base["seeds"] == [0, 1, 2] and base["mean_accuracy"] == pytest.approx(0.91)
    assert arm["n"] == 3 and arm["mean_accuracy"] == pytest.approx(0.81) and s["partial"] is False
    whys = sorted(r["why"] for r in s["rejected"])
    assert whys == ["a second record of seed 0 (run-000-seed0.json is kept)"] + \
        [f"seed {k} is outside this batch's seeds 0..2" for k in (3, 4, 5)]
    assert len([ln for ln in err.splitlines() if ln.startswith("warning: left out ")]) == 4


def test_ablation_summary_leaves_out_records_of_other_versions(cli, tmp_path):
    d = _ablation(tmp_path / "A")
    p = d / "arms/baseline/run-002-seed2.json"
    _edit(p, versions={"hlbcli": "0.0.1", "torch": "2.0"}, accuracy=0.2)
    code, out, err = cli("summary", d)
    assert code == 0, err
    assert f"warning: left out {p}: written by hlbcli '0.0.1'" in err
    s = json.loads((d / "summary.json").read_text())
    assert _arm(s, "baseline")["n"] == 2 and _arm(s, "baseline")["mean_accuracy"] == pytest.approx(0.905)
    assert _arm(s, "baseline")["status"] == "incomplete" and s["partial"] is True


def test_live_ablation_summary_counts_a_copy_once(tmp_path):
    d = _ablation(tmp_path / "A", runs=2, accs=((0.9, 0.8), (0.7, 0.6)))
    shutil.copy(d / "arms/no-ema/run-000-seed0.json", d / "arms/no-ema/run-001-seed0.json")
    s = summaries.summarize(AblateOptions(preset="smoke", runs=2), ARMS, d, {}, partial=False)
    assert _arm(s, "-ema")["n"] == 2 and _arm(s, "-ema")["mean_accuracy"] == pytest.approx(0.65)
    assert [r["file"] for r in s["rejected"]] == [str(d / "arms/no-ema/run-001-seed0.json")]


@pytest.mark.parametrize(
    "change,why",
    [
        ({"runs": 10**9}, "runs 1000000000 is not an integer in 1..10000"),
        ({"runs": "two"}, "runs 'two' is not an integer"),
        ({"runs": 0}, "runs 0 is not an integer"),
        ({"seed": -3}, "seed -3 is not an integer"),
        ({"seed": 2**63 - 2, "runs": 5}, "seeds 9223372036854775806..9223372036854775810 go past the largest seed"),
        ({"arms": "baseline"}, "arms 'baseline' is not a list"),
        ({"arms": [{"name": "baseline"}] * 5000}, "arms 5000 arms is not a list of 2..1000 arms"),
        ({"arms": [{"name": "baseline"}, {"name": "baseline", "disabled": ["ema"]}]}, "arm 'baseline' is named twice"),
        ({"arms": [{"name": "baseline"}, {"name": "-ema", "disabled": "ema"}]}, "arm '-ema': disabled 'ema' is not a list"),
        ({"arms": [{"name": "baseline"}, {"name": "x"}]}, "arm 'x' switches no trick"),
        ({"preset": None}, "preset None is not a preset name"),
        ({"sets": "a=1"}, "sets 'a=1' is not a list of strings"),
        ({"kind": "summary"}, "not an ablation plan"),
    ],
)
def test_a_malformed_plan_is_one_line(cli, tmp_path, change, why):
    d = _ablation(tmp_path / "A", **change)
    code, out, err = cli("summary", d)
    assert_one_line_error(code, err, 2, f"{d / 'ablation.json'}: {why}")
    assert not (d / "summary.json").exists()


def test_a_plan_without_preset_or_too_big(cli, tmp_path):
    d = _ablation(tmp_path / "A")
    plan = json.loads((d / "ablation.json").read_text())
    plan.pop("preset")
    (d / "ablation.json").write_text(json.dumps(plan))
    code, out, err = cli("summary", d)
    assert_one_line_error(code, err, 2, "ablation.json: preset None is not a preset name")
    (d / "ablation.json").write_text(json.dumps({**plan, "pad": "x" * (5 * 2**20)}))
    code, out, err = cli("summary", d)
    assert_one_line_error(code, err, 2, "ablation.json: ", "bytes, more than the 4 MiB hlb reads back")


def test_summary_of_an_ablation_without_its_plan(cli, tmp_path):
    d = _ablation(tmp_path / "A")
    (d / "ablation.json").unlink()
    code, out, err = cli("summary", d)
    assert_one_line_error(code, err, 2, f"{d} has no ablation.json, but its arms/ holds run records", "--resume")


# --- hlb ablate --resume ----------------------------------------------------------------------


ABLATE = ["ablate", "--preset", "smoke", "--disable", "ema", "--disable", "tta", "--runs", "2"]


def test_ablate_resume_of_another_order_says_what_differs(cli, tmp_path):
    opts = AblateOptions(preset="smoke", disable=["ema", "tta"], runs=2)
    plans.claim_out(tmp_path / "E", plans.plan_of(opts, plans.plan_battery(opts))).release()
    (tmp_path / "E" / "arms" / "baseline").mkdir()
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "tta", "--disable", "ema", "--out", tmp_path / "E", "--resume")
    assert_one_line_error(code, err, 2, "another plan (arm order: ['baseline', '-ema', '-tta'] vs ['baseline', '-tta', '-ema'])",
                          "same order")
    code, out, err = cli(*ABLATE, "--set", "train.epochs=1", "--out", tmp_path / "E", "--resume")
    assert_one_line_error(code, err, 2, "another plan (sets: [] vs ['train.epochs=1'])")


def test_ablate_resume_refuses_a_bad_record_before_any_arm(cli, tmp_path):
    opts = AblateOptions(preset="smoke", disable=["ema", "tta"], runs=2)
    d = tmp_path / "E"
    plans.claim_out(d, plans.plan_of(opts, plans.plan_battery(opts))).release()
    (d / "arms" / "no-tta").mkdir()
    bad = d / "arms" / "no-tta" / "run-001-seed1.json"
    bad.write_text(json.dumps({**_good(1), "accuracy": 7.5}))
    (d / "arms" / "no-tta" / "run-007-seed7.json").write_text(json.dumps(_good(7)))  # outside: no error
    code, out, err = cli(*ABLATE, "--out", d, "--resume")
    assert_one_line_error(code, err, 2, f"{bad}: accuracy 7.5 is outside 0..1", RESUME_HINT)
    assert not list(d.glob("arms/*/train.log"))  # no arm started


def test_ablate_resume_without_its_plan_writes_it_again(tmp_path, capsys):
    opts = AblateOptions(preset="smoke", disable=["ema", "tta"], runs=2)
    plan = plans.plan_of(opts, plans.plan_battery(opts))
    d = _ablation(tmp_path / "A", runs=2, accs=((0.9, 0.8), (0.7,)))
    (d / "ablation.json").unlink()
    with pytest.raises(Exception, match="already holds an ablation"):
        plans.claim_out(d, plan)  # without --resume: refused as before
    (d / "arms/baseline/run-009-seed9.json").write_text(json.dumps(_good(9)))
    plans.claim_out(d, plan, resume=True).release()
    err = capsys.readouterr().err
    assert f"warning: {d} had no ablation.json; written again from this command" in err
    assert f"warning: left out of this batch: {d / 'arms/baseline/run-009-seed9.json'} (seed 9 is outside" in err
    assert json.loads((d / "ablation.json").read_text()) == plan
