"""A preset against its original script, step by step: the same weights, the same batches, every tensor compared.

    python scripts/match_original.py --data-dir DIR [--recipe 94-record|94-muon] [--widths 32,64,64] [--epochs 4]
                                     [--steps 40] [--seed 0] [--threads 2] [--dtype fp32|fp64] [--free]
                                     [--check all|init|data|steps] [--set KEY=VALUE ...]

Where scripts/cpu_side_by_side.py compares whole runs (each side's own random streams, so only
their accuracies' distributions can agree), this script takes the randomness out: the original
(from ``external/``, patched for the CPU by scripts/originals.py) initialises its net and runs its
own main() on our batches (the real training set in order, no augmentation), its state kept
before every step; hlb's ``--preset`` plans its run as ``hlb train`` would (the same widths and
epochs). Before each step hlb's net and optimizers get the original's state (weights, batchnorm
statistics, momentum buffers; ``--free``: only at the start), both sides take the same batch
through their own step (forward, loss, backward, every lr schedule, the optimizers, the epoch
hooks), and every tensor is compared (the largest difference over the tensor, relative to its
largest value). Then the final evaluation (with TTA) on the same weights on both sides.

fp32 rounding differs between the two (op order, fused kernels, fp16 momentum buffers): a step
differs by ~1e-6. ``--dtype fp64`` puts both sides, optimizer state included, in float64 and makes
their epsilons equal: ~1e-14. A difference in what the two compute stands out at the step where
it acts (a schedule edge, a renormalisation, a frozen bias): the table names the step and the
tensors. ``--check init`` compares each side's own initial weights' scales (the same seed, not the
same numbers), ``--check data`` summarises the first two epochs' augmented sets of each side's own
loader.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from originals import PATCHES, load  # noqa: E402


def original_name(name: str) -> str:
    """hlb's parameter or buffer name -> the same tensor's name in hiverge's CifarNet (and
    airbench94_muon's, which it grew from)."""
    if name.startswith("stem."):
        return "whiten." + name[len("stem."):]
    if name.startswith("groups."):
        i, rest = name[len("groups."):].split(".", 1)
        return f"layers.{int(i) + 1}.{rest}"
    return name


class Stop(Exception):
    pass


class Batches:
    """Stands in for the original's CifarLoader: the same tensors hlb gets (the real images,
    normalised with hlb's mean and std), in order, no augmentation; before each training batch it
    keeps the original model's state (after ``len(states)`` steps) and stops after ``steps``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std, train: bool,
                 model: torch.nn.Module, states: list, steps: int, dtype: torch.dtype = torch.float32):
        self.images, self.labels, self.batch_size, self.train = images, labels, batch_size, train
        self.m = torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1)
        self.s = torch.tensor(std, dtype=dtype).view(1, -1, 1, 1)
        self.model, self.states, self.steps = model, states, steps
        self.optimizers: list = []  # the original's, once its main() has built them
        self.normalized: torch.Tensor | None = None  # the whole set, normalised once

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (as this loader holds them) or float ones in [0, 1], normalised."""
        x = x.to(self.m.dtype) / 255 if x.dtype == torch.uint8 else x
        return (x - self.m) / self.s

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self):
        for _ in range(len(self)):
            g = len(self.states)
            self.states.append(snapshot(self.model, self.optimizers))
            if g == self.steps:
                raise Stop
            if self.normalized is None:
                self.normalized = self.normalize(self.images)
            yield batch(self.normalized, self.labels, g, self.batch_size)


def batch(images: torch.Tensor, labels: torch.Tensor, g: int, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``g``'s batch: the next ``bs`` images of the set, in order, wrapping round."""
    idx = torch.arange(g * bs, (g + 1) * bs) % len(images)
    return images[idx].contiguous(memory_format=torch.channels_last), labels[idx]


def snapshot(model: torch.nn.Module, optimizers: list = ()) -> dict[str, torch.Tensor]:
    """The model's float tensors by name, and each parameter's momentum buffer in ``optimizers``
    (as ``momentum:NAME``)."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for name, p in model.named_parameters():
        for opt in optimizers:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out["momentum:" + name] = buf.clone()
    return out


def load_state(model: torch.nn.Module, optimizers: list, state: dict, to_orig) -> None:
    """Put the original's ``state`` (:func:`snapshot`) into hlb's ``model`` and its optimizers'
    momentum buffers (a parameter the original has none for yet gets none)."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(state[to_orig(k)])
        for name, p in model.named_parameters():
            for opt in optimizers:
                if any(p is q for g in opt.param_groups for q in g["params"]):
                    buf = state.get("momentum:" + to_orig(name))
                    st = opt.state[p]
                    if buf is None:
                        st.pop("momentum_buffer", None)
                    else:
                        st["momentum_buffer"] = buf.clone()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def compare(hlb_state: dict, orig_state: dict, to_orig) -> list[tuple[float, str]]:
    def name(k: str) -> str:
        return "momentum:" + to_orig(k[len("momentum:"):]) if k.startswith("momentum:") else to_orig(k)

    return sorted(((rel(v, orig_state[name(k)]), k) for k, v in hlb_state.items() if name(k) in orig_state), reverse=True)


def whitening_match(hlb_w: torch.Tensor, orig_w: torch.Tensor) -> float:
    """The two whitening filter banks differ at most by each eigenvector's sign (the bank holds
    each filter and its negation): the largest relative difference, signs matched per filter."""
    half = len(orig_w) // 2
    a, b = hlb_w[:half].flatten(1).double(), orig_w[:half].flatten(1).double()
    sign = torch.sign((a * b).sum(1, keepdim=True))
    return float((a - sign * b).abs().max() / b.abs().max())


def init_scales(hlb_state: dict, orig_state: dict, to_orig) -> list[tuple[float, str]]:
    """Each side's own fresh initial weights (the same seed, not the same numbers): per tensor,
    the ratio of hlb's standard deviation (about its mean) to the original's, most different
    first. Sampling alone moves a ratio by about 1/sqrt(elements)."""
    out = []
    for k, v in hlb_state.items():
        o = orig_state[to_orig(k)]
        if k.endswith(("running_mean", "running_var")) or k == "stem.weight" or v.numel() < 2:
            continue
        sv, so = v.double().std(), o.double().std()
        if so == 0 and sv == 0:
            continue
        out.append((float(sv / so) if so > 0 else float("inf"), k))
    return sorted(out, key=lambda r: -abs(math.log(r[0])) if 0 < r[0] < float("inf") else -1e9)


def epoch_stats(epoch_set: torch.Tensor, plain: torch.Tensor) -> dict[str, float]:
    """What an epoch's augmented set looks like against the plain normalised images it came
    from (row for row): its mean and spread, how far it moved, and which images are mirrored
    (closer to the mirror image than to the image). ``mirrored``: the per-image flags."""
    e, x = epoch_set.float(), plain.float()
    to_plain = (e - x).pow(2).flatten(1).mean(1)
    to_mirror = (e - x.flip(-1)).pow(2).flatten(1).mean(1)
    mirrored = to_mirror < to_plain
    moved = torch.where(mirrored, to_mirror, to_plain)
    return {"mean": float(e.mean()), "std": float(e.std()), "moved (rms)": float(moved.mean().sqrt()),
            "mirrored": float(mirrored.float().mean()), "flags": mirrored}


def data_check(a, ns, plan, epochs: int = 2) -> None:
    """The first ``epochs`` epochs' augmented sets of each side, summarised (:func:`epoch_stats`).
    The original's loader is its own (on a copy of the data in its file format), fed by the
    arguments its main() gives it; hlb's is its run's epoch stream."""
    import tempfile

    from hlbcli.bench import write_airbench_data
    from hlbcli.stream import epoch_set

    ctx = plan.ctx
    plain = ctx.train_images
    real = ns["_ORIGINAL_LOADER"]
    made = {}

    class Capture(Exception):
        pass

    def capture(path, train=True, batch_size=500, aug=None):
        if not train:
            return None
        made.update(batch_size=batch_size, aug=aug)
        raise Capture

    ours, ns["CifarLoader"] = ns["CifarLoader"], capture
    try:
        ns["main"](a.seed, ns["CifarNet"]())
    except Capture:
        pass
    finally:
        ns["CifarLoader"] = ours
    rows = {"hlb": [], "original": []}
    gen = ctx.generator
    for epoch in range(epochs):
        images, _ = epoch_set(ctx, plan.transforms, epoch, gen, False)
        rows["hlb"].append(epoch_stats(images, plain))
        rows["hlb"][-1]["by_image"] = rows["hlb"][-1]["flags"].to(torch.int8)
    with tempfile.TemporaryDirectory() as tmp:
        write_airbench_data(str(Path(tmp) / "cifar10"), a.data_dir)
        torch.manual_seed(a.seed)
        loader = real(str(Path(tmp) / "cifar10"), train=True, batch_size=made["batch_size"], aug=made["aug"])
        shuffles, randperm = [], torch.randperm

        def kept(*args, **kw):  # the loader's shuffle, kept: which image each row of the epoch is
            shuffles.append(randperm(*args, **kw))
            return shuffles[-1]

        for epoch in range(epochs):
            torch.randperm = kept
            try:
                batches = [x for x, _ in loader]
            finally:
                torch.randperm = randperm
            idx = shuffles[-1][: sum(len(x) for x in batches)]
            rows["original"].append(epoch_stats(torch.cat(batches), plain[idx]))
            by_image = torch.full((len(plain),), -1, dtype=torch.int8)  # -1: dropped at the epoch's edge
            by_image[idx] = rows["original"][-1]["flags"].to(torch.int8)
            rows["original"][-1]["by_image"] = by_image
    print("\n| epoch | side | mean | std | moved from the plain image (rms) | mirrored |\n|---|---|---|---|---|---|")
    for epoch in range(epochs):
        for side in ("hlb", "original"):
            r = rows[side][epoch]
            print(f"| {epoch} | {side} | {r['mean']:+.4f} | {r['std']:.4f} | {r['moved (rms)']:.4f} | {r['mirrored']:.4f} |")
    if epochs >= 2:
        def switched(side: str) -> float:  # of the images seen in both epochs, mirrored in one only
            f0, f1 = (r["by_image"] for r in rows[side][:2])
            seen = (f0 >= 0) & (f1 >= 0)
            return float((f0[seen] != f1[seen]).float().mean())

        print(f"mirrored in exactly one of epochs 0 and 1: hlb {switched('hlb'):.4f}, original {switched('original'):.4f}")


#: --dtype fp64, per recipe: hlb's settings and the original's patches (after scripts/originals.py's) that
#: put every tensor, optimizer state too, in float64, and that make the two sides' epsilons equal
FP64 = {
    "94-record": (["muon.momentum_dtype=auto"], [  # the gradient's dtype: float64
        ("            mod.float()", "            mod.double()"),
        ('["momentum_buffer_dtype"] = torch.half', '["momentum_buffer_dtype"] = torch.double'),
        # the script keeps momentum only in fp16 buffers; in any other dtype it would drop it
        ('momentum_buffers = [] if group["momentum_buffer_dtype"] == torch.half else None', "momentum_buffers = []"),
        # the eps of its normalisation before Newton-Schulz, as hlb's (1e-7 for its 1e-5: a 1e-5 relative
        # change of the update's size, which fp64 shows from the first step)
        ("eps_stable = 1e-05", "eps_stable = 1e-07"),
        # and of the filters' rescaling, which hlb's lacks (2.5e-8 relative at norm 4)
        ("(len(p.data) ** 0.5 / (n + 1e-07))", "(len(p.data) ** 0.5 / n)"),
    ]),
    "94-muon": (["muon.ns_dtype=update"], [  # Newton-Schulz in the update's dtype: float64
        ("                mod.float()", "                mod.double()"),
        ("X = G.float()", "X = G.double()"),
    ]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="the real CIFAR-10 (cifar-10-batches-py)")
    ap.add_argument("--recipe", choices=sorted(FP64), default="94-record",
                    help="94-record: hiverge's cifar10_speedrun.py; 94-muon: airbench94_muon.py")
    ap.add_argument("--original", help="the original script (default: scripts/originals.py's file under external/)")
    ap.add_argument("--widths", default="32,64,64")
    ap.add_argument("--epochs", type=float, default=4, help="the run's length: the schedules' horizon")
    ap.add_argument("--steps", type=int, default=40, help="steps compared")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra --set for hlb's side")
    ap.add_argument("--dtype", choices=["fp32", "fp64"], default="fp32",
                    help="fp32: as both run on the CPU (Muon's momentum buffers in fp16); fp64: both sides in float64, "
                         "the momentum buffers too, so rounding stays near 1e-15 for many steps and what is left is "
                         "what the two compute differently")
    ap.add_argument("--show", type=int, default=3, help="tensors listed per step (the most different)")
    ap.add_argument("--free", action="store_true",
                    help="let hlb's side run on from its own state (differences accumulate and grow); by default each "
                         "step starts from the original's state (weights, batchnorm statistics, momentum buffers), so "
                         "each row is that one step's difference")
    ap.add_argument("--check", choices=["all", "init", "data", "steps"], default="all",
                    help="init: each side's own initial weights' scales; data: the first two epochs' augmented sets; "
                         "steps: the step by step from the same weights, then the final evaluation")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    widths = [int(v) for v in a.widths.split(",")]
    src = Path(a.original or ROOT / "external" / PATCHES[a.recipe][0])
    if not src.is_file():
        sys.exit(f"error: {src.resolve()} not found (lay out external/ as scripts/gpu_bench.sh says)")

    from hlbcli.run import plan_run
    from hlbcli.session import open_session
    from hlbcli.testing import resolve_config

    sets = [f"model.widths=[{a.widths}]", f"train.epochs={a.epochs}", f"model.scaling_factor={1 / widths[-1]}", *a.set]
    # the original's optimizers, kept where the harness can read their momentum buffers
    extra = [("    optimizers = [optimizer1, optimizer2]\n",
              "    optimizers = [optimizer1, optimizer2]\n    _HARNESS_OPTIMIZERS[:] = optimizers\n")]
    dtype = torch.float32
    if a.dtype == "fp64":
        dtype = torch.float64
        sets += FP64[a.recipe][0]
        extra += FP64[a.recipe][1]
    cfg, tm = resolve_config(preset=a.recipe, sets=sets, tiny=False)
    session = open_session(cfg, tm, "cpu", data_dir=a.data_dir, download=False)
    ds, bs = session.dataset, cfg.train.batch_size
    session.model.to(dtype)

    # the original: its own main() on our batches, its state kept before every step
    ns = load(a.recipe, str(src), widths, a.epochs, extra=extra)
    ns["_HARNESS_OPTIMIZERS"] = opts = []
    ns["_ORIGINAL_LOADER"] = ns["CifarLoader"]  # the data check uses the script's own loader
    torch.manual_seed(a.seed)
    orig = ns["CifarNet"]().to(memory_format=torch.channels_last)
    states: list = []

    loaders = []

    def loader(path, train=True, batch_size=500, aug=None):
        x, y = (ds.train_images, ds.train_labels) if train else (ds.test_images, ds.test_labels)
        loaders.append(Batches(x, y, batch_size, ds.mean, ds.std, train, orig, states,
                               a.steps if a.check in ("all", "steps") else 0, dtype))
        loaders[-1].optimizers = opts
        return loaders[-1]

    ns["CifarLoader"] = loader
    try:
        ns["main"](a.seed, orig)
        states.append(snapshot(orig, opts))  # it ran to its end: the state after its last step
    except Stop:
        pass
    print(f"original: {src} ({len(states) - 1} steps kept); hlb: --preset {a.recipe} --set {' --set '.join(sets)}")

    # hlb: its own run plan (reset, whitening, optimizers, actions), then the original's weights
    plan = plan_run(session, a.seed)
    model = session.model
    if a.check in ("all", "init"):
        print("\ninitial weights, each side's own (seed %d): std hlb / std original, most different first" % a.seed)
        print(", ".join(f"{k} {r:.3f}" for r, k in init_scales(snapshot(model), states[0], original_name)))
    if a.check in ("all", "data"):
        data_check(a, ns, plan)
    if a.check not in ("all", "steps"):
        return
    print(f"whitening filters, hlb against the original on the same images (signs matched): "
          f"{whitening_match(model.stem.weight.detach(), states[0]['whiten.weight']):.2e} relative")
    step_fn = plan.step_fn(session.forward_model, [], session.forward_loss(plan.loss_fn, False, plan.ctx))
    train_norm = next(b for b in loaders if b.train).normalized
    load_state(model, plan.optimizers, states[0], original_name)

    mode = "hlb runs on from its own state" if a.free else "each step from the original's state"
    print(f"\n| step | largest difference, relative ({mode}) | tensors |\n|---|---|---|")
    worst_step = (0.0, -1)
    spe = plan.ctx.steps_per_epoch
    for g in range(len(states) - 1):
        if g % spe == 0:  # an epoch starts: its hooks, as the training loop calls them (the whitening bias freezes)
            plan.ctx.rebuild_step = False
            tm.hook.hlb_epoch_start(epoch=g // spe, ctx=plan.ctx)
            if plan.ctx.rebuild_step:
                step_fn = plan.step_fn(session.forward_model, [], session.forward_loss(plan.loss_fn, False, plan.ctx))
        if not a.free:
            load_state(model, plan.optimizers, states[g], original_name)
        x, y = batch(train_norm, ds.train_labels, g, bs)
        step_fn(x, y, g)
        diffs = compare(snapshot(model, plan.optimizers), states[g + 1], original_name)
        worst_step = max(worst_step, (diffs[0][0], g))
        shown = ", ".join(f"{k} {d:.1e}" for d, k in diffs[: a.show])
        print(f"| {g} | {diffs[0][0]:.2e} | {shown} |", flush=True)
    print(f"largest: {worst_step[0]:.2e} at step {worst_step[1]}")

    # the final evaluation on the same weights: the original's after the last step (it holds them), in hlb's net
    load_state(model, plan.optimizers, states[-1], original_name)
    ctx = plan.ctx
    model.float()
    orig.float()
    forward = tm.hook.hlb_eval_forward(model=session.forward_model, cfg=cfg, ctx=ctx, final=True)
    ours = tm.hook.hlb_evaluate(model=model, images=ds.test_images, labels=ds.test_labels, forward=forward,
                                ctx=ctx, final=True)["accuracy"]
    test = Batches(ds.test_images, ds.test_labels, 2000, ds.mean, ds.std, False, orig, [], 0)
    theirs = ns["evaluate"](orig, test, tta_level=2)
    print(f"\nfinal evaluation with TTA on the same weights (after {len(states) - 1} steps): "
          f"hlb {100 * ours:.2f}%, original {100 * theirs:.2f}%")


if __name__ == "__main__":
    main()
