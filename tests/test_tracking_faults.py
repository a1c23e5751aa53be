"""Trackers that misbehave, and trackers chosen wrongly: a tracker that changes what it is handed
changes nothing of hlb's; one that calls ``sys.exit`` at import, ``os._exit`` or raises
``KeyboardInterrupt`` is named (with its distribution); an entry point that names something else
says what it got; ``[track]`` and ``--set track.X`` and a garbage MLflow URI are one line each."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import textwrap

import pytest

import hlbcli.catalog as catalogs
import hlbcli.tracking as tracking
from test_errors import assert_one_line_error

F = ["--preset", "smoke", "--set", "train.epochs=1", "--set", "data.synthetic_train=1024", "--set", "data.synthetic_test=256"]


class MutatingTracker(tracking.Tracker):
    """Changes everything it is handed: clears, pops, edits nested values."""

    def start(self, command):
        command.config.clear()
        command.arms.append("x")

    def run_start(self, run):
        run.config["train"]["epochs"] = 99
        run.tricks.clear()

    def epoch(self, run, metrics):
        metrics.clear()

    def run_end(self, run, record, path):
        record["epochs"][0]["train_loss"] = -1.0
        record["config"]["train"].pop("epochs")
        record.pop("accuracy")
        record.clear()

    def end(self, summary, exit_code):
        summary["runs"].clear()
        summary.clear()


class InterruptingTracker(tracking.Tracker):
    def epoch(self, run, metrics):
        raise KeyboardInterrupt


class ExitingTracker(tracking.Tracker):
    def run_start(self, run):
        os._exit(9)


NOT_A_TRACKER = 3


class _Dist:
    def __init__(self, name: str):
        self.metadata, self.version, self.name = {"Name": name}, "1.2", name


@pytest.fixture
def trackers(monkeypatch, tmp_path):
    """Declare trackers in the ``hlb.trackers`` group, as the distribution ``hlb-trk`` 1.2
    would: ``declare(name=target, ...)``."""

    def declare(**targets):
        eps = [md.EntryPoint(name, target, tracking.GROUP)._for(_Dist("hlb-trk")) for name, target in targets.items()]
        real = md.entry_points
        monkeypatch.setattr(md, "entry_points", lambda **kw: md.EntryPoints(eps) if kw.get("group") == tracking.GROUP else real(**kw))

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return declare


def test_a_tracker_that_changes_what_it_is_handed_changes_nothing_of_hlbs(cli, tmp_path, trackers):
    trackers(mutate="test_tracking_faults:MutatingTracker")
    out = tmp_path / "out"
    code, stdout, err = cli("train", *F, "--out", out, "--track", "mutate")
    assert code == 0, err
    assert "warning" not in err and "error" not in err
    rec = json.loads(next(out.glob("run-*.json")).read_text())
    assert rec["status"] == "completed" and 0 <= rec["accuracy"] <= 1 and rec["config"]["train"]["epochs"] == 1
    assert rec["epochs"][0]["train_loss"] > 0 and rec["tricks"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 1 and summary["runs"][0]["accuracy"] == rec["accuracy"]
    assert f"{rec['accuracy'] * 100:.2f}" in stdout  # the command's own output, from its own record


def test_a_tracker_raising_keyboard_interrupt_or_calling_os_exit_is_named(cli, tmp_path, trackers):
    """No Ctrl-C came: the tracker's failure, named; the run goes on and exits 0."""
    trackers(ki="test_tracking_faults:InterruptingTracker", bye="test_tracking_faults:ExitingTracker")
    out = tmp_path / "out"
    code, _, err = cli("train", *F, "--out", out, "--track", "ki", "--track", "bye")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: tracker")]
    assert lines[0].startswith("warning: tracker bye failed: called os._exit(9) (the run and its record are kept;")
    assert lines[1].startswith("warning: tracker ki failed: raised KeyboardInterrupt (no Ctrl-C came)")
    assert json.loads(next(out.glob("run-*.json")).read_text())["status"] == "completed"


def test_a_tracker_calling_sys_exit_at_import_is_named_with_its_distribution(cli, tmp_path, trackers, monkeypatch):
    (tmp_path / "trk_exits.py").write_text(textwrap.dedent("""
        import sys
        sys.exit(5)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    trackers(quits="trk_exits:Tracker")
    code, _, err = cli("train", *F, "--track", "quits")
    assert_one_line_error(code, err, 2, "tracker 'quits' from hlb-trk 1.2 failed to import: called sys.exit(5)",
                          "leave out --track quits")


@pytest.mark.parametrize("target, what", [
    ("test_tracking_faults:NOT_A_TRACKER", "3 (int)"),
    ("test_tracking_faults", "the module test_tracking_faults"),
    ("test_tracking_faults:_Dist", "the class test_tracking_faults._Dist"),
])
def test_an_entry_point_that_is_no_tracker_says_what_it_got(cli, trackers, target, what):
    trackers(odd=target)
    code, _, err = cli("train", *F, "--track", "odd")
    assert_one_line_error(code, err, 2, f"tracker 'odd' from hlb-trk 1.2: its entry point {target} is {what}, not a Tracker subclass")


@pytest.mark.parametrize("target, what", [
    ("test_tracking_faults:NOT_A_TRACKER", "3 (int)"),
    ("test_tracking_faults:MutatingTracker", "the class test_tracking_faults.MutatingTracker"),
])
def test_an_entry_point_that_is_no_trick_says_what_it_got(cli, monkeypatch, target, what):
    eps = [md.EntryPoint("odd", target, catalogs.ENTRY_POINT_GROUP)._for(_Dist("hlb-odd"))]
    monkeypatch.setattr(catalogs, "third_party_entry_points", lambda: eps)
    code, _, err = cli("train", *F, "--enable", "odd")
    assert_one_line_error(code, err, 2, f"trick 'odd' from hlb-odd 1.2: its entry point {target} is {what}, not a trick",
                          "--disable odd")


def test_track_words_say_where_they_came_from(cli, tmp_path, trackers):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[track]\nnosuch = true\n")
    code, _, err = cli("train", *F, "--config", cfg)
    assert_one_line_error(code, err, 2, f"[track] nosuch in {cfg}: unknown tracker")
    for args in (["--set", "track.mlflow=true"], ["--set", "track={tensorboard=true}"]):
        code, _, err = cli("train", *F, *args)
        line = assert_one_line_error(code, err, 2, "trackers are not settings", "--track NAME[:TARGET] or a [track] table in the --config file")
        assert "did you mean" not in line
    preset = tmp_path / "p.toml"
    preset.write_text('tricks = []\n\n[track]\nmlflow = true\n')
    code, _, err = cli("train", "--preset", preset)
    assert_one_line_error(code, err, 2, f"a [track] table in preset {preset}: trackers are not settings")


@pytest.mark.parametrize("target, needle", [
    ("::bad", "neither a tracking URI (SCHEME://...) nor a path"),
    ("http:/x", "not a tracking URI of the form http://HOST:PORT"),
    ("sqlite:runs.db", "not a tracking URI of the form sqlite:///FILE"),
    ("ftp://host/x", "MLflow has no tracking store for the scheme 'ftp'"),
])
def test_an_unusable_mlflow_uri_is_refused_up_front(cli, tmp_path, trackers, target, needle):
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'hlbcli[mlflow]'")
    code, _, err = cli("train", *F, "--track", f"mlflow:{target}", "--out", tmp_path / "o")
    assert_one_line_error(code, err, 2, f"--track mlflow:{target}: {needle}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing trained, nothing made
