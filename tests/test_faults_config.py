"""Config and command-line faults of issue 19: a ``--set`` table merges into its section,
deep nesting is one line, a setting a trick overrides is refused, contradictory flags and a
``--resume`` without ``--out`` are errors, and an ablation trains the plan as resolved when it
started, refusing a data set too small for it before any arm starts."""

from __future__ import annotations

import json
import tomllib

import pytest

from conftest import set_args, tiny_sets
from test_errors import _write_batch, assert_one_line_error
from hlbcli.experiments import battery, plan as plans
from hlbcli.experiments.plan import AblateOptions

TINY = set_args(tiny_sets("train.epochs=1"))


def _show(cli, *args) -> dict:
    code, out, err = cli("config", "show", "--preset", "smoke", *args)
    assert code == 0, err
    return tomllib.loads(out)


def test_a_set_table_merges_into_its_section(cli):
    base = _show(cli)["train"]
    merged = _show(cli, "--set", "train={epochs=1}")["train"]
    assert merged["epochs"] == 1.0
    assert {k: v for k, v in merged.items() if k != "epochs"} == {k: v for k, v in base.items() if k != "epochs"}
    assert base["batch_size"] != 1024  # the preset's own value is what survives, not the default


def test_deep_nesting_is_one_line(cli, tmp_path):
    deep = "{a=" * 3000 + "1" + "}" * 3000
    code, out, err = cli("train", "--preset", "smoke", "--set", f"train.x={deep}")
    assert_one_line_error(code, err, 2, "nested more than 32 levels")
    moderately = "{a=" * 40 + "1" + "}" * 40
    code, out, err = cli("train", "--preset", "smoke", "--set", f"train.x={moderately}")
    assert_one_line_error(code, err, 2, "--set train.x is nested more than 32 levels")
    f = tmp_path / "deep.toml"
    f.write_text(f"[train]\nx = {deep}\n")
    code, out, err = cli("train", "--preset", "smoke", "--config", f)
    assert_one_line_error(code, err, 2, "config file is nested more than 32 levels", "deep.toml")


@pytest.mark.parametrize("key", ["model.bn_eps=0.5", "model.bn_momentum=0.2"])
def test_a_core_setting_a_trick_overrides_is_refused(cli, key):
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--enable", "noisy_bn", "--set", key)
    assert_one_line_error(code, err, 2, key.split("=")[0], "noisy_bn", "does nothing")
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--enable", "noisy_bn", "--set", "model={bn_eps=0.5}")
    assert_one_line_error(code, err, 2, "model.bn_eps", "noisy_bn")
    # without the trick the setting does what it says; the trick's own key is the way with it
    assert _show(cli, "--disable", "noisy_bn", "--set", key)["model"][key.split("=")[0].split(".")[1]] == float(key.split("=")[1])
    assert _show(cli, "--enable", "noisy_bn", "--set", "noisy_bn.eps=0.5")["noisy_bn"]["eps"] == 0.5


def test_contradictory_flags_and_resume_without_out(cli):
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--enable", "ema", "--disable", "ema")
    assert_one_line_error(code, err, 2, "--enable ema and --disable ema")
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--resume")
    assert_one_line_error(code, err, 2, "--resume needs --out")
    code, out, err = cli("ablate", "--preset", "smoke", *TINY, "--disable", "ema", "--resume")
    assert_one_line_error(code, err, 2, "--resume needs --out")


def test_arms_train_the_plan_as_resolved_when_the_battery_started(monkeypatch, tmp_path):
    """A --config file edited while the battery runs changes nothing: each arm trains its
    config.json, written when it starts from the plan resolved before any arm did."""
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[train]\nlr = 3.0\n")
    real = plans.claim_out

    def edit_then_claim(*args, **kwargs):  # the plan is resolved; now the file changes
        cfg_file.write_text("[train]\nlr = 7.0\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(battery, "claim_out", edit_then_claim)
    opts = AblateOptions(preset="smoke", config=str(cfg_file), sets=tiny_sets("train.epochs=1"), disable=["ema"],
                         runs=1, device="cpu", out=tmp_path / "o", quiet=True)
    summary, code = battery.run_ablation(opts)
    assert code == 0, summary.get("error")
    for arm in ("baseline", "no-ema"):
        arm_dir = tmp_path / "o" / "arms" / arm
        assert json.loads((arm_dir / "config.json").read_text())["train"]["lr"] == 3.0
        rec = json.loads(next(arm_dir.glob("run-*.json")).read_text())
        assert rec["config"]["train"]["lr"] == 3.0
        assert "c.toml" not in (arm_dir / "command.txt").read_text()


def test_an_ablation_refuses_a_data_set_too_small_before_any_arm_starts(cli, tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 1, i)  # five training images in all
    _write_batch(folder / "test_batch", 4, 0)
    out = tmp_path / "o"
    code, _, err = cli("ablate", "--preset", "smoke", *TINY, "--set", 'data.dataset="cifar10"', "--disable", "ema",
                       "--data-dir", tmp_path / "data", "--no-download", "--out", out, "--device", "cpu")
    assert_one_line_error(code, err, 2, "larger than the training set (5 images)")
    assert not (out / "arms").exists()


def test_the_config_is_frozen_deeply_and_still_pickles_and_serialises_as_plain_lists():
    import copy
    import pickle

    from hlbcli.resolve import resolve

    cfg, _ = resolve("smoke", sets=["select.proxy_widths=[8,8]", "train.epochs=1"], enable=["select"])
    for edit in (lambda: cfg.model.widths.append(8), lambda: cfg.model.widths.__setitem__(0, 8),
                 lambda: cfg.select.proxy_widths.sort(), lambda: cfg.tricks.pop(), lambda: cfg.replaced.update(a="b")):
        with pytest.raises(TypeError, match="the config is frozen"):
            edit()
    again = pickle.loads(pickle.dumps(cfg.model))  # a section pickles (the whole is a model made at run time)
    assert again == cfg.model and copy.deepcopy(cfg) == cfg
    with pytest.raises(TypeError):
        again.widths.append(8)
    assert json.loads(cfg.model_dump_json())["model"]["widths"] == list(cfg.model.widths) == cfg.model.widths


@pytest.mark.parametrize("setting,needle", [
    ("train.lr=1e-300", "train.lr"),  # the decoupled weight decay is divided by it: NaN
    ("color_jitter.contrast=1e308", "color_jitter.contrast"),
    ("color_jitter.contrast=5", "color_jitter.contrast"),  # a negative factor inverts images
    ("color_jitter.brightness=1e300", "color_jitter.brightness"),
    ("muon.weight_decay=1e300", "muon.weight_decay"),
])
def test_absurd_finite_settings_are_refused_naming_the_key(cli, setting, needle):
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--enable", "color_jitter", "--enable", "muon",
                         "--set", setting)  # refused before anything trains
    line = assert_one_line_error(code, err, 2, needle)
    assert "less than or equal" in line or "greater than or equal" in line


def test_selective_tta_at_level_0_does_nothing_and_is_refused(cli):
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--set", "tta.level=0", "--set", "tta.fraction=0.25")
    assert_one_line_error(code, err, 2, "tta.fraction 0.25 does nothing at tta.level 0", "--disable tta")
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--set", "tta.level=0")
    assert code == 0, err  # level 0 alone (fraction 1) is a plain evaluation
