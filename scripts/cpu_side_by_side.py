"""hlb against airbench94 (or airbench94_muon, hiverge's record, airbench96_faster) on the CPU, narrowed the same way, back to back.

    python scripts/cpu_side_by_side.py --data-dir DIR [--recipe 94|94-muon|94-record|96-faster] [--pairs 1] [--widths 32,64,64]
                                      [--epochs 4] [--proxy-widths 16,32,32] [--airbench-host-memory system|keep|both]

DIR holds the real CIFAR-10 (``cifar-10-batches-py``; ``python ../shared/data/cifar10/materialize.py
DIR`` writes it). airbench's own script is read from ``external/airbench/airbench94.py`` (an
ignored folder, never committed; see scripts/gpu_bench.sh for how to lay it out), patched in
memory for the CPU (fp32 instead of fp16, no .cuda(), host clocks instead of CUDA events, the
widths and epochs narrowed) and run in a fresh process; hlb runs ``hlb train --preset 94`` with
the same widths and epochs. ``--recipe 94-record`` runs hiverge's ``cifar10_speedrun.py`` from
``external/hiverge/`` (commit 06c6072 of github hiverge/cifar10-speedrun, as the ljbuturovic fork
holds it, fetched into that ignored folder: see scripts/gpu_bench.sh) against
``hlb train --preset 94-record``. ``--recipe 96-faster`` runs ``external/airbench/airbench96_faster.py``
against ``hlb train --preset 96-faster``, both networks narrowed (the main one to ``--widths``, the
proxy to ``--proxy-widths``). Each process: seed 0 (then 1, ... per pair), the same thread count.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hlbcli.stats import mean_std, ratio_of_times, welch_difference  # noqa: E402

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

%(shim)s
ns = {"__name__": "airbench94_cpu"}
sys.argv = [src_path]  # the script reads its own source through sys.argv[0]
exec(compile(src, src_path, "exec"), ns)
w = [int(v) for v in widths.split(",")]
ns["hyp"]["net"]["widths"] = dict(block1=w[0], block2=w[1], block3=w[2])
ns["hyp"]["opt"]["train_epochs"] = epochs
torch.manual_seed(seed)
run = lambda: ns["main"](seed)
%(capture)s'''


# the same for airbench94_muon.py: fp32 instead of fp16 (Newton-Schulz too), no torch.compile, the
# widths and epochs narrowed (its logits scale with 1/width by itself)
AIRBENCH_MUON_CHILD = r'''
import json, sys, time, torch
src_path, widths, epochs, seed, threads, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
w = [int(v) for v in widths.split(",")]
src = open(src_path).read()
patches = [
    ("@torch.compile\n", ""),
    ("X = G.bfloat16()", "X = G.float()"),
    ('map_location=torch.device("cuda")', "map_location='cpu'"),
    ("self.images.half() / 255", "self.images.float() / 255"),
    ("widths = dict(block1=64, block2=256, block3=256)", "widths = dict(block1=%d, block2=%d, block3=%d)" % tuple(w)),
    ("                mod.half()", "                mod.float()"),
    ("total_train_steps = ceil(8 * len(train_loader))", "total_train_steps = ceil(%r * len(train_loader))" % epochs),
]
for old, new in patches:
    assert old in src, "airbench94_muon.py changed: " + old
    src = src.replace(old, new)

%(shim)s
ns = {"__name__": "airbench94_muon_cpu"}
sys.argv = [src_path]  # the script reads its own source through sys.argv[0]
exec(compile(src, src_path, "exec"), ns)
torch.manual_seed(seed)
model = ns["CifarNet"]().to(memory_format=torch.channels_last)
run = lambda: ns["main"](seed, model)
%(capture)s'''

# the same for hiverge's cifar10_speedrun.py (94-record): torch.compile made a no-op (eager on the CPU, as
# hlb's preset runs there), fp32 instead of fp16 (its Muon's fp16 momentum buffers stay, as in hlb's preset),
# CPU tensors instead of CUDA and pinned memory, the widths and epochs narrowed (its logits scale with
# 1/width by itself); main() returns (accuracy without TTA, accuracy with its selective TTA, timed seconds)
HIVERGE_CHILD = r'''
import json, sys, time, torch
src_path, widths, epochs, seed, threads, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
w = [int(v) for v in widths.split(",")]
src = open(src_path).read()
patches = [
    ("dtype=torch.half)\nCIFAR_STD", "dtype=torch.float)\nCIFAR_STD"),
    ("(0.247, 0.2435, 0.2616), dtype=torch.half)", "(0.247, 0.2435, 0.2616), dtype=torch.float)"),
    ('map_location=torch.device("cuda")', "map_location='cpu'"),
    ("(self.images.half() / 255)", "(self.images.float() / 255)"),
    ('dtype=torch.long, device="cuda")', 'dtype=torch.long, device="cpu")'),
    ("widths = dict(block1=64, block2=256, block3=256)", "widths = dict(block1=%d, block2=%d, block3=%d)" % tuple(w)),
    ("            mod.half()", "            mod.float()"),
]
for old, new in patches:
    assert old in src, "cifar10_speedrun.py changed: " + old
    src = src.replace(old, new)
# the pinned staging buffer of commits before 06c6072 (a CPU tensor cannot be pinned without CUDA)
src = src.replace(").pin_memory().contiguous()", ").contiguous()")
import re
src, n = re.subn(r"total_train_steps = ceil\([0-9.]+ \* len\(train_loader\)\)",
                 "total_train_steps = ceil(%r * len(train_loader))" % epochs, src)
assert n == 1, "cifar10_speedrun.py changed: total_train_steps"

def no_compile(fn=None, **kw):
    return fn if fn is not None else (lambda f: f)
torch.compile = no_compile
%(shim)s
ns = {"__name__": "cifar10_speedrun_cpu"}
sys.argv = [src_path]  # the script reads its own source through sys.argv[0]
exec(compile(src, src_path, "exec"), ns)
torch.manual_seed(seed)
model = ns["CifarNet"]().to(memory_format=torch.channels_last)
t0 = time.perf_counter()
val_acc, tta_acc, seconds = ns["main"](seed, model)
json.dump({"accuracy": float(tta_acc), "seconds": float(seconds), "wall": time.perf_counter() - t0,
           "phases": {"no-tta accuracy": float(val_acc)}}, open(out, "w"))
'''

# the same for airbench96_faster.py: fp32 instead of fp16, CPU tensors instead of CUDA, no torch.compile
# (the script's __main__ is not run: the three nets are built here as it builds them), both nets and the
# epochs narrowed; python's random seeded with the seed (the script draws its data seed from it)
AIRBENCH96_FASTER_CHILD = r'''
import json, random, sys, time, torch
src_path, widths, epochs, seed, threads, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
main_w, proxy_w = ([int(v) for v in part.split(",")] for part in widths.split("/"))
src = open(src_path).read()
patches = [
    ("map_location='cuda'", "map_location='cpu'"),
    ("(self.images.half() / 255)", "(self.images.float() / 255)"),
    ("torch.tensor([True]*len(self.images)).cuda()", "torch.tensor([True]*len(self.images))"),
    ("torch.zeros(len(inputs)).cuda().bool()", "torch.zeros(len(inputs)).bool()"),
    ("net = net.half().cuda()", "net = net.float()"),
    ("model._orig_mod[0]", "model[0]"),
    ("model_trainbias._orig_mod[0]", "model_trainbias[0]"),
]
for old, new in patches:
    assert old in src, "airbench96_faster.py changed: " + old
    src = src.replace(old, new)

%(shim)s
ns = {"__name__": "airbench96_faster_cpu"}
sys.argv = [src_path]
exec(compile(src, src_path, "exec"), ns)
hyp = ns["hyp"]
hyp["net"]["widths"] = dict(block1=main_w[0], block2=main_w[1], block3=main_w[2])
hyp["proxy"]["widths"] = dict(block1=proxy_w[0], block2=proxy_w[1], block3=proxy_w[2])
hyp["opt"]["train_epochs"] = epochs
torch.manual_seed(seed)
random.seed(seed)
proxy = ns["make_net"](hyp["proxy"])
proxy[0].bias.requires_grad = False
trainbias, freezebias = ns["make_net"](hyp["net"]), ns["make_net"](hyp["net"])
freezebias[0].bias.requires_grad = False
run = lambda: ns["main"](seed, hyp, proxy, trainbias, freezebias)
%(capture)s'''

# CUDA events and synchronize, for the host clock (both children)
HOST_CLOCK = """
class HostEvent:
    def __init__(self, enable_timing=False):
        self.t = None
    def record(self):
        self.t = time.perf_counter()
    def elapsed_time(self, end):
        return 1e3 * (end.t - self.t)

torch.cuda.Event = HostEvent
torch.cuda.synchronize = lambda *a, **k: None
"""
# both children: read airbench's own printout for the total and the time before its final
# evaluation (the variable is total_time_seconds in airbench94, time_seconds in _muon), run it
CAPTURE = """
seen = {"epochs": []}
orig = ns["print_training_details"]
def capture(variables, is_final_entry):
    seen.update({k: variables.get(k) for k in ("tta_val_acc", TIME_KEY)})
    if not is_final_entry:
        seen["epochs"].append(variables.get(TIME_KEY))
    return orig(variables, is_final_entry)
ns["print_training_details"] = capture
t0 = time.perf_counter()
acc = run()
total, before_eval = float(seen[TIME_KEY]), float(seen["epochs"][-1])
json.dump({"accuracy": float(acc), "seconds": total, "wall": time.perf_counter() - t0,
           "phases": {"init+train": before_eval, "eval": total - before_eval}}, open(out, "w"))
"""
AIRBENCH_CHILD = AIRBENCH_CHILD.replace("%(shim)s", HOST_CLOCK).replace(
    "%(capture)s", CAPTURE.replace("TIME_KEY", '"total_time_seconds"'))
AIRBENCH_MUON_CHILD = AIRBENCH_MUON_CHILD.replace("%(shim)s", HOST_CLOCK).replace(
    "%(capture)s", CAPTURE.replace("TIME_KEY", '"time_seconds"'))
HIVERGE_CHILD = HIVERGE_CHILD.replace("%(shim)s", HOST_CLOCK)
AIRBENCH96_FASTER_CHILD = AIRBENCH96_FASTER_CHILD.replace("%(shim)s", HOST_CLOCK).replace(
    "%(capture)s", CAPTURE.replace("TIME_KEY", '"total_time_seconds"'))

RECIPES = {
    # name: (hlb preset, the original script under external/, its child, extra hlb settings given widths)
    "94": ("94", "airbench/airbench94.py", AIRBENCH_CHILD, lambda w: []),
    # airbench94_muon scales the logits by 1/(last width): the narrowed preset does the same
    "94-muon": ("94-muon", "airbench/airbench94_muon.py", AIRBENCH_MUON_CHILD, lambda w: [f"model.scaling_factor={1 / w[-1]}"]),
    # hiverge's record (external/hiverge/cifar10_speedrun.py): logits / last width, as 94-muon
    "94-record": ("94-record", "hiverge/cifar10_speedrun.py", HIVERGE_CHILD, lambda w: [f"model.scaling_factor={1 / w[-1]}"]),
    # airbench96_faster keeps its 1/9 logit scale at any width; the proxy is narrowed by --proxy-widths
    "96-faster": ("96-faster", "airbench/airbench96_faster.py", AIRBENCH96_FASTER_CHILD, lambda w: []),
}


# glibc's own environment variables for what hlb's train.host_memory="keep" sets with mallopt
KEEP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def run_airbench(child: str, src: Path, data_root: Path, widths: str, epochs: float, seed: int, threads: int,
                 keep: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(KEEP_ENV if keep else {}))
        subprocess.run([sys.executable, "-c", child, str(src), widths, str(epochs), str(seed), str(threads), str(out)],
                       cwd=data_root, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def run_hlb(preset: str, data_dir: str, widths: str, epochs: float, seed: int, threads: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HLB_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "hlbcli.cli", "train", "--preset", preset, "--device", "cpu", "--data-dir", data_dir,
               "--no-download", "--seed", str(seed), "--quiet", "--out", tmp,
               "--set", f"model.widths=[{widths}]", "--set", f"train.epochs={epochs}", *extra]
        subprocess.run(cmd, env=env, check=True)
        rec = json.loads((Path(tmp) / "summary.json").read_text())["runs"][0]
        return {"accuracy": rec["accuracy"], "seconds": rec["train_seconds"], "phases": rec.get("phases")}


def _short(phases: dict) -> str:
    return "(" + ", ".join(f"{k} {100 * v:.2f}%" if "accuracy" in k else f"{k} {v:.1f}" for k, v in phases.items()) + ")"


def _setup(a: argparse.Namespace) -> dict:
    """What the table says beside each figure: the proxy, the machine, the commit, the command."""
    from hlbcli.machine import fingerprint
    from hlbcli.record import source_commit

    commit, dirty = source_commit()
    fp = fingerprint("cpu")
    return {"recipe": a.recipe, "widths": a.widths, "epochs": a.epochs, "threads": a.threads,
            "proxy_widths": a.proxy_widths if a.recipe == "96-faster" else None, "set": a.set,
            "commit": commit[:7] + ("+changes" if dirty else ""), "date": time.strftime("%Y-%m-%d"),
            "cpu": f"{fp['cpu']} ({', '.join(fp['vector_extensions'])})",
            "command": "python scripts/cpu_side_by_side.py " + " ".join(sys.argv[1:])}


def _interval(lo: float, hi: float, scale: float = 1, fmt: str = "{:+.2f}") -> str:
    return "[" + ", ".join(fmt.format(scale * v) for v in (lo, hi)) + "]"


def table(results: list[dict]) -> str:
    """The side by sides in ``results`` (each what --json writes) as one markdown table: each
    side's mean accuracy, hlb's difference with its 95% interval and p (Welch: the two
    implementations share no random streams, so seeds do not pair), and the time ratio (geometric
    means) with its interval. Then where each row came from."""
    lines = ["| recipe | proxy | n a side | hlb accuracy | original's accuracy | hlb - original, points (95%, Welch) | p "
             "| hlb s | original s | time ratio hlb/original (95%) |", "|" + "---|" * 10]
    notes = []
    for res in results:
        rows = res["rows"]
        for other in [k for k in rows[0] if k not in ("seed", "hlb")]:
            pairs = [r for r in rows if "hlb" in r and other in r]
            acc = {k: [r[k]["accuracy"] for r in pairs] for k in ("hlb", other)}
            sec = {k: [r[k]["seconds"] for r in pairs] for k in ("hlb", other)}
            d, t = welch_difference(acc[other], acc["hlb"]), ratio_of_times(sec[other], sec["hlb"])
            proxy = f"{res['widths']} x {res['epochs']:g} ep" + (f" (proxy {res['proxy_widths']})" if res.get("proxy_widths") else "")
            lines.append(
                f"| {res['recipe']} | {proxy} | {len(pairs)} | {100 * mean_std(acc['hlb'])[0]:.2f}% | {other} "
                f"{100 * mean_std(acc[other])[0]:.2f}% | {100 * d['mean']:+.2f} {_interval(*d['ci95'], 100)} | {d['p']:.2g} "
                f"| {mean_std(sec['hlb'])[0]:.1f} | {mean_std(sec[other])[0]:.1f} | {t['ratio']:.3f} {_interval(*t['ci95'], fmt='{:.3f}')} |")
        notes.append(f"- {res['recipe']}: {res['date']}, commit {res['commit']}, {res['cpu']}, {res['threads']} thread(s), "
                     f"fp32; `{res['command']}`" + (f"; hlb --set {' '.join(res['set'])}" if res.get("set") else ""))
    return "\n".join(lines + [""] + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="the real CIFAR-10 (needed unless --table)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="94",
                    help="94: airbench94; 94-muon: airbench94_muon; 94-record: hiverge's cifar10_speedrun.py; 96-faster: airbench96_faster")
    ap.add_argument("--airbench", help="the original script (default: external/airbench/airbench94.py, external/airbench/airbench94_muon.py or external/hiverge/cifar10_speedrun.py)")
    ap.add_argument("--only", choices=["hlb", "airbench"], help="run one side only")
    ap.add_argument("--pairs", type=int, default=1, help="back-to-back pairs, seeds 0, 1, ...")
    ap.add_argument("--widths", default="32,64,64")
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--proxy-widths", default="16,32,32", help="96-faster: the proxy net's widths, on both sides")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra --set for hlb")
    ap.add_argument("--airbench-host-memory", choices=["system", "keep", "both"], default="system",
                    help="airbench's C allocator: system (as published), keep (glibc told by environment what hlb's"
                         " train.host_memory=keep sets), or both as two arms")
    ap.add_argument("--json", help="write the rows here after every pair (a stopped run keeps what it has)")
    ap.add_argument("--resume", action="store_true", help="with --json: keep its pairs and run the seeds it lacks")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these --json files and stop")
    a = ap.parse_args()
    if a.table:
        print(table([json.loads(Path(p).read_text()) for p in a.table]))
        return
    if not a.data_dir:
        sys.exit("error: --data-dir is required (a folder holding cifar-10-batches-py), unless --table")
    if a.resume and not a.json:
        sys.exit("error: --resume continues a --json file: give --json FILE")
    preset, script, child, more = RECIPES[a.recipe]
    src = Path(a.airbench or ROOT / "external" / script)
    if not src.is_file():
        sys.exit(f"error: {src.resolve()} not found (lay out external/ as scripts/gpu_bench.sh says)")
    res = {**_setup(a), "rows": []}
    if a.resume and Path(a.json).is_file():
        old = json.loads(Path(a.json).read_text())
        same = ("recipe", "widths", "epochs", "threads", "proxy_widths", "set")
        if any(old.get(k) != res[k] for k in same):
            sys.exit(f"error: {a.json} was run with other settings ({', '.join(f'{k}={old.get(k)}' for k in same)}): "
                     "give the same ones, or another --json")
        res["rows"] = old["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        from hlbcli.bench import write_airbench_data

        write_airbench_data(str(Path(tmp) / "cifar10"), a.data_dir)
        widths = [int(v) for v in a.widths.split(",")]
        proxy = [f"select.proxy_widths=[{a.proxy_widths}]"] if a.recipe == "96-faster" else []
        extra = [x for s in [*more(widths), *proxy, *a.set] for x in ("--set", s)]
        child_widths = a.widths + (f"/{a.proxy_widths}" if a.recipe == "96-faster" else "")
        name = "hiverge" if a.recipe == "94-record" else "airbench" + a.recipe
        arms = {}
        if a.only != "airbench":
            arms["hlb"] = lambda seed: run_hlb(preset, a.data_dir, a.widths, a.epochs, seed, a.threads, extra)
        if a.only != "hlb":
            for keep in {"system": [False], "keep": [True], "both": [False, True]}[a.airbench_host_memory]:
                arms[name + ("+keep" if keep else "")] = lambda seed, keep=keep: run_airbench(
                    child, src, Path(tmp), child_widths, a.epochs, seed, a.threads, keep)
        for seed in range(len(res["rows"]), a.pairs):
            row = {"seed": seed}
            # the order turns round every pair, so that a drifting machine favours no side
            for k in (list(arms) if seed % 2 == 0 else list(arms)[::-1]):
                row[k] = arms[k](seed)
            row = {"seed": seed, **{k: row[k] for k in arms}}
            res["rows"].append(row)
            if a.json:
                Path(a.json).write_text(json.dumps(res, indent=2))
            print(f"seed {seed}: " + "; ".join(
                f"{k} {100 * v['accuracy']:.2f}% in {v['seconds']:.1f} s {_short(v['phases'])}" for k, v in row.items() if k != "seed"
            ) + "".join(f"; ratio to {k} {row['hlb']['seconds'] / row[k]['seconds']:.3f}" for k in arms if k != "hlb" and "hlb" in arms),
                flush=True)
    if "hlb" in arms and len(arms) > 1 and res["rows"]:
        print(table([res]))


if __name__ == "__main__":
    main()
