"""``hlb search`` on ``smoke`` (synthetic data, 1.5 s a run on a CPU): the preset is the first
trial, a setting that clearly hurts is not the best and is pruned, every trial trains the
baseline's seeds, a stopped search resumes after each signal without losing or repeating a
trial, and the confirmation trains fresh seeds and writes best.toml only for a resolved winner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="hlb search needs the 'search' extra: pip install 'hlbcli[search]'")

HURTS = """
[settings]
"train.lr" = [11.5, 1150.0]
[tricks]
ema = [true, false]
"""
ENV = {"HLB_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _records(folder: Path) -> dict[str, bytes]:
    """The finished run records of ``folder`` (an interrupted run's record trains again)."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("run-*.json"))
            if json.loads(p.read_text())["status"] == "completed"}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search of 4 trials x 2 seeds over a space with a learning rate 100x too high."""
    tmp = tmp_path_factory.mktemp("search")
    (tmp / "space.toml").write_text(HURTS)
    out = tmp / "out"
    exe = Path(sys.executable).with_name("hlb")
    r = subprocess.run([str(exe), "search", "--preset", "smoke", "--space", str(tmp / "space.toml"), "--trials", "4",
                        "--seeds", "2", "--confirm-top", "0", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, **ENV))
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


def test_the_first_trial_is_the_preset_and_every_trial_trains_the_baselines_seeds(searched):
    out, stdout = searched
    s = _summary(out)
    first = s["trials"][0]
    assert first["number"] == 0 and first["folder"] == "baseline" and first["changes"] == "the preset"
    assert first["params"] == {"tricks.ema": True, "train.lr": 11.5} and first["diff"] == 0
    assert len(s["trials"]) == 4 and s["spent"]["trials"] == 4
    for folder in {t["folder"] for t in s["trials"]}:
        seeds = sorted(json.loads(p.read_text())["seed"] for p in (out / "arms" / folder).glob("run-*.json"))
        assert seeds == [0, 1]  # the same seeds as the baseline: paired
    # a trial that draws the preset's config again shares the baseline's records, untrained
    assert s["spent"]["runs"] == 2 * len({t["folder"] for t in s["trials"]})
    study = optuna.load_study(study_name="hlb-search", storage=f"sqlite:///{out / 'search.db'}")
    assert len(study.trials) == 4 and study.trials[0].params == first["params"]
    assert "| trial |" in (out / "summary.md").read_text() and "optuna-dashboard sqlite:///" in stdout


def test_a_setting_that_clearly_hurts_is_not_the_best(searched):
    s = _summary(searched[0])
    hurt = [t for t in s["trials"] if t["params"].get("train.lr") == 1150.0]
    assert hurt, "the sampler never drew the bad learning rate"  # seed 0 draws it in trials 1-3
    assert all(t["diff"] < -0.3 for t in hurt)
    best = next(t for t in s["trials"] if t["number"] == s["best"][0])
    assert best["params"]["train.lr"] == 11.5


def test_a_clearly_worse_trial_is_pruned_before_its_last_seed(cli, tmp_path):
    (tmp_path / "space.toml").write_text('[settings]\n"train.lr" = [11.5, 1150.0]\n')
    # the random sampler at seed 0 draws 1150 for trial 1; at --prune-alpha 0.5 the interval is
    # bounded from 2 seeds, so the looks are at 2 and 4 seeds
    code, out, err = cli("search", "--preset", "smoke", "--space", tmp_path / "space.toml", "--trials", "2", "--seeds", "4",
                         "--sampler", "random", "--prune-alpha", "0.5", "--confirm-top", "0", "--device", "cpu",
                         "--out", tmp_path / "out")
    assert code == 0, err
    t = _summary(tmp_path / "out")["trials"][1]
    assert t["params"] == {"train.lr": 1150.0} and t["state"] == "pruned"
    assert t["n"] == 2 and t["why"].startswith("pruned after 2 seeds: less accurate than the baseline")
    assert len(list((tmp_path / "out" / "arms" / "trial-0001").glob("run-*.json"))) == 2
    assert len(list((tmp_path / "out" / "arms" / "baseline").glob("run-*.json"))) == 4


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_search_resumes_with_no_trial_lost_or_run_twice(tmp_path, sig):
    (tmp_path / "space.toml").write_text('[settings]\n"train.lr" = { low = 5.0, high = 20.0 }\n')
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("hlb")
    cmd = [str(exe), "search", "--preset", "smoke", "--space", str(tmp_path / "space.toml"), "--trials", "2",
           "--seeds", "3", "--confirm-top", "0", "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **ENV))
    trial = out / "arms" / "trial-0001"
    deadline = time.monotonic() + 300
    while not list(trial.glob("run-*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), err
    if sig != signal.SIGKILL:
        assert f"interrupted by {signal.Signals(sig).name}" in err and "--resume" in err
        assert _summary(out)["partial"]
    before = {**_records(out / "arms" / "baseline"), **{f"t/{k}": v for k, v in _records(trial).items()}}
    assert 1 <= len(_records(trial)) < 3
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, env=dict(os.environ, **ENV))
    assert r.returncode == 0, r.stdout + r.stderr
    after = {**_records(out / "arms" / "baseline"), **{f"t/{k}": v for k, v in _records(trial).items()}}
    assert {k: after[k] for k in before} == before  # the finished runs kept as they were, none trained again
    assert len(_records(trial)) == 3 and len(_records(out / "arms" / "baseline")) == 3
    s = _summary(out)
    assert [t["number"] for t in s["trials"]] == [0, 1] and [t["state"] for t in s["trials"]] == ["complete", "complete"]
    assert sorted(p.name for p in (out / "arms").iterdir()) == ["baseline", "trial-0001"]


def test_resume_refuses_another_plan_and_a_folder_of_another_command(cli, searched, tmp_path):
    out = searched[0]
    (tmp_path / "space.toml").write_text('[settings]\n"train.lr" = [11.5, 5.0]\n')
    code, _, err = cli("search", "--preset", "smoke", "--space", tmp_path / "space.toml", "--out", out, "--resume")
    assert code == 2 and "holds a search of another plan (space:" in err
    code, _, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--out", out, "--resume")
    assert code == 2 and f"--out {out} holds a search" in err


def test_the_confirmation_trains_fresh_seeds_and_writes_best_only_for_a_resolved_winner(cli, searched, tmp_path):
    out = searched[0]
    code, stdout, err = cli("search", "--confirm", out, "--max-runs", "8", "--device", "cpu")
    assert code == 0, err
    s = _summary(out)
    conf = s["confirmation"]
    assert conf["seeds_from"] == 2 and conf["candidates"]  # the seeds after the search's 0..1
    c = conf["candidates"][0]
    assert c["trial"] == s["best"][0] and c["search"]["n"] == 2 and 4 <= c["fresh"]["n"] <= 8
    seeds = sorted(json.loads(p.read_text())["seed"] for p in (out / "confirm" / "arms" / "baseline").glob("run-*.json"))
    assert seeds[0] == 2 and len(seeds) == c["fresh"]["n"]
    assert "winner's curse" in stdout and "confirmation on fresh seeds from 2" in stdout
    best = out / "best.toml"
    assert best.exists() == c["winner"] == (conf["best"] is not None)
    if best.exists():  # a preset file that hlb takes, training the winner's config
        from hlbcli.config import to_dict
        from hlbcli.resolve import resolve

        cfg = to_dict(resolve(str(best))[0])
        trained = json.loads((out / "confirm" / "arms" / c["folder"] / "config.json").read_text())
        assert {k: v for k, v in cfg.items() if k != "description"} == {k: v for k, v in trained.items() if k != "description"}


def test_report_of_a_search_shows_the_trials_the_picture_and_the_confirmation(cli, searched):
    out = searched[0]
    code, stdout, err = cli("report", out)
    assert code == 0, err
    page = (out / "report.html").read_text()
    s = _summary(out)
    assert "Search over preset smoke (accuracy)" in page and 'id="trials"' in page
    assert page.count("<circle") == len([t for t in s["trials"] if t.get("n")])  # a point per trial with runs
    assert "<h2>Confirmation</h2>" in page and "http" not in page.split("<body>")[1].replace("http-equiv", "")


def test_summary_rebuilds_a_search_from_its_study_and_records(cli, searched):
    out = searched[0]
    before = _summary(out)
    (out / "summary.json").unlink()
    code, stdout, err = cli("summary", out)
    assert code == 0, err
    after = _summary(out)
    assert [(t["number"], t["state"], t["diff"]) for t in after["trials"]] == [(t["number"], t["state"], t["diff"]) for t in before["trials"]]
    assert "4 trials (4 complete)" in stdout
