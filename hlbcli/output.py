"""Terminal output: rich on a terminal, plain text otherwise, nothing with --quiet. Accuracies
are printed in percent (run records and summaries on disk keep fractions)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from rich.console import Console
from hlbcli.progress import PROGRESS_FILE_ENV, StepProgress, file_report
from hlbcli.stats import ACCURACY_CI_SHORT

#: under the first run's per-epoch table: what its columns mean
LEGEND = (
    "val_acc: test accuracy after each epoch without TTA, '-' where not measured (train.eval_every_epoch=false), "
    "the last row the final evaluation (with TTA when on); train_acc: the epoch's last batch; "
    "seconds: timed seconds since the run began (per-epoch evaluation untimed)"
)
#: beside a result on synthetic data
SYNTHETIC = "(synthetic data: not a CIFAR-10 result)"


# --- every number format hlb prints or draws, in one place ---------------------------------------


def _missing(x) -> bool:
    return not isinstance(x, (int, float)) or x != x


def num(x, spec: str, signed: bool = False, missing: str = "-") -> str:
    """A number in the format ``spec`` (``+`` in front where ``signed``); ``missing`` when it
    is none, not a number, or NaN."""
    return missing if _missing(x) else format(x, ("+" if signed else "") + spec)


def pct(x, digits: int = 2) -> str:
    """An accuracy (a fraction) in percent: ``85.72%``; ``-`` when missing or NaN."""
    return "-" if _missing(x) else f"{100 * x:.{digits}f}%"


def pts(x, digits: int = 2, signed: bool = False, missing: str = "-") -> str:
    """A spread or difference of accuracies in percentage points, without a unit: ``0.21``."""
    return missing if _missing(x) else format(100 * x, f"{'+' if signed else ''}.{digits}f")


def p_value(p, missing: str = "n/a") -> str:
    """A p-value in two significant digits: ``0.014``."""
    return num(p, ".2g", missing=missing)


def seconds(x) -> str:
    """Seconds in hundredths: ``2.47``."""
    return num(x, ".2f")


def synthetic(runs: list[dict]) -> bool:
    """Whether these run records trained on the synthetic set."""
    return any(((r.get("config") or {}).get("data") or {}).get("dataset") == "synthetic" for r in runs)


def _cell(v, width: int, spec: str = "", percent: bool = False) -> str:
    if v is None:
        return "-".rjust(width)
    return (pct(v) if percent else format(v, spec)).rjust(width)


def results_line(out: Path | None, records: int) -> str:
    """Where the results went, or that nothing was kept."""
    if out is None:
        return "nothing saved (add --out DIR to keep the run records)"
    return f"results in {out} (summary.json, {records} run record(s); accuracies there are fractions)"


def runs_saved(seq: dict) -> str:
    """An ``--until-resolved`` battery's saving (its summary's ``sequential`` table): ``12
    saved``, or why nothing is counted as saved (the battery stopped early)."""
    return "none counted (stopped early)" if seq["runs_saved"] is None else f"{seq['runs_saved']} saved"


def runs_saved_line(seq: dict) -> str:
    """``until resolved: 80 runs of at most 100 (--max-runs 10 x 10 arms): 20 saved``."""
    return (f"until resolved: {seq['runs_spent']} runs of at most {seq['runs_max']} "
            f"(--max-runs {seq['max_runs']} x {seq['runs_max'] // max(1, seq['max_runs'])} arms): "
            + runs_saved(seq))


#: what a single run says where several would give their spread and interval
NO_INTERVAL = "(n = 1: no interval)"


class Printer:
    """``progress``: show progress within runs (None: unless quiet); a quiet printer that shows
    it (``hlb bench``) prints it, and its notes, on stderr."""

    def __init__(self, quiet: bool = False, console: Console | None = None, progress: bool | None = None):
        self.quiet = quiet
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.show_progress = (not quiet) if progress is None else progress
        self.progress_console = self.err if quiet else self.console
        self.legend_shown = False

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def note(self, text: str) -> None:
        """A note worth a line where progress is shown (``note: ...``)."""
        if self.show_progress:
            self.progress_console.print(text, markup=False)

    def error(self, text: str) -> None:
        self.err.print(f"error: {text}", markup=False)

    def steps(self, label: str, seed: int | None = None):
        """A context giving the ``on_step`` progress of one run (None when neither shown nor
        reported): on the progress console where shown; into the file ``$HLB_PROGRESS_FILE``
        where set (an ablation's arm: the battery reads it), quiet or not."""
        path = os.environ.get(PROGRESS_FILE_ENV)
        if not self.show_progress and not path:
            return contextlib.nullcontext(None)
        return StepProgress(self.progress_console if self.show_progress else None, label,
                            report=file_report(path) if path else None, seed=seed)

    def run_header(self, i: int, n: int, seed: int) -> None:
        if self.quiet:
            return
        self.console.print(f"\nrun {i + 1}/{n} (seed {seed})", markup=False)
        self.console.print(f"{'epoch':>6} {'train_loss':>10} {'train_acc':>9} {'val_acc':>8} {'seconds':>8}", markup=False)

    def epoch_row(self, row: dict) -> None:
        if self.quiet:
            return
        self.console.print(
            f"{row['epoch']:>6} {_cell(row['train_loss'], 10, '.4f')} {_cell(row['train_acc'], 9, percent=True)} "
            f"{_cell(row['val_acc'], 8, percent=True)} {_cell(row['elapsed'], 8, '.2f')}",
            markup=False,
        )

    def run_done(self, rec: dict) -> None:
        if self.quiet:
            return
        if not self.legend_shown and rec.get("epochs"):
            self.legend_shown = True
            self.console.print(LEGEND, markup=False)
        if rec["status"] != "completed":
            return
        ph = rec.get("phases", {})
        self.console.print(
            f"accuracy {pct(rec['accuracy'])} in {rec['train_seconds']:.2f}s "
            f"(init {ph.get('init', 0):.2f}s, train {ph.get('train', 0):.2f}s, eval {ph.get('eval', 0):.2f}s)",
            markup=False,
        )

    def summary(self, s: dict) -> None:
        if self.quiet:
            return
        if s["n"] == 0:
            self.console.print("no run completed", markup=False)
            return
        lo, hi = s["ci95"]
        spread = (f"std {pts(s['std_accuracy'])} pts min {pct(s['min_accuracy'])} 95% CI [{pct(lo)}, {pct(hi)}] "
                  f"({ACCURACY_CI_SHORT})") if s["n"] > 1 else NO_INTERVAL
        line = (
            f"\n{s['n']} run(s): accuracy mean {pct(s['mean_accuracy'])} {spread}; "
            f"time mean {s['mean_train_seconds']:.2f}s median {s['median_train_seconds']:.2f}s"
        )
        if synthetic(s.get("runs", [])):
            line += f" {SYNTHETIC}"
        self.console.print(line, markup=False)

    def saved(self, out: Path | None, records: int) -> None:
        if not self.quiet:
            self.console.print(results_line(out, records), markup=False)
