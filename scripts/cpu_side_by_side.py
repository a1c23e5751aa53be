"""hlb against airbench94 (or airbench94_muon, hiverge's record, airbench96, airbench96_faster, tysam-code's hlb-CIFAR10 v0.7.0) on the CPU, narrowed the same way, back to back.

    python scripts/cpu_side_by_side.py --data-dir DIR [--recipe 94|94-muon|94-record|96|96-faster|hlb-v0.7] [--pairs 1] [--widths 32,64,64]
                                      [--epochs 4] [--proxy-widths 16,32,32] [--airbench-host-memory system|keep|both]

DIR holds the real CIFAR-10 (``cifar-10-batches-py``; ``python ../shared/data/cifar10/materialize.py
DIR`` writes it). airbench's own script is read from ``external/airbench/airbench94.py`` (an
ignored folder, never committed; see scripts/gpu_bench.sh for how to lay it out), patched in
memory for the CPU by scripts/originals.py (fp32 instead of fp16, no .cuda(), host clocks instead
of CUDA events, the widths and epochs narrowed) and run in a fresh process; hlb runs ``hlb train --preset 94`` with
the same widths and epochs. ``--recipe 94-record`` runs hiverge's ``cifar10_speedrun.py`` from
``external/hiverge/`` (commit 06c6072 of github hiverge/cifar10-speedrun, as the ljbuturovic fork
holds it, fetched into that ignored folder: see scripts/gpu_bench.sh) against
``hlb train --preset 94-record``. ``--recipe 96`` runs ``external/airbench/airbench96.py`` (legacy) against
``hlb train --preset 96``. ``--recipe 96-faster`` runs ``external/airbench/airbench96_faster.py``
against ``hlb train --preset 96-faster``, both networks narrowed (the main one to ``--widths``, the
proxy to ``--proxy-widths``). ``--recipe hlb-v0.7`` runs tysam-code's ``main.py`` at v0.7.0 from
``external/hlb-CIFAR10/`` against ``hlb train --preset hlb-v0.7``; that script times neither its init
nor its evaluations (it evaluates after every epoch). Each process: seed 0 (then 1, ... per pair),
the same thread count. Both report their own timed seconds (whitening init + training steps + final
evaluation with TTA; hlb-v0.7: both sides init + training steps). Run it alone: anything else on the
machine skews the ratio.
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

sys.path.insert(0, str(ROOT / "scripts"))
from originals import PATCHES  # noqa: E402

# run in a fresh process per run: load the original script patched for the CPU (scripts/originals.py), seed,
# then the recipe's own body (below) runs it and writes its result to ``out``
CHILD_HEAD = r"""
import json, random, sys, time, torch
sys.path.insert(0, SCRIPTS)
from originals import load
recipe, src_path, widths, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[7]
epochs, seed, threads = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
main_w, *proxy_w = [[int(v) for v in part.split(",")] for part in widths.split("/")]
ns = load(recipe, src_path, main_w, epochs, proxy_w[0] if proxy_w else None)
torch.manual_seed(seed)
""".replace("SCRIPTS", repr(str(Path(__file__).resolve().parent)))

# airbench's scripts print their own figures: read the total and the time before the final evaluation
# from their printout (the variable is total_time_seconds in airbench94, time_seconds in _muon)
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
AIRBENCH94_BODY = 'run = lambda: ns["main"](seed)\n' + CAPTURE.replace("TIME_KEY", '"total_time_seconds"')
BODIES = {
    "94": AIRBENCH94_BODY,
    "96": AIRBENCH94_BODY,  # airbench96 (legacy) has airbench94's loop
    "94-muon": 'model = ns["CifarNet"]().to(memory_format=torch.channels_last)\nrun = lambda: ns["main"](seed, model)\n'
               + CAPTURE.replace("TIME_KEY", '"time_seconds"'),
    # hiverge's main() returns (accuracy without TTA, accuracy with its selective TTA, timed seconds)
    "94-record": """
model = ns["CifarNet"]().to(memory_format=torch.channels_last)
t0 = time.perf_counter()
val_acc, tta_acc, seconds = ns["main"](seed, model)
json.dump({"accuracy": float(tta_acc), "seconds": float(seconds), "wall": time.perf_counter() - t0,
           "phases": {"no-tta accuracy": float(val_acc)}}, open(out, "w"))
""",
    # the script's __main__ is not run: the three nets are built here as it builds them; python's random
    # seeded with the seed (the script draws its data seed from it)
    "96-faster": """
random.seed(seed)
hyp = ns["hyp"]
proxy = ns["make_net"](hyp["proxy"])
proxy[0].bias.requires_grad = False
trainbias, freezebias = ns["make_net"](hyp["net"]), ns["make_net"](hyp["net"])
freezebias[0].bias.requires_grad = False
run = lambda: ns["main"](seed, hyp, proxy, trainbias, freezebias)
""" + CAPTURE.replace("TIME_KEY", '"total_time_seconds"'),
    # tysam-code's main() returns its EMA net's accuracy (the eval forward averages each image with its
    # mirror); it times its training steps only, and evaluates both nets after every epoch: timed here are
    # its init (make_net, the whitening included) and its own training clock, as hlb's side is
    "hlb-v0.7": """
seen = {}
make_net, printout = ns["make_net"], ns["print_training_details"]
def timed_make_net():
    t = time.perf_counter()
    net = make_net()
    seen["init"] = time.perf_counter() - t
    return net
def capture(columns, *args, **kw):
    if kw.get("is_final_entry"):  # its columns: epoch, train_loss, val_loss, train_acc, val_acc, ema_val_acc, total_time_seconds
        seen["no-ema accuracy"], seen["train"] = float(columns[4]), float(columns[6])
    return printout(columns, *args, **kw)
ns["make_net"], ns["print_training_details"] = timed_make_net, capture
t0 = time.perf_counter()
acc = ns["main"]()
json.dump({"accuracy": float(acc), "seconds": seen["init"] + seen["train"], "wall": time.perf_counter() - t0,
           "phases": {k: seen[k] for k in ("init", "train", "no-ema accuracy")}}, open(out, "w"))
""",
}

#: recipes whose original times no evaluation of its own: both sides are timed as init + training
TIMED_WITHOUT_EVAL = {"hlb-v0.7"}


RECIPES = {
    # name: (hlb preset, extra hlb settings given the widths); the original: scripts/originals.py
    "94": ("94", lambda w: []),
    # airbench96 (legacy) keeps its 1/9 logit scale at any width, as the preset does
    "96": ("96", lambda w: []),
    # airbench94_muon scales the logits by 1/(last width): the narrowed preset does the same
    "94-muon": ("94-muon", lambda w: [f"model.scaling_factor={1 / w[-1]}"]),
    # hiverge's record (external/hiverge/cifar10_speedrun.py): logits / last width, as 94-muon
    "94-record": ("94-record", lambda w: [f"model.scaling_factor={1 / w[-1]}"]),
    # airbench96_faster keeps its 1/9 logit scale at any width; the proxy is narrowed by --proxy-widths
    "96-faster": ("96-faster", lambda w: []),
    # tysam-code's hlb-CIFAR10 v0.7.0 (external/hlb-CIFAR10/main.py) keeps its 1/9 logit scale at any width
    "hlb-v0.7": ("hlb-v0.7", lambda w: []),
}

#: each recipe's original, as its arm is named in the rows and the table
ORIGINAL = {"94-record": "hiverge", "hlb-v0.7": "hlb-CIFAR10"}


# glibc's own environment variables for what hlb's train.host_memory="keep" sets with mallopt
KEEP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def run_airbench(recipe: str, src: Path, data_root: Path, widths: str, epochs: float, seed: int, threads: int,
                 keep: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(KEEP_ENV if keep else {}))
        subprocess.run([sys.executable, "-c", CHILD_HEAD + BODIES[recipe], recipe, str(src), widths, str(epochs), str(seed), str(threads), str(out)],
                       cwd=data_root, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def run_hlb(preset: str, data_dir: str, widths: str, epochs: float, seed: int, threads: int, extra: list[str],
            with_eval: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HLB_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "hlbcli.cli", "train", "--preset", preset, "--device", "cpu", "--data-dir", data_dir,
               "--no-download", "--seed", str(seed), "--quiet", "--out", tmp,
               "--set", f"model.widths=[{widths}]", "--set", f"train.epochs={epochs}", *extra]
        subprocess.run(cmd, env=env, check=True)
        rec = json.loads((Path(tmp) / "summary.json").read_text())["runs"][0]
        seconds = rec["train_seconds"] - (0 if with_eval else rec["phases"]["eval"])
        return {"accuracy": rec["accuracy"], "seconds": seconds, "phases": rec.get("phases")}


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
    lines = ["| recipe | proxy | n a side (hlb / original) | hlb accuracy | original's accuracy | hlb - original, points (95%, Welch) | p "
             "| hlb s | original s | time ratio hlb/original (95%) |", "|" + "---|" * 10]
    notes = []
    for res in results:
        rows = res["rows"]
        for other in sorted({k for r in rows for k in r if k not in ("seed", "hlb")}):
            # each side's runs (Welch pairs nothing: a side may have more seeds than the other)
            acc = {k: [r[k]["accuracy"] for r in rows if k in r] for k in ("hlb", other)}
            sec = {k: [r[k]["seconds"] for r in rows if k in r] for k in ("hlb", other)}
            n = len(acc["hlb"]) if len(acc["hlb"]) == len(acc[other]) else f"{len(acc['hlb'])} / {len(acc[other])}"
            d, t = welch_difference(acc[other], acc["hlb"]), ratio_of_times(sec[other], sec["hlb"])
            proxy = f"{res['widths']} x {res['epochs']:g} ep" + (f" (proxy {res['proxy_widths']})" if res.get("proxy_widths") else "")
            lines.append(
                f"| {res.get('label', res['recipe'])} | {proxy} | {n} | {100 * mean_std(acc['hlb'])[0]:.2f}% | {other} "
                f"{100 * mean_std(acc[other])[0]:.2f}% | {100 * d['mean']:+.2f} {_interval(*d['ci95'], 100)} | {d['p']:.2g} "
                f"| {mean_std(sec['hlb'])[0]:.1f} | {mean_std(sec[other])[0]:.1f} | {t['ratio']:.3f} {_interval(*t['ci95'], fmt='{:.3f}')} |")
        notes.append(f"- {res.get('label', res['recipe'])}: {res['date']}, commit {res['commit']}, {res['cpu']}, {res['threads']} thread(s), "
                     f"fp32; `{res['command']}`" + (f"; hlb --set {' '.join(res['set'])}" if res.get("set") else ""))
    return "\n".join(lines + [""] + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="the real CIFAR-10 (needed unless --table)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="94",
                    help="94: airbench94; 94-muon: airbench94_muon; 94-record: hiverge's cifar10_speedrun.py; 96: airbench96 "
                         "(legacy); 96-faster: airbench96_faster; hlb-v0.7: tysam-code's hlb-CIFAR10 main.py v0.7.0")
    ap.add_argument("--airbench", help="the original script (default: the recipe's file under external/, as scripts/originals.py names it)")
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
    ap.add_argument("--resume", action="store_true", help="with --json: keep its runs and run what it lacks (seeds, or a side of a seed)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these --json files and stop")
    a = ap.parse_args()
    if a.table:
        print(table([json.loads(Path(p).read_text()) for p in a.table]))
        return
    if not a.data_dir:
        sys.exit("error: --data-dir is required (a folder holding cifar-10-batches-py), unless --table")
    if a.resume and not a.json:
        sys.exit("error: --resume continues a --json file: give --json FILE")
    preset, more = RECIPES[a.recipe]
    src = Path(a.airbench or ROOT / "external" / PATCHES[a.recipe][0])
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
        if a.recipe == "hlb-v0.7":  # its torchvision loader reads the upstream layout, under cifar10/ where it runs
            (Path(tmp) / "cifar10" / "cifar-10-batches-py").symlink_to(Path(a.data_dir).resolve() / "cifar-10-batches-py")
        name = ORIGINAL.get(a.recipe, "airbench" + a.recipe)
        arms = {}
        if a.only != "airbench":
            arms["hlb"] = lambda seed: run_hlb(preset, a.data_dir, a.widths, a.epochs, seed, a.threads, extra,
                                               with_eval=a.recipe not in TIMED_WITHOUT_EVAL)
        if a.only != "hlb":
            for keep in {"system": [False], "keep": [True], "both": [False, True]}[a.airbench_host_memory]:
                arms[name + ("+keep" if keep else "")] = lambda seed, keep=keep: run_airbench(
                    a.recipe, src, Path(tmp), child_widths, a.epochs, seed, a.threads, keep)
        kept = {r["seed"]: r for r in res["rows"]}
        for seed in range(a.pairs):
            row = kept.get(seed, {"seed": seed})
            # the order turns round every pair, so that a drifting machine favours no side; a kept row gets the arms it lacks
            todo = [k for k in (list(arms) if seed % 2 == 0 else list(arms)[::-1]) if k not in row]
            if not todo:
                continue
            for k in todo:
                row[k] = arms[k](seed)
            kept[seed] = {"seed": seed, **{k: row[k] for k in sorted(row, key=lambda k: (k != "hlb", k)) if k != "seed"}}
            res["rows"] = [kept[s] for s in sorted(kept)]
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
