"""An arm is named one way on every screen (``-ema``, ``+cutmix``, ``tta->othertta``, a
``--vary`` arm's settings) and kept in a folder of another (``arms/no-ema``): the commands that
take an arm's folder take either (issue 36, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hlbcli import record
from hlbcli.experiments import plan as plans
from hlbcli.experiments.plan import AblateOptions, Arm
from test_errors import assert_one_line_error

ARMS = [Arm("baseline"), Arm("-ema", disabled=["ema"]), Arm("+cutmix", enabled=["cutmix"]),
        Arm("tta->othertta", disabled=["tta"], enabled=["othertta"], replaced={"tta": "othertta"}),
        Arm("train.lr=0.5", sets=["train.lr=0.5"])]


def _rec(seed: int, acc: float) -> dict:
    return {"seed": seed, "status": "completed", "accuracy": acc, "train_seconds": 1.5,
            "versions": record.versions(), "config": {"data": {"dataset": "synthetic"}}}


def _ablation(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "ablation.json").write_text(json.dumps(plans.plan_of(AblateOptions(preset="smoke", runs=2), ARMS)))
    for k, arm in enumerate(ARMS):
        (d / "arms" / arm.folder).mkdir(parents=True)
        for seed in (0, 1):
            (d / "arms" / arm.folder / f"run-{seed:03d}-seed{seed}.json").write_text(json.dumps(_rec(seed, 0.9 - k / 100 + seed / 1000)))
    return d


@pytest.mark.parametrize("arm", ARMS[1:], ids=lambda a: a.name)
def test_compare_takes_an_arms_name_or_its_folder(cli, tmp_path, arm):
    d = _ablation(tmp_path / "abl")
    assert arm.folder != arm.name
    code, by_name, err = cli("compare", d / "arms/baseline", d / "arms" / arm.name, "--json")
    assert code == 0, err
    assert err.strip() == f"note: arm '{arm.name}' is the folder {d / 'arms' / arm.folder}"
    code, by_folder, err = cli("compare", d / "arms/baseline", d / "arms" / arm.folder, "--json")
    assert code == 0, err
    assert "note:" not in err  # a folder that is one is read as it is, and nothing is said
    assert json.loads(by_name)["difference"] == json.loads(by_folder)["difference"]
    assert json.loads(by_name)["B"]["folder"] == str(d / "arms" / arm.folder)


def test_an_arms_name_that_is_neither_lists_the_arms(cli, tmp_path):
    d = _ablation(tmp_path / "abl")
    code, out, err = cli("compare", d / "arms/baseline", d / "arms/-emma")
    assert_one_line_error(code, err, 2, "is not a folder, nor the name of an arm of")
    assert "-ema (no-ema)" in err and "+cutmix (with-cutmix)" in err and "baseline" in err


def test_an_arms_folder_without_a_plan_lists_the_folders(cli, tmp_path):
    d = _ablation(tmp_path / "abl")
    (d / "ablation.json").unlink()
    code, out, err = cli("compare", d / "arms/baseline", d / "arms/-ema")
    assert_one_line_error(code, err, 2, "is not a folder, nor the name of an arm of")
    assert "no-ema" in err and "with-cutmix" in err


@pytest.mark.parametrize("command", ["summary", "plot", "report"])
def test_the_other_commands_that_take_an_arms_folder_take_its_name(cli, tmp_path, command):
    d = _ablation(tmp_path / "abl")
    if command == "plot":
        pytest.importorskip("matplotlib")
    if command in ("plot", "report"):
        assert cli("summary", d / "arms/no-ema")[0] == 0
    code, out, err = cli(command, d / "arms/-ema", *(["--out", tmp_path / "x.png"] if command == "plot" else []))
    assert f"note: arm '-ema' is the folder {d / 'arms/no-ema'}" in err
    assert code == 0, err
    if command == "plot":  # a file in the arm's folder, by the arm's name
        code, out, err = cli("plot", d / "arms/-ema/summary.json", "--out", tmp_path / "y.png")
        assert code == 0 and f"note: arm '-ema' is the folder {d / 'arms/no-ema'}" in err, err
    code, out, err = cli(command, d / "arms/-nothing")
    assert_one_line_error(code, err, 2, "is not a folder, nor the name of an arm of")


@pytest.mark.parametrize("command", ["train", "bench"])
def test_disabling_a_trick_that_is_off_is_refused_as_ablate_refuses_it(cli, command):
    code, out, err = cli(command, "--preset", "smoke", "--disable", "cutmix", "--set", "train.epochs=1")
    line = assert_one_line_error(code, err, 2, "--disable cutmix: the preset does not turn 'cutmix' on, so there is nothing to take away")
    assert "active tricks: whitening, dirac" in line and line.endswith("drop --disable cutmix)")
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "cutmix", "--dry-run")
    assert_one_line_error(code, err, 2, "--disable cutmix: the preset does not turn 'cutmix' on", "use --enable cutmix")
    # a trick --enable turns on may be named by --disable too: that contradiction has its own line
    code, out, err = cli(command, "--preset", "smoke", "--enable", "cutmix", "--disable", "cutmix")
    assert_one_line_error(code, err, 2, "--enable cutmix and --disable cutmix contradict each other")


@pytest.mark.parametrize("word,close", [("94x", "94"), ("smok", "smoke"), ("94-muno", "94-muon"), ("zzz", None)])
def test_an_unknown_preset_suggests_the_closest_name(cli, word, close):
    code, out, err = cli("train", "--preset", word)
    line = assert_one_line_error(code, err, 2, f"unknown preset '{word}'", "choose one of: 94, 94-muon")
    assert (f"did you mean '{close}'?" in line) if close else "did you mean" not in line


@pytest.mark.parametrize("command", [[], ["train"], ["ablate"], ["bench"], ["compare"], ["tricks", "list"], ["config", "show"]])
def test_flags_show_no_bool_type_in_help(cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = cli(*command, "--help")
    assert code == 0, err
    assert "--help" in out and "<bool>" not in out
    if command == ["train"]:
        assert "--quiet" in out and "<path>" in out  # the options that take a value keep their type


def test_the_readmes_quoting_rule_is_what_parse_value_does():
    """README: a bare word is a string; quotes are needed where a string would read as another
    TOML value, starts with a bracket, or sits inside a list."""
    from hlbcli.errors import UsageError
    from hlbcli.layers import parse_value

    assert parse_value("random") == parse_value('"random"') == "random"
    assert parse_value("two words") == "two words"
    assert parse_value("true") is True and parse_value('"true"') == "true"
    assert parse_value("5") == 5 and parse_value('"5"') == "5" and parse_value("inf") == float("inf")
    assert parse_value("2024-01-01") != "2024-01-01" and parse_value('"2024-01-01"') == "2024-01-01"
    assert parse_value('[16,"abc"]') == [16, "abc"] and parse_value('"[a]"') == "[a]"
    with pytest.raises(UsageError):
        parse_value("[16,abc]")


def test_the_report_says_what_an_arm_adds_removes_and_sets():
    """Issue 36, item 4: the config difference as what the arm does, not two trick lists."""
    from hlbcli.config import to_dict
    from hlbcli.layers import changes
    from hlbcli.report import config_section
    from hlbcli.resolve import resolve

    base = to_dict(resolve("94")[0])
    arm = to_dict(resolve("94", disable=["ema"], enable=["cutout"], sets=["train.lr=0.3"])[0])
    c = changes(base, arm)
    assert c["removes"] == ["ema"] and c["adds"] == ["cutout"]
    assert c["sets"] == [f"train.lr {base['train']['lr']} -> 0.3"]  # ema.* and cutout.* go with their tricks
    assert changes(base, base) == {"adds": [], "removes": [], "sets": []}
    html = config_section([{"name": "baseline", "config": base}, {"name": "arm", "config": arm}])
    assert '<table id="changes">' in html and "<td>cutout</td><td>ema</td>" in html
