import tomllib

import pytest
from pydantic import ValidationError

from hlbcli.layers import dump_toml, parse_value, preset_names
from hlbcli.resolve import resolve


def test_config_show_applies_set(cli):
    code, out, err = cli("config", "show", "--preset", "smoke", "--set", "train.epochs=7.5", "--set", "ema.every=3")
    assert code == 0, err
    data = tomllib.loads(out)
    assert data["train"]["epochs"] == 7.5
    assert data["ema"]["every"] == 3
    assert data["model"]["widths"] == [16, 32, 32]


def test_layering_preset_then_file_then_set(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nepochs = 3\nlr = 5.0\n")
    cfg, _ = resolve("smoke", str(f), ["train.lr=7"])
    assert cfg.train.epochs == 3  # file over preset
    assert cfg.train.lr == 7  # --set over file
    assert cfg.train.batch_size == 128  # preset kept


def test_config_is_frozen():
    cfg, _ = resolve("smoke")
    with pytest.raises(ValidationError):
        cfg.train.lr = 1.0


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates(name):
    cfg, tm = resolve(name)
    assert tm.trick_names() == list(cfg.tricks)


def test_toml_round_trip():
    cfg, _ = resolve("94")
    data = cfg.model_dump(mode="json")
    assert tomllib.loads(dump_toml(data)) == data


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("1e-3") == 0.001 and parse_value("[1,2]") == [1, 2]
    assert parse_value("true") is True and parse_value("hello") == "hello" and parse_value('"x y"') == "x y"


def test_disable_and_enable(cli):
    cfg, tm = resolve("smoke", disable=["ema"], enable=["cutmix"])
    assert "ema" not in tm.trick_names() and "cutmix" in tm.trick_names()
    assert cfg.cutmix.size == 3


def test_unknown_key_and_unknown_trick_exit_2(cli):
    code, out, err = cli("config", "show", "--preset", "smoke", "--set", "no.such.key=1")
    assert code == 2 and "no" in err and "Traceback" not in err
    code, out, err = cli("train", "--preset", "smoke", "--disable", "nosuchtrick")
    assert code == 2 and "nosuchtrick" in err and "known tricks" in err
