"""The plan of a battery (``hlb ablate``): its options, its arms (the baseline, then one arm per
trick switched off, on, or swapped for another, and one per ``--vary`` of settings), each arm's
config resolved and checked before anything trains, the output folder claimed and the plan
written to ``DIR/ablation.json`` (what ``--resume`` and ``hlb summary`` read back)."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from hlbcli import readback, record
from hlbcli.errors import HlbError, UsageError
from hlbcli.experiments.options import RunOptions
from hlbcli.experiments.sequential import SEQUENTIAL_METHOD, check_sequential
from hlbcli.readback import PLAN_NAME
from hlbcli.config import config_defaults, to_dict
from hlbcli.data import load_cifar, locate_cifar
from hlbcli.experiments import vary
from hlbcli.experiments.vary import folder_of, parse_vary
from hlbcli.layers import active_tricks, layered
from hlbcli.plot import require_matplotlib
from hlbcli.plugins import check_names
from hlbcli.resolve import check_disable, check_swaps, parse_swaps, replaced_by, resolve
from hlbcli.session import check_session, resolve_device

BASELINE = "baseline"


#: each arm's resolved config, written before it trains: what the arm trains (local backend)
ARM_CONFIG = "config.json"


@dataclass
class Arm:
    """One arm: the preset's tricks minus ``disabled`` plus ``enabled``; a swap (``OLD->NEW``)
    disables OLD, enables NEW and says so in ``replaced``; a ``--vary`` arm keeps the tricks
    and changes the settings in ``sets``."""

    name: str
    disabled: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    #: tricks other arms enable and this one does not: passed as ``--disable`` too (a no-op on
    #: the trick list) so that ``--set``/``--config`` settings for them are accepted here
    silenced: list[str] = field(default_factory=list)
    #: trick taken out -> the trick in its place (``--swap OLD=NEW``, or an ``--enable``d trick
    #: that declares it replaces OLD): its configs and run records say ``replaced`` too
    replaced: dict[str, str] = field(default_factory=dict)
    #: the arm's resolved config (what its run records carry), set by :func:`validate_arms`
    config: dict | None = field(default=None, repr=False)
    #: every setting of its sections at its default (:func:`hlbcli.config.config_defaults`), set
    #: with ``config``: what a record that predates a setting ran with
    defaults: dict | None = field(default=None, repr=False)
    #: where each of its tricks comes from (``hlb tricks list``'s origin), set with ``config``
    sources: dict | None = field(default=None, repr=False)
    #: ``KEY=VALUE`` overrides on top of the common ``--set`` (``--vary``,
    #: :mod:`hlbcli.experiments.vary`): the arm is named by them
    sets: list[str] = field(default_factory=list)
    #: its folder under ``arms/`` where it is not made from its name (a search's trials:
    #: ``trial-0007``, :mod:`hlbcli.experiments.search`)
    dir: str | None = None

    @property
    def folder(self) -> str:
        if self.dir:
            return self.dir
        if self.name == BASELINE:
            return BASELINE
        if self.sets:
            return folder_of(self.name)
        parts = [f"no-{d}" for d in self.disabled] + [f"with-{e}" for e in self.enabled]
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", "_".join(parts))


@dataclass(kw_only=True)
class AblateOptions(RunOptions):
    """``hlb ablate``: the shared options (:class:`RunOptions`; ``preset`` required, three seeds
    per arm by default) and the battery's."""

    preset: str
    runs: int = 3
    config: str | None = None
    sets: list[str] = field(default_factory=list)
    disable: list[str] = field(default_factory=list)
    enable: list[str] = field(default_factory=list)
    #: ``OLD=NEW`` words: an arm each, NEW in OLD's place
    swap: list[str] = field(default_factory=list)
    #: ``KEY=VALUE[,KEY=VALUE...]`` words: an arm each, the baseline with those settings changed
    vary: list[str] = field(default_factory=list)
    leave_one_out: bool = False
    workers: int = 1
    plot: bool = False
    #: where arms train: a name of :data:`hlbcli.experiments.battery.BACKENDS` ("local": a process
    #: per arm on this machine; "ray": a Ray cluster)
    backend: str = "local"
    #: the Ray cluster to join ("auto", "ray://host:10001", "host:6379"); None: $RAY_ADDRESS,
    #: else a Ray instance of this machine started for this run
    address: str | None = None
    #: seeds per Ray task (built and compiled once, then trained in turn); None: all of an arm's
    #: seeds in blocks of at most DEFAULT_BLOCK
    block: int | None = None
    #: CPU cores per Ray task (its torch threads on the CPU)
    cpus_per_task: int = 1
    #: how many times a Ray task lost with its worker (a killed process, a dead node) is
    #: started again for the seeds it had not finished
    retries: int = 3
    #: add seeds in rounds of ``runs`` until each arm is resolved (:mod:`hlbcli.experiments.sequential`)
    until_resolved: bool = False
    #: the most seeds per arm with ``until_resolved`` (None: :data:`~hlbcli.experiments.sequential.DEFAULT_MAX_RUNS`)
    max_runs: int | None = None
    #: an interval within +-delta resolves an arm as "no effect" (None: never)
    delta: float | None = None
    #: the error rate of the confidence sequence (two-sided)
    alpha: float = 0.05


def plan_arms(active: list[str], disable: Iterable[str], enable: Iterable[str], leave_one_out: bool,
              swaps: Iterable[tuple[str, str]] = (), replaced: dict[str, str] | None = None,
              vary: Iterable[tuple[str, list[str]]] = ()) -> list[Arm]:
    """The baseline, then one arm per ``--disable``, per ``--enable``, per ``--swap`` (OLD, NEW),
    (with ``leave_one_out``) per active trick not already named, and per ``--vary`` (its name
    and settings, :func:`hlbcli.experiments.vary.parse_vary`; the same name twice is one arm).
    ``replaced``: active trick -> the enabled trick that declares it replaces it; that
    ``--enable`` is a swap."""
    arms = [Arm(BASELINE)]
    seen: set[str] = set()
    disable = list(disable)
    check_disable(active, disable, "use --enable {name} to measure adding it")
    for name in disable:
        if name not in seen:
            seen.add(name)
            arms.append(Arm(f"-{name}", disabled=[name]))
    for name in enable:
        if name in active:
            raise UsageError(
                f"--enable {name}: the preset already turns '{name}' on",
                f"use --disable {name} to measure taking it away",
            )
        olds = [old for old, new in (replaced or {}).items() if new == name]
        _add(arms, _swap_arm(olds, name) if olds else Arm(f"+{name}", enabled=[name]))
    swaps = list(swaps)
    check_swaps(swaps, active)
    for old, new in swaps:
        _add(arms, _swap_arm([old], new))
    if leave_one_out:
        for name in active:
            if name not in seen:
                seen.add(name)
                arms.append(Arm(f"-{name}", disabled=[name]))
    for name, sets in vary:
        _add(arms, Arm(name, sets=list(sets)))
    if len(arms) == 1:
        raise UsageError(
            "nothing to compare: no arm besides the baseline",
            "name tricks with --disable NAME or --enable NAME, settings with --vary KEY=VALUE, or pass --leave-one-out",
        )
    folders: dict[str, str] = {}
    for a in arms:  # one folder each, also where names differ only in case
        other = folders.setdefault(a.folder.lower(), a.name)
        if other != a.name:
            raise UsageError(f"arms '{other}' and '{a.name}' would share the folder arms/{a.folder}",
                             "spell one of them differently (values are case-sensitive, folders may not be)")
    added = [e for a in arms for e in a.enabled]
    for a in arms:
        a.silenced = [e for e in added if e not in a.enabled]
    return arms


def _swap_arm(olds: list[str], new: str) -> Arm:
    return Arm(f"{','.join(olds)}->{new}", disabled=list(olds), enabled=[new], replaced={o: new for o in olds})


def _add(arms: list[Arm], arm: Arm) -> None:
    if arm.name not in {a.name for a in arms}:
        arms.append(arm)


def check_arm(opts: AblateOptions, arm: Arm, specs: dict | None = None):
    """The arm's config resolved and checked in this process (its settings, its tricks, its
    sizes against the data's shape, each trick's ``hlb_validate``), kept on the arm
    (``config``, ``defaults``, ``sources``); returns the config. ``specs``: dataset -> the shape
    of its data on disk, where it was read (else the config's)."""
    if arm.sets:
        cfg, tm = vary.resolve_arm(opts, arm)
    else:
        cfg, tm = resolve(opts.preset, opts.config, opts.sets, arm.enabled, arm.disabled + arm.silenced,
                          replaced=arm.replaced, arm=True)
    own_data = tm.owners().get("hlb_dataset_build", "core") != "core"  # a trick brings its data
    # sizes, and each trick's hlb_validate against the data's shape and the model
    check_session(cfg, tm, None if own_data else (specs or {}).get(cfg.data.dataset))
    arm.config, arm.defaults = to_dict(cfg), config_defaults(cfg)
    arm.sources = {n: tm.origins[n] for n in tm.trick_names()}
    return cfg


def validate_arms(opts: AblateOptions, arms: list[Arm], specs: dict | None = None) -> list[str]:
    """Resolve every arm's config in this process, so that a bad ``--set``, an unknown name or
    a trick another one needs fails now, not after hours of training. ``specs``: dataset ->
    the shape of its data on disk, where it was read (else the config's). Returns the
    baseline's active tricks."""
    active = []
    for arm in arms:
        try:
            if arm.sets:  # the baseline (arms[0]) is resolved by now
                vary.check_sections(arm.sets, arms[0].config)
            cfg = check_arm(opts, arm, specs)
        except HlbError as e:
            if arm.name == BASELINE:
                raise
            raise vary.arm_error(arm, e) from None
        if arm.name == BASELINE:
            active = list(cfg.tricks)
        elif arm.sets:
            vary.check_changes(arm.name, arm.sets, arm.config, arms[0].config)
    vary.check_distinct(arms)
    return active


def check_environment(opts: AblateOptions, dataset: str, fetch: bool):
    """The device and the data, once, before any arm starts (each arm would fail alike).
    With ``fetch``, a missing dataset is downloaded here, once, not by every arm at once.
    Returns the shape of the data on disk (read, checked and cached here, once) where it is
    there, else None."""
    resolve_device(opts.device)
    if dataset in ("cifar10", "cifar100"):
        files = locate_cifar(dataset, opts.data_dir, opts.download, fetch=fetch)
        if all(f.is_file() for f in files):
            return load_cifar(dataset, opts.data_dir, opts.download).spec()
    return None


def plan_battery(opts: AblateOptions, fetch: bool = False, data_here: bool = True) -> list[Arm]:
    """Check everything that can be checked before training: names, ``--set`` values, every
    arm's config and sizes, ``--out`` against the plan, the plotting extra, and, where the
    backend trains on this machine's data (``data_here``, :attr:`Backend.DATA_HERE`), the
    device and the data (downloaded here with ``fetch``). Returns the arms, the baseline first."""
    if opts.runs < 1:
        raise UsageError(f"--runs {opts.runs}: need at least one seed per arm", "use --runs 3 or more for a p-value")
    check_sequential(opts)
    disable, enable = check_names(opts.disable, "--disable"), check_names(opts.enable, "--enable")
    swaps = parse_swaps(opts.swap)
    varied = [parse_vary(w) for w in opts.vary]
    if opts.plot:
        require_matplotlib()
    # the baseline's tricks from the layered data alone: its settings are validated below,
    # once it is known which tricks other arms add
    data = layered(opts.preset, opts.config, list(opts.sets))
    active = check_names(active_tricks(data, [], []), "the preset's tricks")
    arms = plan_arms(active, disable, enable, opts.leave_one_out, swaps, replaced_by(enable, active), varied)
    validate_arms(opts, arms)
    if opts.out is not None:  # an --out of another command, or of another plan: before the data is read
        check_out(opts.out, plan_of(opts, arms), opts.resume)
    if data_here:
        # elsewhere (Ray), each worker has its own device and data: its tasks check them there. Each
        # dataset an arm trains on (a --vary may change it) once; the settings are validated by now
        datasets = dict.fromkeys(a.config["data"]["dataset"] for a in arms)
        specs = {ds: check_environment(opts, ds, fetch) for ds in datasets}
        if any(v is not None for v in specs.values()):  # the data on disk may be smaller than the config says
            validate_arms(opts, arms, specs)
    return arms


def default_out(preset: str, command: str = "ablate") -> Path:
    """``./hlb-COMMAND-PRESET-TIME``: where a battery's results go without ``--out``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(preset).stem if preset.endswith(".toml") else preset)
    return Path(f"hlb-{command}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


def plan_of(opts: AblateOptions, arms: list[Arm]) -> dict:
    """What ``--resume`` must find unchanged, and what ``hlb summary`` needs to rebuild the
    summary: written to ``DIR/ablation.json`` before any arm starts."""
    return {
        "kind": "ablation-plan",
        "preset": opts.preset,
        "config": opts.config,
        "sets": list(opts.sets),
        "seed": opts.seed,
        "runs": opts.runs,
        "arms": [{"name": a.name, "disabled": a.disabled, "enabled": a.enabled, "silenced": a.silenced,
                  **({"replaced": a.replaced} if a.replaced else {}), **({"sets": a.sets} if a.sets else {}),
                  **({"folder": a.dir} if a.dir else {})}
                 for a in arms],
        # only with --until-resolved: a fixed plan reads as before
        **({"sequential": {"method": SEQUENTIAL_METHOD, "max_runs": opts.max_runs, "alpha": opts.alpha,
                           "delta": opts.delta}} if opts.until_resolved else {}),
    }


def check_out(out: Path, plan: dict, resume: bool = False) -> bool:
    """Refuse ``out`` when it holds another command's records, or an ablation unless ``resume``
    and its plan is this one (:func:`hlbcli.record.check_out`); reads only, so that
    :func:`plan_battery` says so before the data is read. Returns whether it holds the ablation
    to go on with."""
    if not Path(out).is_dir() or not record.check_out(Path(out), "ablation", resume):
        return False
    if (Path(out) / PLAN_NAME).exists() or not readback.arms_hold_records(out):
        old = readback.read_plan(out)
        if {k: v for k, v in old.items() if k != "runs"} != {k: v for k, v in plan.items() if k != "runs"}:
            raise UsageError(
                f"--resume: {out} holds an ablation of another plan ({readback.plan_difference(old, plan)})",
                "rerun the command that started it with --resume, the same --disable/--enable/--swap/--vary in the same order, or choose a new folder",
            )
    return True


def claim_out(out: Path, plan: dict, resume: bool = False) -> record.Claim:
    """Claim ``out`` for this process; refuse it as :func:`check_out` does. Writes the plan."""
    hold = record.claim(out)
    try:
        if check_out(hold.folder, plan, resume):
            if not (hold.folder / PLAN_NAME).exists():  # deleted: this command's plan, and each arm's --resume checks its records' config
                print(f"warning: {hold.folder} had no {PLAN_NAME}; written again from this command", file=sys.stderr, flush=True)
            opts, arms = options_of(plan, hold.folder)
            readback.refuse_rejected([arm_records(a, opts, hold.folder, strict=True) for a in arms])
        (hold.folder / "arms").mkdir(exist_ok=True)
        record.write_json(hold.folder / PLAN_NAME, plan)
    except BaseException:
        hold.release()
        raise
    return hold


def options_of(plan: dict, out: Path) -> tuple[AblateOptions, list[Arm]]:
    """The options and arms of a plan (one checked by :func:`readback.read_plan`, or ours)."""
    opts = AblateOptions(preset=plan["preset"], config=plan.get("config"), sets=list(plan.get("sets", [])),
                         runs=plan["runs"], seed=plan["seed"], out=out)
    seq = plan.get("sequential")
    if seq:
        opts.until_resolved, opts.max_runs, opts.alpha, opts.delta = True, seq["max_runs"], seq["alpha"], seq.get("delta")
    arms = [Arm(a["name"], list(a.get("disabled", [])), list(a.get("enabled", [])), list(a.get("silenced", [])),
                dict(a.get("replaced", {})), sets=list(a.get("sets", [])), dir=a.get("folder"))
            for a in plan["arms"]]
    return opts, arms


def arm_records(arm: Arm, opts: AblateOptions, out: Path, strict: bool = False) -> readback.Records:
    """The arm's run records of this ablation's seeds, one per seed (:mod:`hlbcli.readback`)."""
    return readback.read_records(out / "arms" / arm.folder, range(opts.seed, opts.seed + plan_runs(opts)), strict=strict)


def arm_path(path: Path) -> Path:
    """A folder a command was given, an arm's name allowed for its folder: ``OUT/arms/-ema`` is
    ``OUT/arms/no-ema`` (:attr:`Arm.folder`, the arms of ``OUT``'s plan), said in one note line.
    A path that exists is itself; one under ``OUT/arms/`` that names no arm is refused, listing
    the arms there; any other is the command's own to check."""
    path = Path(path)
    if path.exists():
        return path
    arms_dir = next((p for p in path.parents if p.name == "arms"), None)
    if arms_dir is None:
        return path
    out, name = arms_dir.parent, path.relative_to(arms_dir).as_posix()
    arms = options_of(readback.read_plan(out), out)[1] if (out / PLAN_NAME).is_file() else []
    for arm in arms:
        if name == arm.name or name.startswith(f"{arm.name}/"):  # (a file in it: OUT/arms/-ema/summary.json)
            print(f"note: arm '{arm.name}' is the folder {arms_dir / arm.folder}", file=sys.stderr, flush=True)
            return arms_dir / arm.folder / name[len(arm.name) + 1:]
    shown = [a.name if a.name == a.folder else f"{a.name} ({a.folder})" for a in arms]
    if not shown and arms_dir.is_dir():
        shown = sorted(p.name for p in arms_dir.iterdir() if p.is_dir())
    raise UsageError(f"{path} is not a folder, nor the name of an arm of {out}",
                     f"name one of its arms, by name or folder: {', '.join(shown)}" if shown else f"{arms_dir} holds no arm")


def plan_runs(opts: AblateOptions) -> int:
    """The most seeds per arm: ``max_runs`` with ``until_resolved``, else ``runs``."""
    return (opts.max_runs or opts.runs) if opts.until_resolved else opts.runs



def finished_seeds(arm: Arm, opts: AblateOptions, out: Path) -> dict[int, dict]:
    """The arm's records already over (completed or diverged) for this ablation's seeds."""
    return {s: r for s, (_, r) in arm_records(arm, opts, out).runs.items() if r["status"] in readback.FINISHED}
