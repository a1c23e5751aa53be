"""The local backend of ``hlb ablate``: each arm is ``hlb train`` in a process of its own on this
machine, ``--workers`` at a time (one GPU each, or a share of the CPU cores), reading the arm's
resolved config from ``arms/<arm>/config.json``; the battery follows them through the records
they write, and through ``arms/<arm>/progress.json`` where each reports its current run
(:func:`hlbcli.progress.file_report`; removed when the arm's process ends)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from hlbcli import record
from hlbcli.experiments.plan import ARM_CONFIG, AblateOptions, Arm
from hlbcli.estimate import gpu_recipe_note
from hlbcli.progress import PROGRESS_FILE_ENV, read_report
from hlbcli.signals import interruptible

#: the file in an arm's folder its process reports its current run to, while it runs
PROGRESS_FILE = "progress.json"


def child_command(opts: AblateOptions, arm: Arm, arm_dir: Path) -> list[str]:
    """The arm's ``hlb train``: its config is the file :data:`ARM_CONFIG` in ``arm_dir``,
    resolved when the battery started, so a ``--config`` or preset file edited while the
    battery runs changes nothing (``--resume`` then refuses records of another config)."""
    cmd = [sys.executable, "-m", "hlbcli.cli", "train", "--preset", str(arm_dir / ARM_CONFIG)]
    cmd += ["--runs", str(opts.runs), "--seed", str(opts.seed), "--device", opts.device]
    if opts.data_dir:
        cmd += ["--data-dir", str(opts.data_dir)]
    if not opts.download:
        cmd += ["--no-download"]
    cmd += ["--out", str(arm_dir), "--quiet", f"--label={arm.name}"]  # hidden: the arm's name, ctx.arm
    if opts.resume:
        cmd += ["--resume"]
    return cmd


def cpu_note(opts: AblateOptions, config: dict, runs: int) -> str | None:
    """The baseline is a recipe made for a GPU and the arms train on this CPU: roughly how long
    a run and the battery take (:func:`hlbcli.estimate.gpu_recipe_note`)."""
    if opts.device == "cuda" or config["data"]["dataset"] == "synthetic":
        return None
    import torch

    if opts.device == "auto" and torch.cuda.is_available():
        return None
    return gpu_recipe_note(opts.preset, config["model"], config["train"]["epochs"], 50000, 10000,
                           torch.get_num_threads(), runs)


def worker_slots(device: str, workers: int) -> list[dict[str, str]]:
    """The environment of each parallel slot: one GPU each on CUDA, else an equal share of
    the CPU cores."""
    workers = max(1, workers)
    if device in ("auto", "cuda"):
        try:
            import torch

            ngpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            ngpu = 0
        if ngpu:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(ngpu)]
            return [{"CUDA_VISIBLE_DEVICES": ids[i]} for i in range(min(workers, ngpu, len(ids)))]
    cores = os.cpu_count() or 1
    if workers == 1:
        return [{}]
    threads = str(max(1, cores // workers))
    return [{"HLB_THREADS": threads, "OMP_NUM_THREADS": threads} for _ in range(workers)]


class _Job:
    def __init__(self, arm: Arm, proc: subprocess.Popen, log, slot: int):
        self.arm, self.proc, self.log, self.slot = arm, proc, log, slot


def _stop(jobs: list[_Job], grace: float = 15.0) -> None:
    """Ask every running child to stop (SIGINT: it keeps its finished runs), then make sure."""
    for j in jobs:
        if j.proc.poll() is None:
            try:
                j.proc.send_signal(signal.SIGINT)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for j in jobs:
        try:
            j.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            j.proc.kill()
            j.proc.wait()
        j.log.close()


def _last_error(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith("error:")]
    return (errs or lines or [""])[-1]


PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """A ``preexec_fn`` for each arm on Linux: the kernel sends the child SIGTERM when this
    process dies, however it dies (SIGKILL included), so no arm trains on with parent 1. A
    child whose parent is already gone stops at once. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class LocalBackend:
    """The local backend (:class:`hlbcli.experiments.battery.Backend`): a process per arm."""

    def __init__(self, opts: AblateOptions):
        self.opts = opts
        self.running: list[_Job] = []
        self.battery = None

    TITLE = "local"
    #: its own options (:attr:`hlbcli.experiments.battery.Backend.OPTIONS`): ``--workers``
    OPTIONS = {"workers": "--workers"}
    #: the data is read here before any arm starts, and each arm's process reads it again
    DATA_HERE = True

    def check(self) -> None:
        """Nothing of its own to check: ``--workers`` is bounded by the command line."""

    def connect(self):
        return None

    def describe(self, arms: list[Arm], out: Path) -> list[str]:
        """``--dry-run``: each arm's command and tricks."""
        lines = []
        for arm in arms:
            cmd = child_command(self.opts, arm, out / "arms" / arm.folder)
            lines.append(f"{arm.name}\t{shlex.join(['hlb', *cmd[3:]])}\ttricks: {', '.join(arm.config['tricks']) or 'none'}")
        return lines

    def stop(self, status: str) -> None:
        _stop(self.running)
        for j in self.running:
            self.battery.status[j.arm.name] = status
        self.running.clear()

    def train(self, battery, got: list[int]) -> None:
        self.battery = b = battery
        opts, out = self.opts, battery.out
        slots = worker_slots(opts.device, opts.workers)
        b.say(
            f"{len(b.arms)} arms x {opts.runs} seeds (seeds {opts.seed}..{opts.seed + opts.runs - 1}), "
            f"{len(slots)} at a time; results in {out}"
        )
        note = cpu_note(opts, b.arms[0].config, len(b.arms) * opts.runs)
        if note:
            b.say(note)
        seen = {a.name: set(b.finished(a)) if opts.resume else set() for a in b.arms}
        pending = [a for a in b.arms if len(seen[a.name]) < opts.runs]  # (--resume: an arm with every seed has no process)
        for a in b.arms:
            if a not in pending:
                b.status[a.name] = "completed"

        def poll() -> None:
            """The runs the arms' processes finished since the last look, and where their
            current runs are: progress."""
            for j in self.running:
                for seed, rec in b.finished(j.arm).items():
                    if seed not in seen[j.arm.name]:
                        seen[j.arm.name].add(seed)
                        b.run_done(j.arm, rec)
                now = read_report(b.arm_dir(j.arm) / PROGRESS_FILE)
                if now is not None and now.get("seed") not in seen[j.arm.name]:
                    b.run_progress(j.arm, now)
            b.tick()

        def start(arm: Arm, slot: int) -> None:
            arm_dir = b.arm_dir(arm)
            arm_dir.mkdir(parents=True, exist_ok=True)
            record.write_json(arm_dir / ARM_CONFIG, arm.config)
            cmd = child_command(opts, arm, arm_dir)
            record.write_text(arm_dir / "command.txt", shlex.join(cmd) + "\n")
            log = open(arm_dir / "train.log", "a" if opts.resume else "w", encoding="utf-8")
            (arm_dir / PROGRESS_FILE).unlink(missing_ok=True)
            env = dict(os.environ, **slots[slot], **{PROGRESS_FILE_ENV: str(arm_dir / PROGRESS_FILE)})
            # a session of its own: a terminal's Ctrl-C reaches only this process, which then asks
            # each child once to stop (a second SIGINT could cut its last write)
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True, preexec_fn=_die_with_parent())
            except BaseException:
                log.close()
                raise
            self.running.append(_Job(arm, proc, log, slot))
            b.status[arm.name] = "running"
            b.say(f"arm {arm.name}: started ({len(b.arms) - len(pending)}/{len(b.arms)} arms)")

        def reap(j: _Job) -> None:
            poll()
            self.running.remove(j)
            j.log.close()
            (b.arm_dir(j.arm) / PROGRESS_FILE).unlink(missing_ok=True)
            n = len([r for r in b.finished(j.arm).values() if r["status"] == "completed"])
            if j.proc.returncode == 0:
                b.status[j.arm.name] = "completed"
            else:
                log = b.arm_dir(j.arm) / "train.log"
                why = _last_error(log)
                # the arm's own error line (a trick's bug, named) is the battery's; a process that
                # died without one (os._exit, a kill) is named by its exit
                said = why.removeprefix("error: ") if why.startswith("error: ") else f"exit {j.proc.returncode} with no error line (see {log})"
                b.fail(j.arm, f"failed (exit {j.proc.returncode})", f"arm {j.arm.name}: {said}")
                b.say(f"arm {j.arm.name}: exit {j.proc.returncode} after {n}/{opts.runs} runs: {why}")
            b.arm_done(j.arm)

        with interruptible():
            last_look = time.monotonic()
            while pending or self.running:
                free = [i for i in range(len(slots)) if i not in {j.slot for j in self.running}]
                while pending and free:
                    start(pending.pop(0), free.pop(0))
                time.sleep(0.1)
                if time.monotonic() - last_look > 1.0:
                    poll()
                    last_look = time.monotonic()
                for j in [j for j in self.running if j.proc.poll() is not None]:
                    reap(j)
