"""Joining a Ray cluster for ``hlb ablate --backend ray``, or starting one on this machine,
in seconds or with one line that says why not; and noticing, mid-battery, that it is gone.

Ray itself retries a bad address for minutes, with its warnings scrolling: joining a server
that is not Ray, a cluster that wants an auth token, or the stale cluster its auto-detection
found in ``/tmp/ray/ray_current_cluster``. So, before ``ray.init``
(:mod:`hlbcli.experiments.ray_probe`):

* the address must answer on its TCP port (5 s);
* it must speak HTTP/2, as Ray's GCS and Ray Client (both gRPC) do: a server that does not
  answer an HTTP/2 client preface with a SETTINGS frame within 3 s is not Ray;
* Ray's GCS must give its cluster id (5 s): a refused auth token is named as such.

Without ``--address`` (and ``$RAY_ADDRESS``) a new instance is started here (``address="local"``):
a stale cluster file is never followed. ``ray.init`` itself runs under a watchdog: past its
time limit, or at a stop signal (Ctrl-C, SIGTERM), the process prints one ``error:`` line
and ends (a thread does it: Ray's C++ can hold the main thread for minutes).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any

from hlbcli.errors import EXIT_INTERRUPTED, HlbError, RunsKept, UsageError
from hlbcli.experiments.ray_probe import (START_HINT, _import_ray, _looks_like_auth, _stderr_kept, _terminal, auth_error, probe,
                                          split)

#: seconds ``ray.init`` may take: joining a cluster, starting one here; $HLB_RAY_CONNECT_TIMEOUT overrides
INIT_TIMEOUT = {"join": 60.0, "local": 120.0}
#: seconds the head may stay unreachable in the middle of a battery before it counts as lost
LOST_AFTER = 10.0

def target(opts) -> str | None:
    """The cluster to join: ``--address``, else ``$RAY_ADDRESS``; None: a new one here."""
    return opts.address or os.environ.get("RAY_ADDRESS") or None


def logs_folder() -> str:
    """Where a Ray started here writes its logs, as Ray decides (``$RAY_TMPDIR/ray``, else /tmp/ray)."""
    try:
        from ray._common.utils import get_default_ray_temp_dir
        root = get_default_ray_temp_dir()
    except Exception:  # another Ray
        root = os.path.join(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp", "ray")
    return os.path.join(root, "session_latest", "logs")


def _limit(kind: str) -> float:
    try:
        return float(os.environ["HLB_RAY_CONNECT_TIMEOUT"])
    except (KeyError, ValueError):
        return INIT_TIMEOUT[kind]


def _die(line: str, code: int) -> None:
    try:
        os.write(_terminal[-1], f"error: {line}\n".encode())
    finally:
        os._exit(code)


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextmanager
def watchdog(doing: str, limit: float, on_timeout: HlbError):
    """While ``ray.init`` runs: a stop signal, or ``limit`` seconds gone, ends the process
    with one ``error:`` line (exit 128 + signal, or ``on_timeout``'s code), from a thread that
    reads the signal wake-up pipe: the main thread can sit inside Ray's C++ for minutes.

    Until it ends, the stop signals' handlers stay ours: ``ray.init`` installs a SIGTERM
    handler that raises SystemExit wherever the main thread is (inside logging's lock, say,
    where Python prints the exception as "ignored"), which would put a traceback beside the
    one line; a ``signal.signal`` for a stop signal is left unapplied meanwhile (our handlers
    come back at the end in any case)."""
    main = threading.current_thread() is threading.main_thread()
    real_signal = signal.signal
    sig_r, sig_w = os.pipe()
    done_r, done_w = os.pipe()
    os.set_blocking(sig_w, False)
    old: dict[int, Any] = {}
    old_fd = -1
    if main:
        for s in STOP_SIGNALS:
            old[s] = signal.signal(s, lambda signum, frame: None)  # the thread below acts on it
        old_fd = signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)

        def keep_ours(signum: int, handler: Any) -> Any:
            return signal.getsignal(signum) if signum in old else real_signal(signum, handler)

        signal.signal = keep_ours

    def stopped(signum: int) -> None:
        name = signal.Signals(signum).name
        _die(f"interrupted ({name}) while {doing}; no run was started",
             EXIT_INTERRUPTED if signum == signal.SIGINT else 128 + signum)

    def watch() -> None:
        ready, _, _ = select.select([sig_r, done_r], [], [], limit)
        if sig_r in ready:
            stopped(os.read(sig_r, 1)[0])
        elif not ready:
            _die(on_timeout.line(), on_timeout.exit_code)

    t = threading.Thread(target=watch, name="hlb-ray-connect-watchdog", daemon=True)
    t.start()
    try:
        yield
    finally:
        os.write(done_w, b".")
        t.join()  # a signal already noted ends the process there
        if main:
            signal.signal = real_signal
            signal.set_wakeup_fd(old_fd)
            for s, h in old.items():  # ours come back
                signal.signal(s, h)
            os.set_blocking(sig_r, False)
            try:
                late = os.read(sig_r, 1)
            except BlockingIOError:
                late = b""
            if late:
                stopped(late[0])
        for fd in (sig_r, sig_w, done_r, done_w):
            os.close(fd)


def connect(opts) -> bool:
    """Join the cluster at ``--address`` (or ``$RAY_ADDRESS``), or start a new Ray instance on
    this machine; True when this process joined or started it (and so must leave it)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    import logging

    address = target(opts)
    if address == "auto":  # Ray's own detection, made explicit so that it can be probed
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or "auto"
        except ConnectionError as e:
            raise UsageError(f"--address auto: {str(e).splitlines()[0]}", START_HINT) from None
        except Exception:
            pass
    if address and address != "auto":
        probe(address)
    kind = "join" if address else "local"
    where = address or "a new local instance"
    limit = _limit(kind)
    logs = f"look at Ray's logs under {logs_folder()}"
    timeout = UsageError(
        f"--backend ray: a new Ray instance on this machine did not come up in {limit:g} s" if kind == "local" else
        f"--backend ray: the Ray cluster at {where} did not let this process join in {limit:g} s",
        "check the cluster with 'ray status', or leave --address out to run on this machine" if kind == "join" else
        f"{logs}, or set HLB_RAY_CONNECT_TIMEOUT to wait longer")
    try:  # what Ray says meanwhile (a dashboard's log that failed, C++ warnings) is not shown: one line ends it
        with watchdog(f"joining the Ray cluster at {where}" if address else "starting Ray on this machine", limit, timeout), _stderr_kept():
            ray.init(address=address or "local", include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, configure_logging=True, namespace="hlb")
    except Exception as e:
        if kind == "join" and (isinstance(e, getattr(ray.exceptions, "AuthenticationError", ()))
                               or _looks_like_auth(f"{e.__class__.__name__}: {e}")):
            raise auth_error(where) from None
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), e.__class__.__name__)
        if kind == "local":  # whatever Ray raises, its start failed
            raise UsageError(f"--backend ray: Ray did not start on this machine: {first}", logs) from None
        if isinstance(e, (ConnectionError, RuntimeError, ValueError)):
            raise UsageError(f"--backend ray: cannot reach Ray at {where}: {first}", START_HINT) from None
        raise
    return True


def fit(opts, nodes: list[dict]) -> dict[str, float]:
    """A task's resources, or a UsageError when no node of the cluster could ever run one
    (Ray would keep it pending for ever without a word). ``nodes``: ``ray.nodes()``."""
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
    gpus = sum(r.get("GPU", 0) for r in alive)
    if opts.device == "cuda" and gpus < 1:
        raise UsageError("--device cuda: the Ray cluster has no GPU", "add GPU workers, or pass --device cpu")
    want_gpu = opts.device == "cuda" or (opts.device == "auto" and gpus >= 1)
    able = [r for r in alive if r.get("GPU", 0) >= 1] if want_gpu else alive
    most = max((r.get("CPU", 0) for r in able), default=0)
    if most < opts.cpus_per_task:
        shown = ", ".join(f"{r.get('CPU', 0):g} CPU and {r.get('GPU', 0):g} GPU" for r in alive[:4])
        more = f" and {len(alive) - 4} more" if len(alive) > 4 else ""
        has = f"has {len(alive)} node(s): {shown}{more}" if alive else "has no live node"
        each = "a GPU and " if want_gpu else ""
        raise UsageError(
            f"--cpus-per-task {opts.cpus_per_task}: no node of the Ray cluster has {each}{opts.cpus_per_task} CPUs "
            f"for a task (the cluster {has})",
            f"use --cpus-per-task {int(most)} or less" if most >= 1 else "add a node with more CPUs to the cluster")
    return {"num_cpus": opts.cpus_per_task, "num_gpus": 1 if want_gpu else 0}


class ClusterLost(RunsKept):
    """The cluster's head stopped answering in the middle of a battery."""


def gcs_address(ray) -> str | None:
    """Where this driver's cluster head (its GCS) listens; None in Ray Client mode."""
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        try:
            return ray._private.worker.global_worker.node.gcs_address
        except Exception:
            return None


class Health:
    """Is the cluster's head still there? A TCP connect to its GCS port, at most once every
    ``every`` seconds; :meth:`check` raises :class:`ClusterLost` once it has failed without a
    break for ``lost_after`` seconds, :meth:`confirm` at once when it fails now (for a task
    just lost: its worker or the whole cluster?)."""

    def __init__(self, address: str | None, where: str, lost_after: float = LOST_AFTER, every: float = 1.0):
        self.address, self.where, self.lost_after, self.every = address, where, lost_after, every
        self.down_since: float | None = None
        self.last = float("-inf")

    def reachable(self) -> bool:
        if not self.address:
            return True
        try:
            host, port = split(self.address)
            socket.create_connection((host, port), timeout=min(1.0, self.every)).close()
            return True
        except (OSError, UsageError):
            return False

    def _look(self, now: float) -> bool:
        self.last = now
        if self.reachable():
            self.down_since = None
            return True
        if self.down_since is None:
            self.down_since = now
        return False

    def lost(self, why: str) -> ClusterLost:
        return ClusterLost(f"the Ray cluster at {self.where} was lost: {why}",
                           "start the cluster again and rerun the same command with --resume to train the rest", exit_code=1)

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self.last < self.every:
            return
        if not self._look(now) and now - self.down_since >= self.lost_after:
            raise self.lost(f"its head ({self.address}) has not answered for {now - self.down_since:.0f} s")

    def confirm(self, now: float | None = None) -> None:
        if self.address and not self._look(time.monotonic() if now is None else now):
            raise self.lost(f"its head ({self.address}) no longer answers")

