"""The original scripts a preset names, loaded for the CPU: one place that patches each.

    ns = load("94-record", "external/hiverge/cifar10_speedrun.py", widths=[32, 64, 64], epochs=4)
    model = ns["CifarNet"]()            # the script's own classes and functions, in fp32 on the CPU

The scripts live in the ignored folder ``external/`` (scripts/gpu_bench.sh says where each comes
from); nothing of them is committed. Each is read as text, patched in memory (fp32 instead of
fp16/bf16, CPU tensors instead of CUDA ones, no ``torch.compile``, host clocks instead of CUDA
events, the widths and epochs narrowed) and executed as a module namespace; a patch whose text
is no longer in the script stops with the line it looked for. Used by scripts/cpu_side_by_side.py
(whole runs, one child process each) and scripts/match_original.py (step by step, in-process).
"""

from __future__ import annotations

import math
import re
import sys
import time

import torch

#: airbench94's loop (legacy airbench94.py and airbench96.py share it)
AIRBENCH94_LOOP = [
    ("map_location=torch.device(gpu)", "map_location='cpu'"),
    ("self.images.half() / 255", "self.images.float() / 255"),
    ("net = net.half().cuda()", "net = net.float()"),
]

#: recipe: (the file under external/, its patches as (old, new) pairs; ``{w0}``, ``{w1}``, ``{w2}``
#: and ``{epochs}`` in ``new`` are filled in)
PATCHES = {
    "94": ("airbench/airbench94.py", AIRBENCH94_LOOP),
    # airbench96 (legacy), airbench94's loop with a wider, deeper net
    "96": ("airbench/airbench96.py", AIRBENCH94_LOOP),
    # its logits scale with 1/(last width) by itself
    "94-muon": ("airbench/airbench94_muon.py", [
        ("@torch.compile\n", ""),
        ("X = G.bfloat16()", "X = G.float()"),
        ('map_location=torch.device("cuda")', "map_location='cpu'"),
        ("self.images.half() / 255", "self.images.float() / 255"),
        ("widths = dict(block1=64, block2=256, block3=256)", "widths = dict(block1={w0}, block2={w1}, block3={w2})"),
        ("                mod.half()", "                mod.float()"),
        ("total_train_steps = ceil(8 * len(train_loader))", "total_train_steps = ceil({epochs!r} * len(train_loader))"),
    ]),
    # hiverge's cifar10_speedrun.py: its Muon's fp16 momentum buffers stay (as in hlb's preset); its
    # logits scale with 1/width by itself
    "94-record": ("hiverge/cifar10_speedrun.py", [
        ("dtype=torch.half)\nCIFAR_STD", "dtype=torch.float)\nCIFAR_STD"),
        ("(0.247, 0.2435, 0.2616), dtype=torch.half)", "(0.247, 0.2435, 0.2616), dtype=torch.float)"),
        ('map_location=torch.device("cuda")', "map_location='cpu'"),
        ("(self.images.half() / 255)", "(self.images.float() / 255)"),
        ('dtype=torch.long, device="cuda")', 'dtype=torch.long, device="cpu")'),
        ("widths = dict(block1=64, block2=256, block3=256)", "widths = dict(block1={w0}, block2={w1}, block3={w2})"),
        ("            mod.half()", "            mod.float()"),
    ]),
    # tysam-code's hlb-CIFAR10 main.py at v0.7.0 (ad103b4): it loads the data when imported, through
    # torchvision from cifar10/cifar-10-batches-py (the caller lays it out; nothing is downloaded), in
    # the order stored (every epoch draws its own permutation; a shuffled load would make a seed's run
    # depend on an unseeded draw), without worker processes
    "hlb-v0.7": ("hlb-CIFAR10/main.py", [
        ("'device': 'cuda',", "'device': 'cpu',"),
        ("torchvision.datasets.CIFAR10(", "CIFAR10_AS_STORED("),
        ("download=True,", "download=False,"),
        ("shuffle=True, num_workers=2,", "shuffle=False, num_workers=0,"),
        ("shuffle=False, num_workers=1,", "shuffle=False, num_workers=0,"),
        (".half().requires_grad_(False)", ".float().requires_grad_(False)"),
        ("'targets']).half()", "'targets']).float()"),
        ("net.half() # Convert", "net.float() # Convert"),
        ("device='cuda')", "device='cpu')"),
    ]),
    # airbench96_faster.py: its __main__ is not run (the caller builds the three nets as it does)
    "96-faster": ("airbench/airbench96_faster.py", [
        ("map_location='cuda'", "map_location='cpu'"),
        ("(self.images.half() / 255)", "(self.images.float() / 255)"),
        ("torch.tensor([True]*len(self.images)).cuda()", "torch.tensor([True]*len(self.images))"),
        ("torch.zeros(len(inputs)).cuda().bool()", "torch.zeros(len(inputs)).bool()"),
        ("net = net.half().cuda()", "net = net.float()"),
        ("model._orig_mod[0]", "model[0]"),
        ("model_trainbias._orig_mod[0]", "model_trainbias[0]"),
    ]),
}


class HostEvent:
    """``torch.cuda.Event`` on the host clock (the scripts time themselves with CUDA events)."""

    def __init__(self, enable_timing: bool = False):
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "HostEvent") -> float:
        return 1e3 * (end.t - self.t)


def _no_compile(fn=None, **kw):
    return fn if fn is not None else (lambda f: f)


def _cifar10_as_stored():
    """torchvision's CIFAR10 reader without its checksum test: ../shared's copy (materialize.py) holds
    the same images and labels in the same layout, pickled anew, so its files' bytes differ."""
    import torchvision

    base = torchvision.datasets.CIFAR10

    class CIFAR10(base):  # a checksum of None: torchvision checks only that each file is there
        train_list = [[name, None] for name, _ in base.train_list]
        test_list = [[name, None] for name, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return CIFAR10


def source(recipe: str, text: str, widths: list[int], epochs: float, extra: list[tuple[str, str]] = ()) -> str:
    """The script's text with the recipe's patches applied (then ``extra``'s, the caller's)."""
    patches = [*PATCHES[recipe][1], *extra]
    fill = {"w0": widths[0], "w1": widths[1], "w2": widths[2], "epochs": epochs}
    for old, new in patches:
        if old not in text:
            raise SystemExit(f"error: the original script changed: {old!r} is not in it (update scripts/originals.py)")
        text = text.replace(old, new.format(**fill))
    if recipe == "94-record":
        # the pinned staging buffer of commits before 06c6072 (a CPU tensor cannot be pinned without CUDA)
        text = text.replace(").pin_memory().contiguous()", ").contiguous()")
        text, n = re.subn(r"total_train_steps = ceil\([0-9.]+ \* len\(train_loader\)\)",
                          f"total_train_steps = ceil({epochs!r} * len(train_loader))", text)
        if n != 1:
            raise SystemExit("error: the original script changed: its total_train_steps line (update scripts/originals.py)")
    return text


def load(recipe: str, path: str, widths: list[int], epochs: float, proxy_widths: list[int] | None = None,
         extra: list[tuple[str, str]] = ()) -> dict:
    """Execute the patched script as a module and return its namespace, its settings narrowed
    (airbench94's, airbench96's, airbench96_faster's and hlb-CIFAR10's ``hyp``; the others by their
    patched text). ``extra``: more (old, new) patches, applied after the recipe's."""
    text = source(recipe, open(path).read(), widths, epochs, extra)
    torch.cuda.Event = HostEvent
    torch.cuda.synchronize = lambda *a, **k: None
    if recipe == "94-record":
        torch.compile = _no_compile  # eager on the CPU, as hlb's preset runs there
    ns = {"__name__": f"original_{recipe.replace('-', '_')}_cpu"}
    if recipe == "hlb-v0.7":
        ns["CIFAR10_AS_STORED"] = _cifar10_as_stored()
    argv, sys.argv = sys.argv, [path]  # the scripts read their own source through sys.argv[0]
    try:
        exec(compile(text, path, "exec"), ns)
    finally:
        sys.argv = argv
    hyp = ns.get("hyp")
    if recipe in ("94", "96", "96-faster"):
        hyp["net"]["widths"] = dict(block1=widths[0], block2=widths[1], block3=widths[2])
        hyp["opt"]["train_epochs"] = epochs
    if recipe == "hlb-v0.7":
        # its widths come from one base depth (x1, x4, x8): set them as they are; its EMA starts at
        # floor(epochs) - ema epochs, kept at epoch 2 (as at 12.1 epochs) when the run is shortened
        ns["depths"].update(block1=widths[0], block2=widths[1], block3=widths[2])
        hyp["misc"]["train_epochs"] = epochs
        hyp["misc"]["ema"]["epochs"] = math.floor(epochs) - 2
    if recipe == "96-faster":
        p = proxy_widths or [16, 32, 32]
        hyp["proxy"]["widths"] = dict(block1=p[0], block2=p[1], block3=p[2])
    return ns
