"""``hlb bench --preset A --against B``: two configs timed in alternation, A B B A A B B A ...,
one process per side that opens its session once (data, model, compile, warm-up) and trains the
seed it is sent, so drift (clocks, heat, other load) hits both sides alike. Pair i is seed
``seed + i`` on both sides.

The worker protocol, JSON lines: the parent starts ``python -m hlbcli.experiments.alternate
worker --preset SIDE/config.json ...``; the child opens its session and answers
``{"ready": ...}`` (or ``{"error": LINE}`` and exits 2); then each ``{"seed": s}`` on its stdin
is answered with ``{"record": REC, "pid", "sessions", "started", "ended"}`` (``run_seed``'s
record; ``"error"`` beside it when the run raised, then the child exits 1), after any number of
``{"progress": STATE}`` lines on the way (where the run is, about once a second:
:meth:`hlbcli.progress.StepProgress.state`); EOF ends it. The child's own prints go to its
stderr (a log), never into the protocol."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer

from hlbcli import record, stats
from hlbcli.output import num
from hlbcli.errors import HlbError, UsageError
from hlbcli.config import to_dict
from hlbcli.experiments.batch import summarize
from hlbcli.experiments.battery_progress import BatteryProgress
from hlbcli.experiments.local_backend import _die_with_parent, _last_error
from hlbcli.experiments.tail import run_to_summary
from hlbcli.resolve import resolve
from hlbcli.run import run_seed, warm_up
from hlbcli.session import device_name, open_session
from hlbcli.signals import interruptible
from hlbcli.tracking import Command, around
from hlbcli.machine import runs_machine, warn_different
from hlbcli.progress import StepProgress

SIDES = ("A", "B")


def order(runs: int) -> list[tuple[int, str]]:
    """(pair, side) in the order they run: A B, B A, A B, ..."""
    return [(i, s) for i in range(runs) for s in (SIDES if i % 2 == 0 else SIDES[::-1])]


# --- the child -------------------------------------------------------------------------------


worker_app = typer.Typer(add_completion=False, help="hlb bench --against's worker: one side's session, seeds from stdin")


@worker_app.callback()
def _worker_group() -> None:
    """(keeps ``worker`` a subcommand)"""


@worker_app.command("worker")
def worker_cmd(
    preset: str = typer.Option(..., "--preset"),
    device: str = typer.Option("auto", "--device"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    no_download: bool = typer.Option(False, "--no-download"),
    seed: int = typer.Option(0, "--seed"),
    arm: Optional[str] = typer.Option(None, "--arm", help="the side's name, written into each record"),
    timer: str = typer.Option("wall", "--timer", help="what times the phases (hlbcli.timers.TIMERS)"),
) -> None:
    raise typer.Exit(worker(SimpleNamespace(preset=preset, device=device, data_dir=data_dir, no_download=no_download,
                                            seed=seed, arm=arm, timer=timer)))


def worker(a: SimpleNamespace) -> int:
    """The child's loop (see the module): ``a`` holds the command line's options."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")  # the protocol's own copy of stdout
    os.dup2(2, 1)  # prints of tricks and libraries go to the log
    sys.stdout = sys.stderr

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    try:
        cfg, tm = resolve(a.preset)
        session = open_session(cfg, tm, a.device, a.data_dir, not a.no_download)
        session.timer = getattr(a, "timer", "wall")
        warm_up(session, a.seed, a.arm)
    except HlbError as e:
        send({"error": e.line()})
        return e.exit_code
    sessions = 1  # opened once: every answer says so
    send({"ready": True, "pid": os.getpid(), "sessions": sessions, "device": device_name(session.device),
          "load_seconds": session.load_seconds, "build_seconds": session.build_seconds,
          "warmup_seconds": session.warmup_seconds})
    try:
        for line in sys.stdin:
            seed = int(json.loads(line)["seed"])
            kept: list[dict] = []
            started = time.time()
            try:
                told = StepProgress(None, "", report=lambda state: send({"progress": state}), seed=seed)
                rec = run_seed(session, seed, keep=kept.append, arm=a.arm, on_step=told)
            except HlbError as e:
                send({"record": kept[-1] if kept else None, "error": e.line(), "pid": os.getpid()})
                return 1
            send({"record": rec, "pid": os.getpid(), "sessions": sessions, "started": started, "ended": time.time()})
    except KeyboardInterrupt:  # the parent stops it: nothing of its own to keep
        return 130
    return 0


# --- the parent ------------------------------------------------------------------------------


class _Side:
    """A side's process; a thread reads its answers into a queue, so that the parent, waiting,
    keeps its progress display moving (``progress``: a
    :class:`~hlbcli.experiments.battery_progress.BatteryProgress`, or None)."""

    def __init__(self, name: str, label: str, folder: Path, proc: subprocess.Popen, log, progress=None):
        self.name, self.label, self.folder, self.proc, self.log = name, label, folder, proc, log
        self.progress = progress
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        self.lines.put("")  # EOF

    def _answer(self) -> dict | None:
        """The next answer of the protocol (None: the child is gone); progress messages go to
        the display, which ticks while it waits."""
        while True:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.progress is not None:
                    self.progress.tick()
                continue
            if not line:
                return None
            got = json.loads(line)
            if "progress" not in got:
                return got
            if self.progress is not None:
                self.progress.run_progress(self.name, got["progress"])

    def ask(self, msg: dict | None) -> dict:
        """Send ``msg`` (None: only read) and read one answer; a child gone is one line naming it."""
        try:
            if msg is not None:
                self.proc.stdin.write(json.dumps(msg) + "\n")
                self.proc.stdin.flush()
        except OSError:
            pass
        got = self._answer()
        if got is None:
            self.proc.wait()
            raise UsageError(f"side {self.name} ({self.label}) stopped (exit {self.proc.returncode}): {self.last_error()}",
                             self.hint, exit_code=1)
        if "error" in got and "record" not in got:
            raise UsageError(f"side {self.name} ({self.label}): {got['error']}", self.hint, exit_code=1)
        return got

    def last_error(self) -> str:
        self.log.flush()
        return _last_error(Path(self.log.name)) or "no output"


def _start(name: str, label: str, folder: Path, config: dict, opts: dict, progress=None) -> _Side:
    folder.mkdir(parents=True, exist_ok=True)
    record.write_json(folder / "config.json", config)
    cmd = [sys.executable, "-m", "hlbcli.experiments.alternate", "worker", "--preset", str(folder / "config.json"),
           "--device", opts["device"], "--seed", str(opts["seed"]), "--arm", name, "--timer", opts.get("timer", "wall")]
    if opts.get("data_dir"):
        cmd += ["--data-dir", str(opts["data_dir"])]
    if not opts.get("download", True):
        cmd += ["--no-download"]
    log = open(folder / "worker.log", "w", encoding="utf-8")
    # a session of its own: Ctrl-C reaches the parent only, which then stops both children
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True, preexec_fn=_die_with_parent())
    side = _Side(name, label, folder, proc, log, progress)
    side.hint = f"see {log.name}" if opts.get("out") else "rerun with --out DIR to keep each side's worker.log"
    return side


def _stop(sides: list[_Side], grace: float = 15.0) -> None:
    for s in sides:
        try:
            s.proc.stdin.close()  # EOF: a waiting child ends
        except OSError:
            pass
    deadline = time.monotonic() + 1.0
    for s in sides:
        try:  # a child waiting for a seed ends at the EOF; one still training is asked to stop
            s.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        if s.proc.poll() is None:
            try:
                s.proc.send_signal(signal.SIGINT)
            except OSError:
                pass
    for s in sides:
        try:
            s.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
        s.proc.stdout.close()
        s.log.close()


def report(pairs: list[dict], labels: dict[str, str], ready: dict[str, dict], runs: int) -> dict:
    """The alternation's figures from the finished pairs (both sides completed)."""
    done = [p for p in pairs if p["A"]["status"] == "completed" and p["B"]["status"] == "completed"]
    ratios = [p["B"]["train_seconds"] / p["A"]["train_seconds"] for p in done]
    m, s = stats.mean_std(ratios)
    acc = {side: {p["seed"]: p[side]["accuracy"] for p in done} for side in SIDES}
    time_ = {side: stats.mean_std([p[side]["train_seconds"] for p in done])[0] for side in SIDES}
    return {
        "kind": "bench-alternate", "A": labels["A"], "B": labels["B"], "n": len(done), "pairs_requested": runs,
        "pairs_started": len(pairs), "seeds": [p["seed"] for p in done],
        "time_ratios": ratios, "time_ratio_mean": m, "time_ratio_std": s,
        "time_ratio_ci95": list(stats.ci95(ratios)) if len(ratios) > 1 else [float("nan")] * 2,
        "time_mean_A": time_["A"], "time_mean_B": time_["B"],
        "accuracy": stats.paired_difference(acc["A"], acc["B"]),
        "accuracy_mean_A": stats.mean_std(list(acc["A"].values()))[0],
        "accuracy_mean_B": stats.mean_std(list(acc["B"].values()))[0],
        "pairs": [{"seed": p["seed"], "A_seconds": p["A"]["train_seconds"], "B_seconds": p["B"]["train_seconds"], "ratio": r,
                   "A_accuracy": p["A"]["accuracy"], "B_accuracy": p["B"]["accuracy"]} for p, r in zip(done, ratios)],
        "order": [[p["seed"], *p["order"]] for p in pairs],
        "workers": {side: {k: ready.get(side, {}).get(k) for k in ("pid", "device", "load_seconds", "build_seconds", "warmup_seconds")}
                    for side in SIDES},
        "device": ready.get("A", {}).get("device"),
        "machine": runs_machine([p[side] for p in pairs for side in SIDES if isinstance(p.get(side), dict)]),
        "torch": record.versions()["torch"],
    }


#: a number of the report, "n/a" where there is none
na = partial(num, missing="n/a")


def format_report(rep: dict) -> str:
    lo, hi = rep["time_ratio_ci95"]
    d = rep["accuracy"]
    dlo, dhi = d["ci95"]
    lines = [f"A  {rep['A']}\nB  {rep['B']}\n  seed  A s       B s       B/A     A acc   B acc"]
    for p in rep["pairs"]:
        lines.append(f"  {p['seed']:<4}  {p['A_seconds']:<8.3f}  {p['B_seconds']:<8.3f}  {p['ratio']:.4f}  {100 * p['A_accuracy']:.2f}%  {100 * p['B_accuracy']:.2f}%")
    lines.append(f"  time      B/A mean {na(rep['time_ratio_mean'], '.4f')}  95% CI {na(lo, '.4f')} to {na(hi, '.4f')}  over {rep['n']} pair(s)"
                 f"  (A {na(rep['time_mean_A'], '.3f')} s, B {na(rep['time_mean_B'], '.3f')} s per run)")
    lines.append(f"  accuracy  B - A mean {na(100 * d['mean'], '+.2f')} pts  95% CI {na(100 * dlo, '+.2f')} to {na(100 * dhi, '+.2f')}"
                 f"  paired t-test p {na(d['p_paired'], '.2g')}  Welch p {na(d['p_welch'], '.2g')}")
    return "\n".join(lines)


def summary_line(rep: dict) -> str:
    lo, hi = rep["time_ratio_ci95"]
    d = rep["accuracy"]
    dlo, dhi = d["ci95"]
    return (f"{rep['B']} vs {rep['A']}: time x{na(rep['time_ratio_mean'], '.3f')} (95% CI {na(lo, '.3f')} to {na(hi, '.3f')}), "
            f"accuracy {na(100 * d['mean'], '+.2f')} pts (95% CI {na(100 * dlo, '+.2f')} to {na(100 * dhi, '+.2f')}, "
            f"paired p={na(d['p_paired'], '.2g')}, Welch p={na(d['p_welch'], '.2g')}) over {rep['n']} pairs "
            f"timed in alternation on {rep['device']}, torch {rep['torch']}")


def run_alternation(configs: dict[str, dict], labels: dict[str, str], runs: int, seed: int, device: str = "auto",
                    data_dir: str | None = None, download: bool = True, out: Path | None = None,
                    say=lambda text: None, track=None, preset: str = "", timer: str = "wall",
                    progress: BatteryProgress | None = None) -> tuple[dict, int]:
    """Time ``configs["A"]`` and ``configs["B"]`` (resolved, checked) in alternation for ``runs``
    pairs; returns (the report, the exit code). With ``out``: records in out/A and out/B,
    bench.json in out. ``track`` (:class:`hlbcli.tracking.Trackers`): told of each finished run
    from its record here, in this process, as arm A or B. ``progress``: told where each side's
    run is while the parent waits, and of each finished run."""
    hold = record.claim(out) if out else None
    tmp = None if out else tempfile.TemporaryDirectory(prefix="hlb-alternate-")
    root = hold.folder if hold else Path(tmp.name)
    try:
        record.check_out(root, "alternation", False)  # records of its own, or of another command: refused
        sides: list[_Side] = []
        pairs: list[dict] = []
        ready: dict[str, dict] = {}
        opts = {"device": device, "data_dir": data_dir, "download": download, "seed": seed, "out": out, "timer": timer}

        def write(partial: bool) -> dict:
            rep = report(pairs, labels, ready, runs)
            rep["partial"] = partial
            rep["summary_line"] = summary_line(rep)
            if out:
                for side in SIDES:
                    recs = [p[side] for p in pairs if side in p]
                    record.write_json(root / side / "summary.json", summarize(recs, partial=partial, runs_requested=runs, first_seed=seed))
                record.write_json(root / "bench.json", rep)
            return rep

        def train(got: list[int]) -> None:
            with interruptible():
                for side in SIDES:
                    sides.append(_start(side, labels[side], root / side, configs[side], opts, progress))
                by = {s.name: s for s in sides}
                for s in sides:
                    ready[s.name] = s.ask(None)
                say(f"A: pid {ready['A']['pid']}, B: pid {ready['B']['pid']} on {ready['A']['device']}; "
                    f"{runs} pairs in alternation A B B A ...")
                pair: dict = {}
                for i, side in order(runs):
                    if side == ("A" if i % 2 == 0 else "B"):
                        pair = {"seed": seed + i, "order": []}
                    got_ = by[side].ask({"seed": seed + i})
                    rec = got_["record"]
                    path = root / side / f"run-{i:03d}-seed{seed + i}.json" if out else None
                    if rec is not None and path:
                        record.write_json(path, rec)
                    if rec is not None and track:
                        track.replay(side, rec, path, side)
                    if "error" in got_:
                        raise UsageError(f"side {side} ({labels[side]}), seed {seed + i}: {got_['error']}",
                                         by[side].hint, exit_code=1)
                    pair[side] = rec
                    if progress is not None:
                        progress.run_finished(side, rec)
                    pair["order"].append([side, got_["pid"], got_["sessions"], got_["started"], got_["ended"]])
                    if len(pair["order"]) == 2:
                        pairs.append(pair)
                        say(f"pair {i + 1}/{runs} (seed {seed + i}): A {pair['A']['status']}, B {pair['B']['status']}")
                        write(partial=i + 1 < runs)

        def finish() -> tuple[dict, int]:
            _stop(sides)
            warn_different(*(x for side in SIDES for x in (f"side {side}", runs_machine([p[side] for p in pairs if side in p]))))
            rep = write(partial=False)
            bad = any(p[s]["status"] != "completed" for p in pairs for s in SIDES)
            return rep, 1 if bad else 0

        def hint(rep: dict) -> str:
            return f"the rest: --seed {seed + rep['pairs_started']} --runs {runs - rep['pairs_started']}"

        return around(track, Command("bench", preset, out, runs, seed, list(SIDES), configs["A"], sys.argv[1:]),
                      lambda: run_to_summary(train, write, finish, stop=lambda status: _stop(sides), out=out, hint=hint))
    finally:
        if hold:
            hold.release()
        if tmp:
            tmp.cleanup()


def bench_against(preset: str, against: str, config, sets: list[str], enable: list[str], disable: list[str],
                  b_sets: list[str], b_enable: list[str], b_disable: list[str], runs: int, seed: int, device: str,
                  data_dir, download: bool, out, resume: bool, target, track=None, timer: str = "wall") -> int:
    """``hlb bench --against``: both sides resolved and checked here, before any process starts
    (a bad side is one line naming it); then :func:`run_alternation`, its report printed."""
    if resume or target is not None:
        raise UsageError(f"{'--resume' if resume else '--target'} does not go with --against", "drop it, or bench one preset")
    conf = str(config) if config else None
    configs, labels = {}, {}
    for side, name, more in (("A", preset, ([], [], [])), ("B", against, (b_sets, b_enable, b_disable))):
        try:
            cfg, _ = resolve(name, conf, [*sets, *more[0]], [*enable, *more[1]], [*disable, *more[2]])
        except HlbError as e:
            e.message = f"side {side} ({name}): {e.message}"
            raise
        configs[side] = to_dict(cfg)
        changes = [f"set {x}" for x in more[0]] + [f"+{x}" for x in more[1]] + [f"-{x}" for x in more[2]]
        labels[side] = name + (f" ({', '.join(changes)})" if changes else "")
    if configs["A"] == configs["B"]:
        raise UsageError("sides A and B resolve to the same config", "name another preset with --against, or change B with --against-set/--against-enable/--against-disable")
    import typer  # the command line's printer, as cli.py's
    from rich.console import Console

    progress = BatteryProgress(2 * runs, console=Console(stderr=True, highlight=False, soft_wrap=True))
    with progress:
        rep, code = run_alternation(configs, labels, runs, seed, device, str(data_dir) if data_dir else None, download,
                                    Path(out) if out else None, say=progress.say, track=track,
                                    preset=preset, timer=timer, progress=progress)
    if rep.get("error"):
        typer.echo(f"error: {rep['error']}", err=True)
    typer.echo(f"{format_report(rep)}\n{rep['summary_line']}")
    return code


if __name__ == "__main__":
    worker_app(prog_name="python -m hlbcli.experiments.alternate")
