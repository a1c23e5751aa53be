"""A trick's bug is named as the trick's (issue 19): what a hook raises (``SystemExit``
included) or returns in place of what its spec asks for, and what a trick's code in the step
raises, is one line naming the trick, its origin and the hook, exit 2; the run's record says
``failed``, never ``completed`` or ``diverged``. ``hlb tricks list`` survives a broken trick."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import set_args, tiny_sets
from test_errors import assert_one_line_error, install_trick

SMOKE = ["train", "--preset", "smoke", *set_args(tiny_sets("train.epochs=1"))]


def file_trick(monkeypatch, tmp_path: Path, name: str, body: str):
    """A trick whose code lives in a real file (tracebacks point into it), registered like a
    built-in for this test."""
    import hlb_plugins

    mod_name = f"hlb_test_file_trick_{name}_{tmp_path.name}".replace("-", "_")  # one module per test
    (tmp_path / f"{mod_name}.py").write_text(textwrap.dedent(f"""
        import math, sys
        import torch
        from hlbcli import hookimpl
        from hlbcli.contract import StepAction, TrickInfo

        @hookimpl
        def hlb_trick_info():
            return TrickInfo({name!r}, "a test trick")
    """) + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(mod_name)
    monkeypatch.delitem(sys.modules, mod_name)  # at the end of the test
    monkeypatch.setitem(sys.modules, mod_name, mod)
    monkeypatch.setitem(hlb_plugins.BUILTINS, name, mod_name)
    return mod


def _record(out: Path) -> dict:
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))]
    assert len(recs) == 1
    return recs[0]


def _raise(exc):
    def fn(*args, **kwargs):
        raise exc

    return fn


@pytest.mark.parametrize(
    "hook,fn,needles",
    [
        ("hlb_epoch_end", lambda epoch, metrics, ctx: 1 / 0, ["hlb_epoch_end", "ZeroDivisionError"]),
        ("hlb_validate", _raise(ValueError("my check broke")), ["hlb_validate", "ValueError: my check broke"]),
        # the config is frozen deeply: its lists refuse in-place edits (it trained four widths, no word)
        ("hlb_validate", lambda cfg, data, model: cfg.model.widths.append(8), ["hlb_validate", "TypeError", "frozen"]),
        ("hlb_validate", lambda cfg, data, model: cfg.tricks.clear(), ["hlb_validate", "TypeError", "frozen"]),
        ("hlb_train_start", lambda ctx: sys.exit(0), ["hlb_train_start", "sys.exit(0)"]),
        ("hlb_model_init", lambda model, ctx: sys.exit(4), ["hlb_model_init", "sys.exit(4)"]),
        # no Ctrl-C came: the trick's, not an interrupt (exit 130)
        ("hlb_epoch_end", _raise(KeyboardInterrupt), ["hlb_epoch_end", "raised KeyboardInterrupt"]),
        ("hlb_validate", _raise(KeyboardInterrupt), ["hlb_validate", "raised KeyboardInterrupt"]),
        ("hlb_batch_transforms", lambda cfg, ctx: "abc", ["hlb_batch_transforms", "'abc' (str)", "Transform"]),
        ("hlb_step_actions", lambda ctx: [print], ["hlb_step_actions", "StepAction"]),
        ("hlb_evaluate", lambda ctx: {"accuracy": 1.7, "loss": 0.1}, ["hlb_evaluate", "accuracy 1.7, outside [0, 1]"]),
        ("hlb_evaluate", lambda ctx: {"accuracy": float("nan"), "loss": 0.1}, ["hlb_evaluate", "nan"]),
        ("hlb_evaluate", lambda ctx: {"loss": 0.1}, ["hlb_evaluate", "accuracy None"]),
    ],
)
def test_a_hook_that_raises_or_returns_the_wrong_thing_is_the_tricks_bug(cli, monkeypatch, tmp_path, hook, fn, needles):
    install_trick(monkeypatch, "buggy", **{hook: fn})
    code, out, err = cli(*SMOKE, "--enable", "buggy", "--out", tmp_path / "o")
    line = assert_one_line_error(code, err, 2, "trick 'buggy' (built-in)", *needles)
    assert "--disable buggy" in line
    recs = list((tmp_path / "o").glob("run-*.json"))
    if hook != "hlb_validate":  # hlb_validate runs before any seed starts: no run to record
        assert _record(tmp_path / "o")["status"] == "failed"
        assert "buggy" in _record(tmp_path / "o")["message"]
    else:
        assert recs == []


@pytest.mark.parametrize(
    "result,needles",
    [({"every": 3}, ["hlb_config_model", "Settings subclass"]), ("oops", ["hlb_config_model", "'oops' (str)"])],
)
def test_a_settings_hook_returning_the_wrong_thing(cli, monkeypatch, result, needles):
    install_trick(monkeypatch, "buggy", hlb_config_model=lambda: result)
    code, out, err = cli(*SMOKE, "--enable", "buggy")
    assert_one_line_error(code, err, 2, "trick 'buggy'", *needles)


def test_trick_info_returning_none_and_tricks_list_survives_it(cli, monkeypatch):
    install_trick(monkeypatch, "buggy", info=None)
    import hlb_plugins

    mod = sys.modules["hlb_test_trick_buggy"]
    from hlbcli import hookimpl

    mod.hlb_trick_info = hookimpl(lambda: None)
    code, out, err = cli(*SMOKE, "--enable", "buggy")
    assert_one_line_error(code, err, 2, "trick 'buggy'", "returned None from hlb_trick_info")
    code, out, err = cli("tricks", "list")
    assert code == 0, err
    assert "BROKEN" in out and "buggy" in out
    assert "whitening" in out and "ema" in out  # the others are still listed
    assert "buggy" in hlb_plugins.BUILTINS


@pytest.mark.parametrize(
    "body,needles",
    [
        ("""
        @hookimpl
        def hlb_step_actions(ctx):
            def act(step):
                raise RuntimeError("found a nan in my buffer")
            return [StepAction("act", act, every=2)]
        """, ["RuntimeError: found a nan in my buffer"]),
        ("""
        @hookimpl
        def hlb_step_actions(ctx):
            def act(step):
                return int(math.inf)
            return [StepAction("act", act, every=2)]
        """, ["OverflowError"]),
    ],
)
def test_a_tricks_code_in_the_step_is_its_bug_not_a_divergence(cli, monkeypatch, tmp_path, body, needles):
    """A trick's own error that mentions "nan" or overflows in Python was recorded as
    "diverged" and the batch went on; it is a failure of that trick."""
    file_trick(monkeypatch, tmp_path, "stepbug", body)
    code, out, err = cli(*SMOKE, "--enable", "stepbug", "--runs", "2", "--out", tmp_path / "o")
    assert_one_line_error(code, err, 2, "trick 'stepbug' (built-in)", *needles)
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "o").glob("run-*.json"))]
    assert [r["status"] for r in recs] == ["failed"]  # the batch stops: the next seed would fail alike


def test_a_wrapper_is_blamed_only_for_what_it_raises(cli, monkeypatch, tmp_path):
    """An error of the implementations a wrapper wraps passes through it unnamed as its own."""
    file_trick(monkeypatch, tmp_path, "wrapbug", """
        @hookimpl(wrapper=True)
        def hlb_loss_build(cfg, ctx):
            loss = yield
            raise KeyError("my wrapper's own bug")
    """)
    code, out, err = cli(*SMOKE, "--enable", "wrapbug")
    assert_one_line_error(code, err, 2, "trick 'wrapbug'", "hlb_loss_build", "KeyError")


def test_memory_errors_say_memory_and_what_sizes_it(cli, monkeypatch, tmp_path):
    install_trick(monkeypatch, "hungry", hlb_model_init=_raise(MemoryError()))
    code, out, err = cli(*SMOKE, "--enable", "hungry", "--out", tmp_path / "o")
    assert_one_line_error(code, err, 1, "out of memory", "train.batch_size", "model.widths")
    assert _record(tmp_path / "o")["status"] == "failed"


def test_an_overflowing_lr_is_still_a_divergence(cli, tmp_path):
    code, out, err = cli(*SMOKE, "--set", "train.lr=1e300", "--set", "train.momentum=0.8", "--out", tmp_path / "o")
    assert code == 1, err
    rec = _record(tmp_path / "o")
    assert rec["status"] == "diverged"
    # the divergence names what the user changed from the preset, the furthest first
    cause = "likeliest cause, the settings changed from the preset: train.lr=1e+300 (preset: 11.5)"
    assert cause in rec["message"] and cause in err
    assert "train.momentum" not in rec["message"]  # three at most, the furthest: 0.8 against 0.85 is not
