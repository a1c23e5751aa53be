import json

from conftest import set_args, tiny_sets


def test_train_tiny_writes_summary(cli, tmp_path):
    code, out, err = cli("train", "--preset", "smoke", *set_args(tiny_sets()), "--out", tmp_path, "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n"] == 1
    run = s["runs"][0]
    for key in ("seed", "accuracy", "train_seconds", "tricks", "config", "device", "versions", "epochs"):
        assert key in run
    assert 0 <= run["accuracy"] <= 1
    assert run["config"]["model"]["widths"] == [8, 16, 16]
    assert len(run["epochs"]) == 2


def test_smoke_preset_learns(cli, tmp_path):
    """The real smoke preset, unchanged: well above chance (10 classes)."""
    code, out, err = cli("train", "--preset", "smoke", "--out", tmp_path, "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["mean_accuracy"] > 0.5
    assert set(s["runs"][0]["tricks"]) >= {"whitening", "ema", "tta"}
