"""The Ray backend's faults end in seconds with one ``error:`` line: an address that answers but
is not Ray, a task no node can run, a stale cluster file, a cluster that wants a token, a head
killed mid-battery, a stop signal while Ray starts. Real servers and Ray heads on 127.0.0.1
only; every wait bounded."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import set_args, tiny_sets
from ray_head import free_port, start_head

ray = pytest.importorskip("ray", reason="the Ray backend's tests need the 'ray' extra: pip install 'hlbcli[ray]'")

from hlbcli.errors import UsageError  # noqa: E402
from hlbcli.experiments.ray_cluster import ClusterLost, Health, fit  # noqa: E402
from hlbcli.experiments.ray_probe import http2_answer  # noqa: E402

FAST = tiny_sets("data.synthetic_train=128", "data.synthetic_test=64", "train.epochs=1")
# about a second a run on one core: the head can be killed between two
SLOW = tiny_sets("data.synthetic_train=2048", "data.synthetic_test=256", "train.epochs=2")
ABLATE = ["ablate", "--preset", "smoke", "--disable", "ema", "--device", "cpu", "--backend", "ray"]


_HOME: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _home():
    """A home folder of this module's own: a Ray started here writes ~/.ray/auth_token, and a
    token there must not change what the tests see."""
    home = tempfile.mkdtemp(prefix="hlbhome")
    _HOME[:] = [home]
    yield
    shutil.rmtree(home, ignore_errors=True)


def _env(**more: str) -> dict[str, str]:
    """This environment without any Ray address or token, plus ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    return {**env, "HOME": _HOME[0], "HLB_THREADS": "1", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", **more}


def _hlb(*args, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hlbcli.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _one_error_line(err: str, start: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), err


@contextmanager
def _ray_head(token: str | None):
    """A Ray head on 127.0.0.1 (2 CPUs, no GPU, token auth when ``token``), as tests/test_ray.py
    starts one: yields (address, env for a client, the head's process)."""
    tmp = tempfile.mkdtemp(prefix="hlbrf", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = _env(**(dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) if token else {}))
    proc = None
    try:
        proc, address = start_head(tmp, env, head_env={**env, "HLB_TEST_RAY_HEAD": tmp})
        yield address, env, proc
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # quicker than ray stop's 30 s, and nothing to keep
            proc.wait()
        _kill_left(tmp)  # its workers too: they carry its mark in their environment
        shutil.rmtree(tmp, ignore_errors=True)


def _left(mark: str) -> list[int]:
    """Processes whose command line or environment names ``mark`` (a Ray temp folder): Ray's
    workers rename themselves (ray::IDLE) but keep the environment they were started with."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if any(mark.encode() in (d / f).read_bytes() for f in ("cmdline", "environ")):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _none_left(mark: str, within: float = 20) -> bool:
    deadline = time.monotonic() + within
    while _left(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _left(mark)


def _kill_left(mark: str) -> None:
    for pid in _left(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def token_head():
    with _ray_head(secrets.token_hex(16)) as h:
        yield h


# --- before ray.init: the address ---------------------------------------------------------------


def test_a_plain_http_server_is_not_a_ray_cluster_in_seconds(tmp_path):
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.1)
        t0 = time.monotonic()
        r = _hlb(*ABLATE, "--address", f"127.0.0.1:{port}", "--out", tmp_path / "d", env=_env(), timeout=60)
        took = time.monotonic() - t0
    finally:
        srv.kill()
        srv.wait()
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, f"error: --backend ray: 127.0.0.1:{port} is not a Ray cluster: it answers HTTP/1")
    assert took < 60 and not (tmp_path / "d").exists()


def test_a_server_that_says_nothing_is_not_ray(cli, tmp_path):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        t0 = time.monotonic()
        code, _, err = cli(*ABLATE, "--address", f"127.0.0.1:{srv.getsockname()[1]}", "--out", tmp_path / "d")
    assert code == 2 and "is not a Ray cluster: it said nothing in 3 s to an HTTP/2 client" in err, err
    assert len(err.strip().splitlines()) == 1 and time.monotonic() - t0 < 45 and not (tmp_path / "d").exists()


def _serve_once(answer: bytes) -> int:
    """A server on 127.0.0.1 that answers its first connection with ``answer``: its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def one():
        with srv:
            srv.settimeout(10)
            conn, _ = srv.accept()
            with conn:
                conn.recv(64)
                conn.sendall(answer)
                time.sleep(0.5)

    threading.Thread(target=one, daemon=True).start()
    return srv.getsockname()[1]


def test_the_http2_probe_tells_grpc_from_the_rest():
    settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64"  # SETTINGS, stream 0
    assert http2_answer("127.0.0.1", _serve_once(settings)) is None
    assert http2_answer("127.0.0.1", _serve_once(b"HTTP/1.0 400 Bad request\r\n\r\n")) == "it answers HTTP/1, not Ray's gRPC"
    assert http2_answer("127.0.0.1", _serve_once(b"\x00\x00\x00\x07\x00\x00\x00\x00\x00")) == "it does not speak gRPC"
    assert http2_answer("127.0.0.1", _serve_once(b"")) == "it closed the connection without a word"


# --- after joining: what a task asks against what the nodes have ---------------------------------


def _nodes(*cpu_gpu) -> list[dict]:
    return [{"Alive": True, "Resources": {"CPU": c, "GPU": g} if g else {"CPU": c}} for c, g in cpu_gpu]


def _opts(cpus=1, device="auto"):
    return types.SimpleNamespace(cpus_per_task=cpus, device=device)


def test_a_task_no_node_can_run_is_refused_naming_both_sides():
    assert fit(_opts(2), _nodes((2, 0))) == {"num_cpus": 2, "num_gpus": 0}
    assert fit(_opts(8), _nodes((2, 0), (16, 1))) == {"num_cpus": 8, "num_gpus": 1}
    with pytest.raises(UsageError) as e:
        fit(_opts(8), _nodes((2, 0)))
    assert e.value.line() == ("--cpus-per-task 8: no node of the Ray cluster has 8 CPUs for a task "
                              "(the cluster has 1 node(s): 2 CPU and 0 GPU) (use --cpus-per-task 2 or less)")
    with pytest.raises(UsageError, match=r"has a GPU and 8 CPUs for a task .*4 CPU and 1 GPU, 32 CPU and 0 GPU\)$") as e:
        fit(_opts(8), _nodes((4, 1), (32, 0)))  # auto picks the GPU: only its node counts
    assert e.value.hint == "use --cpus-per-task 4 or less"
    with pytest.raises(UsageError, match="--device cuda: the Ray cluster has no GPU"):
        fit(_opts(1, "cuda"), _nodes((8, 0)))
    dead = [{"Alive": False, "Resources": {"CPU": 64}}, *_nodes((2, 0))]
    with pytest.raises(UsageError, match="2 CPU and 0 GPU"):
        fit(_opts(4), dead)


# --- the lost head: detection ---------------------------------------------------------------------


def test_health_tells_a_lost_head_from_a_slow_moment():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    h = Health(f"127.0.0.1:{port}", "127.0.0.1:1234", lost_after=10, every=1)
    h.check(now=100.0)
    h.confirm(now=100.5)  # answering: nothing raised
    srv.close()
    with pytest.raises(ClusterLost) as e:
        h.confirm(now=101.0)
    assert e.value.exit_code == 1 and f"the Ray cluster at 127.0.0.1:1234 was lost: its head (127.0.0.1:{port})" in e.value.message
    h = Health(f"127.0.0.1:{port}", "x", lost_after=10, every=1)
    h.check(now=200.0)  # down since 200: not yet lost
    h.check(now=200.5)  # too soon to look again
    h.check(now=205.0)
    with pytest.raises(ClusterLost, match="has not answered for 10 s"):
        h.check(now=210.0)
    Health(None, "ray://somewhere").confirm()  # Ray Client: no head to look at, never lost here


# --- the cluster with a token ----------------------------------------------------------------------


def test_joining_without_the_token_names_the_token(token_head, tmp_path):
    address, env, _ = token_head
    t0 = time.monotonic()
    r = _hlb(*ABLATE, "--address", address, "--out", tmp_path / "d", env=_env())
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, f"error: --backend ray: the Ray cluster at {address} requires an auth token (RAY_AUTH_TOKEN)")
    r = _hlb(*ABLATE, "--address", address, "--out", tmp_path / "d", env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32))
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, f"error: --backend ray: the Ray cluster at {address} refused this auth token (RAY_AUTH_TOKEN)")
    assert time.monotonic() - t0 < 90 and not (tmp_path / "d").exists()


def test_more_cpus_per_task_than_any_node_has_fails_at_once(token_head, tmp_path):
    address, env, _ = token_head
    t0 = time.monotonic()
    r = _hlb(*ABLATE, "--address", address, "--cpus-per-task", "8", "--out", tmp_path / "d", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, "error: --cpus-per-task 8: no node of the Ray cluster has 8 CPUs for a task "
                              "(the cluster has 1 node(s): 2 CPU and 0 GPU)")
    assert time.monotonic() - t0 < 90 and not (tmp_path / "d").exists()


# --- no --address: a new instance on this machine, whatever /tmp/ray says -------------------------


@pytest.fixture
def ray_tmp():
    """A Ray temp folder of its own ($RAY_TMPDIR): nothing of another cluster is found there,
    and whatever Ray starts in it can be found (and is ended) afterwards."""
    tmp = tempfile.mkdtemp(prefix="hlbrt", dir="/tmp")
    try:
        yield tmp
    finally:
        _kill_left(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def test_without_address_a_stale_cluster_file_is_not_followed(ray_tmp, tmp_path):
    stale = Path(ray_tmp) / "ray"
    stale.mkdir()
    (stale / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # a cluster long gone
    t0 = time.monotonic()
    r = _hlb(*ABLATE, "--runs", "1", *set_args(FAST), "--out", tmp_path / "d", env=_env(RAY_TMPDIR=ray_tmp), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on a cluster of 0 GPU and" in r.stdout and time.monotonic() - t0 < 200
    assert [a["n"] for a in json.loads((tmp_path / "d" / "summary.json").read_text())["arms"]] == [1, 1]
    assert _none_left(ray_tmp), "the Ray instance hlb started outlived it"


def _start_and_wait_for_ray(ray_tmp: str, tmp_path: Path, env_more: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hlbcli.cli", *ABLATE, "--runs", "1", *set_args(FAST),
                             "--out", str(tmp_path / "d")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(RAY_TMPDIR=ray_tmp, **env_more))
    deadline = time.monotonic() + 60
    while not list(Path(ray_tmp).glob("ray/session_*")):  # ray.init is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "Ray did not start in 60 s"
        time.sleep(0.02)
    return proc


def test_while_ray_starts_the_stop_signals_stay_with_the_watchdog():
    """ray.init sets a SIGTERM handler that raises SystemExit wherever the main thread is; while
    the watchdog runs, such a call is left unapplied (the watchdog's one line stays the only
    output), other signals are set as asked, and everything is as before afterwards."""
    from hlbcli.experiments.ray_cluster import watchdog

    real, before, usr1 = signal.signal, signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)

    def theirs(signum, frame):
        raise SystemExit(signum)

    try:
        with watchdog("starting Ray on this machine", 30, UsageError("too slow", "wait")):
            ours = signal.getsignal(signal.SIGTERM)
            assert ours is not before
            signal.signal(signal.SIGTERM, theirs)  # what ray.init does first
            assert signal.getsignal(signal.SIGTERM) is ours
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        assert signal.signal is real and signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal = real
        signal.signal(signal.SIGUSR1, usr1)
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_ray_starts_is_obeyed_at_once(ray_tmp, tmp_path, sig):
    proc = _start_and_wait_for_ray(ray_tmp, tmp_path, {})
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=45)
    finally:
        proc.kill()
    assert time.monotonic() - t0 < 30
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    _one_error_line(err, f"error: interrupted ({signal.Signals(sig).name}) while starting Ray on this machine")
    assert _none_left(ray_tmp), "Ray's processes outlived hlb"


def test_ray_init_has_a_time_limit(ray_tmp, tmp_path):
    t0 = time.monotonic()
    r = _hlb(*ABLATE, "--out", tmp_path / "d", env=_env(RAY_TMPDIR=ray_tmp, HLB_RAY_CONNECT_TIMEOUT="0.5"), timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, "error: --backend ray: a new Ray instance on this machine did not come up in 0.5 s")
    assert f"look at Ray's logs under {ray_tmp}/ray/session_latest/logs" in r.stderr  # where $RAY_TMPDIR put them
    assert time.monotonic() - t0 < 90 and not (tmp_path / "d").exists()
    assert _none_left(ray_tmp), "Ray's processes outlived hlb"


def test_a_ray_that_fails_to_start_is_one_line_naming_its_logs(ray_tmp, tmp_path):
    """Ray's dashboard dies at start (an aiohttp that will not import): Ray's lines about it
    stay off the terminal; the one line names the logs where $RAY_TMPDIR put them."""
    (tmp_path / "shadow" / "aiohttp").mkdir(parents=True)
    (tmp_path / "shadow" / "aiohttp" / "__init__.py").write_text("raise ImportError('no aiohttp here (a test)')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "shadow"), os.environ.get("PYTHONPATH")]))
    r = _hlb(*ABLATE, "--out", tmp_path / "d", env=_env(RAY_TMPDIR=ray_tmp, PYTHONPATH=path), timeout=240)
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, "error: --backend ray: Ray did not start on this machine: ")
    assert r.stderr.rstrip().endswith(f"(look at Ray's logs under {ray_tmp}/ray/session_latest/logs)") and not (tmp_path / "d").exists()
    assert _none_left(ray_tmp), "Ray's processes outlived hlb"


# --- the head killed mid-battery ------------------------------------------------------------------


def test_a_head_killed_mid_battery_ends_with_one_error_line_and_keeps_the_runs(tmp_path):
    token = secrets.token_hex(16)
    with _ray_head(token) as (address, env, head):
        out = tmp_path / "D"
        proc = subprocess.Popen([sys.executable, "-m", "hlbcli.cli", *ABLATE, "--runs", "6", *set_args(SLOW),
                                 "--address", address, "--block", "6", "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 240
            while not list(out.glob("arms/*/run-*.json")):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no run finished in 240 s"
                time.sleep(0.05)
            os.killpg(head.pid, signal.SIGKILL)  # the head and all it started: gone at once
            t0 = time.monotonic()
            text, err = proc.communicate(timeout=90)
        finally:
            proc.kill()
        took = time.monotonic() - t0
    assert proc.returncode == 1, text + err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the Ray cluster at {address} was lost: its head") and "--resume" in last, err
    assert sum(1 for ln in err.splitlines() if ln.startswith("error:")) == 1, err
    assert took < 90, took  # it hung for minutes before: bounds are loose, the machine may be busy
    s = json.loads((out / "summary.json").read_text())
    assert s["partial"] is True and sum(a["n"] for a in s["arms"]) >= 1
