"""Faults outside the happy path (issue 10): strict values, claimed output folders and
--resume, dataset contents, filesystem failures, caches, plots. Each through the CLI, as a user meets it
(hlb ablate's own: test_faults_ablate.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import set_args, tiny_sets
from hlbcli.experiments import plan as plans, summary as summaries
from test_errors import assert_one_line_error

TINY = set_args(tiny_sets())
SMOKE = ["train", "--preset", "smoke", *TINY]


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))]


# --- values the validation used to let through ------------------------------------------------


@pytest.mark.parametrize(
    "sets,needles",
    [
        (["train.batch_size=true"], ["train.batch_size", "valid integer", "True"]),
        (["train.nesterov=1"], ["train.nesterov", "valid boolean"]),
        (["train.lr=true"], ["train.lr", "valid number"]),
        (["model.widths=[8,true]"], ["model.widths.1", "valid integer"]),
        (["train.batch_size=64.0"], ["train.batch_size", "valid integer"]),
        (["model.widths=[100000]"], ["model.widths", "at most 4096"]),
        (["data.synthetic_seed=9223372036854775808"], ["data.synthetic_seed", "less than or equal"]),
    ],
)
def test_strict_types_and_bounds(cli, sets, needles):
    code, out, err = cli(*SMOKE, *set_args(sets))
    assert_one_line_error(code, err, 2, *needles)


def test_a_float_setting_still_takes_an_integer(cli):
    code, out, err = cli("config", "show", "--preset", "smoke", "--set", "train.lr=2")
    assert code == 0, err
    assert "lr = 2.0" in out


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--seed", str(2**63)], ["--seed", "9223372036854775807"]),
        (["--seed", str(2**63 - 1), "--runs", "2"], ["goes past the largest seed", "smaller --seed"]),
        (["--seed", "-1"], ["--seed"]),
        (["--runs", "100000000"], ["--runs", "10000"]),
    ],
)
def test_seed_and_runs_bounds(cli, args, needles):
    code, out, err = cli(*SMOKE, *args)
    assert_one_line_error(code, err, 2, *needles)


@pytest.mark.parametrize("value", ["99999999999", "0", "x", "-2"])
def test_hlb_threads_out_of_range(cli, monkeypatch, value):
    monkeypatch.setenv("HLB_THREADS", value)
    code, out, err = cli(*SMOKE)
    assert_one_line_error(code, err, 2, "HLB_THREADS", "integer from 1 to")


def test_config_that_is_not_a_regular_file(cli, tmp_path):
    code, out, err = cli(*SMOKE, "--config", "/dev/zero")
    assert_one_line_error(code, err, 2, "not a regular file", "/dev/zero")
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    code, out, err = cli(*SMOKE, "--config", fifo)
    assert_one_line_error(code, err, 2, "not a regular file", "pipe.toml")
    code, out, err = cli("train", "--preset", "/dev/zero")
    assert_one_line_error(code, err, 2, "preset file is not a regular file")


@pytest.mark.parametrize("impl,why", [("foreach", "overflow"), ("fused", "nan")])
def test_overflow_inside_a_step_is_a_diverged_run(cli, tmp_path, impl, why):
    """lr 1e300: the foreach SGD overflows inside the optimizer step (a RuntimeError, not a NaN
    loss), the fused one makes the loss NaN; either way the run is recorded as diverged, the
    batch goes on, the summary is written."""
    code, out, err = cli(*SMOKE, "--set", "train.lr=1e300", "--set", f'train.optimizer_impl="{impl}"',
                         "--runs", "2", "--out", tmp_path, "--quiet")
    assert code == 1
    assert "Traceback" not in err and "internal error" not in err
    recs = _records(tmp_path)
    assert [r["status"] for r in recs] == ["diverged", "diverged"]
    assert why in recs[0]["message"] and "epoch 1" in recs[0]["message"]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n"] == 0 and s["n_started"] == 2 and s["partial"] is False


def test_a_run_that_fails_writes_its_record(cli, tmp_path, monkeypatch):
    """An unexpected error inside a run (a buggy trick): the error is reported, and the run's
    record and the summary are on disk."""
    from test_errors import install_trick

    def hlb_epoch_end(epoch, metrics, ctx):
        raise ValueError("a bug in a trick")

    install_trick(monkeypatch, "buggy", hlb_epoch_end=hlb_epoch_end)
    code, out, err = cli(*SMOKE, "--enable", "buggy", "--out", tmp_path, "--quiet")
    # a trick's bug: named as the trick's (hook, exception), exit 2
    assert code == 2 and "trick 'buggy'" in err and "hlb_epoch_end" in err and "ValueError: a bug in a trick" in err
    (rec,) = _records(tmp_path)
    assert rec["status"] == "failed" and "a bug in a trick" in rec["message"]
    assert json.loads((tmp_path / "summary.json").read_text())["partial"] is True


# --- output folders: claimed, refused with records, resumed ------------------------------------


def test_out_folder_in_use_is_refused_with_the_holders_pid(cli, tmp_path):
    from hlbcli import record

    hold = record.claim(tmp_path)  # another open file: flock conflicts within one process too
    try:
        code, out, err = cli(*SMOKE, "--out", tmp_path, "--quiet")
        assert_one_line_error(code, err, 2, f"--out {tmp_path} is in use by another hlb (pid {os.getpid()})")
        assert not list(tmp_path.glob("run-*.json"))
    finally:
        hold.release()
    code, out, err = cli(*SMOKE, "--out", tmp_path, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-000-seed0.json", "summary.json"]  # no lock left


def test_records_are_refused_without_resume_and_kept_with_it(cli, tmp_path):
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", tmp_path, "--quiet")
    assert code == 0, err
    before = {p.name: p.read_text() for p in tmp_path.glob("run-*.json")}
    code, out, err = cli(*SMOKE, "--runs", "3", "--out", tmp_path, "--quiet")
    assert_one_line_error(code, err, 2, "already holds the records", "--resume")
    assert {p.name: p.read_text() for p in tmp_path.glob("run-*.json")} == before  # nothing touched
    code, out, err = cli(*SMOKE, "--runs", "3", "--out", tmp_path, "--resume")
    assert code == 0, err
    assert "seed 0): completed, kept from run-000-seed0.json" in out and "seed 1): completed, kept" in out
    assert "(seed 2)" in out
    after = {p.name: p.read_text() for p in tmp_path.glob("run-*.json")}
    assert sorted(after) == ["run-000-seed0.json", "run-001-seed1.json", "run-002-seed2.json"]
    assert all(after[k] == v for k, v in before.items())  # finished seeds not retrained
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n"] == 3 and [r["seed"] for r in s["runs"]] == [0, 1, 2] and s["partial"] is False


def test_resume_retrains_an_interrupted_seed_in_place(cli, tmp_path):
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", tmp_path, "--quiet")
    assert code == 0, err
    path = tmp_path / "run-001-seed1.json"
    rec = json.loads(path.read_text())
    rec.update(status="interrupted", accuracy=None)
    path.write_text(json.dumps(rec))
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", tmp_path, "--resume", "--quiet")
    assert code == 0, err
    assert [r["status"] for r in _records(tmp_path)] == ["completed", "completed"]
    assert len(list(tmp_path.glob("run-*.json"))) == 2


def test_resume_refuses_another_config(cli, tmp_path):
    code, out, err = cli(*SMOKE, "--out", tmp_path, "--quiet")
    assert code == 0, err
    code, out, err = cli(*SMOKE, "--set", "train.epochs=3", "--out", tmp_path, "--resume", "--quiet")
    assert_one_line_error(code, err, 2, "--resume", "another config", "train.epochs: 2.0 vs 3.0")


def test_resume_reads_a_setting_a_record_predates_as_its_default(cli, tmp_path):
    """A record written before ``model.activation`` existed ran with its default (gelu): resume
    keeps it; a run asking for another activation still refuses it."""
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", tmp_path, "--quiet")
    assert code == 0, err
    path = tmp_path / "run-000-seed0.json"
    rec = json.loads(path.read_text())
    del rec["config"]["model"]["activation"]
    path.write_text(json.dumps(rec))
    (tmp_path / "run-001-seed1.json").unlink()
    code, out, err = cli(*SMOKE, "--set", 'model.activation="silu"', "--runs", "2", "--out", tmp_path, "--resume", "--quiet")
    assert_one_line_error(code, err, 2, "--resume", "another config", "model.activation: 'gelu' vs 'silu'")
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", tmp_path, "--resume", "--quiet")
    assert code == 0, err
    assert [r["seed"] for r in _records(tmp_path)] == [0, 1]
    assert "activation" not in json.loads(path.read_text())["config"]["model"]  # kept as it was


# --- dataset contents, checked at load --------------------------------------------------------

import pickle  # noqa: E402

import numpy as np  # noqa: E402

CIFAR = [*SMOKE, "--set", 'data.dataset="cifar10"', "--no-download", "--quiet"]


def _write_cifar(root: Path, **bad) -> Path:
    """A tiny ``cifar-10-batches-py`` under ``root``; ``bad`` maps a file name to the batch
    dict it gets instead of a good one."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        rng = np.random.default_rng(i)
        d = {b"data": rng.integers(0, 256, (64, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 64).tolist()}
        (folder / name).write_bytes(pickle.dumps(bad.get(name, d)))
    return folder


def _good(n=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


@pytest.mark.parametrize(
    "name,batch,needles",
    [
        ("labels 0..10", lambda x, y: {b"data": x, b"labels": y[:-1] + [10]}, ["data_batch_2", "labels run from", "to 10, outside 0..9"]),
        ("negative label", lambda x, y: {b"data": x, b"labels": [-1] + y[1:]}, ["labels run from -1"]),
        ("float labels", lambda x, y: {b"data": x, b"labels": [v + 0.5 for v in y]}, ["labels are float64, not integers"]),
        ("int64 pixels above 255", lambda x, y: {b"data": x.astype(np.int64) + 100, b"labels": y}, ["pixel values run from", "outside 0..255"]),
        ("float pixels", lambda x, y: {b"data": x.astype(np.float32) / 255, b"labels": y}, ["pixels are float32", "uint8"]),
        ("NHWC", lambda x, y: {b"data": x.reshape(-1, 32, 32, 3), b"labels": y}, ["(64, 32, 32, 3), channels last"]),
        ("wrong shape", lambda x, y: {b"data": x[:, :1000], b"labels": y}, ["shape (64, 1000)"]),
        ("count mismatch", lambda x, y: {b"data": x, b"labels": y[:10]}, ["64 images but 10 labels"]),
    ],
)
def test_bad_dataset_contents_are_one_line(cli, tmp_path, name, batch, needles):
    x, y = _good()
    _write_cifar(tmp_path / "d", data_batch_2=batch(x, y))
    code, out, err = cli(*CIFAR, "--data-dir", tmp_path / "d")
    assert_one_line_error(code, err, 1, "dataset file", *needles)


def test_an_empty_test_set_is_refused(cli, tmp_path):
    _write_cifar(tmp_path / "d", test_batch={b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    code, out, err = cli(*CIFAR, "--data-dir", tmp_path / "d", "--out", tmp_path / "o")
    assert_one_line_error(code, err, 1, "test_batch", "holds no images")
    assert not list((tmp_path / "o").glob("run-*.json"))  # no "completed" run at accuracy 0


# --- the data folder: a file, read-only, full; one cache per dataset --------------------------


def test_data_dir_that_is_a_file(cli, tmp_path, monkeypatch):
    f = tmp_path / "a_file"
    f.write_text("x")
    code, out, err = cli(*CIFAR, "--data-dir", f)
    assert_one_line_error(code, err, 2, f"--data-dir {f} is not a folder", "point --data-dir at a folder")
    monkeypatch.setenv("HLB_DATA_DIR", str(f))
    code, out, err = cli(*SMOKE, "--set", 'data.dataset="cifar10"')  # download allowed: still no FileExistsError
    assert_one_line_error(code, err, 2, f"$HLB_DATA_DIR {f} is not a folder")


def _hlb_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".hlb"))


def test_a_data_folder_that_takes_no_cache_still_trains(cli, tmp_path, monkeypatch):
    """Read-only (no temporary file can be made there): train without the cache."""
    import hlbcli.record

    folder = _write_cifar(tmp_path / "d")

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hlbcli.record.tempfile, "mkstemp", read_only)
    code, out, err = cli(*CIFAR, "--data-dir", tmp_path / "d")
    assert code == 0, err
    assert _hlb_files(folder) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_data_folder_still_trains(cli, tmp_path):
    folder = _write_cifar(tmp_path / "d")
    folder.chmod(0o555)
    try:
        code, out, err = cli(*CIFAR, "--data-dir", tmp_path / "d")
    finally:
        folder.chmod(0o755)
    assert code == 0, err
    assert _hlb_files(folder) == []


def test_a_full_disk_while_caching_leaves_no_partial_cache(cli, tmp_path, monkeypatch):
    import hlbcli.data

    folder = _write_cifar(tmp_path / "d")

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(hlbcli.data.torch, "save", disk_full)
    code, out, err = cli(*CIFAR, "--data-dir", tmp_path / "d")
    assert code == 0, err
    assert _hlb_files(folder) == []


def test_one_cache_per_dataset(tmp_path):
    from hlbcli.data import load_cifar

    folder = _write_cifar(tmp_path)
    load_cifar("cifar10", tmp_path, download=False)
    (first,) = _hlb_files(folder)
    os.utime(folder / "data_batch_1", ns=(1, 1))  # a new time stamp: a new cache, the old one removed
    load_cifar("cifar10", tmp_path, download=False)
    (second,) = _hlb_files(folder)
    assert first != second and second.endswith(".pt")


# --- hlb plot --out --------------------------------------------------------------------------


@pytest.fixture
def plotted(tmp_path):
    pytest.importorskip("matplotlib")
    arms = [plans.Arm("baseline"), plans.Arm("-ema", disabled=["ema"])]
    for arm, accs in zip(arms, ([0.9, 0.91], [0.8, 0.82])):
        d = tmp_path / "arms" / arm.folder
        d.mkdir(parents=True)
        for i, a in enumerate(accs):
            (d / f"run-{i:03d}-seed{i}.json").write_text(json.dumps({"seed": i, "status": "completed", "accuracy": a, "train_seconds": 1.0}))
    s = summaries.summarize(plans.AblateOptions(preset="smoke"), arms, tmp_path, {}, partial=False)
    (tmp_path / "summary.json").write_text(json.dumps(s))
    return tmp_path


def test_plot_out_folder_with_a_slash_writes_into_it(cli, plotted, tmp_path):
    (tmp_path / "pics").mkdir()
    code, out, err = cli("plot", plotted, "--out", f"{tmp_path / 'pics'}/")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "pics" / "accuracy.png") and (tmp_path / "pics" / "accuracy.png").exists()
    assert not (tmp_path / "pics.png").exists()
    code, out, err = cli("plot", plotted, "--out", tmp_path / "pics")  # an existing folder, no slash
    assert code == 0 and out.strip() == str(tmp_path / "pics" / "accuracy.png")


@pytest.mark.parametrize(
    "target,needles",
    [
        ("missing/", ["no such folder", "create it first"]),
        ("missing/a.png", ["the folder", "missing does not exist"]),
        ("a.xyz", ["cannot draw a .xyz file"]),
    ],
)
def test_plot_out_bad_targets(cli, plotted, tmp_path, target, needles):
    code, out, err = cli("plot", plotted, "--out", f"{tmp_path}/{target}")
    assert_one_line_error(code, err, 2, *needles)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".png", ".xyz"))]


def test_plot_into_a_folder_that_cannot_be_written(cli, plotted, tmp_path, monkeypatch):
    import errno

    from hlbcli import record

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(record.tempfile, "mkstemp", read_only)
    code, out, err = cli("plot", plotted, "--out", tmp_path / "a.png")
    assert_one_line_error(code, err, 1, "cannot write", "a.png", "Read-only file system")


def test_a_full_disk_while_writing_records_is_one_line(cli, tmp_path, monkeypatch):
    import errno

    from hlbcli import record

    real_mkstemp = record.tempfile.mkstemp

    def mkstemp(*a, prefix="", **k):
        if prefix.startswith(".run-001"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*a, prefix=prefix, **k)

    monkeypatch.setattr(record.tempfile, "mkstemp", mkstemp)
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", tmp_path, "--quiet")
    assert_one_line_error(code, err, 1, "cannot write", "run-001-seed1.json", "No space left", "free some space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-000-seed0.json", "summary.json"]  # no temporary, no lock


def test_summary_rebuilds_a_train_folder(cli, tmp_path):
    code, out, err = cli(*SMOKE, "--runs", "2", "--out", tmp_path, "--quiet")
    assert code == 0, err
    before = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").unlink()
    code, out, err = cli("summary", tmp_path)
    assert code == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n"] == 2 and s["mean_accuracy"] == pytest.approx(before["mean_accuracy"]) and s["rebuilt"] is True
    code, out, err = cli("summary", tmp_path / "nothing")
    assert_one_line_error(code, err, 2, "is not a folder")
    (tmp_path / "empty").mkdir()
    code, out, err = cli("summary", tmp_path / "empty")
    assert_one_line_error(code, err, 2, "no run records")
    assert not (tmp_path / "empty" / ".hlb-lock").exists()
