"""``hlb ablate --backend ray``: the arms' seeds as tasks on a Ray cluster.

The battery is cut into (arm, block of seeds) tasks. Each task is a Ray generator task on a
worker with one GPU (CPU cores where the cluster has no GPU): it resolves the arm's config,
loads the data from the worker's own ``--data-dir``, builds and compiles once, then trains its
seeds in turn and streams each run record back as it finishes. This process (the driver)
writes every record where the local backend's ``hlb train`` would, so ``summary.json``,
``summary.md``, ``arms/`` and the plot are the same for both backends.

What travels to a worker: the arm's resolved config and name (``ctx.arm``; ``ctx.out`` is None
there), the seeds, the device, the data folder's path and the library versions (to refuse a
worker with another hlb or other tricks). Not the data. On the CPU a worker process keeps the
last session it built, so the next block of the same arm there skips loading and building; a
GPU task always starts in a fresh process (so ``--block`` should be large enough to pay for a
compile).

Failures: a task whose worker is lost (killed, out of memory, its node gone) is started again
for the seeds it had not finished, up to ``--retries`` times; the records it streamed before
are kept. An error of the run itself (bad data folder, a trick missing on the worker, a bug)
is reported by the task as a message, ends that arm, and is not retried: it would fail again.
A head that stops answering (its GCS port, looked at every second and whenever a task is lost)
ends the battery: the summary is written as it stands, and ``--resume`` trains the rest.
Joining the cluster, and what a task may ask of it, are :mod:`hlbcli.experiments.ray_cluster`'s.

Progress: each task's runs report where they are (:class:`hlbcli.progress.StepProgress`, about
once a second) to a small actor of the driver's (:class:`Board`, no CPU), which the driver reads
every second for its display; a lost board costs the display, never a run.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

from hlbcli import record
from hlbcli.errors import HlbError, UsageError
from hlbcli.experiments.ray_cluster import Health, connect, fit, gcs_address, target
from hlbcli.experiments.ray_probe import INSTALL_HINT, _import_ray
from hlbcli.signals import Interrupted
from hlbcli.experiments.batch import earlier_runs, summarize
from hlbcli.experiments.summary import run_path
from hlbcli.readback import FINISHED
from hlbcli.resolve import resolve_data
from hlbcli.progress import StepProgress
from hlbcli.run import run_seed, warm_up
from hlbcli.session import open_session

__all__ = ["INSTALL_HINT", "DEFAULT_BLOCK", "RayBackend", "blocks", "check_ray", "connect", "resources", "seed_span",
           "train_block"]

#: seeds per task when ``--block`` is not given: enough to pay for a compile (~33 s on an
#: H200 against ~2.5 s per run of ``94``), few enough that a lost worker costs little
DEFAULT_BLOCK = 10


def check_ray(opts) -> None:
    """What can be checked before any work: Ray importable, the options coherent."""
    _import_ray()
    if opts.block is not None and opts.block < 1:
        raise UsageError(f"--block {opts.block}: a task needs at least one seed", "use --block 1 or more")
    if opts.cpus_per_task < 1:
        raise UsageError(f"--cpus-per-task {opts.cpus_per_task}: a task needs a core", "use --cpus-per-task 1 or more")
    if opts.retries < 0:
        raise UsageError(f"--retries {opts.retries}: cannot be negative", "use --retries 0 to never start a lost task again")


def blocks(seeds: list[int], size: int) -> list[list[int]]:
    """``seeds`` cut into runs of at most ``size``, in order."""
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def seed_span(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"


# --- the worker side -------------------------------------------------------------------------

#: the session this worker process built last: (key, session)
_LAST: dict[str, Any] = {}


def _session(task: dict):
    """The arm's session: built (data loaded, model compiled and warmed up) once per worker
    process and arm, then reused by the next block of that arm."""
    import json

    key = json.dumps([task["config"], task["device"], task["data_dir"], task["download"]], sort_keys=True)
    if _LAST.get("key") != key:
        _LAST.clear()  # the last arm's model and data go before this one's come
        cfg, tm = resolve_data(task["config"])
        mine = {n: tm.origins[n] for n in tm.trick_names()}
        if mine != task["trick_sources"]:
            diff = next(n for n in {**mine, **task["trick_sources"]} if mine.get(n) != task["trick_sources"].get(n))
            raise UsageError(
                f"trick '{diff}' is {mine.get(diff, 'missing')} on this worker but {task['trick_sources'].get(diff, 'missing')} on the driver",
                "install the same hlbcli and tricks on every node",
            )
        session = open_session(cfg, tm, task["device"], task["data_dir"], task["download"])
        warm_up(session, task["seeds"][0], task.get("arm"))
        _LAST.update(key=key, session=session)
    return _LAST["session"]


def train_block(task: dict) -> Iterator[dict]:
    """The body of one Ray task: train ``task["seeds"]`` of one arm, yielding messages:
    ``start`` (where it runs), one ``run`` per finished seed (its record) and, when the work
    itself fails, one ``error`` (message and hint) as the last. A lost worker yields nothing
    more: the driver sees Ray's error and starts the rest again."""
    import hlbcli

    yield {"kind": "start", "node": platform.node(), "pid": os.getpid()}
    try:
        if hlbcli.__version__ != task["hlb_version"]:
            raise UsageError(
                f"this worker has hlbcli {hlbcli.__version__}, the driver {task['hlb_version']}",
                "install the same hlbcli on every node",
            )
        if task["threads"]:
            import torch

            torch.set_num_threads(task["threads"])
        session = _session(task)
        board, arm = task.get("board"), task.get("arm")
        for seed in task["seeds"]:
            failed: list[dict] = []
            told = StepProgress(None, "", seed=seed, report=None if board is None else
                                lambda state: board.put.remote(arm, state))
            try:
                rec = run_seed(session, seed, keep=failed.append, arm=arm, on_step=told)
            except Exception:
                if failed:
                    yield {"kind": "run", "record": failed[0]}
                raise
            yield {"kind": "run", "record": rec}
    except HlbError as e:
        yield {"kind": "error", "message": e.message, "hint": e.hint}
    except Exception as e:  # a bug or a device error: reported with where it happened
        yield {"kind": "error", "message": f"{e.__class__.__name__}: {e}", "hint": None,
               "traceback": traceback.format_exc()}


# --- the driver side -------------------------------------------------------------------------


class Board:
    """Where the battery's runs are, as their tasks report it (a Ray actor of the driver's)."""

    def __init__(self):
        self.states: dict[tuple, dict] = {}

    def put(self, arm: str, state: dict) -> None:
        self.states[arm, state.get("seed")] = state

    def take(self) -> list[tuple[str, dict]]:
        """The reports since the last look (the latest of each run), and forget them."""
        got, self.states = self.states, {}
        return [(arm, state) for (arm, _), state in got.items()]


@dataclass
class _Task:
    arm: Any
    seeds: list[int]
    attempt: int = 0
    gen: Any = None
    where: str = ""
    done: list[int] = field(default_factory=list)

    def rest(self) -> list[int]:
        return [s for s in self.seeds if s not in self.done]


def resources(opts) -> dict[str, float]:
    """A task's resources: one GPU where the device asks for one and the cluster has GPUs,
    ``--cpus-per-task`` cores in any case; a UsageError when no node could ever run it."""
    return fit(opts, _import_ray().nodes())


class RayBackend:
    """The Ray backend (:class:`hlbcli.experiments.battery.Backend`): (arm, block of seeds)
    tasks on a cluster, their records streamed back to this process (the driver)."""

    def __init__(self, opts):
        self.opts = opts
        self.live: list[_Task] = []
        self.battery = None
        self.health = None

    TITLE = "Ray"
    #: its own options (:attr:`hlbcli.experiments.battery.Backend.OPTIONS`)
    OPTIONS = {"address": "--address", "block": "--block", "cpus_per_task": "--cpus-per-task", "retries": "--retries"}
    #: each worker reads its own data (its ``--data-dir``), checked by its tasks there
    DATA_HERE = False

    def check(self) -> None:
        check_ray(self.opts)

    def describe(self, arms: list, out) -> list[str]:
        """``--dry-run``: each arm's tasks and tricks."""
        seeds = list(range(self.opts.seed, self.opts.seed + self.opts.runs))
        return [f"{arm.name}\tray task: {seed_span(b)}, tricks {', '.join(arm.config['tricks']) or 'none'}"
                for arm in arms for b in blocks(seeds, self.opts.block or DEFAULT_BLOCK)]

    def connect(self):
        ray = _import_ray()
        joined = connect(self.opts)  # an unreachable cluster, or one that is not Ray: before --out
        try:
            self.res = resources(self.opts)  # a task no node can run
        except BaseException:
            if joined:
                ray.shutdown()
            raise
        return ray.shutdown if joined else None

    def _cancel(self, tasks: list[_Task]) -> None:
        ray = _import_ray()
        for t in tasks:
            try:
                ray.cancel(t.gen, force=True)
            except Exception:
                pass
            self.live.remove(t)

    def stop(self, status: str) -> None:
        for t in self.live:
            self.battery.status[t.arm.name] = status
        if self.health is not None and self.health.down_since is not None:
            self.live.clear()  # nothing to cancel: the head that ran them does not answer
        self._cancel(list(self.live))

    def train(self, battery, got: list[int]) -> None:
        import hlbcli
        ray = _import_ray()
        self.battery = b = battery
        opts, out, res, live = self.opts, battery.out, self.res, self.live
        self.health = health = Health(gcs_address(ray), target(opts) or "this machine")
        # on the CPU one worker process serves block after block and keeps its build; a GPU
        # task gets a fresh process (Ray's default there): a process whose CUDA context sits on
        # the GPU of its last task cannot move to the GPU Ray assigns to its next one
        remote = ray.remote(max_calls=1 if res["num_gpus"] else 0)(train_block).options(
            **res, num_returns="streaming", max_retries=0, retry_exceptions=False,
        )
        size = opts.block or DEFAULT_BLOCK
        tasks: list[_Task] = []
        for arm in b.arms:
            b.arm_dir(arm).mkdir(parents=True, exist_ok=True)
            if opts.resume:
                earlier_runs(b.arm_dir(arm), arm.config, resume=True, defaults=arm.defaults)  # a record of another config is refused
            have = b.finished(arm)
            todo = [s for s in range(opts.seed, opts.seed + opts.runs) if s not in have]
            tasks += [_Task(arm, blk) for blk in blocks(todo, size)]
            b.status[arm.name] = "waiting" if todo else "completed"
        cluster = ray.cluster_resources()
        try:
            board = ray.remote(num_cpus=0)(Board).remote()
        except Exception:
            board = None  # no display of the runs within: the battery goes on
        ended: set[tuple[str, int]] = set()  # (arm, seed) of the finished runs: later reports of theirs are stale
        b.say(
            f"{len(b.arms)} arms x {opts.runs} seeds (seeds {opts.seed}..{opts.seed + opts.runs - 1}) as {len(tasks)} Ray "
            f"task(s) of up to {size} seeds, {res['num_gpus']} GPU and {res['num_cpus']} CPU each, on a cluster of "
            f"{cluster.get('GPU', 0):g} GPU and {cluster.get('CPU', 0):g} CPU; results in {out}"
        )

        def log(arm, text: str) -> None:
            with open(b.arm_dir(arm) / "train.log", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

        def arm_over(arm) -> None:
            """No task of the arm left: its status, its own summary.json, its row."""
            runs = list(b.finished(arm).values())
            if arm.name not in b.failed:
                bad = [r for r in runs if r.get("status") != "completed"]
                if bad:
                    b.fail(arm, f"failed ({len(bad)} run(s) {bad[0]['status']})")
                else:
                    b.status[arm.name] = "completed"
            record.write_json(b.arm_dir(arm) / "summary.json", summarize(
                sorted(runs, key=lambda r: r["seed"]), preset_tricks=list(arm.config["tricks"]),
                partial=len(runs) < opts.runs, runs_requested=opts.runs, backend="ray"))
            b.arm_done(arm)

        def submit(t: _Task) -> None:
            payload = {
                "config": t.arm.config, "seeds": t.rest(), "device": opts.device, "data_dir": opts.data_dir,
                "download": opts.download, "threads": opts.cpus_per_task if not res["num_gpus"] else None,
                "hlb_version": hlbcli.__version__, "trick_sources": t.arm.sources, "arm": t.arm.name,
                "board": board,
            }
            t.gen = remote.remote(payload)
            live.append(t)
            if b.status.get(t.arm.name) == "waiting":
                b.status[t.arm.name] = "running"

        def finish(t: _Task) -> None:
            live.remove(t)
            if not any(o.arm is t.arm for o in live):
                arm_over(t.arm)

        def lost(t: _Task, e: BaseException) -> None:
            why = f"{e.__class__.__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")
            health.confirm()  # its worker, or the whole cluster?
            rest = t.rest()
            if not rest:  # lost after its last record: nothing to do again
                finish(t)
                return
            if t.attempt < opts.retries:
                t.attempt += 1
                log(t.arm, f"{seed_span(t.seeds)}: lost its worker {t.where} ({why}); {seed_span(rest)} again "
                           f"(retry {t.attempt} of {opts.retries})")
                b.say(f"arm {t.arm.name}: a task lost its worker ({why}); {seed_span(rest)} start again "
                      f"(retry {t.attempt} of {opts.retries})")
                live.remove(t)
                submit(t)
                return
            b.fail(t.arm, f"failed (worker lost {t.attempt + 1} times)")
            log(t.arm, f"{seed_span(t.seeds)}: lost its worker {t.where} ({why}); no retries left")
            b.say(f"arm {t.arm.name}: {seed_span(rest)} lost their worker {t.attempt + 1} times ({why}); no retries left")
            self._cancel([o for o in live if o.arm is t.arm and o is not t])
            finish(t)

        def handle(t: _Task, msg: dict) -> None:
            kind = msg.get("kind")
            if kind == "start":
                t.where = f"{msg.get('node')} pid {msg.get('pid')}"
                log(t.arm, f"{seed_span(t.rest())}: started on {t.where}")
            elif kind == "run":
                rec = msg["record"]
                record.write_json(run_path(b.arm_dir(t.arm), opts.seed, rec["seed"]), rec)
                ended.add((t.arm.name, rec["seed"]))
                if rec.get("status") in FINISHED:
                    t.done.append(rec["seed"])
                    b.run_done(t.arm, rec)
                acc = rec.get("accuracy")
                log(t.arm, f"seed {rec['seed']}: {rec.get('status')}" + (f" {100 * acc:.2f}%" if isinstance(acc, float) else "")
                    + (f" ({rec['message']})" if rec.get("message") else ""))
            elif kind == "error":
                text = msg["message"] + (f" ({msg['hint']})" if msg.get("hint") else "")
                log(t.arm, f"{seed_span(t.rest())}: error on {t.where}: {text}" + (f"\n{msg['traceback']}" if msg.get("traceback") else ""))
                b.say(f"arm {t.arm.name}: error: {text}")
                b.fail(t.arm, "failed (error)", f"arm {t.arm.name}: {text}")
                self._cancel([o for o in live if o.arm is t.arm and o is not t])

        # a stop signal is noted, not raised where it lands: raised inside Ray's own calls it
        # leaves them broken (a SystemError); the loop looks at least every half second
        for t in tasks:
            submit(t)
        for arm in b.arms:
            if b.status[arm.name] == "completed":
                arm_over(arm)  # all kept from an earlier try (--resume)
        b.write(partial=True)
        by_name = {arm.name: arm for arm in b.arms}

        def look() -> None:
            """Where the running runs are (the board's reports): the display, and its tick."""
            try:
                got = ray.get(board.take.remote(), timeout=5) if board is not None else []
            except Exception:
                got = []
            for name, state in got:
                if name in by_name and (name, state.get("seed")) not in ended:
                    b.run_progress(by_name[name], state)
            b.tick()

        last_look = time.monotonic()
        while live:
            if time.monotonic() - last_look >= 1.0:
                look()
                last_look = time.monotonic()
            if got:
                raise Interrupted(got[0])
            health.check()
            try:
                ready, _ = ray.wait([t.gen for t in live], num_returns=1, timeout=0.5)
            except Exception:
                health.confirm()
                raise
            if not ready:
                continue  # the live display keeps its clock moving by itself
            t = next(t for t in live if t.gen is ready[0])
            try:
                ref = next(t.gen)
            except StopIteration:
                finish(t)
                continue
            except ray.exceptions.RayError as e:
                lost(t, e)
                continue
            try:
                msg = ray.get(ref)
            except ray.exceptions.RayError as e:
                lost(t, e)
                continue
            handle(t, msg)
