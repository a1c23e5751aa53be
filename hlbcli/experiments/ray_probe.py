"""Asking a Ray cluster address, in seconds, whether a Ray head answers there (``hlb ablate
--backend ray --address``): its TCP port, an HTTP/2 (gRPC) answer, and its GCS's cluster id, each
failure one line saying why; with Ray's own output kept off the terminal while it is asked.
:mod:`hlbcli.experiments.ray_cluster` joins the cluster once these have answered."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager

from hlbcli.errors import UsageError

INSTALL_HINT = "pip install 'hlbcli[ray]', here and on every node of the cluster"
START_HINT = "start the cluster (ray start --head) and pass its HOST:PORT, or leave --address out to run on this machine"
ADDRESS_HINT = "pass the address that 'ray start --head' printed: HOST:6379 by default, or ray://HOST:10001"
AUTH_HINT = "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it"

#: seconds the TCP connect, the HTTP/2 probe and the GCS's answer may take
TCP_TIMEOUT, PROBE_TIMEOUT, GCS_TIMEOUT = 5.0, 3.0, 5.0

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + an empty SETTINGS frame


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--backend ray needs Ray, which is not installed", INSTALL_HINT) from None
    return ray


def split(address: str) -> tuple[str, int]:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit() or not host:
        raise UsageError(f"--address {address}: not HOST:PORT", "write it as HOST:PORT (6379 by default) or ray://HOST:10001")
    return host.strip("[]"), int(port)


def answers(address: str) -> None:
    """The address's port takes a TCP connection within 5 s: Ray itself retries an
    unreachable one for minutes before it gives up."""
    host, port = split(address)
    try:
        socket.create_connection((host, port), timeout=TCP_TIMEOUT).close()
    except OSError as e:
        raise UsageError(f"--backend ray: nothing answers at {address} ({e.strerror or e.__class__.__name__})",
                         START_HINT) from None


def http2_answer(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the server answers an HTTP/2 client preface with a SETTINGS frame (any gRPC
    server does, Ray's GCS and Ray Client among them); else what it did instead."""
    got = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            deadline = time.monotonic() + timeout
            s.sendall(_PREFACE)
            while len(got) < 9:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = s.recv(9 - len(got))
                if not chunk:
                    break
                got += chunk
    except socket.timeout:
        if not got:
            return f"it said nothing in {timeout:g} s to an HTTP/2 client"
    except OSError as e:
        if not got:
            return f"it dropped the connection ({e.strerror or e.__class__.__name__})"
    if len(got) == 9 and got[3] == 0x04 and got[5:9] == b"\x00\x00\x00\x00":
        return None
    if got.startswith(b"HTTP/") or got[:1] == b"<":
        return "it answers HTTP/1, not Ray's gRPC"
    if got.startswith(b"SSH-"):
        return "it is an SSH server"
    return "it does not speak gRPC" if got else "it closed the connection without a word"


#: the terminal's stderr while :func:`_stderr_kept` holds file descriptor 2 (what ``_die`` writes to)
_terminal = [2]


@contextmanager
def _stderr_kept():
    """Ray's warnings (file descriptor 2: its C++, and its Python loggers through sys.stderr)
    go to a scratch file, not the terminal: yields a function that returns what they said."""
    sys.stderr.flush()
    saved = os.dup(2)
    _terminal.append(saved)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield lambda: (f.flush(), f.seek(0), f.read().decode(errors="replace"))[-1]
        finally:
            sys.stderr.flush()  # what Python still holds of it goes to the scratch file too
            os.dup2(saved, 2)
            _terminal.pop()
            os.close(saved)


def auth_error(address: str) -> UsageError:
    """The cluster refused this process: a token missing, unused, or wrong."""
    token = bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                 or os.path.exists(os.path.expanduser("~/.ray/auth_token")))
    if token and os.environ.get("RAY_AUTH_MODE") == "token":
        return UsageError(f"--backend ray: the Ray cluster at {address} refused this auth token (RAY_AUTH_TOKEN)",
                          "set RAY_AUTH_TOKEN to the token the cluster was started with")
    if token:
        return UsageError(f"--backend ray: the Ray cluster at {address} requires an auth token, and Ray sends none "
                          "without RAY_AUTH_MODE=token", "set RAY_AUTH_MODE=token as well as RAY_AUTH_TOKEN")
    return UsageError(f"--backend ray: the Ray cluster at {address} requires an auth token (RAY_AUTH_TOKEN), and none "
                      "was given", AUTH_HINT)


def _looks_like_auth(text: str) -> bool:
    return any(w in text for w in ("InvalidAuthToken", "Unauthenticated", "AuthenticationError", "auth token"))


def gcs_answer(address: str) -> None:
    """Ray's GCS at ``address`` gives its cluster id within 5 s, or the refusal is named:
    an auth token missing or wrong, a gRPC server that is not Ray's GCS. Other failures are
    left to ``ray.init`` (which runs under a watchdog)."""
    ray = _import_ray()
    try:
        from ray._raylet import InnerGcsClient

        standalone = InnerGcsClient.standalone
    except (ImportError, AttributeError):  # another Ray: ray.init's own errors will do
        return
    with _stderr_kept() as said:
        try:
            standalone(address, None, int(GCS_TIMEOUT * 1000))
            return
        except Exception as e:
            err, text = e, f"{e.__class__.__name__}: {e}\n{said()}"
    if isinstance(err, getattr(ray.exceptions, "AuthenticationError", ())) or _looks_like_auth(text):
        raise auth_error(address)
    if "rpc_code: 12" in text or "Unimplemented" in text:
        raise UsageError(f"--backend ray: {address} is not a Ray cluster (a gRPC server, but not a Ray head's GCS)",
                         ADDRESS_HINT)


def probe(address: str) -> None:
    """Everything that can be asked of a cluster address in seconds, before ``ray.init``."""
    answers(address)
    host, port = split(address)
    what = http2_answer(host, port)
    if what is not None:
        raise UsageError(f"--backend ray: {address} is not a Ray cluster: {what}", ADDRESS_HINT)
    if "://" not in address:  # ray://: a Ray Client server, no GCS to ask
        gcs_answer(address)
