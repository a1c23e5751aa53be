"""The one interrupt-and-summary tail (``hlbcli.experiments.tail.run_to_summary``) that
``hlb train --runs`` and both ``hlb ablate`` backends end through: what it stops, writes, says and
returns for each way a batch ends."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import set_args, tiny_sets
from hlbcli.errors import HlbError, RunsKept
from hlbcli.experiments.tail import run_to_summary
from hlbcli.signals import Interrupted


class Calls:
    def __init__(self, fail_write: bool = False):
        self.stopped: list[str] = []
        self.writes: list[bool] = []
        self.fail_write = fail_write

    def stop(self, status: str) -> None:
        self.stopped.append(status)

    def write(self, partial: bool) -> dict:
        self.writes.append(partial)
        if self.fail_write:
            raise HlbError("cannot write summary.json: No space left on device", "free some space")
        return {"n": 2, "partial": partial}

    def finish(self) -> tuple[dict, int]:
        return {"n": 3, "partial": False}, 0


def _raise(e):
    def train(got):
        raise e

    return train


def test_a_normal_end_is_finish():
    c = Calls()
    assert run_to_summary(lambda got: None, c.write, c.finish, c.stop) == ({"n": 3, "partial": False}, 0)
    assert c.stopped == [] and c.writes == []


def test_interrupted_stops_writes_and_says_what_was_kept(tmp_path):
    c = Calls()
    summary, code = run_to_summary(_raise(Interrupted(signal.SIGTERM)), c.write, c.finish, c.stop, out=tmp_path)
    assert code == 143 and c.stopped == ["interrupted"] and c.writes == [True]
    assert summary["error"] == (f"interrupted by SIGTERM: 2 finished run(s) kept in {tmp_path} "
                                "(rerun the same command with --resume to train the rest)")


def test_an_error_that_keeps_runs_names_its_own_hint(tmp_path):
    c = Calls()
    e = RunsKept("the Ray cluster at h:1 was lost: its head no longer answers", "start it again and --resume", exit_code=1)
    summary, code = run_to_summary(_raise(e), c.write, c.finish, c.stop, out=tmp_path)
    assert code == 1 and c.stopped == ["stopped"]
    assert summary["error"] == f"{e.message}; 2 finished run(s) kept in {tmp_path} (start it again and --resume)"


def test_any_other_error_stops_writes_and_goes_up_even_when_the_write_fails():
    c = Calls(fail_write=True)
    with pytest.raises(ZeroDivisionError):
        run_to_summary(_raise(ZeroDivisionError("x")), c.write, c.finish, c.stop)
    assert c.stopped == ["stopped"] and c.writes == [True]


def test_a_stop_signal_during_the_summary_waits_for_it():
    """A second SIGTERM while the partial summary is written is held, not obeyed."""
    c = Calls()

    def write(partial: bool) -> dict:
        os.kill(os.getpid(), signal.SIGTERM)  # lands while the tail holds stop signals
        return c.write(partial)

    summary, code = run_to_summary(_raise(Interrupted(signal.SIGINT)), write, c.finish, c.stop)
    assert code == 130 and c.writes == [True] and summary["error"].startswith("interrupted by SIGINT")


def test_an_interrupted_ablation_says_so_on_stderr_also_with_quiet(cli, monkeypatch, tmp_path):
    from hlbcli.experiments import local_backend

    def interrupted(self, battery, got):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(local_backend.LocalBackend, "train", interrupted)
    code, out, err = cli("ablate", "--preset", "smoke", *set_args(tiny_sets()), "--disable", "ema", "--quiet",
                         "--out", tmp_path / "D")
    assert code == 130
    assert f"error: interrupted by SIGINT: 0 finished run(s) kept in {tmp_path / 'D'}" in err and "--resume" in err
    assert (tmp_path / "D" / "summary.json").exists()
