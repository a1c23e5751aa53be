"""Benchmarks, run on purpose (never timed assertions in the test suite).

``python -m hlbcli.bench overhead``: the assembled step against a plain hand-written PyTorch
loop doing the same math on the same model, on the CPU; prints the ratio.

``hlb bench`` (see :func:`bench_command`): a preset for N seeds, compile and warm-up excluded
from the timed figure and reported beside it, with the time of each phase.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hlbcli.config import load_preset
from hlbcli.session import resolve
from hlbcli.train import plan_run, prepare


# --- overhead ----------------------------------------------------------------------------------

OVERHEAD_VARIANTS = {
    # name: (tricks kept from the smoke recipe, label smoothing, bias lr scaler, ema every)
    "core": ([], 0.0, None, None),
    "94-step": (["noisy_bn", "bias_lr", "label_smoothing", "ema"], 0.2, 64.0, 5),
}


def _plain_step(model, optimizer, base_lrs, lr_table, smoothing, ema):
    """The same math written by hand: CE (with smoothing) summed, Nesterov SGD with the lr
    table, and a lookahead average every k steps."""
    groups = optimizer.param_groups

    def step(x, y, i):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing, reduction="none").sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for g, base in zip(groups, base_lrs):
            g["lr"] = base * lr_table[i]
        optimizer.step()
        if ema is not None:
            every, avg, net, decays = ema
            if (i + 1) % every == 0:
                with torch.no_grad():
                    torch._foreach_lerp_(avg, net, 1 - decays[i + 1].item())
                    torch._foreach_copy_(net, avg)

    return step


def overhead(
    widths: tuple[int, ...] = (32, 64, 64),
    batch_size: int = 256,
    steps: int = 10,
    trials: int = 5,
    threads: int = 2,
    variants: list[str] | None = None,
) -> list[dict]:
    torch.set_num_threads(threads)
    out = []
    for name in variants or list(OVERHEAD_VARIANTS):
        tricks, smoothing, scaler, every = OVERHEAD_VARIANTS[name]
        sets = [
            'data.dataset="synthetic"', f"data.synthetic_train={batch_size * (steps + 2)}", "data.synthetic_test=64",
            f"model.widths={list(widths)}", f"train.batch_size={batch_size}", "train.epochs=1", 'train.compile="off"',
        ]
        if "ema" in tricks:
            sets.append(f"ema.every={every}")
        cfg, tm = resolve("smoke", sets=sets, disable=[t for t in load_preset("smoke")["tricks"] if t not in tricks])
        session = prepare(cfg, tm, "cpu")
        plan = plan_run(session, 0)
        model = session.model
        hlb_step = plan.step_fn(model, [])
        if scaler is None:
            plain_groups = [dict(params=[p for p in model.parameters() if p.requires_grad], lr=g["lr"], weight_decay=g["weight_decay"]) for g in plan.optimizer.param_groups]
        else:
            plain_groups = [dict(params=list(g["params"]), lr=g["lr"], weight_decay=g["weight_decay"]) for g in plan.optimizer.param_groups]
        plain_opt = torch.optim.SGD(plain_groups, momentum=cfg.train.momentum, nesterov=True)
        ema = None
        if every:
            from hlb_plugins.ema import decay_table, tracked_tensors

            net = tracked_tensors(model)
            ema = (every, [t.detach().clone() for t in net], net, decay_table(plan.ctx.total_steps, every, 0.95, 3.0))
        plain = _plain_step(model, plain_opt, [g["lr"] for g in plain_groups], plan.lr_table, smoothing, ema)
        x_all = plan.train_images
        y_all = session.dataset.train_labels
        batches = [(x_all[i * batch_size : (i + 1) * batch_size], y_all[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]
        times = {"hlb": [], "plain": []}
        for fn in (hlb_step, plain):  # warm-up
            for i, (x, y) in enumerate(batches[:2]):
                fn(x, y, i)
        for _ in range(trials):
            for label, fn in (("hlb", hlb_step), ("plain", plain)):
                t0 = time.perf_counter()
                for i, (x, y) in enumerate(batches):
                    fn(x, y, i)
                times[label].append((time.perf_counter() - t0) / steps)
        h, p = statistics.median(times["hlb"]), statistics.median(times["plain"])
        out.append({"variant": name, "hlb_ms": 1e3 * h, "plain_ms": 1e3 * p, "ratio": h / p, "steps": steps, "trials": trials})
    return out


def write_airbench_data(dest: str, data_dir: str | None = None) -> None:
    """The same CIFAR-10 hlb trains on, in the file format airbench's loader reads
    (``{"images": uint8 NHWC, "labels": int64, "classes": [...]}``), for side-by-side runs."""
    from pathlib import Path

    from hlbcli.data import load_cifar

    ds = load_cifar("cifar10", data_dir, download=False)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", ds.train_images, ds.train_labels), ("test", ds.test_images, ds.test_labels)):
        torch.save({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y, "classes": classes}, out / f"{name}.pt")
    print(f"wrote {out}/train.pt ({len(ds.train_labels)}) and test.pt ({len(ds.test_labels)})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hlbcli.bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead", help="assembled step vs a hand-written loop, on the CPU")
    o.add_argument("--widths", default="32,64,64")
    o.add_argument("--batch-size", type=int, default=256)
    o.add_argument("--steps", type=int, default=10)
    o.add_argument("--trials", type=int, default=5)
    o.add_argument("--threads", type=int, default=2)
    d = sub.add_parser("airbench-data", help="write CIFAR-10 as airbench's train.pt/test.pt into a folder")
    d.add_argument("dest")
    d.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "airbench-data":
        write_airbench_data(a.dest, a.data_dir)
        return
    rows = overhead(tuple(int(w) for w in a.widths.split(",")), a.batch_size, a.steps, a.trials, a.threads)
    print(f"{'variant':10} {'hlb ms/step':>12} {'plain ms/step':>14} {'ratio':>7}")
    for r in rows:
        print(f"{r['variant']:10} {r['hlb_ms']:12.1f} {r['plain_ms']:14.1f} {r['ratio']:7.3f}")
    print(f"(median of {a.trials} trials x {a.steps} steps, widths {a.widths}, batch {a.batch_size}, {a.threads} threads, CPU)")


if __name__ == "__main__":
    main()


# --- hlb bench ---------------------------------------------------------------------------------


def bench_report(summary: dict) -> dict:
    """Accuracy and time statistics of a train summary, with the mean time of each phase."""
    runs = [r for r in summary["runs"] if r.get("status") == "completed"]
    accs = [r["accuracy"] for r in runs]
    times = [r["train_seconds"] for r in runs]

    def mean_of(key: str) -> float:
        vals = [r["phases"][key] for r in runs]
        return statistics.fmean(vals) if vals else float("nan")

    return {
        "n": len(runs),
        "device": summary.get("device"),
        "accuracy_mean": statistics.fmean(accs) if accs else float("nan"),
        "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "accuracy_min": min(accs) if accs else float("nan"),
        "time_mean": statistics.fmean(times) if times else float("nan"),
        "time_median": statistics.median(times) if times else float("nan"),
        "phase_init_mean": mean_of("init"),
        "phase_train_mean": mean_of("train"),
        "phase_eval_mean": mean_of("eval"),
        "load_seconds": summary.get("load_seconds"),
        "build_seconds": summary.get("build_seconds"),
        "warmup_seconds": summary.get("warmup_seconds"),
        "compiled": summary.get("compiled"),
    }


def format_report(rep: dict, preset: str) -> str:
    lines = [
        f"bench {preset}: n={rep['n']} on {rep['device']}",
        f"  accuracy  mean {rep['accuracy_mean']:.4f}  std {rep['accuracy_std']:.4f}  min {rep['accuracy_min']:.4f}",
        f"  time (s)  mean {rep['time_mean']:.3f}  median {rep['time_median']:.3f}   (timed: init + train steps + final eval)",
        f"  phases    init {rep['phase_init_mean']:.3f}  train steps {rep['phase_train_mean']:.3f}  final eval {rep['phase_eval_mean']:.3f}",
        f"  untimed   load {rep['load_seconds'] or 0:.2f}  build {rep['build_seconds'] or 0:.2f}  compile + warm-up {rep['warmup_seconds'] or 0:.2f}"
        + ("" if rep["compiled"] else "  (not compiled)"),
    ]
    return "\n".join(lines)
