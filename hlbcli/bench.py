"""Benchmarks, run on purpose (never timed assertions in the test suite).

``python -m hlbcli.bench overhead``: the assembled step against a plain hand-written PyTorch
loop doing the same math on the same model, on the CPU; prints the ratio.

``python -m hlbcli.bench ops``: ATen operations dispatched per training step of a preset (94)
against airbench94's step written by hand, on the CPU; ends with the ratio.

``hlb bench`` (see :func:`bench_command`): a preset for N seeds, compile and warm-up excluded
from the timed figure and reported beside it, with the time of each phase.
"""

from __future__ import annotations

import collections
import copy
import statistics
import time
from typing import Optional

import torch
import torch.nn.functional as F
import typer
from torch.utils._python_dispatch import TorchDispatchMode

from hlbcli import stats
from hlbcli.layers import load_preset
from hlbcli.output import SYNTHETIC, pct, pts, synthetic
from hlbcli.contract import set_lrs, sgd_hparams
from hlbcli.resolve import resolve
from hlbcli.run import plan_run
from hlbcli.session import open_session
from hlbcli.data import load_cifar


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
    tables = [lr_table] * len(groups)

    def step(x, y, i):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing, reduction="none").sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        set_lrs(groups, base_lrs, tables, i)
        optimizer.step()
        if ema is not None:
            every, avg, net, decays = ema
            if (i + 1) % every == 0:
                with torch.no_grad():
                    torch._foreach_lerp_(avg, net, 1 - decays[i + 1].item())
                    torch._foreach_copy_(net, avg)

    return step


def _plain_lookahead(model, total_steps: int, every: int, base: float = 0.95, power: float = 3.0) -> tuple:
    """airbench94's lookahead written out for the plain loop, independently of the ``ema``
    trick it is timed against (the core imports no trick): every floating parameter and
    buffer, an average of them, and the decay base**every * (t / T)**power of step t."""
    net = [p for p in model.parameters() if p.is_floating_point()] + [b for b in model.buffers() if b.is_floating_point()]
    t = torch.arange(total_steps + 1, dtype=torch.float64)
    return every, [x.detach().clone() for x in net], net, (base**every * (t / max(total_steps, 1)) ** power).float()


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
        session = open_session(cfg, tm, "cpu")
        plan = plan_run(session, 0)
        model = session.model
        hlb_step = plan.step_fn(model, [])
        if scaler is None:
            plain_groups = [dict(params=[p for p in model.parameters() if p.requires_grad], lr=g["lr"], weight_decay=g["weight_decay"]) for g in plan.optimizers[0].param_groups]
        else:
            plain_groups = [dict(params=list(g["params"]), lr=g["lr"], weight_decay=g["weight_decay"]) for g in plan.optimizers[0].param_groups]
        plain_opt = torch.optim.SGD(plain_groups, momentum=cfg.train.momentum, nesterov=True)
        ema = _plain_lookahead(model, plan.ctx.total_steps, every) if every else None
        plain = _plain_step(model, plain_opt, [g["lr"] for g in plain_groups], plan.lr_table, smoothing, ema)
        x_all = plan.ctx.train_images
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


# --- ops: ATen operations dispatched per training step ----------------------------------------


class OpCounter(TorchDispatchMode):
    """Counts every ATen operation that reaches the Python dispatch key (forward, backward,
    optimizer and in-place updates alike): on CUDA, roughly one kernel launch each."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _airbench_step(model, lr: float, wd: float, bias_scaler: float, momentum: float, smoothing: float, lr_table, decays, every: int):
    """airbench94's training step written out by hand on the same net: cross-entropy with label
    smoothing summed over the batch, Nesterov SGD with torch's multi-tensor kernels (its
    default on CUDA) in two groups (batchnorm parameters at lr x bias_scaler, the rest), the lr
    set per group each step, and every ``every`` steps the lookahead: a lerp and a copy per
    tensor of the state dict in half or single precision."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    norm = [p for p in params if id(p) in norm_ids]
    other = [p for p in params if id(p) not in norm_ids]
    lr_b = lr * bias_scaler
    groups = [dict(params=norm, lr=lr_b, weight_decay=wd / lr_b), dict(params=other, lr=lr, weight_decay=wd / lr)]
    optimizer = torch.optim.SGD(groups, momentum=momentum, nesterov=True, foreach=True)
    base, tables = [lr_b, lr], [lr_table, lr_table]
    state = [v for v in model.state_dict().values() if v.dtype in (torch.half, torch.float)]
    ema = [v.clone() for v in state]
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing, reduction="none")

    def step(x, y, i):
        outputs = model(x)
        loss = loss_fn(outputs, y).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        set_lrs(optimizer.param_groups, base, tables, i)
        optimizer.step()
        if (i + 1) % every == 0:
            with torch.no_grad():
                for e, v in zip(ema, state):
                    e.lerp_(v, 1 - decays[i + 1])
                    v.copy_(e)

    return step


def ops_per_step(preset: str = "94", precision: str = "fp16-weights", steps: int = 20, batch_size: int = 32,
                 widths: tuple[int, ...] = (16, 32, 32)) -> dict:
    """ATen operations per step of ``preset``'s assembled step and of airbench94's step written
    by hand, on the CPU, counted over ``steps`` steps (a multiple of the EMA period) after one
    untimed step each. Sizes do not change the counts: the net is narrowed and the batch made
    small so that half precision on the CPU stays quick."""
    torch.manual_seed(0)
    n_train = batch_size * (steps + 2)
    sets = [
        'data.dataset="synthetic"', f"data.synthetic_train={n_train}", "data.synthetic_test=64",
        f"model.widths={list(widths)}", f"train.batch_size={batch_size}", "train.epochs=1",
        'train.compile="off"', f'train.precision="{precision}"', "whitening.num_images=64",
    ]
    cfg, tm = resolve(preset, sets=sets)
    session = open_session(cfg, tm, "cpu")
    plan = plan_run(session, 0)
    t = cfg.train
    hlb_step = plan.step_fn(session.model, [])
    hand_model = copy.deepcopy(session.model)
    lr, wd = sgd_hparams(t)
    ls = getattr(cfg, "label_smoothing", None)
    ema = getattr(cfg, "ema", None)
    bias = getattr(cfg, "bias_lr", None)
    every = ema.every if ema else 10**9
    decays = (0.95**every * (torch.arange(plan.ctx.total_steps + 1) / plan.ctx.total_steps) ** 3).tolist()
    hand_step = _airbench_step(hand_model, lr, wd, bias.scaler if bias else 1.0, t.momentum, ls.factor if ls else 0.0,
                               plan.lr_table, decays, every)
    images, labels = plan.ctx.train_images, session.dataset.train_labels
    perm = torch.randperm(len(labels))
    out = {}
    for name, fn in (("hlb", hlb_step), ("hand", hand_step)):
        fn(images[:batch_size], labels[:batch_size], 0)  # first step: optimizer state is created
        counter = OpCounter()
        with counter:
            for i in range(1, steps + 1):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                fn(images[idx], labels[idx], i)
        out[name] = counter.counts
    h, a = sum(out["hlb"].values()) / steps, sum(out["hand"].values()) / steps
    return {"hlb": h, "hand": a, "ratio": h / a, "steps": steps, "precision": precision, "preset": preset,
            "hlb_counts": dict(out["hlb"]), "hand_counts": dict(out["hand"])}


def print_ops(rep: dict, detail: bool = False) -> None:
    if detail:
        names = sorted(set(rep["hlb_counts"]) | set(rep["hand_counts"]))
        print(f"{'operation':40} {'hlb':>7} {'hand':>7}   (per step)")
        for n in names:
            h, a = rep["hlb_counts"].get(n, 0) / rep["steps"], rep["hand_counts"].get(n, 0) / rep["steps"]
            if h != a:
                print(f"{n:40} {h:7.1f} {a:7.1f}")
    print(f"preset {rep['preset']}, precision {rep['precision']}, {rep['steps']} steps on the CPU")
    print(f"ATen ops per step: hlb {rep['hlb']:.1f}, hand-written airbench94 step {rep['hand']:.1f}, ratio {rep['ratio']:.3f}")


def write_airbench_data(dest: str, data_dir: str | None = None) -> None:
    """The same CIFAR-10 hlb trains on, in the file format airbench's loader reads
    (``{"images": uint8 NHWC, "labels": int64, "classes": [...]}``), for side-by-side runs."""
    from pathlib import Path

    ds = load_cifar("cifar10", data_dir, download=False)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", ds.train_images, ds.train_labels), ("test", ds.test_images, ds.test_labels)):
        torch.save({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y, "classes": classes}, out / f"{name}.pt")
    print(f"wrote {out}/train.pt ({len(ds.train_labels)}) and test.pt ({len(ds.test_labels)})")


tools = typer.Typer(name="python -m hlbcli.bench", help=__doc__.split("\n\n")[0], no_args_is_help=True,
                    add_completion=False)


@tools.command("overhead")
def overhead_cmd(
    widths: str = typer.Option("32,64,64", "--widths", help="the conv groups' widths, comma-separated"),
    batch_size: int = typer.Option(256, "--batch-size"),
    steps: int = typer.Option(10, "--steps"),
    trials: int = typer.Option(5, "--trials"),
    threads: int = typer.Option(2, "--threads"),
) -> None:
    """The assembled step against a hand-written loop, on the CPU."""
    rows = overhead(tuple(int(w) for w in widths.split(",")), batch_size, steps, trials, threads)
    print(f"{'variant':10} {'hlb ms/step':>12} {'plain ms/step':>14} {'ratio':>7}")
    for r in rows:
        print(f"{r['variant']:10} {r['hlb_ms']:12.1f} {r['plain_ms']:14.1f} {r['ratio']:7.3f}")
    print(f"(median of {trials} trials x {steps} steps, widths {widths}, batch {batch_size}, {threads} threads, CPU)")


@tools.command("ops")
def ops_cmd(
    preset: str = typer.Option("94", "--preset"),
    precision: str = typer.Option("fp16-weights", "--precision", help="train.precision to count with (the CUDA default: fp16-weights)"),
    steps: int = typer.Option(20, "--steps"),
    detail: bool = typer.Option(False, "--detail", help="list the operations whose counts differ"),
) -> None:
    """ATen operations dispatched per training step, hlb against a hand-written airbench94 step."""
    print_ops(ops_per_step(preset, precision, steps), detail)


@tools.command("airbench-data")
def airbench_data_cmd(
    dest: str = typer.Argument(..., help="the folder to write train.pt and test.pt into"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
) -> None:
    """Write CIFAR-10 as airbench's train.pt/test.pt into a folder."""
    write_airbench_data(dest, data_dir)


def main(argv: list[str] | None = None) -> None:
    """``python -m hlbcli.bench ARGS`` called in-process (the tests): returns when a command
    ends; ``--help`` and a usage error exit as the command line does."""
    code = tools(args=argv, prog_name="python -m hlbcli.bench", standalone_mode=False)
    if isinstance(code, int):  # --help (0), or click's own exit
        raise SystemExit(code)


if __name__ == "__main__":
    tools(prog_name="python -m hlbcli.bench")


# --- hlb bench ---------------------------------------------------------------------------------


def bench_report(summary: dict) -> dict:
    """Accuracy and time statistics of a train summary, with the mean time of each phase."""
    runs = [r for r in summary["runs"] if r.get("status") == "completed"]
    b = stats.run_block(summary["runs"])

    def mean_of(key: str) -> float:
        return stats.mean_std([r["phases"][key] for r in runs])[0]

    return {
        "n": b["n"],
        "device": summary.get("device"),
        "accuracy_mean": b["mean"],
        "accuracy_std": b["std"],
        "accuracy_min": b["min"],
        "time_mean": b["time_mean"],
        "time_median": b["time_median"],
        "phase_init_mean": mean_of("init"),
        "phase_train_mean": mean_of("train"),
        "phase_eval_mean": mean_of("eval"),
        "load_seconds": summary.get("load_seconds"),
        "build_seconds": summary.get("build_seconds"),
        "warmup_seconds": summary.get("warmup_seconds"),
        "compiled": summary.get("compiled"),
        "precision": runs[0].get("precision") if runs else None,
        "compile_mode": runs[0].get("compile_mode") if runs else None,
        "eval_batch_size": runs[0].get("eval_batch_size") if runs else None,
        "host_memory": runs[0].get("host_memory") if runs else None,
        "synthetic": synthetic(runs),
    }


def format_report(rep: dict, preset: str) -> str:
    """The report as printed: accuracies in percent (bench.json keeps fractions)."""
    lines = [
        f"bench {preset}: n={rep['n']} on {rep['device']}, precision {rep.get('precision')}"
        + (f", compiled ({rep.get('compile_mode')})" if rep["compiled"] else ", eager")
        + (f", host memory {rep['host_memory']}" if rep.get("host_memory") else "")
        + (f" {SYNTHETIC}" if rep.get("synthetic") else ""),
        f"  accuracy  mean {pct(rep['accuracy_mean'])}  std {pts(rep['accuracy_std'])} pts  min {pct(rep['accuracy_min'])}",
        f"  time (s)  mean {rep['time_mean']:.3f}  median {rep['time_median']:.3f}   (timed: init + train steps + final eval)",
        f"  phases    init {rep['phase_init_mean']:.3f}  train steps {rep['phase_train_mean']:.3f}  final eval {rep['phase_eval_mean']:.3f}"
        + (f" (batch {rep['eval_batch_size']})" if rep.get("eval_batch_size") else ""),
        f"  untimed   load {rep['load_seconds'] or 0:.2f}  build {rep['build_seconds'] or 0:.2f}  compile + warm-up {rep['warmup_seconds'] or 0:.2f}"
        + ("" if rep["compiled"] else "  (not compiled)"),
    ]
    return "\n".join(lines)
