"""`hlb tricks list/show` and the `hlbcli.testing` helpers for trick authors."""

from __future__ import annotations

import pytest
import torch
from pydantic import Field

from hlbcli import hookimpl, testing
from hlbcli.config import Settings
from hlbcli.contract import TrickInfo
from hlbcli.errors import ConfigError, UsageError
from hlbcli.plugins import builtin_tricks


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines()[1:]:
        cells = line.split()
        if cells:
            rows[cells[0]] = cells
    return rows


def test_tricks_list_shows_stages_origin_and_preset_column(cli):
    code, out, err = cli("tricks", "list", "--preset", "smoke")
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header == ["name", "stages", "summary", "origin", "in", "smoke"]
    rows = _rows(out)
    assert set(builtin_tricks()) <= set(rows)
    assert rows["ema"][1] == "step,run,eval"
    assert rows["ema"][-2:] == ["built-in", "on"]
    assert rows["cutmix"][1] == "data" and rows["cutmix"][-2:] == ["built-in", "off"]
    assert rows["label_smoothing"][1] == "loss"
    assert "lookahead-EMA" in out  # the one-line summary


def test_tricks_list_disable_leaves_a_trick_out(cli):
    code, out, _ = cli("tricks", "list", "--disable", "ema")
    assert code == 0
    assert "ema" not in _rows(out) and "tta" in _rows(out)
    code, _, err = cli("tricks", "list", "--disable", "emma")
    assert code == 2 and "unknown trick 'emma'" in err and "known tricks:" in err


def test_tricks_show_settings_types_defaults_meaning(cli):
    code, out, err = cli("tricks", "show", "ema")
    assert code == 0, err
    assert out.startswith("ema: lookahead-EMA")
    assert "origin: built-in; stages: step, run, eval" in out
    assert "every: int (>= 1) = 5  steps between updates" in out
    assert "base: float (>= 0, <= 1) = 0.95" in out


def test_tricks_show_unknown_is_a_usage_error(cli):
    code, out, err = cli("tricks", "show", "nope")
    assert code == 2 and "unknown trick 'nope'" in err and "Traceback" not in err


# --- hlbcli.testing ----------------------------------------------------------------------------


class Doubler:
    """A test trick: counts epochs, has settings."""

    NAME = "doubler"

    class S(Settings):
        factor: float = Field(2.0, gt=0, description="how much")

    def __init__(self):
        self.epochs: list[int] = []

    @hookimpl
    def hlb_trick_info(self):
        return TrickInfo(self.NAME, "test trick")

    @hookimpl
    def hlb_config_model(self):
        return self.NAME, self.S

    @hookimpl
    def hlb_epoch_end(self, epoch, metrics, ctx):
        self.epochs.append(epoch)


def test_manager_holds_only_core_and_given_plugins():
    d = Doubler()
    tm = testing.manager(d)
    assert tm.trick_names() == ["doubler"]
    assert tm.origins == {"doubler": "given"}
    registered = {n for n, p in tm.pm.list_name_plugin() if p is not None}
    assert registered == {"core", "doubler"}
    assert set(tm.settings_models()) == {"doubler"}
    tm2 = testing.manager(d, builtins=["flip"])
    assert tm2.trick_names() == ["flip", "doubler"]


def test_manager_checks_the_contract():
    class Bad:
        @hookimpl
        def hlb_trick_info(self):
            return TrickInfo("bad", "x")

        @hookimpl
        def hlb_epoch_end(self, epoch, nonsense):
            pass

    with pytest.raises(UsageError, match="does not match the hook contract.*nonsense"):
        testing.manager(Bad())
    with pytest.raises(TypeError, match="names="):
        testing.manager(object())
    assert testing.manager(object(), names=["anon"]).trick_names() == ["anon"]


def test_hook_recorder_counts_calls_and_stops():
    tm = testing.manager(Doubler())
    with testing.HookRecorder(tm) as rec:
        tm.hook.hlb_epoch_end(epoch=0, metrics={}, ctx=None)
        tm.hook.hlb_epoch_end(epoch=1, metrics={}, ctx=None)
        tm.hook.hlb_trick_info()
    assert rec.count("hlb_epoch_end") == 2 and rec.count("hlb_trick_info") == 1
    assert rec.names() == ["hlb_epoch_end", "hlb_epoch_end", "hlb_trick_info"]
    assert rec.calls[1][1]["epoch"] == 1
    tm.hook.hlb_epoch_end(epoch=2, metrics={}, ctx=None)
    assert rec.count("hlb_epoch_end") == 2  # stopped at exit


def test_synthetic_is_reexported_and_seeded():
    a, b = testing.synthetic(64, 16, seed=3), testing.synthetic(64, 16, seed=3)
    assert torch.equal(a.train_images, b.train_images) and a.num_classes == 10


def test_resolve_config_validates_the_section_and_applies_sets():
    cfg, tm = testing.resolve_config(Doubler(), sets=["doubler.factor=3.5"])
    assert cfg.doubler.factor == 3.5 and "doubler" in cfg.tricks and "ema" in cfg.tricks
    assert cfg.model.widths == [8, 16, 16]
    with pytest.raises(ConfigError, match="doubler.factor"):
        testing.resolve_config(Doubler(), sets=["doubler.factor=-1"])


def test_train_runs_in_process_and_calls_the_trick_each_epoch():
    d = Doubler()
    cfg, tm = testing.resolve_config(d, preset="smoke", disable=["ema", "tta", "whitening"], sets=["train.epochs=2"])
    with testing.HookRecorder(tm) as rec:
        summary = testing.train(cfg, tm)
    assert summary["n"] == 1 and summary["runs"][0]["tricks"][-1] == "doubler"
    assert d.epochs == [0, 1]
    assert rec.count("hlb_epoch_end") == 2
