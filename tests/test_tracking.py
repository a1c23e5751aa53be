"""Trackers (``--track``, ``[track]``): MLflow through the real package against a SQLite store
read back with its client, TensorBoard's event files read back, a failing tracker, a third
party's through the ``hlb.trackers`` entry-point group, and trackers kept apart from tricks."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest

import hlbcli.tracking as tracking

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'hlbcli[mlflow]'")
pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'hlbcli[tensorboard]'")

SMOKE = ["--preset", "smoke", "--set", "train.epochs=2", "--set", "data.synthetic_train=1024"]


class MemoTracker(tracking.Tracker):
    """A third party's tracker: notes every call."""

    calls: list[tuple] = []

    def start(self, command):
        MemoTracker.calls.append(("start", command.kind, self.target))

    def run_start(self, run):
        MemoTracker.calls.append(("run_start", run.arm, run.seed))

    def epoch(self, run, metrics):
        MemoTracker.calls.append(("epoch", run.arm, run.seed, metrics["epoch"]))

    def run_end(self, run, record, path):
        MemoTracker.calls.append(("run_end", run.arm, run.seed, record["status"], path and Path(path).name))

    def end(self, summary, exit_code):
        MemoTracker.calls.append(("end", exit_code))


class BoomTracker(tracking.Tracker):
    """A tracker whose server is down: every epoch raises."""

    def epoch(self, run, metrics):
        raise ConnectionError("tracking server at 127.0.0.1:9 refused the connection")


@pytest.fixture
def third_party(monkeypatch):
    """Trackers ``memo`` and ``boom`` declared in the ``hlb.trackers`` group, as an installed
    distribution would (this module is importable: the entry points load from it)."""
    MemoTracker.calls = []
    eps = [md.EntryPoint(name, f"test_tracking:{cls}", tracking.GROUP) for name, cls in
           (("memo", "MemoTracker"), ("boom", "BoomTracker"))]
    real = md.entry_points

    def entry_points(**kw):
        return md.EntryPoints(eps) if kw.get("group") == tracking.GROUP else real(**kw)

    monkeypatch.setattr(md, "entry_points", entry_points)


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)


def client_of(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")


def all_runs(client) -> list:
    exp = client.get_experiment_by_name("hlb")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def history(client, run, key) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def session_hparams(ea) -> dict:
    from tensorboard.plugins.hparams import metadata

    content = ea.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    info = metadata.parse_session_start_info_plugin_data(content)
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def test_train_tracks_to_mlflow_and_tensorboard(cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli("train", *SMOKE, "--runs", "2", "--out", out, "--track", "mlflow", "--track", "tensorboard:tb")
    assert code == 0, err
    assert "warning" not in err
    records = {json.loads(p.read_text())["seed"]: (p, json.loads(p.read_text())) for p in out.glob("run-*.json")}
    assert sorted(records) == [0, 1]

    c = client_of(out / "mlflow.db")  # the default store: a SQLite file in --out
    runs = all_runs(c)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["hlb.kind"] == "train"
    seeds = {int(r.data.params["seed"]): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(seeds) == [0, 1]
    for seed, r in seeds.items():
        path, rec = records[seed]
        assert r.info.status == "FINISHED"
        # params: the resolved config, flat
        assert r.data.params["train.epochs"] == "2.0" and r.data.params["model.widths"] == "[16, 32, 32]"
        assert r.data.params["data.synthetic_train"] == "1024"
        # per-epoch metrics, step = epoch, as the record's rows
        assert history(c, r, "train_loss") == [(row["epoch"], pytest.approx(row["train_loss"])) for row in rec["epochs"]]
        assert [s for s, _ in history(c, r, "test_accuracy")] == [1, 2]
        assert [s for s, _ in history(c, r, "seconds")] == [1, 2]
        # per-run metrics: accuracy and the timed phases
        assert r.data.metrics["accuracy"] == pytest.approx(rec["accuracy"])
        assert r.data.metrics["seconds_train"] == pytest.approx(rec["phases"]["train"])
        tags = r.data.tags
        assert tags["tricks"] == ", ".join(rec["tricks"]) and tags["device"] == rec["device"]
        assert tags["hlb_version"] == rec["versions"]["hlbcli"] and tags["status"] == "completed"
        assert tags.get("git_commit") == tracking.source_commit()
        # the record, as the artifact
        local = c.download_artifacts(r.info.run_id, path.name, str(tmp_path / f"dl{seed}"))
        assert json.loads(Path(local).read_text()) == rec
    assert parents[0].data.metrics["n"] == 2

    for seed, (_, rec) in records.items():  # TensorBoard: a run per seed, in TARGET
        ea = events(tmp_path / "tb" / "train" / f"seed{seed}")
        assert [(e.step, pytest.approx(e.value)) for e in ea.Scalars("train/loss")] == \
            [(row["epoch"], pytest.approx(row["train_loss"])) for row in rec["epochs"]]
        assert [e.step for e in ea.Scalars("test/accuracy")] == [1, 2]
        assert ea.Scalars("final/accuracy")[-1].value == pytest.approx(rec["accuracy"])
        hp = session_hparams(ea)
        assert hp["seed"] == seed and hp["train.epochs"] == 2 and hp["tricks"] == ", ".join(rec["tricks"])


def test_ablate_is_a_parent_run_with_arms_and_seeds_nested(cli, tmp_path, third_party):
    """2 arms x 2 seeds, logged by the parent from the records the arms' processes wrote; a
    tracker that fails on the way says so once and takes nothing with it."""
    out = tmp_path / "ab"
    code, _, err = cli("ablate", *SMOKE, "--runs", "2", "--disable", "ema", "--out", out, "--quiet",
                       "--track", "mlflow", "--track", "tensorboard", "--track", "boom", "--track", "memo:x")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "tracker" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: tracker boom failed: ConnectionError")
    assert "the run and its record are kept" in warnings[0]

    c = client_of(out / "mlflow.db")
    runs = all_runs(c)
    by_id = {r.info.run_id: r for r in runs}
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].data.tags["hlb.kind"] == "ablate" and parent[0].info.status == "FINISHED"
    arms = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert sorted(arms) == ["-ema", "baseline"]
    assert "ema" not in arms["-ema"].data.tags["tricks"].split(", ") and "ema" in arms["baseline"].data.tags["tricks"]
    assert arms["-ema"].data.metrics["n"] == 2 and "delta_accuracy" in arms["-ema"].data.metrics
    for name, arm in arms.items():
        seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == arm.info.run_id]
        assert sorted(int(r.data.params["seed"]) for r in seeds) == [0, 1]
        for r in seeds:
            assert by_id[r.data.tags["mlflow.parentRunId"]].info.run_name == name
            assert r.data.tags["arm"] == name and r.info.status == "FINISHED"
            assert [s for s, _ in history(c, r, "test_accuracy")] == [1, 2]
            rec_file = [a.path for a in c.list_artifacts(r.info.run_id)]
            assert rec_file == [f"run-00{r.data.params['seed']}-seed{r.data.params['seed']}.json"]
    assert len(runs) == 1 + 2 + 4

    for arm, folder in (("baseline", "baseline"), ("-ema", "no-ema")):  # the arms' folders, as under arms/
        for seed in (0, 1):
            ea = events(out / "tensorboard" / folder / f"seed{seed}")
            assert [e.step for e in ea.Scalars("train/loss")] == [1, 2]
            assert session_hparams(ea)["arm"] == arm

    # the third party's tracker saw every run, in order, with its TARGET
    calls = MemoTracker.calls
    assert calls[0] == ("start", "ablate", "x") and calls[-1] == ("end", 0)
    assert sorted(c[1:3] for c in calls if c[0] == "run_end") == [("-ema", 0), ("-ema", 1), ("baseline", 0), ("baseline", 1)]
    assert sum(1 for c in calls if c[0] == "epoch") == 8


def test_config_track_section_is_not_a_setting(cli, tmp_path, third_party):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[train]\nepochs = 1\n\n[track]\nmemo = "from-config"\ntensorboard = false\n')
    out = tmp_path / "out"
    code, _, err = cli("train", "--preset", "smoke", "--config", cfg, "--out", out)
    assert code == 0, err
    assert MemoTracker.calls[0] == ("start", "train", "from-config")
    assert not (tmp_path / "tensorboard").exists() and not (out / "tensorboard").exists()
    rec = json.loads(next(out.glob("run-*.json")).read_text())
    assert "track" not in rec["config"]
    # the same config without the table resumes the folder: tracking is not what a run trained
    cfg.write_text("[train]\nepochs = 1\n")
    code, _, err = cli("train", "--preset", "smoke", "--config", cfg, "--out", out, "--resume", "--track", "memo:cli")
    assert code == 0, err
    cfg.write_text("[train]\nepochs = 1\n\n[track]\nmlflow = 3\n")
    code, _, err = cli("train", "--preset", "smoke", "--config", cfg)
    assert code == 2 and err.count("\n") == 1 and "[track] mlflow = 3" in err


def test_bench_is_tracked_as_it_trains(cli, third_party):
    code, out, err = cli("bench", *SMOKE, "--set", "train.epochs=1", "--runs", "2", "--track", "memo")
    assert code == 0, err
    calls = MemoTracker.calls
    assert calls[0] == ("start", "bench", None) and calls[-1] == ("end", 0)
    assert [c for c in calls if c[0] == "run_end"] == [("run_end", None, 0, "completed", None), ("run_end", None, 1, "completed", None)]
    assert [c[0] for c in calls[1:4]] == ["run_start", "epoch", "run_end"]


def test_bench_against_tracks_each_side_as_an_arm_in_the_order_they_ran(cli, tmp_path, third_party):
    """The sides' processes write records; this process tells the trackers of each, as arm A
    or B, in the order of the alternation."""
    out = tmp_path / "alt"
    code, _, err = cli("bench", *SMOKE, "--against-set", "train.epochs=1", "--runs", "2", "--out", out,
                       "--track", "mlflow", "--track", "tensorboard", "--track", "memo")
    assert code == 0, err
    calls = MemoTracker.calls
    assert calls[0] == ("start", "bench", None) and calls[-1] == ("end", 0)
    ends = [c for c in calls if c[0] == "run_end"]
    assert [c[1:3] for c in ends] == [("A", 0), ("B", 0), ("B", 1), ("A", 1)]
    assert [c[4] for c in ends] == ["run-000-seed0.json", "run-000-seed0.json", "run-001-seed1.json", "run-001-seed1.json"]
    assert [c[3] for c in calls if c[0] == "epoch" and c[1] == "A"] == [1, 2, 1, 2]
    assert [c[3] for c in calls if c[0] == "epoch" and c[1] == "B"] == [1, 1]

    c = client_of(out / "mlflow.db")
    runs = all_runs(c)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["hlb.kind"] == "bench" and parent.info.status == "FINISHED"
    arms = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(arms) == ["A", "B"] and float(arms["B"].data.params["train.epochs"]) == 1
    for name, arm in arms.items():
        seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == arm.info.run_id]
        assert sorted(int(r.data.params["seed"]) for r in seeds) == [0, 1]
        assert all(r.data.tags["arm"] == name and r.info.status == "FINISHED" for r in seeds)
    for side, epochs in (("A", [1, 2]), ("B", [1])):
        ea = events(out / "tensorboard" / side / "seed1")
        assert [e.step for e in ea.Scalars("train/loss")] == epochs


def test_runs_a_hard_kill_left_running_end_as_killed_when_the_folder_is_used_again(cli, tmp_path):
    """A process killed hard (SIGKILL) cannot end its MLflow runs. The next command on its
    --out folder holds the folder's lock, so RUNNING runs tagged with that folder are dead ones:
    they end KILLED; another folder's stay as they are."""
    out = tmp_path / "out"
    out.mkdir()
    c = client_of(out / "mlflow.db")
    exp = c.create_experiment("hlb", artifact_location=(out / "mlflow-artifacts").as_uri())
    dead = c.create_run(exp, run_name="seed 0", tags={"out": str(out.resolve())}).info.run_id
    other = c.create_run(exp, run_name="seed 0", tags={"out": str((tmp_path / "elsewhere").resolve())}).info.run_id
    code, _, err = cli("train", *SMOKE, "--set", "train.epochs=1", "--out", out, "--track", "mlflow")
    assert code == 0, err
    assert c.get_run(dead).info.status == "KILLED" and c.get_run(other).info.status == "RUNNING"
    mine = [r for r in all_runs(c) if r.info.run_id not in (dead, other)]
    assert len(mine) == 1 and mine[0].info.status == "FINISHED" and mine[0].data.tags["out"] == str(out.resolve())


def test_a_tracker_that_cannot_start_keeps_the_run(cli, tmp_path):
    """A log folder that cannot be made, a tracking server that is down (nothing listens on
    the loopback's port 9): a line each, and the run as without them."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = tmp_path / "out"
    code, _, err = cli("train", *SMOKE, "--set", "train.epochs=1", "--out", out, "--track", f"tensorboard:{blocker}/tb",
                       "--track", "mlflow:http://127.0.0.1:9")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: tracker")]
    assert len(lines) == 2 and lines[0].startswith("warning: tracker tensorboard failed:")
    assert lines[1].startswith("warning: tracker mlflow failed: MlflowException") and "Connection refused" in lines[1]
    rec = json.loads(next(out.glob("run-*.json")).read_text())
    assert rec["status"] == "completed" and json.loads((out / "summary.json").read_text())["n"] == 1


def test_unknown_tracker_and_bad_words_are_one_line(cli, tmp_path, third_party):
    code, _, err = cli("train", "--preset", "smoke", "--track", "nosuch", "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert "--track nosuch: unknown tracker" in err and "mlflow, tensorboard, boom, memo" in err
    assert not (tmp_path / "o").exists()
    code, _, err = cli("ablate", "--preset", "smoke", "--track", "mlflow:", "--dry-run")
    assert code == 2 and err.count("\n") == 1 and "not NAME[:TARGET]" in err


def test_a_missing_extra_is_named_before_training(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_has_module", lambda name: name != "mlflow")
    for cmd in ("train", "bench", "ablate"):
        code, out, err = cli(cmd, "--preset", "smoke", "--track", "mlflow", "--out", tmp_path / cmd)
        assert code == 2 and err == "error: --track mlflow needs the mlflow package (pip install 'hlbcli[mlflow]')\n"
        assert not (tmp_path / cmd).exists()


def test_trackers_are_not_tricks(cli, third_party):
    """--leave-one-out makes an arm per trick, never per tracker; a tracker's name is no trick."""
    code, out, err = cli("ablate", "--preset", "smoke", "--leave-one-out", "--dry-run", "--track", "memo", "--track", "tensorboard")
    assert code == 0, err
    arms = [line.split("\t")[0] for line in out.splitlines() if "\t" in line]
    assert "memo" not in " ".join(arms) and "tensorboard" not in " ".join(arms) and len(arms) == 1 + 9
    assert "--track" not in out  # the arms' processes track nothing: the parent does
    code, _, err = cli("train", "--preset", "smoke", "--disable", "memo")
    assert code == 2 and "memo" in err
