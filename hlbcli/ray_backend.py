"""``hlb ablate --backend ray``: the arms' seeds as tasks on a Ray cluster.

The battery is cut into (arm, block of seeds) tasks. Each task is a Ray generator task on a
worker with one GPU (CPU cores where the cluster has no GPU): it resolves the arm's config,
loads the data from the worker's own ``--data-dir``, builds and compiles once, then trains its
seeds in turn and streams each run record back as it finishes. This process (the driver)
writes every record where the local backend's ``hlb train`` would, so ``summary.json``,
``summary.md``, ``arms/`` and the plot are the same for both backends.

What travels to a worker: the arm's resolved config, the seeds, the device, the data folder's
path and the library versions (to refuse a worker with another hlb or other tricks). Not the
data. On the CPU a worker process keeps the last session it built, so the next block of the
same arm there skips loading and building; a GPU task always starts in a fresh process (so
``--block`` should be large enough to pay for a compile).

Failures: a task whose worker is lost (killed, out of memory, its node gone) is started again
for the seeds it had not finished, up to ``--retries`` times; the records it streamed before
are kept. An error of the run itself (bad data folder, a trick missing on the worker, a bug)
is reported by the task as a message, ends that arm, and is not retried: it would fail again.
A head that stops answering (its GCS port, looked at every second and whenever a task is lost)
ends the battery: the summary is written as it stands, and ``--resume`` trains the rest.
Joining the cluster, and what a task may ask of it, are :mod:`hlbcli.ray_cluster`'s.
"""

from __future__ import annotations

import os
import platform
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hlbcli import record
from hlbcli.errors import EXIT_INTERRUPTED, HlbError, UsageError
from hlbcli.ray_cluster import INSTALL_HINT, ClusterLost, Health, _import_ray, connect, fit, gcs_address, target

__all__ = ["INSTALL_HINT", "DEFAULT_BLOCK", "blocks", "check_ray", "connect", "resources", "run_arms_ray", "seed_span",
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

    from hlbcli.session import resolve_data
    from hlbcli.train import prepare, warm_up

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
        session = prepare(cfg, tm, task["device"], task["data_dir"], task["download"])
        warm_up(session, task["seeds"][0])
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
        from hlbcli.runner import train_seed

        for seed in task["seeds"]:
            failed: list[dict] = []
            try:
                rec = train_seed(session, seed, keep=failed.append)
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


def run_arms_ray(opts, arms: list, out: Path, progress, connected: bool = False) -> tuple[dict, int]:
    """Train the arms as Ray tasks. ``connected``: the caller has joined the cluster already
    (and will leave it)."""
    from hlbcli.ablate import finished_seeds, run_path, summarize, write_summary
    from hlbcli.runner import FINISHED, earlier_runs
    from hlbcli.signals import Interrupted, held_signals

    ray = _import_ray()
    say = progress.say
    import hlbcli

    started_here = False if connected else connect(opts)
    try:
        res = resources(opts)
        health = Health(gcs_address(ray), target(opts) or "this machine")
        # on the CPU one worker process serves block after block and keeps its build; a GPU
        # task gets a fresh process (Ray's default there): a process whose CUDA context sits on
        # the GPU of its last task cannot move to the GPU Ray assigns to its next one
        remote = ray.remote(max_calls=1 if res["num_gpus"] else 0)(train_block).options(
            **res, num_returns="streaming", max_retries=0, retry_exceptions=False,
        )
        size = opts.block or DEFAULT_BLOCK
        tasks: list[_Task] = []
        status: dict[str, str] = {}
        for arm in arms:
            arm_dir = out / "arms" / arm.folder
            arm_dir.mkdir(parents=True, exist_ok=True)
            if opts.resume:
                earlier_runs(arm_dir, arm.config, resume=True)  # a record of another config is refused
            have = finished_seeds(arm, opts, out)
            todo = [s for s in range(opts.seed, opts.seed + opts.runs) if s not in have]
            tasks += [_Task(arm, b) for b in blocks(todo, size)]
            status[arm.name] = "waiting" if todo else "completed"
        cluster = ray.cluster_resources()
        say(
            f"{len(arms)} arms x {opts.runs} seeds (seeds {opts.seed}..{opts.seed + opts.runs - 1}) as {len(tasks)} Ray "
            f"task(s) of up to {size} seeds, {res['num_gpus']} GPU and {res['num_cpus']} CPU each, on a cluster of "
            f"{cluster.get('GPU', 0):g} GPU and {cluster.get('CPU', 0):g} CPU; results in {out}"
        )
        t0 = time.monotonic()
        failed: dict[str, str] = {}
        errors: list[str] = []  # the first one ends up in the summary's "error"
        live: list[_Task] = []

        def log(arm, text: str) -> None:
            with open(out / "arms" / arm.folder / "train.log", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

        def write(partial: bool) -> dict:
            summary = write_summary(opts, arms, out, status, partial, time.monotonic() - t0)
            progress.update(summary)
            return summary

        def arm_over(arm) -> None:
            """No task of the arm left: its status, its own summary.json, its row."""
            runs = [r for r in finished_seeds(arm, opts, out).values()]
            if arm.name not in failed:
                bad = [r for r in runs if r.get("status") != "completed"]
                status[arm.name] = f"failed ({len(bad)} run(s) {bad[0]['status']})" if bad else "completed"
                if bad:
                    failed[arm.name] = status[arm.name]
            record.write_json(out / "arms" / arm.folder / "summary.json", record.summarize(
                sorted(runs, key=lambda r: r["seed"]), preset_tricks=list(arm.config["tricks"]),
                partial=len(runs) < opts.runs, runs_requested=opts.runs, backend="ray"))
            summary = write(partial=True)
            progress.arm_finished(next(a for a in summary["arms"] if a["name"] == arm.name))

        def submit(t: _Task) -> None:
            payload = {
                "config": t.arm.config, "seeds": t.rest(), "device": opts.device, "data_dir": opts.data_dir,
                "download": opts.download, "threads": opts.cpus_per_task if not res["num_gpus"] else None,
                "hlb_version": hlbcli.__version__, "trick_sources": t.arm.sources,
            }
            t.gen = remote.remote(payload)
            live.append(t)
            if status.get(t.arm.name) == "waiting":
                status[t.arm.name] = "running"

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
                say(f"arm {t.arm.name}: a task lost its worker ({why}); {seed_span(rest)} start again "
                    f"(retry {t.attempt} of {opts.retries})")
                live.remove(t)
                submit(t)
                return
            failed[t.arm.name] = status[t.arm.name] = f"failed (worker lost {t.attempt + 1} times)"
            log(t.arm, f"{seed_span(t.seeds)}: lost its worker {t.where} ({why}); no retries left")
            say(f"arm {t.arm.name}: {seed_span(rest)} lost their worker {t.attempt + 1} times ({why}); no retries left")
            cancel([o for o in live if o.arm is t.arm and o is not t])
            finish(t)

        def handle(t: _Task, msg: dict) -> None:
            kind = msg.get("kind")
            if kind == "start":
                t.where = f"{msg.get('node')} pid {msg.get('pid')}"
                log(t.arm, f"{seed_span(t.rest())}: started on {t.where}")
            elif kind == "run":
                rec = msg["record"]
                record.write_json(run_path(out / "arms" / t.arm.folder, opts.seed, rec["seed"]), rec)
                if rec.get("status") in FINISHED:
                    t.done.append(rec["seed"])
                    progress.run_finished(t.arm.name, rec)
                    progress.update(summarize(opts, arms, out, status, True))
                acc = rec.get("accuracy")
                log(t.arm, f"seed {rec['seed']}: {rec.get('status')}" + (f" {100 * acc:.2f}%" if isinstance(acc, float) else "")
                    + (f" ({rec['message']})" if rec.get("message") else ""))
            elif kind == "error":
                text = msg["message"] + (f" ({msg['hint']})" if msg.get("hint") else "")
                log(t.arm, f"{seed_span(t.rest())}: error on {t.where}: {text}" + (f"\n{msg['traceback']}" if msg.get("traceback") else ""))
                say(f"arm {t.arm.name}: error: {text}")
                failed[t.arm.name] = status[t.arm.name] = "failed (error)"
                errors.append(f"arm {t.arm.name}: {text}")
                cancel([o for o in live if o.arm is t.arm and o is not t])

        def cancel(ts: list[_Task]) -> None:
            for o in ts:
                try:
                    ray.cancel(o.gen, force=True)
                except Exception:
                    pass
                live.remove(o)

        # a stop signal is noted, not raised where it lands: raised inside Ray's own calls it
        # leaves them broken (a SystemError); the loop looks at least every half second
        with held_signals() as got:
            try:
                for t in tasks:
                    submit(t)
                for arm in arms:
                    if status[arm.name] == "completed":
                        arm_over(arm)  # all kept from an earlier try (--resume)
                write(partial=True)
                while live:
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
            except Interrupted as e:
                for t in list(live):
                    status[t.arm.name] = "interrupted"
                cancel(list(live))
                summary = write(partial=True)
                kept = sum(a["n"] for a in summary["arms"])
                say(f"interrupted: {kept} finished run(s) kept in {out} (rerun the same command with --resume to train the rest)")
                return summary, EXIT_INTERRUPTED if e.signum == signal.SIGINT else e.exit_code
            except ClusterLost as e:
                for t in list(live):
                    status[t.arm.name] = "stopped"
                live.clear()  # nothing to cancel: the cluster that ran them is gone
                summary = write(partial=True)
                kept = sum(a["n"] for a in summary["arms"])
                summary["error"] = (f"{e.message}; {kept} finished run(s) kept in {out} (start the cluster again and rerun "
                                    "the same command with --resume to train the rest)")
                return summary, e.exit_code
            except BaseException:
                for t in list(live):
                    status[t.arm.name] = "stopped"
                cancel(list(live))
                try:
                    write(partial=True)
                except HlbError:
                    pass
                raise
            summary = write(partial=bool(failed))
        if failed:
            summary["error"] = errors[0] if errors else f"arm(s) {', '.join(failed)} failed; see train.log in {out / 'arms'}/<arm>"
            return summary, 1
        return summary, 0
    finally:
        if started_here:
            ray.shutdown()
