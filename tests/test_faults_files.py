"""Faults of files and paths (issue 19): planted links, lock files removed by hand, a Ctrl-C
or a kill while the dataset cache is written, pickles that run code, flat images, names too
long, ``~user`` and broken links. Through the CLI where a user meets them."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import set_args, tiny_sets
from test_errors import assert_one_line_error

TINY = set_args(tiny_sets())
SMOKE = ["train", "--preset", "smoke", *TINY]
CIFAR = [*SMOKE, "--set", 'data.dataset="cifar10"', "--no-download", "--quiet"]
BATCHES = [f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]


def _batch(i: int, n: int = 64) -> dict:
    rng = np.random.default_rng(i)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}


def _write_cifar(root: Path, protocol: int = pickle.DEFAULT_PROTOCOL, **bad) -> Path:
    """A tiny ``cifar-10-batches-py`` under ``root``; ``bad`` maps a file name to the object
    pickled there instead of a good batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(BATCHES):
        (folder / name).write_bytes(pickle.dumps(bad.get(name, _batch(i)), protocol=protocol))
    return folder


def _hlb_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".hlb"))


# --- 1. a lock file planted as a link ----------------------------------------------------------


def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_untouched(cli, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / ".hlb-lock").symlink_to(victim)
    code, _, err = cli(*SMOKE, "--out", out, "--quiet")
    assert_one_line_error(code, err, 2, f"--out {out}", f"{out / '.hlb-lock'} is a symbolic link", str(victim))
    assert victim.read_text() == "precious\n"
    assert not list(out.glob("run-*.json"))
    code, _, err = cli("summary", out)  # hlb summary claims the folder the same way
    assert_one_line_error(code, err, 2, f"folder {out}", "is a symbolic link")
    assert victim.read_text() == "precious\n"


def test_a_lock_planted_as_a_dangling_symlink_creates_nothing(cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".hlb-lock").symlink_to(tmp_path / "made-by-hlb")
    code, _, err = cli(*SMOKE, "--out", out, "--quiet")
    assert_one_line_error(code, err, 2, "is a symbolic link")
    assert not (tmp_path / "made-by-hlb").exists()


def test_a_lock_planted_as_a_hard_link_is_refused(cli, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "o"
    out.mkdir()
    os.link(victim, out / ".hlb-lock")
    code, _, err = cli(*SMOKE, "--out", out, "--quiet")
    assert_one_line_error(code, err, 2, "2 names (hard links)")
    assert victim.read_text() == "precious\n"


def test_records_replace_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    from hlbcli import record

    victim = tmp_path / "victim.json"
    victim.write_text("precious\n")
    (tmp_path / "summary.json").symlink_to(victim)
    record.write_json(tmp_path / "summary.json", {"n": 1})
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "summary.json").is_symlink() and json.loads((tmp_path / "summary.json").read_text()) == {"n": 1}
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o666 & ~record._UMASK  # the usual mode, not mkstemp's


# --- 2. only the holder removes its lock --------------------------------------------------------


def test_a_release_leaves_the_lock_of_another_claim(cli, tmp_path):
    from hlbcli import record

    first = record.claim(tmp_path)
    lock = tmp_path / ".hlb-lock"
    lock.unlink()  # removed by hand: a second writer gets in (accepted)
    second = record.claim(tmp_path)
    try:
        inode = lock.stat().st_ino
        first.release()  # must not remove the second one's lock
        assert lock.exists() and lock.stat().st_ino == inode
        code, _, err = cli(*SMOKE, "--out", tmp_path, "--quiet")  # so a third is refused
        assert_one_line_error(code, err, 2, "is in use by another hlb")
    finally:
        second.release()
    assert not lock.exists()  # the holder's own release removes it
    code, _, err = cli(*SMOKE, "--out", tmp_path, "--quiet")
    assert code == 0, err


def test_a_release_does_not_remove_a_link_put_in_place_of_its_lock(tmp_path):
    from hlbcli import record

    hold = record.claim(tmp_path)
    lock = tmp_path / ".hlb-lock"
    lock.unlink()
    lock.symlink_to(tmp_path)
    hold.release()
    assert lock.is_symlink()


# --- 3. Ctrl-C and kills while the dataset cache is written -----------------------------------


class _SignalInsideSave:
    """Pickled inside torch.save: sends the signal while torch's zip writer is open, as a
    Ctrl-C in the middle of the 180 MB write does."""

    def __init__(self, signum: int):
        self.signum = signum

    def __reduce__(self):
        os.kill(os.getpid(), self.signum)
        return (int, (0,))


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_a_stop_signal_during_the_cache_write_stops_the_run(cli, tmp_path, monkeypatch, signum, code):
    """It used to become a RuntimeError inside torch.save, taken for a full disk: the run went
    on and exited 0. Now the write finishes, then the run stops as for any Ctrl-C."""
    import hlbcli.data

    folder = _write_cifar(tmp_path / "d")
    real_save = hlbcli.data.torch.save
    monkeypatch.setattr(hlbcli.data.torch, "save", lambda obj, f: real_save({**obj, "signal": _SignalInsideSave(signum)}, f))
    got, out, err = cli(*CIFAR, "--data-dir", tmp_path / "d", "--out", tmp_path / "o")
    assert got == code, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("run-*.json"))
    files = _hlb_files(folder)
    assert len(files) == 1 and files[0].endswith(".pt")  # the cache, whole; no temporary


def test_an_interruption_torch_turns_into_an_error_is_never_taken_for_a_full_disk(tmp_path, monkeypatch):
    """Even with no signal held (a thread, say), a RuntimeError whose cause is a Ctrl-C is
    raised as the Ctrl-C, and the temporary is removed."""
    import hlbcli.data
    from hlbcli.signals import Interrupted

    def save(obj, f):
        f.write(b"PK half")
        try:
            raise Interrupted(signal.SIGINT)
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(hlbcli.data.torch, "save", save)
    with pytest.raises(Interrupted):
        hlbcli.data._write_cache_file(tmp_path / ".hlb-cache-x.pt", {})
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = r"""
import os, signal, sys
import hlbcli.data
def save(obj, f):
    f.write(b"PK" + b"x" * 100000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
hlbcli.data.torch.save = save
hlbcli.data.load_cifar("cifar10", sys.argv[1], download=False)
"""


def test_a_killed_cache_writer_leaves_a_temporary_the_next_run_removes(cli, tmp_path):
    folder = _write_cifar(tmp_path / "d")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "d")], env=env, capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    (tmp,) = _hlb_files(folder)
    assert tmp.endswith(".tmp") and tmp.split(".")[-3] != ""  # named with its writer's pid
    code, _, err = cli(*CIFAR, "--data-dir", tmp_path / "d")
    assert code == 0, err
    files = _hlb_files(folder)
    assert len(files) == 1 and files[0].endswith(".pt")


def test_leftovers_go_by_their_writers_life_and_their_age(tmp_path):
    from hlbcli.data import LEFTOVER_SECONDS, remove_leftovers

    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        dead = tmp_path / f".hlb-cache-aaaa.pt.{gone.pid}.abcd1234.tmp"
        live = tmp_path / f".hlb-cache-aaaa.pt.{alive.pid}.abcd1234.tmp"
        old_live = tmp_path / f".hlb-cache-bbbb.pt.{alive.pid}.efgh5678.tmp"
        no_pid_fresh = tmp_path / ".hlb-cache-cccc.pt.abcd1234.tmp"  # an older hlb's name
        no_pid_old = tmp_path / ".hlb-cache-dddd.pt.efgh5678.tmp"
        other = tmp_path / "notes.tmp"
        for p in (dead, live, old_live, no_pid_fresh, no_pid_old, other):
            p.write_bytes(b"x")
        past = time.time() - LEFTOVER_SECONDS - 60
        for p in (old_live, no_pid_old, other):
            os.utime(p, (past, past))
        remove_leftovers(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, no_pid_fresh.name, other.name])
    finally:
        alive.kill()
        alive.wait()


# --- 4. a pickle may run code: only numpy's array reconstruction is admitted -------------------


class _Exit:
    def __reduce__(self):
        return (sys.exit, (0,))


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_batch_that_calls_sys_exit_is_refused(cli, tmp_path):
    _write_cifar(tmp_path / "d", data_batch_2={b"data": _Exit(), b"labels": []})
    code, _, err = cli(*CIFAR, "--data-dir", tmp_path / "d", "--out", tmp_path / "o")
    assert_one_line_error(code, err, 1, "data_batch_2", "not a plain CIFAR batch", "sys.exit", "refuses to run")
    assert not list((tmp_path / "o").glob("run-*.json"))


def test_a_batch_that_runs_a_command_is_refused_before_it_runs(hlb_proc, tmp_path):
    marker = tmp_path / "pwned"
    _write_cifar(tmp_path / "d", test_batch=_System(marker))
    p = hlb_proc(*CIFAR, "--data-dir", tmp_path / "d")
    assert_one_line_error(p.returncode, p.stderr, 1, "test_batch", "posix.system" if os.name == "posix" else "system")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 5])
def test_upstream_pickles_still_load(tmp_path, protocol):
    """Protocol 2 (the upstream files' own) and 5, numpy scalars as labels: all admitted."""
    from hlbcli.data import load_cifar

    rng = np.random.default_rng(0)
    odd = {b"data": rng.integers(0, 256, (64, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 64)),
           b"batch_label": b"training batch 1 of 5"}
    _write_cifar(tmp_path, protocol=protocol, data_batch_1=odd)
    ds = load_cifar("cifar10", tmp_path, download=False)
    assert ds.train_images.shape == (320, 3, 32, 32) and ds.train_labels[:64].tolist() == odd[b"labels"]


REAL = Path(os.environ.get("HLB_CIFAR_DIR", "")) / "cifar-10-batches-py"


@pytest.mark.skipif(not (REAL / "data_batch_1").is_file(), reason="set HLB_CIFAR_DIR to a folder holding cifar-10-batches-py")
def test_the_real_batches_load_under_the_restricted_unpickler():
    from hlbcli.data import _read_batch

    x, y = _read_batch(REAL / "test_batch", "labels", 10)
    assert x.shape == (10000, 3, 32, 32) and y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


# --- 5. flat images ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,needle", [("zero", "all zero"), ("greys", "each a single constant value")])
def test_flat_training_images_are_refused_at_load(cli, tmp_path, kind, needle):
    rng = np.random.default_rng(0)
    bad = {}
    for i, name in enumerate(BATCHES[:5]):
        grey = np.zeros((64, 1), np.uint8) if kind == "zero" else rng.integers(0, 256, (64, 1), dtype=np.uint8)
        bad[name] = {b"data": np.repeat(grey, 3072, axis=1), b"labels": rng.integers(0, 10, 64).tolist()}
    folder = _write_cifar(tmp_path / "d", **bad)
    code, _, err = cli(*CIFAR, "--data-dir", tmp_path / "d", "--out", tmp_path / "o")
    assert_one_line_error(code, err, 1, f"dataset cifar10 in {folder}", needle, "320 training images")
    assert not list((tmp_path / "o").glob("run-*.json")) and _hlb_files(folder) == []


def test_flat_images_are_fine_while_some_are_not(tmp_path):
    """The first 256 all flat (four batches of 64), the last batch not: accepted."""
    from hlbcli.data import load_cifar

    flat = {name: {b"data": np.zeros((64, 3072), np.uint8), b"labels": [0] * 64} for name in BATCHES[:4]}
    _write_cifar(tmp_path, **flat)
    assert len(load_cifar("cifar10", tmp_path, download=False).train_images) == 320


# --- 6-8. paths: names too long, ~user, broken links -------------------------------------------

LONG = "n" * 300


@pytest.mark.parametrize(
    "make,option",
    [
        (lambda t: [*SMOKE, "--out", t / LONG], "--out"),
        (lambda t: [*SMOKE, f"--out={t / LONG / 'sub'}"], "--out"),
        (lambda t: [*CIFAR, "--data-dir", t / LONG], "--data-dir"),
        (lambda t: [*SMOKE, "--config", t / f"{LONG}.toml"], "--config"),
        (lambda t: ["train", "--preset", str(t / f"{LONG}.toml")], "--preset"),
        (lambda t: ["summary", t / LONG], "hlb summary"),
        (lambda t: ["ablate", "--preset", "smoke", "--disable", "ema", "--out", t / LONG], "--out"),
    ],
    ids=["out", "out=", "data-dir", "config", "preset", "summary", "ablate-out"],
)
def test_a_name_too_long_is_one_line_naming_the_option(cli, tmp_path, make, option):
    code, _, err = cli(*make(tmp_path))
    line = assert_one_line_error(code, err, 2, f"error: {option} {tmp_path}", "a name in it is too long", "bytes; the filesystem takes")
    assert "Errno" not in line


def test_a_name_too_long_anywhere_else_is_still_one_line(cli, tmp_path):
    code, _, err = cli("plot", tmp_path / LONG)
    assert_one_line_error(code, err, 2, "a name in it is too long")


@pytest.mark.parametrize("env", [False, True])
def test_data_dir_of_an_unknown_user(cli, monkeypatch, env):
    path = "~no-such-user-hlb/x"
    if env:
        monkeypatch.setenv("HLB_DATA_DIR", path)
        code, _, err = cli(*CIFAR)
        assert_one_line_error(code, err, 2, f"$HLB_DATA_DIR {path}", "no user 'no-such-user-hlb'")
    else:
        code, _, err = cli(*CIFAR, "--data-dir", path)
        assert_one_line_error(code, err, 2, f"--data-dir {path}", "no user 'no-such-user-hlb'")


def test_data_dir_tilde_is_expanded(cli, tmp_path, monkeypatch):
    _write_cifar(tmp_path / "home" / "d")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, _, err = cli(*CIFAR, "--data-dir", "~/d")
    assert code == 0, err


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_out_a_broken_symlink_says_what_it_is(cli, tmp_path, kind):
    link = tmp_path / "o"
    link.symlink_to(tmp_path / "missing" if kind == "dangling" else link)
    needle = "is a symbolic link to a missing folder" if kind == "dangling" else "is a symbolic link loop"
    code, _, err = cli(*SMOKE, "--out", link, "--quiet")
    assert_one_line_error(code, err, 2, f"--out {link}", needle)
    code, _, err = cli(*SMOKE, "--out", link / "sub", "--quiet")  # a broken link above it
    assert_one_line_error(code, err, 2, f"{link} {needle}")
    code, _, err = cli(*CIFAR, "--data-dir", link)
    assert_one_line_error(code, err, 2, f"--data-dir {link}", needle)
    assert not (tmp_path / "missing").exists()


def test_an_unreadable_batch_is_said_unreadable_not_corrupt(cli, tmp_path, monkeypatch):
    import builtins

    import hlbcli.data

    folder = _write_cifar(tmp_path / "d")
    real_open = builtins.open

    def no_read(path, *args, **kwargs):  # chmod 000 would not stop root, who runs CI
        if Path(path).name == "data_batch_3":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(hlbcli.data, "open", no_read, raising=False)
    code, _, err = cli(*CIFAR, "--data-dir", tmp_path / "d")
    line = assert_one_line_error(code, err, 1, str(folder / "data_batch_3"), "permission denied", "chmod a+r")
    assert "corrupt" not in line and "download again" not in line


def test_a_folder_where_a_batch_file_should_be_is_named_as_such(cli, tmp_path):
    folder = _write_cifar(tmp_path / "d")
    (folder / "test_batch").unlink()
    (folder / "test_batch").mkdir()
    code, _, err = cli(*CIFAR, "--data-dir", tmp_path / "d")
    line = assert_one_line_error(code, err, 2, str(folder / "test_batch"), "is a folder where a cifar10 batch file should be")
    assert "missing" not in line
