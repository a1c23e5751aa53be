"""hlb against airbench94 on the CPU, narrowed the same way, back to back (issue 9, item 5).

    python scripts/cpu_side_by_side.py --data-dir DIR [--pairs 1] [--widths 32,64,64] [--epochs 4]

DIR holds the real CIFAR-10 (``cifar-10-batches-py``; ``python ../shared/data/cifar10/materialize.py
DIR`` writes it). airbench's own script is read from ``external/airbench/airbench94.py`` (an
ignored folder, never committed; see scripts/gpu_bench.sh for how to lay it out), patched in
memory for the CPU (fp32 instead of fp16, no .cuda(), host clocks instead of CUDA events, the
widths and epochs narrowed) and run in a fresh process; hlb runs ``hlb train --preset 94`` with
the same widths and epochs. Each process: seed 0 (then 1, ... per pair), the same thread count.
Both report their own timed seconds (whitening init + training steps + final evaluation with
TTA). Run it alone: anything else on the machine skews the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# run inside the airbench child process: patch the source text for the CPU, then call main()
AIRBENCH_CHILD = r'''
import json, sys, time, torch
src_path, widths, epochs, seed, threads, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
src = open(src_path).read()
patches = [
    ("map_location=torch.device(gpu)", "map_location='cpu'"),
    ("self.images.half() / 255", "self.images.float() / 255"),
    ("net = net.half().cuda()", "net = net.float()"),
]
for old, new in patches:
    assert old in src, "airbench94.py changed: " + old
    src = src.replace(old, new)

class HostEvent:
    def __init__(self, enable_timing=False):
        self.t = None
    def record(self):
        self.t = time.perf_counter()
    def elapsed_time(self, end):
        return 1e3 * (end.t - self.t)

torch.cuda.Event = HostEvent
torch.cuda.synchronize = lambda *a, **k: None
ns = {"__name__": "airbench94_cpu"}
exec(compile(src, src_path, "exec"), ns)
w = [int(v) for v in widths.split(",")]
ns["hyp"]["net"]["widths"] = dict(block1=w[0], block2=w[1], block3=w[2])
ns["hyp"]["opt"]["train_epochs"] = epochs
seen = {}
orig = ns["print_training_details"]
def capture(variables, is_final_entry):
    seen.update({k: variables.get(k) for k in ("tta_val_acc", "total_time_seconds")})
    return orig(variables, is_final_entry)
ns["print_training_details"] = capture
torch.manual_seed(seed)
t0 = time.perf_counter()
acc = ns["main"](seed)
json.dump({"accuracy": float(acc), "seconds": float(seen["total_time_seconds"]), "wall": time.perf_counter() - t0}, open(out, "w"))
'''


def run_airbench(src: Path, data_root: Path, widths: str, epochs: float, seed: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-c", AIRBENCH_CHILD, str(src), widths, str(epochs), str(seed), str(threads), str(out)],
                       cwd=data_root, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def run_hlb(data_dir: str, widths: str, epochs: float, seed: int, threads: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HLB_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "hlbcli.cli", "train", "--preset", "94", "--device", "cpu", "--data-dir", data_dir,
               "--no-download", "--seed", str(seed), "--quiet", "--out", tmp,
               "--set", f"model.widths=[{widths}]", "--set", f"train.epochs={epochs}", *extra]
        subprocess.run(cmd, env=env, check=True)
        rec = json.loads((Path(tmp) / "summary.json").read_text())["runs"][0]
        return {"accuracy": rec["accuracy"], "seconds": rec["train_seconds"], "phases": rec.get("phases")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--airbench", default=str(ROOT / "external/airbench/airbench94.py"))
    ap.add_argument("--pairs", type=int, default=1, help="back-to-back pairs, seeds 0, 1, ...")
    ap.add_argument("--widths", default="32,64,64")
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra --set for hlb")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    src = Path(a.airbench)
    if not src.is_file():
        sys.exit(f"error: {src} not found (lay out external/airbench as scripts/gpu_bench.sh says)")
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(ROOT))
        from hlbcli.bench import write_airbench_data

        write_airbench_data(str(Path(tmp) / "cifar10"), a.data_dir)
        extra = [x for s in a.set for x in ("--set", s)]
        rows = []
        for seed in range(a.pairs):
            h = run_hlb(a.data_dir, a.widths, a.epochs, seed, a.threads, extra)
            ab = run_airbench(src, Path(tmp), a.widths, a.epochs, seed, a.threads)
            rows.append({"seed": seed, "hlb": h, "airbench94": ab})
            print(f"seed {seed}: hlb {100 * h['accuracy']:.2f}% in {h['seconds']:.1f} s {h['phases']}; "
                  f"airbench94 {100 * ab['accuracy']:.2f}% in {ab['seconds']:.1f} s; ratio {h['seconds'] / ab['seconds']:.3f}", flush=True)
    n = len(rows)
    ht = sum(r["hlb"]["seconds"] for r in rows) / n
    at = sum(r["airbench94"]["seconds"] for r in rows) / n
    ha = sum(r["hlb"]["accuracy"] for r in rows) / n
    aa = sum(r["airbench94"]["accuracy"] for r in rows) / n
    print(f"widths {a.widths}, {a.epochs:g} epochs, {a.threads} threads, {n} pair(s): hlb {100 * ha:.2f}% {ht:.1f} s, "
          f"airbench94 {100 * aa:.2f}% {at:.1f} s; time ratio {ht / at:.3f}, accuracy difference {100 * (ha - aa):+.2f} points")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
