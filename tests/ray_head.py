"""A Ray head of the tests' own on 127.0.0.1 (``ray start --head``, 2 CPUs, no GPU), shared by
tests/test_ray.py and tests/test_faults_ray.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RAY_EXE = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(tmp: str, env: dict, head_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start a head whose temp folder is ``tmp`` (keep it short: Ray's socket paths have a length
    limit) and wait until ``ray status`` answers: its process (a session of its own) and address.
    ``env`` is a client's environment; ``head_env`` the head's, when it differs."""
    if not RAY_EXE.exists():
        pytest.skip("no ray command beside this interpreter")
    port = free_port()
    proc = subprocess.Popen(
        [str(RAY_EXE), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}",
         "--object-store-memory=100000000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=head_env or env, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start failed: {proc.stdout.read()[-2000:]}")
        r = subprocess.run([str(RAY_EXE), "status", f"--address={address}"], capture_output=True, text=True, env=env)
        if r.returncode == 0:
            return proc, address
        time.sleep(1)
    proc.kill()
    pytest.fail("the Ray head did not come up in 120 s")
