"""``hlb search --space``: every bad space is one line naming its key, exit 2, before anything
trains; the preset is the first trial; a trial's draw becomes an arm (tricks, then the settings
of the sections on in it)."""

from __future__ import annotations

import textwrap

import pytest

optuna = pytest.importorskip("optuna", reason="hlb search needs the 'search' extra: pip install 'hlbcli[search]'")

from hlbcli.errors import UsageError  # noqa: E402
from hlbcli.experiments.plan import BASELINE, Arm, check_arm  # noqa: E402
from hlbcli.experiments.search_plan import SearchOptions  # noqa: E402
from hlbcli.experiments.search_space import check_space, parse_space, preset_params, read_space, suggest  # noqa: E402
from hlbcli.layers import parse_value  # noqa: E402


def _base(preset="smoke"):
    opts = SearchOptions(preset=preset, space="x")
    arm = Arm(BASELINE)
    check_arm(opts, arm)
    return opts, arm.config


def _space(tmp_path, text: str):
    p = tmp_path / "space.toml"
    p.write_text(textwrap.dedent(text))
    return p


BAD = [
    ("[model]\nwidths = [[8,8,8]]", "space model: not a table of a space"),
    ("", "nothing to search"),
    ("[settings]\n\"train.lr\" = { low = 1.0 }", "space settings.train.lr: a range without 'high'"),
    ("[settings]\n\"train.lr\" = { low = 5.0, high = 1.0 }", "space settings.train.lr: low 5 is not below high 1"),
    ("[settings]\n\"train.lr\" = { low = 0.0, high = 1.0, log = true }", "a log range from 0"),
    ("[settings]\n\"train.lr\" = { low = 1.0, high = 20.0, lo = 3 }", "unknown key 'lo' in a range"),
    ("[settings]\n\"train.lr\" = { low = 1.0, high = 20.0, step = -1 }", "step = -1 is not a positive number"),
    ("[settings]\n\"train.lr\" = { low = \"a\", high = 20.0 }", "low = \"a\" is not a finite number"),
    ("[settings]\n\"train.lr\" = []", "an empty list of choices"),
    ("[settings]\n\"train.lr\" = [11.5, 11.5]", "a value is listed twice"),
    ("[settings]\n\"train.lr\" = 3.0", "is neither a range nor a list of choices"),
    ("[tricks]\nema = [true]", "space tricks.ema: one choice [true] is no choice"),
    ("[tricks]\nema = [1, 0]", "space tricks.ema: 1 is not true, false or a trick's name"),
    ("[tricks]\nema = true", "space tricks.ema: true is not a list of choices"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_a_bad_space_is_one_line_naming_the_key(tmp_path, text, needle):
    with pytest.raises(UsageError) as e:
        read_space(str(_space(tmp_path, text)))
    assert needle in e.value.message and "\n" not in e.value.message


CHECKED = [
    ("[settings]\n\"train.lrr\" = [1.0, 2.0]", "space settings.train.lrr: "),
    ("[settings]\n\"train.epochs\" = { low = -3.0, high = 4.0 }", "space settings.train.epochs: -3.0: "),
    ("[settings]\n\"train.lr\" = { low = 20.0, high = 40.0 }", "the preset's value 11.5 lies outside 20..40"),
    ("[settings]\n\"nosuch.key\" = [1, 2]", "'nosuch' is not a section of the preset"),
    ("[settings]\n\"cutmix.size\" = [3, 5]", "trick 'cutmix' is off in the preset and the space never turns it on"),
    ("[tricks]\nnosuchtrick = [true, false]", "space tricks.nosuchtrick: unknown trick 'nosuchtrick'"),
    ("[tricks]\nema = [false, \"cutmix\"]", "the preset has it on, which is not a choice"),
    ("[tricks]\nema = [true, \"nosuch\"]", "unknown trick 'nosuch'"),
]


@pytest.mark.parametrize("text,needle", CHECKED)
def test_each_value_is_checked_against_the_settings_and_the_preset(tmp_path, text, needle):
    opts, base = _base()
    with pytest.raises(UsageError) as e:
        check_space(read_space(str(_space(tmp_path, text))), opts, base)
    assert needle in e.value.message and "\n" not in e.value.message


def test_the_cli_refuses_a_bad_space_in_one_line_before_anything_is_written(cli, tmp_path):
    space = _space(tmp_path, "[settings]\n\"train.lr\" = { low = 20.0, high = 40.0 }\n")
    code, out, err = cli("search", "--preset", "smoke", "--space", space, "--out", tmp_path / "out")
    assert code == 2
    assert err.strip().splitlines()[0].startswith("error: space settings.train.lr: the preset's value 11.5 lies outside")
    assert not (tmp_path / "out").exists()
    code, _, err = cli("search", "--preset", "smoke", "--out", tmp_path / "out")
    assert code == 2 and "hlb search needs --space FILE" in err
    code, _, err = cli("search", "--preset", "smoke", "--space", space, "--objective", "time")
    assert code == 2 and "--objective time needs --target ACC" in err
    code, _, err = cli("search", "--preset", "smoke", "--space", space, "--sampler", "grid")
    assert code == 2 and "--sampler grid: unknown" in err


SPACE = """
[settings]
"train.epochs" = { low = 2, high = 6 }
"train.lr" = { low = 1.0, high = 100.0, log = true }
"model.widths" = [[16, 32, 32], [8, 16, 16]]
"cutmix.size" = [3, 5]
[tricks]
ema = [true, false]
cutmix = [false, true]
"""


def test_the_preset_is_the_first_trial_and_draws_are_arms(tmp_path):
    opts, base = _base()
    space = read_space(str(_space(tmp_path, SPACE)))
    check_space(space, opts, base)
    first = preset_params(space, base)
    assert first == {"tricks.ema": True, "tricks.cutmix": False, "train.epochs": 4, "train.lr": 11.5,
                     "model.widths": "[16, 32, 32]"}  # (cutmix is off in the preset: its size is not drawn)
    enabled, disabled, replaced, sets = suggest(optuna.trial.FixedTrial(first), space, base)
    assert (enabled, disabled, replaced, sets) == ([], [], {}, [])  # the preset itself
    draw = {"tricks.ema": False, "tricks.cutmix": True, "train.epochs": 3, "train.lr": 20.0,
            "model.widths": "[8, 16, 16]", "cutmix.size": 5}
    enabled, disabled, replaced, sets = suggest(optuna.trial.FixedTrial(draw), space, base)
    assert enabled == ["cutmix"] and disabled == ["ema"] and replaced == {}
    assert sets == ["train.epochs=3", "train.lr=20.0", "model.widths=[8, 16, 16]", "cutmix.size=5"]
    assert all(parse_value(s.partition("=")[2]) is not None for s in sets)
    arm = Arm("trial-0001", disabled, enabled, [], replaced, sets=sets, dir="trial-0001")
    check_arm(opts, arm)
    assert arm.config["train"]["epochs"] == 3 and arm.config["cutmix"]["size"] == 5 and "ema" not in arm.config["tricks"]


def test_nested_tables_and_integer_ranges(tmp_path):
    space = parse_space({"settings": {"train": {"epochs": {"low": 2, "high": 8, "step": 2}, "lr": [11.5, 5.0]}}})
    assert [s.key for s in space.settings] == ["train.epochs", "train.lr"]
    epochs = space.settings[0]
    assert epochs.integer and epochs.holds(4) and not epochs.holds(5) and not epochs.holds(10)


def test_the_shipped_spaces_fit_their_presets():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "scripts" / "spaces").glob("*.toml")):
        opts, base = _base(path.stem)
        check_space(read_space(str(path)), opts, base)
