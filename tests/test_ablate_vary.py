"""`hlb ablate --vary KEY=VALUE`: arms that change a setting, not a trick. Parsing and planning
(names, folders, duplicates), the one-line errors before anything trains, a real two-arm run on
synthetic data whose records carry the changed setting, --resume, hlb summary, the plan's
checks, --until-resolved with stand-in children and (with the 'ray' extra) the Ray backend."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import set_args, tiny_sets
from hlbcli import readback
from hlbcli.errors import UsageError
from hlbcli.experiments import battery, local_backend, plan as plans
from hlbcli.experiments.plan import AblateOptions, plan_arms
from hlbcli.experiments.vary import folder_of, parse_vary, split_settings
from test_errors import assert_one_line_error

SMOKE = ["whitening", "dirac", "noisy_bn", "bias_lr", "label_smoothing", "flip", "translate", "ema", "tta"]
FAST = tiny_sets("data.synthetic_train=128", "data.synthetic_test=64", "train.epochs=1")


# --- parsing and planning --------------------------------------------------------------------


@pytest.mark.parametrize("text,pieces", [
    ("muon.nesterov=false", ["muon.nesterov=false"]),
    ("model.widths=[32,64,64]", ["model.widths=[32,64,64]"]),
    ("model.widths=[32,64,64], train.epochs=2", ["model.widths=[32,64,64]", "train.epochs=2"]),
    ('tta.mode="a,b=c",train.lr={x=1,y=2}', ['tta.mode="a,b=c"', "train.lr={x=1,y=2}"]),
    ("data.name=a,b", ["data.name=a,b"]),  # no KEY= after the comma: one bare string, as --set
    ("data.name='it,s',x.y=1", ["data.name='it,s'", "x.y=1"]),
])
def test_split_settings_at_commas_outside_lists_and_quotes(text, pieces):
    assert split_settings(text) == pieces


def test_parse_vary_names_the_arm_by_its_settings_as_written():
    assert parse_vary(" model.depth = 3 ") == ("model.depth=3", ["model.depth=3"])
    assert parse_vary("model.widths=[16, 32], train.epochs=2") == (
        "model.widths=[16, 32],train.epochs=2", ["model.widths=[16, 32]", "train.epochs=2"])
    for word, needle in [("nokey", "no '='"), ("=3", "an empty key"), ("a..b=1", "an empty key"),
                         ("model.widths=[1,", "not a valid TOML list"),
                         ("train.lr=1,train.lr=2", "sets train.lr twice"),
                         ("model={depth=3},model.depth=2", "sets model and model.depth inside it")]:
        with pytest.raises(UsageError, match=needle):
            parse_vary(word)


def test_folder_is_the_name_made_safe_and_distinct():
    assert folder_of("muon.nesterov=false") == "set-muon.nesterov=false"
    assert folder_of("model.widths=[16,32],train.epochs=2").startswith("set-model.widths=_16,32_,train.epochs=2-")
    a, b = folder_of('tta.mode="x y"'), folder_of('tta.mode="x_y"')
    assert a != b and a.startswith("set-tta.mode=_x_y_-")
    long = folder_of("model.widths=[" + ",".join(["64"] * 60) + "]")
    assert len(long) < 120 and long.startswith("set-model.widths=_64,64")


def test_plan_arms_one_arm_per_vary_after_the_trick_arms_the_same_twice_merged():
    vary = [parse_vary(w) for w in ("model.depth=3", "muon.nesterov=false", "model.depth=3")]
    arms = plan_arms(SMOKE, ["ema"], ["cutmix"], False, vary=vary)
    assert [a.name for a in arms] == ["baseline", "-ema", "+cutmix", "model.depth=3", "muon.nesterov=false"]
    assert [a.folder for a in arms] == ["baseline", "no-ema", "with-cutmix", "set-model.depth=3", "set-muon.nesterov=false"]
    assert arms[3].sets == ["model.depth=3"] and arms[3].disabled == arms[3].enabled == []
    assert arms[3].silenced == ["cutmix"]  # cutmix settings of the common --set stay accepted there
    only = plan_arms(SMOKE, [], [], False, vary=[parse_vary("model.depth=3")])
    assert [a.name for a in only] == ["baseline", "model.depth=3"]


def test_plan_arms_refuses_two_folders_that_differ_only_in_case():
    with pytest.raises(UsageError, match="would share the folder"):
        plan_arms(SMOKE, [], [], False, vary=[parse_vary("data.x=abc"), parse_vary("data.x=ABC")])


def test_each_vary_arm_resolves_to_the_baseline_plus_its_settings():
    opts = AblateOptions(preset="smoke", sets=["train.epochs=2"], disable=["ema"],
                         vary=["model.depth=3", "model.widths=[16,32,64],ema.every=3"])
    base, no_ema, depth, both = plans.plan_battery(opts)
    assert base.config["model"]["depth"] == 2 and depth.config["model"]["depth"] == 3
    changed = {k for k in base.config if base.config[k] != depth.config[k]}
    assert changed == {"model"} and {k for k in base.config["model"] if base.config["model"][k] != depth.config["model"][k]} == {"depth"}
    assert both.config["model"]["widths"] == [16, 32, 64] and both.config["ema"]["every"] == 3
    assert all(a.config["train"]["epochs"] == 2 for a in (base, no_ema, depth, both))  # the common --set
    assert depth.config["tricks"] == base.config["tricks"]
    plan = plans.plan_of(opts, [base, no_ema, depth, both])
    assert plan["arms"][2]["sets"] == ["model.depth=3"] and "sets" not in plan["arms"][1]
    assert readback.check_plan(plan) is None
    _, back = plans.options_of(plan, opts.out)
    assert [(a.name, a.sets, a.folder) for a in back] == [(a.name, a.sets, a.folder) for a in (base, no_ema, depth, both)]


# --- fast failures, before any training ------------------------------------------------------


@pytest.mark.parametrize("args,needles", [
    (["--vary", "model.depth=2"], ["--vary model.depth=2 changes nothing: the baseline's model.depth is already 2"]),
    (["--set", "model.depth=3", "--vary", "model.depth=3"], ["changes nothing"]),
    (["--vary", "model.depth=3", "--vary", "model.depth=3.0"], ["--vary model.depth=3.0: invalid config: model.depth"]),
    (["--vary", "train.lr=1e-3", "--vary", "train.lr=0.001"],
     ["--vary train.lr=1e-3 and --vary train.lr=0.001 make the same arm", "keep one of them"]),
    (["--vary", "model.depthh=3"], ["--vary model.depthh=3: invalid config: model.depthh: unknown key, did you mean 'depth'?"]),
    (["--vary", "model.depth=7"], ["--vary model.depth=7: invalid config: model.depth"]),
    (["--vary", "model.depth=three"], ["--vary model.depth=three: invalid config: model.depth"]),
    (["--vary", "model.widths=[16,"], ["--vary model.widths=[16,: '[16,' is not a valid TOML list"]),
    (["--vary", "foo.bar=1"], ["--vary foo.bar=1: 'foo': unknown section"]),
    (["--vary", "cutmix.size=4"], ["--vary cutmix.size=4: trick 'cutmix' is not active in the baseline", "--enable cutmix"]),
    (["--enable", "cutmix", "--vary", "cutmix.size=4"], ["trick 'cutmix' is not active in the baseline"]),
    (["--vary", "tricks=[]"], ["--vary tricks=[]: 'tricks' is not a setting", "--disable, --enable or --swap"]),
    (["--vary", "model.bn_eps=0.001"], ["does nothing while trick 'noisy_bn' is active", "--vary model.bn_eps"]),
    (["--vary", "model.depth"], ["--vary model.depth: no '='"]),
    (["--vary", "model.depth=3,model.depth=2"], ["sets model.depth twice"]),
])
def test_a_bad_vary_is_one_line_before_anything_trains(cli, tmp_path, args, needles):
    code, out, err = cli("ablate", "--preset", "smoke", *args, "--out", tmp_path / "d")
    assert_one_line_error(code, err, 2, *needles)
    assert not (tmp_path / "d").exists()


def test_dry_run_lists_the_vary_arms_with_their_folders(cli):
    code, out, err = cli("ablate", "--preset", "smoke", "--vary", "model.depth=3", "--vary", "model.widths=[16,32,64]",
                         "--disable", "ema", "--dry-run", "--runs", "2")
    assert code == 0, err
    lines = [ln.split("\t") for ln in out.strip().splitlines()]
    assert [ln[0] for ln in lines] == ["baseline", "-ema", "model.depth=3", "model.widths=[16,32,64]"]
    assert "--out OUT/arms/set-model.depth=3 " in lines[2][1] and "--label=model.depth=3" in lines[2][1]
    assert "ema" in lines[2][2] and lines[2][2] == lines[0][2]  # the baseline's tricks
    assert "OUT/arms/set-model.widths=_16,32,64_-" in lines[3][1]


# --- the real thing: records, resume, summary -------------------------------------------------


def _records(d):
    return {p.name: json.loads(p.read_text()) for p in sorted(d.glob("run-*.json"))}


def test_vary_arm_trains_the_changed_setting_resumes_and_summarises(cli, tmp_path):
    out_dir = tmp_path / "D"
    args = ["ablate", "--preset", "smoke", "--vary", "model.depth=3", *set_args(FAST), "--device", "cpu", "--out", out_dir]
    code, out, err = cli(*args, "--runs", "1")
    assert code == 0, err
    base_dir, arm_dir = out_dir / "arms" / "baseline", out_dir / "arms" / "set-model.depth=3"
    base, arm = _records(base_dir), _records(arm_dir)
    assert sorted(base) == sorted(arm) == ["run-000-seed0.json"]
    assert all(r["config"]["model"]["depth"] == 2 for r in base.values())
    assert all(r["config"]["model"]["depth"] == 3 and r["status"] == "completed" for r in arm.values())
    for b, a in zip(base.values(), arm.values()):  # nothing else differs
        assert {**a["config"], "model": None} == {**b["config"], "model": None} and a["tricks"] == b["tricks"]
    assert "--label=model.depth=3" in shlex.split((arm_dir / "command.txt").read_text())  # ctx.arm
    assert json.loads((arm_dir / "config.json").read_text())["model"]["depth"] == 3
    plan = json.loads((out_dir / "ablation.json").read_text())
    assert plan["arms"][1] == {"name": "model.depth=3", "disabled": [], "enabled": [], "silenced": [], "sets": ["model.depth=3"]}
    s = json.loads((out_dir / "summary.json").read_text())
    assert [(a["name"], a["n"], a["dir"], a["sets"]) for a in s["arms"]] == [
        ("baseline", 1, "arms/baseline", []), ("model.depth=3", 1, "arms/set-model.depth=3", ["model.depth=3"])]
    assert s["arms"][1]["n_paired"] == 1
    assert any(ln.split()[:2] == ["model.depth=3", "1"] for ln in out.splitlines())  # the table
    assert "| model.depth=3 | 1 |" in (out_dir / "summary.md").read_text()

    # --resume with one more seed: the finished runs are kept, only seed 1 trains
    before = {p: p.stat().st_mtime_ns for p in out_dir.glob("arms/*/run-*.json")}
    code, out, err = cli(*args, "--runs", "2", "--resume")
    assert code == 0, err
    after = {p: p.stat().st_mtime_ns for p in out_dir.glob("arms/*/run-*.json")}
    assert {p: after[p] for p in before} == before and len(after) == 4
    assert _records(arm_dir)["run-001-seed1.json"]["config"]["model"]["depth"] == 3
    assert _records(base_dir)["run-001-seed1.json"]["config"]["model"]["depth"] == 2
    s = json.loads((out_dir / "summary.json").read_text())
    assert [a["n"] for a in s["arms"]] == [2, 2] and s["partial"] is False

    # another --vary is another plan
    code, out, err = cli(*[a if a != "model.depth=3" else "model.widths=[16,32,64]" for a in args], "--runs", "2", "--resume")
    assert_one_line_error(code, err, 2, "holds an ablation of another plan")

    # hlb summary rebuilds it from the plan and the records
    (out_dir / "summary.json").unlink()
    code, out, err = cli("summary", out_dir)
    assert code == 0, err
    s = json.loads((out_dir / "summary.json").read_text())
    assert [(a["name"], a["n"], a["status"]) for a in s["arms"]] == [("baseline", 2, "completed"), ("model.depth=3", 2, "completed")]


# --- the plan read back ----------------------------------------------------------------------


@pytest.mark.parametrize("arm,why", [
    ({"name": "x", "sets": "a.b=1"}, "arm 'x': sets 'a.b=1' is not a list of KEY=VALUE settings"),
    ({"name": "x", "sets": ["a.b"]}, "is not a list of KEY=VALUE settings"),
    ({"name": "x", "sets": ["a..b=1"]}, "is not a list of KEY=VALUE settings"),
    ({"name": "x", "sets": []}, "arm 'x' switches no trick and changes no setting"),
    ({"name": "x", "sets": ["a.b=1"], "disabled": ["ema"]}, "sets belong to an arm of --vary alone"),
])
def test_a_plan_with_a_malformed_vary_arm_is_refused(arm, why):
    plan = plans.plan_of(AblateOptions(preset="smoke"), [plans.Arm("baseline"), plans.Arm("-ema", disabled=["ema"])])
    assert readback.check_plan({**plan, "arms": [*plan["arms"], arm]}) is not None
    assert why in readback.check_plan({**plan, "arms": [*plan["arms"], arm]})
    bad_base = {**plan, "arms": [{**plan["arms"][0], "sets": ["a.b=1"]}, plan["arms"][1]]}
    assert "sets belong to an arm of --vary alone, not to the baseline" in readback.check_plan(bad_base)


def test_summary_of_a_folder_whose_plan_has_a_bad_vary_arm_is_one_line(cli, tmp_path):
    plan = plans.plan_of(AblateOptions(preset="smoke"), [plans.Arm("baseline"), plans.Arm("a.b=1", sets=["a.b=1"])])
    assert readback.check_plan(plan) is None
    plan["arms"][1]["sets"] = [3]
    (tmp_path / "ablation.json").write_text(json.dumps(plan))
    code, out, err = cli("summary", tmp_path)
    assert_one_line_error(code, err, 2, "arm 'a.b=1': sets [3] is not a list of KEY=VALUE settings")


# --- --until-resolved, with stand-in children -------------------------------------------------

#: the vary arm gains a point on every seed: resolved at the first look
CHILD = r"""
import json, os, sys
out, runs, seed0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
for seed in range(seed0, seed0 + runs):
    path = os.path.join(out, f"run-{seed - seed0:03d}-seed{seed}.json")
    if os.path.exists(path):
        continue
    acc = 0.9 + ((seed * 7919) % 13 - 6) * 0.0003 + (0.01 if config["model"]["depth"] == 3 else 0.0)
    with open(path, "w") as f:
        json.dump({"seed": seed, "status": "completed", "accuracy": acc, "train_seconds": 1.0, "config": config}, f)
"""


def test_until_resolved_with_a_vary_arm(monkeypatch, tmp_path):
    monkeypatch.setattr(local_backend, "child_command", lambda opts, arm, arm_dir: [
        sys.executable, "-c", CHILD, str(arm_dir), str(opts.runs), str(opts.seed)])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    opts = AblateOptions(preset="smoke", vary=["model.depth=3"], runs=4, until_resolved=True, max_runs=12,
                         device="cpu", out=tmp_path)
    summary, code = battery.run_ablation(opts)
    assert code == 0, summary.get("error")
    arm = summary["arms"][1]
    assert arm["name"] == "model.depth=3" and arm["sequential"]["how"] == "effect +"
    assert arm["sequential"]["look"] < 12 and arm["dir"] == "arms/set-model.depth=3"
    plan = readback.read_plan(tmp_path)
    assert plan["sequential"]["max_runs"] == 12 and plan["arms"][1]["sets"] == ["model.depth=3"]


# --- the Ray backend -------------------------------------------------------------------------


def test_vary_arm_on_the_ray_backend_and_its_resume(tmp_path):
    """A Ray instance of this machine (started by hlb for the run): the task trains the arm's
    resolved config, the vary applied; --resume keeps its records and trains the rest."""
    pytest.importorskip("ray", reason="the Ray backend needs the 'ray' extra")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HLB_THREADS="1", OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    out_dir = tmp_path / "D"
    cmd = [sys.executable, "-m", "hlbcli.cli", "ablate", "--preset", "smoke", "--vary", "model.depth=3",
           "--device", "cpu", *set_args(FAST), "--backend", "ray", "--out", str(out_dir)]
    r = subprocess.run([*cmd, "--runs", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([*cmd, "--runs", "2", "--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 arms x 2 seeds (seeds 0..1) as 2 Ray task(s)" in r.stdout
    base, arm = _records(out_dir / "arms" / "baseline"), _records(out_dir / "arms" / "set-model.depth=3")
    assert len(base) == len(arm) == 2
    assert [r["config"]["model"]["depth"] for r in base.values()] == [2, 2]
    assert [r["config"]["model"]["depth"] for r in arm.values()] == [3, 3]
    s = json.loads((out_dir / "summary.json").read_text())
    assert [(a["name"], a["n"]) for a in s["arms"]] == [("baseline", 2), ("model.depth=3", 2)]
