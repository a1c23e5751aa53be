"""``hlb search``: an Optuna study over a space of tricks and settings (:mod:`.search_space`),
every trial trained on the same seeds as the baseline (the preset, the first trial), scored by
its paired difference from it, the clearly worse ones stopped early; then the best confirmed
on fresh seeds (:mod:`.search_confirm`).

A search is a sequence of *waves*: ``--workers`` trials asked of the study at once, trained
with the baseline as one battery (:class:`~hlbcli.experiments.battery.Battery`, on the chosen
backend) in rounds of seeds (:func:`~hlbcli.experiments.sequential.run_rounds`); after each
round a trial clearly worse than the baseline leaves (*pruned*, :func:`prune_line`); at the
end of the wave each trial is told to the study. Layout of ``--out DIR``::

    DIR/search.json        the plan (what --resume compares)
    DIR/search.db          the Optuna study (optuna-dashboard sqlite:///DIR/search.db)
    DIR/arms/baseline/     the preset's runs; DIR/arms/trial-0003/ a trial's
    DIR/summary.json, .md  the trials, the best, the confirmation
    DIR/confirm/           the confirmation: an ablation on fresh seeds (hlb report DIR/confirm)
    DIR/best.toml          the confirmed winner, a preset file (only where one was confirmed)

Pruning is hlb's own sequential test, not Optuna's pruners: the anytime-valid interval of the
paired differences (:func:`hlbcli.stats.t_confidence_sequence`, at ``--prune-alpha``) lies
wholly on the worse side. It compares with the baseline on the same seeds (Optuna's
``WilcoxonPruner`` compares with the best trial so far, itself an estimate inflated by
selection), it holds at every look, and it serves the multi-objective and constrained studies,
for which Optuna's pruners do not report."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from hlbcli.errors import HlbError, UsageError
from hlbcli.experiments.battery import Battery, backend_for
from hlbcli.experiments.battery_progress import BatteryProgress
from hlbcli.experiments.plan import BASELINE, AblateOptions, Arm, check_arm, check_environment, default_out, finished_seeds
from hlbcli.experiments.search_plan import (OBJECTIVES, SearchOptions, check_options, claim_search, open_study,
                                            plan_of, require_optuna)
from hlbcli.experiments.search_space import Space, preset_params, read_space, suggest, check_space
from hlbcli.experiments.search_summary import (paired, prune_reason, search_summary, search_table, trial_values,
                                               write_search_summary)
from hlbcli.experiments.sequential import run_rounds
from hlbcli.experiments.tail import run_to_summary
from hlbcli.stats import cs_bounded_from
from hlbcli.tracking import Command, around


class TrialBattery(Battery):
    """A wave's battery: runs and trials report into the search, not an ablation summary."""

    search: "Search" = None

    def write(self, partial: bool) -> dict:
        return self.search.write(True)

    def run_done(self, arm: Arm, rec: dict) -> None:
        self.progress.run_finished(arm.name, rec)
        if self.track:
            path = next(iter(sorted(self.arm_dir(arm).glob(f"run-*-seed{rec.get('seed')}.json"))), None)
            self.track.replay(arm.name, rec, path, arm.folder)

    def arm_done(self, arm: Arm) -> None:
        self.search.write(True)


class Search:
    """The study, the baseline, the arms of the trials and the waves that train them."""

    def __init__(self, opts: SearchOptions, space: Space, study, base: Arm, out: Path, backend, progress,
                 track=None, specs: dict | None = None):
        self.opts, self.space, self.study, self.base, self.out = opts, space, study, base, out
        self.backend, self.progress, self.track, self.specs = backend, progress, track, specs
        self.asked: dict[int, object] = {}  # trial number -> the optuna Trial asked in this process
        self.pruned: dict[str, str] = {}  # arm folder -> why
        self.t0 = time.monotonic()

    # --- trials -> arms ----------------------------------------------------------------------

    def arm_of(self, number: int, attrs: dict) -> Arm:
        a = attrs["arm"]
        if a["folder"] == BASELINE:
            return self.base
        arm = Arm(a["folder"], list(a["disabled"]), list(a["enabled"]), [], dict(a["replaced"]), sets=list(a["sets"]),
                  dir=a["folder"])
        check_arm(self.opts, arm, self.specs)
        return arm

    def ask(self):
        """A new trial, its arm checked: a combination the settings refuse is told failed, with
        its line, and another one is asked. The same config as an earlier trial shares its folder."""
        while True:
            trial = self.study.ask()
            enabled, disabled, replaced, sets = suggest(trial, self.space, self.base.config)
            folder = f"trial-{trial.number:04d}"
            arm = Arm(folder, disabled, enabled, [], replaced, sets=sets, dir=folder)
            try:
                if enabled or disabled or sets:
                    check_arm(self.opts, arm, self.specs)
                else:
                    arm = self.base
            except HlbError as e:
                trial.set_user_attr("error", e.message)
                self.study.tell(trial, state=_state("FAIL"))
                self.progress.say(f"trial {trial.number}: cannot be built ({e.message}); told failed")
                continue
            key = json.dumps(arm.config, sort_keys=True)
            same = next((t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("config_key") == key), None)
            if same is not None and arm is not self.base:
                arm.dir = same.user_attrs["arm"]["folder"]
            trial.set_user_attr("config_key", key)
            trial.set_user_attr("arm", {"folder": arm.folder, "enabled": arm.enabled, "disabled": arm.disabled,
                                        "replaced": arm.replaced, "sets": arm.sets})
            self.asked[trial.number] = trial
            return trial.number, arm

    def prune_line(self, arm: Arm, base: dict, mine: dict, opts: AblateOptions) -> str | None:
        if arm is self.base or len(mine) >= self.opts.runs:
            return None
        why = prune_reason(self.opts, base, mine)
        if why is None:
            return None
        self.pruned[arm.folder] = f"pruned after {len(mine)} seeds: {why}"
        return f"{arm.name}: {self.pruned[arm.folder]}"

    def looks(self) -> list[int]:
        first = cs_bounded_from(self.opts.prune_alpha)
        return sorted({*range(first, self.opts.runs, first), self.opts.runs})

    # --- the waves ---------------------------------------------------------------------------

    def done(self) -> int:
        return len([t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()])

    def wave(self) -> list[tuple[int, Arm]]:
        """Trials left running by a stopped search first (their arms as they were drawn), then
        new ones, up to ``--workers`` and ``--trials``."""
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
            if t.number in self.asked:
                continue
            if "arm" not in t.user_attrs:  # stopped while it was drawn: nothing of it trained
                self.study.tell(t.number, state=_state("FAIL"))
                continue
            out.append((t.number, self.arm_of(t.number, t.user_attrs)))
        room = self.opts.trials - self.done() - len(out)
        while room > 0 and len(out) < max(1, self.opts.at_once):
            out.append(self.ask())
            room = self.opts.trials - self.done() - len(out)
        return out

    def train(self, got: list[int]) -> None:
        while True:
            wave = self.wave()
            if not wave:
                return
            arms = list({a.folder: a for _, a in wave if a is not self.base}.values())
            names = ", ".join(f"{n}" + (" (the preset)" if a is self.base else "") for n, a in wave)
            self.progress.say(f"trial{'s' if len(wave) > 1 else ''} {names}: {self.opts.runs} seeds each, "
                              f"{len(arms)} arm(s) to train beside the baseline")
            battery = TrialBattery(replace(self.opts, until_resolved=False, resume=True), [self.base, *arms], self.out,
                                   self.progress, track=self.track)
            battery.search = self
            run_rounds(self.backend, battery, got, at=self.looks(), leaves=self.prune_line)
            if BASELINE not in battery.failed and len(self.finished(self.base)) < self.opts.runs:
                # every trial pruned (or none but the preset): the baseline still gets all its seeds
                battery.arms = [self.base]
                run_rounds(self.backend, battery, got, at=[self.opts.runs], leaves=self.prune_line)
            if BASELINE in battery.failed:
                raise UsageError(f"the baseline (the preset) failed: {battery.failed[BASELINE] or 'see arms/baseline/train.log'}",
                                 "fix the preset (hlb train --preset ... --runs 1 shows why), then --resume")
            for number, arm in wave:
                self.tell(number, arm, battery.failed.get(arm.name, "") if arm.name in battery.failed else None)
            self.write(True)

    def tell(self, number: int, arm: Arm, failed: str | None) -> None:
        """The trial's values (or its pruning, or its failure) to the study."""
        base, mine = self.finished(self.base), self.finished(arm)
        trial = self.trial(number)
        if failed is not None or not mine:
            trial.set_user_attr("error", failed or "no run finished")
            self.study.tell(trial, state=_state("FAIL"))
            self.progress.say(f"trial {number}: failed ({failed or 'no run finished'})")
            return
        values = trial_values(self.opts, base, mine)
        if self.opts.objective == "time":
            accs = paired(base, mine)[2]
            trial.set_user_attr("constraint", [self.opts.target - sum(accs) / len(accs)])
        if arm.folder in self.pruned and len(mine) < self.opts.runs:
            trial.set_user_attr("pruned", self.pruned[arm.folder])
            if len(values) == 1:  # what the sampler learns from a pruned trial: its last value
                trial.report(values[0], len(mine))
            self.study.tell(trial, state=_state("PRUNED"))
            self.progress.say(f"trial {number}: {self.pruned[arm.folder]}")
        else:
            self.study.tell(trial, values)
            self.progress.say(f"trial {number} ({arm.name}): " + ", ".join(
                f"{100 * v:+.2f} pts" if k == "maximize" else f"{v:+.2f} s"
                for v, k in zip(values, OBJECTIVES[self.opts.objective])) + " against the baseline")

    def trial(self, number: int):
        """The Optuna trial ``number`` (asked here, or left running by a stopped search)."""
        if number not in self.asked:
            import optuna

            frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)
            self.asked[number] = optuna.trial.Trial(self.study, frozen._trial_id)
        return self.asked[number]

    def finished(self, arm: Arm) -> dict[int, dict]:
        return finished_seeds(arm, self.opts, self.out)

    def write(self, partial: bool) -> dict:
        summary = search_summary(self.opts, self.study, self.out, partial, time.monotonic() - self.t0)
        write_search_summary(self.out, summary)
        self.progress.update(summary)
        return summary

    def finish(self) -> tuple[dict, int]:
        return self.write(False), 0


def _state(name: str):
    import optuna

    return getattr(optuna.trial.TrialState, name)


def run_search(opts: SearchOptions, console=None, track=None) -> tuple[dict, int]:
    """Check everything, then the trials (resumable), then the confirmation
    (:func:`hlbcli.experiments.search_confirm.confirm`). Returns the summary and the exit code."""
    from hlbcli.experiments.search_confirm import confirm

    optuna = require_optuna()
    check_options(opts)
    space = read_space(opts.space)
    backend = backend_for(opts)
    backend.check()
    base = Arm(BASELINE)
    check_arm(opts, base)
    check_space(space, opts, base.config)
    specs = None
    if backend.DATA_HERE:
        dataset = base.config["data"]["dataset"]
        specs = {dataset: check_environment(opts, dataset, fetch=True)}
        check_arm(opts, base, specs)
    out = Path(opts.out or default_out(opts.preset, "search"))
    leave = backend.connect()
    try:
        hold = claim_search(out, plan_of(opts, space), opts.resume)
        try:
            study = open_study(optuna, opts, hold.folder)
            if not study.trials:
                study.enqueue_trial(preset_params(space, base.config))
            kept = sum(len(finished_seeds(a, opts, hold.folder)) for a in _arms_on_disk(hold.folder))
            progress = BatteryProgress(opts.trials * opts.runs, min(kept, opts.trials * opts.runs), console, opts.quiet,
                                       render=search_table)
            search = Search(opts, space, study, base, hold.folder, backend, progress, track, specs)
            command = Command("search", opts.preset, hold.folder, opts.runs, opts.seed, [], base.config, sys.argv[1:])
            with progress:
                summary, code = around(track, command, lambda: run_to_summary(
                    search.train, search.write, search.finish, stop=backend.stop, out=hold.folder))
            if code == 0 and opts.confirm_top:
                summary, code = confirm(opts, study, hold.folder, console, time.monotonic() - search.t0)
            return summary, code
        finally:
            hold.release()
    finally:
        if leave is not None:
            leave()


def _arms_on_disk(out: Path) -> list[Arm]:
    arms = out / "arms"
    return [Arm(p.name, dir=p.name) for p in sorted(arms.iterdir()) if p.is_dir()] if arms.is_dir() else []



def confirm_search(folder: Path, opts: SearchOptions, console=None) -> tuple[dict, int]:
    """``hlb search --confirm DIR``: the confirmation alone, of the search in ``folder`` (its
    plan's preset, space, objective and seeds; where and how it trains from ``opts``)."""
    from hlbcli.experiments.search_confirm import confirm
    from hlbcli.experiments.search_plan import read_plan

    optuna = require_optuna()
    plan = read_plan(folder)
    mine = options_of(plan, folder)
    opts = replace(mine, device=opts.device, data_dir=opts.data_dir, download=opts.download, quiet=opts.quiet,
                   workers=opts.workers, at_once=opts.at_once, backend=opts.backend, address=opts.address,
                   cpus_per_task=opts.cpus_per_task, alpha=opts.alpha, max_runs=opts.max_runs or mine.max_runs,
                   confirm_top=opts.confirm_top)
    backend_for(opts).check()
    hold = claim_search(folder, plan, resume=True)
    try:
        study = open_study(optuna, opts, hold.folder)
        return confirm(opts, study, hold.folder, console)
    finally:
        hold.release()


def options_of(plan: dict, folder: Path) -> SearchOptions:
    """The options a search's plan (``DIR/search.json``) was made with."""
    return SearchOptions(preset=plan["preset"], config=plan["config"], sets=list(plan["sets"]), space=plan["space_file"],
                         objective=plan["objective"], target=plan["target"], sampler=plan["sampler"], seed=plan["seed"],
                         runs=plan["seeds"], prune_alpha=plan["prune_alpha"], alpha=plan["alpha"], max_runs=plan["max_runs"],
                         confirm_top=plan["confirm_top"], trials=plan["trials"], out=folder)


def rebuild_search_summary(folder: Path) -> dict:
    """``hlb summary DIR`` of a search: the summary again from its study and its records (the
    confirmation's table kept from the summary there was)."""
    from hlbcli import record
    from hlbcli.experiments.search_plan import read_plan

    optuna = require_optuna()
    hold = record.claim(folder, "folder")
    try:
        opts = options_of(read_plan(folder), hold.folder)
        study = open_study(optuna, opts, hold.folder)
        summary = search_summary(opts, study, hold.folder, False, 0.0)
        try:
            old = json.loads((hold.folder / "summary.json").read_text(encoding="utf-8"))
            if isinstance(old, dict) and old.get("confirmation"):
                summary["confirmation"] = old["confirmation"]
        except (OSError, ValueError):
            pass
        summary["partial"] = any(t["state"] == "running" for t in summary["trials"]) or len(summary["trials"]) < opts.trials
        write_search_summary(hold.folder, summary)
        return summary
    finally:
        hold.release()
