"""``hlb profile``: where a run's time goes, from ``torch.profiler``, on the CPU and on CUDA.

One seed of the preset trains on the real training path (the session opened, compiled and
warmed up as ``hlb train`` does), its step assembled *labelled* (:func:`hlbcli.step.build_step`:
each part in a profiler range, put there at assembly, so no other command's step carries one).
The profiler records ``--steps`` steps after ``--skip`` steps, then, unless ``--no-eval``, the run
goes on unrecorded to its end and the final evaluation (TTA and all) is recorded on its own.

What it gives: a per-kernel table (on CUDA the device's kernels, on the CPU the operators: self
time, calls, share), the time by phase (:data:`PHASES`, from the ranges each event sits in),
and the traces: ``OUT/trace-train.json`` and ``OUT/trace-eval.json`` open in Perfetto
(ui.perfetto.dev) or chrome://tracing; the same under ``OUT/tensorboard/`` for TensorBoard's
profiler plugin (``torch-tb-profiler``); ``OUT/profile.json`` holds the tables, the config and
the machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from hlbcli import record
from hlbcli.config import to_dict
from hlbcli.errors import UsageError
from hlbcli.machine import fingerprint
from hlbcli.run import fit, new_context, warm_up
from hlbcli.session import device_name, open_session
from hlbcli.step import LABELS

#: the phases, in the order shown; an event's phase is that of the innermost range it sits in
PHASES = ["data", "batch transforms", "forward", "backward", "optimizer", "actions", "evaluation", "other"]
#: range name (or its start) -> phase
_RANGES = [
    (LABELS["transforms"], "batch transforms"), (LABELS["forward"], "forward"), (LABELS["optimizer"], "optimizer"),
    ("Optimizer.step#", "optimizer"), ("Optimizer.zero_grad#", "optimizer"), (LABELS["action"], "actions"),
    ("autograd::engine::evaluate_function", "backward"), (LABELS["data"], "data"), (LABELS["evaluation"], "evaluation"),
]


class _Enough(Exception):
    """The steps asked for are recorded and no evaluation is wanted: the run stops here."""


def phase_of(event, default: str = "other") -> str:
    """The phase of a profiler event: the innermost labelled range among it and its parents;
    ``default`` outside them all (in a training step: the batch's gather from the epoch's set,
    the lr update, the loss kept for the epoch's figure)."""
    e = event
    while e is not None:
        for start, phase in _RANGES:
            if e.name.startswith(start):
                return phase
        e = e.cpu_parent
    return default


def _self_device(e) -> float:
    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0) or 0.0


def tables(events, cuda: bool, top: int = 25, default: str = "other") -> tuple[list[dict], dict[str, float]]:
    """(the kernels by self time, the seconds by phase) of a profiler's events: on CUDA the
    device's kernels, each kernel's time in the phase of the operator that launched it; on the
    CPU each operator's self time. ``default``: the phase of an event in no labelled range."""
    kernels: dict[str, list] = {}
    phases = dict.fromkeys(PHASES, 0.0)
    for e in events:
        if cuda:
            us = _self_device(e)
            for k in getattr(e, "kernels", []):
                row = kernels.setdefault(k.name, [0.0, 0])
                row[0] += k.duration
                row[1] += 1
        else:
            us = e.self_cpu_time_total
            if us:
                row = kernels.setdefault(e.name, [0.0, 0])
                row[0] += us
                row[1] += 1
        if us:
            phases[phase_of(e, default)] += us / 1e6
    total = sum(v[0] for v in kernels.values()) or 1.0
    rows = [{"name": n, "self_seconds": us / 1e6, "calls": c, "share": us / total}
            for n, (us, c) in sorted(kernels.items(), key=lambda kv: -kv[1][0])]
    return rows[:top], phases


class _Recorder:
    """The run's ``on_step``: starts the profiler after ``skip`` steps, stops it ``steps``
    later; a second profiler for the final evaluation, started as its first pass begins."""

    def __init__(self, skip: int, steps: int, activities, sync, evaluate: bool):
        self.skip, self.steps, self.activities, self.sync, self.want_eval = skip, steps, activities, sync, evaluate
        self.train = torch.profiler.profile(activities=activities)
        self.eval = None
        self.recorded = 0
        if skip == 0:
            self.train.start()

    def __call__(self, step: int, total: int, epoch: int, epochs: int) -> None:
        if step == self.skip:
            self.sync()
            self.train.start()
        elif step == self.skip + self.steps or (step == total and self.recorded == 0 and step > self.skip):
            self.sync()
            self.train.stop()
            self.recorded = step - self.skip
            if not self.want_eval:
                raise _Enough

    def evaluating(self, done: int, n: int) -> None:
        if self.eval is None and self.want_eval:
            if not self.recorded:  # the run ended inside the window
                self.sync()
                self.train.stop()
            self.eval = torch.profiler.profile(activities=self.activities)
            self.eval.start()


def profile(cfg, tm, device: str, data_dir, download: bool, steps: int, skip: int, evaluate: bool, out: Path,
            seed: int = 0, say=print) -> dict:
    """Profile one seed of ``cfg`` (see the module); write the traces and ``profile.json`` in
    ``out`` and return what it holds."""
    session = open_session(cfg, tm, device, data_dir, download)
    total = new_context(session, seed).total_steps
    if skip + 1 > total:
        raise UsageError(f"--skip {skip} leaves no step to profile: the run has {total} steps",
                         f"use --skip below {total}")
    steps = min(steps, total - skip)
    say(f"profiling {steps} step(s) after {skip} of {total} on {device_name(session.device)}"
        + ("; then the final evaluation" if evaluate else ""))
    warm_up(session, seed)  # (nothing to do where the net is not compiled)
    cuda = session.device.type == "cuda"
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler library's own lines: errors only
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rec = _Recorder(skip, steps, activities, sync, evaluate)
    session.profiling = True  # the labelled step (plan_run reads it)
    try:
        fit(session, seed, on_step=rec)
    except _Enough:
        pass
    finally:
        session.profiling = False
    sync()
    if rec.eval is not None:
        rec.eval.stop()
    rec.recorded = rec.recorded or steps
    out.mkdir(parents=True, exist_ok=True)
    result = {"kind": "profile", "steps": rec.recorded, "skip": skip, "device": device_name(session.device),
              "cuda": cuda, "machine": fingerprint(session.device), "versions": record.versions(),
              "config": to_dict(cfg), "tricks": list(tm.trick_names()), "parts": {}}
    for name, prof in (("train", rec.train), ("eval", rec.eval)):
        if prof is None:
            continue
        kernels, phases = tables(prof.events(), cuda, default="other" if name == "train" else "evaluation")
        trace = out / f"trace-{name}.json"
        prof.export_chrome_trace(str(trace))
        board = out / "tensorboard"
        board.mkdir(exist_ok=True)
        shutil.copyfile(trace, board / f"hlb_{name}.pt.trace.json")
        result["parts"][name] = {"kernels": kernels, "phases": phases, "trace": trace.name}
    record.write_json(out / "profile.json", result)
    return result


def format_profile(p: dict) -> str:
    """The tables of :func:`profile`'s result as text."""
    unit = "device" if p["cuda"] else "CPU"
    lines = []
    for name, part in p["parts"].items():
        what = f"{p['steps']} training step(s)" if name == "train" else "the final evaluation"
        total = sum(part["phases"].values())
        lines.append(f"\n{what}: {unit} time by phase ({total:.4f} s in all)")
        for ph in PHASES:
            s = part["phases"].get(ph, 0.0)
            if s:
                lines.append(f"  {ph:<17} {s:>9.4f} s  {100 * s / total if total else 0:5.1f}%")
        lines.append(f"{what}: the {len(part['kernels'])} {'kernels' if p['cuda'] else 'operators'} with the most self {unit} time")
        lines.append(f"  {'self s':>9}  {'calls':>6}  {'share':>6}  name")
        for k in part["kernels"]:
            name_ = k["name"] if len(k["name"]) <= 90 else k["name"][:87] + "..."
            lines.append(f"  {k['self_seconds']:>9.4f}  {k['calls']:>6}  {100 * k['share']:>5.1f}%  {name_}")
    return "\n".join(lines)
