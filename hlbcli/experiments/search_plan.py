"""``hlb search``'s options, its plan on disk (``DIR/search.json``, what ``--resume`` compares)
and its Optuna study (``DIR/search.db``) with the sampler that serves the objective."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from hlbcli import record
from hlbcli.errors import UsageError
from hlbcli.experiments.plan import AblateOptions
from hlbcli.experiments.search_space import Space

PLAN_FILE, DB_FILE, STUDY = "search.json", "search.db", "hlb-search"
#: objective -> the study's directions (the values told are paired differences from the
#: baseline: accuracy in points of the fraction, time in seconds)
OBJECTIVES = {"accuracy": ["maximize"], "pareto": ["maximize", "minimize"], "time": ["minimize"]}
SAMPLERS = ("tpe", "random", "nsga2")


@dataclass(kw_only=True)
class SearchOptions(AblateOptions):
    """``hlb search``: the battery's options (``runs``: the seeds of every trial) and the study's."""

    space: str = ""
    trials: int = 20
    runs: int = 4
    #: ``accuracy`` (at the preset's budget), ``pareto`` (accuracy and time), ``time`` (least
    #: time with the mean accuracy at least ``target``)
    objective: str = "accuracy"
    target: float | None = None
    sampler: str = "tpe"
    #: the error rate of the pruning rule's interval (a wrong prune loses a trial, not a claim)
    prune_alpha: float = 0.2
    #: the best trials confirmed on fresh seeds at the end (0: none)
    confirm_top: int = 1
    #: trials asked of the study at once, a wave (``--workers``; the local backend's processes too)
    at_once: int = 1


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError("hlb search needs Optuna, which is not installed", "pip install 'hlbcli[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def check_options(opts: SearchOptions) -> None:
    if opts.objective not in OBJECTIVES:
        raise UsageError(f"--objective {opts.objective}: unknown", f"choose one of: {', '.join(OBJECTIVES)}")
    if opts.sampler not in SAMPLERS:
        raise UsageError(f"--sampler {opts.sampler}: unknown", f"choose one of: {', '.join(SAMPLERS)}")
    if (opts.objective == "time") != (opts.target is not None):
        raise UsageError("--objective time needs --target ACC" if opts.target is None else "--target is for --objective time",
                         "least time at mean accuracy >= ACC: --objective time --target 0.94")
    if opts.target is not None and not 0 < opts.target < 1:
        raise UsageError(f"--target {opts.target:g}: must lie between 0 and 1", "accuracy as a fraction, e.g. 0.94")
    for flag, v in (("--prune-alpha", opts.prune_alpha), ("--alpha", opts.alpha)):
        if not 0 < v < 1:
            raise UsageError(f"{flag} {v:g}: must lie between 0 and 1", "e.g. 0.05")
    if opts.trials < 1 or opts.confirm_top < 0:
        raise UsageError("--trials must be at least 1 and --confirm-top at least 0", "e.g. --trials 20 --confirm-top 1")
    if opts.runs < 2:
        raise UsageError(f"--seeds {opts.runs}: a trial needs at least 2 seeds for a paired difference", "use --seeds 4 or more")


def plan_of(opts: SearchOptions, space: Space) -> dict:
    """What ``--resume`` must find unchanged (``trials`` may grow: the search goes on)."""
    return {"kind": "search-plan", "preset": opts.preset, "config": opts.config, "sets": list(opts.sets),
            "space": space.data, "space_file": str(opts.space), "objective": opts.objective, "target": opts.target,
            "sampler": opts.sampler, "seed": opts.seed, "seeds": opts.runs, "prune_alpha": opts.prune_alpha,
            "alpha": opts.alpha, "max_runs": opts.max_runs, "confirm_top": opts.confirm_top, "trials": opts.trials}


def _compared(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k not in ("trials", "space_file")}


def claim_search(out: Path, plan: dict, resume: bool) -> record.Claim:
    """Claim ``out``; refuse another command's folder, a search without ``--resume``, or one of
    another plan. Writes the plan."""
    hold = record.claim(out)
    try:
        if record.check_out(hold.folder, "search", resume) and (hold.folder / PLAN_FILE).exists():
            old = json.loads((hold.folder / PLAN_FILE).read_text(encoding="utf-8"))
            if _compared(old) != _compared(plan):
                key = next(k for k in _compared(plan) if old.get(k) != plan.get(k))
                raise UsageError(f"--resume: {out} holds a search of another plan ({key}: {old.get(key)!r} there, "
                                 f"{plan.get(key)!r} here)", "rerun the command that started it with --resume (--trials may grow), or choose a new folder")
        (hold.folder / "arms").mkdir(exist_ok=True)
        record.write_json(hold.folder / PLAN_FILE, plan)
    except BaseException:
        hold.release()
        raise
    return hold


def open_study(optuna, opts: SearchOptions, out: Path):
    """The study in ``DIR/search.db`` (made, or loaded on ``--resume``), with the sampler."""
    if opts.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=opts.seed)
    else:
        constraints = _constraint if opts.objective == "time" else None
        if opts.sampler == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=opts.seed, constraints_func=constraints)
        else:
            sampler = optuna.samplers.TPESampler(seed=opts.seed, multivariate=True, group=True,
                                                 constant_liar=opts.at_once > 1, constraints_func=constraints)
    storage = f"sqlite:///{(out / DB_FILE).resolve()}"
    return optuna.create_study(storage=storage, study_name=STUDY, directions=OBJECTIVES[opts.objective],
                               sampler=sampler, load_if_exists=True)


def _constraint(trial) -> list[float]:
    """Optuna's constraint (feasible at <= 0): the target minus the trial's mean accuracy."""
    return list(trial.user_attrs.get("constraint", [1.0]))


def read_plan(folder: Path) -> dict:
    """``DIR/search.json`` of a search (one line where ``folder`` holds none)."""
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise UsageError(f"{folder} holds no search ({PLAN_FILE} is missing)", "name the --out folder of an hlb search")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} cannot be read: {e}", "it is written by hlb search; restore it or start a new search") from None
    if not isinstance(plan, dict) or plan.get("kind") != "search-plan":
        raise UsageError(f"{path} is not a search's plan", "name the --out folder of an hlb search")
    return plan
