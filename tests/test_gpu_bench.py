"""scripts/gpu_bench.sh rehearsed on the CPU (issue 35, item 6): the one prepared GPU call runs
its hlb steps end to end on `smoke`, so a typo cannot cost a GPU call; the steps of the original
scripts, which need CUDA, say that they skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_call_rehearsed_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-out"
    # the script calls `hlb` and `python`: this interpreter's, activated or not
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "OUT": str(out), "HLB_BENCH_PRESET": "smoke", "HLB_BENCH_DEVICE": "cpu", "HLB_BENCH_BLOCK": "1"}
    proc = subprocess.run(["bash", "scripts/gpu_bench.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = (out / "steps.txt").read_text().splitlines()
    assert steps[0] == "== fingerprint" and "exit" not in "".join(steps), steps
    assert json.loads((out / "machine.json").read_text())["cpu"]
    for name in ("alt-hlb-1", "alt-hlb-2", "record-hlb"):
        b = json.loads((out / name / "bench.json").read_text())
        assert b["n"] == 1, name
    assert "== airbench94-alt-1: skipped (the original script needs CUDA)" in steps
    assert "== hiverge-record: skipped (the original script needs CUDA)" in steps
    p = json.loads((out / "profile-smoke" / "profile.json").read_text())
    assert p["parts"]["train"]["phases"]["forward"] > 0
    table = proc.stdout[proc.stdout.index("== side by side =="):]
    assert "alt-hlb-1" in table and "record-hlb" in table and "profile-smoke train: " in table
