"""Terminal output: rich on a terminal, plain text otherwise, nothing with --quiet."""

from __future__ import annotations

from rich.console import Console


def _fmt(v, spec: str, width: int) -> str:
    if v is None:
        return "-".rjust(width)
    return format(v, spec).rjust(width)


class Printer:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def error(self, text: str) -> None:
        self.err.print(f"error: {text}", markup=False)

    def run_header(self, i: int, n: int, seed: int) -> None:
        if self.quiet:
            return
        self.console.print(f"\nrun {i + 1}/{n} (seed {seed})", markup=False)
        self.console.print(f"{'epoch':>6} {'train_loss':>10} {'train_acc':>9} {'val_acc':>8} {'seconds':>8}", markup=False)

    def epoch_row(self, row: dict) -> None:
        if self.quiet:
            return
        self.console.print(
            f"{row['epoch']:>6} {_fmt(row['train_loss'], '.4f', 10)} {_fmt(row['train_acc'], '.4f', 9)} "
            f"{_fmt(row['val_acc'], '.4f', 8)} {_fmt(row['elapsed'], '.2f', 8)}",
            markup=False,
        )

    def run_done(self, rec: dict) -> None:
        if self.quiet or rec["status"] != "completed":
            return
        ph = rec.get("phases", {})
        self.console.print(
            f"accuracy {rec['accuracy']:.4f} in {rec['train_seconds']:.2f}s "
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
        line = (
            f"\n{s['n']} run(s): accuracy mean {s['mean_accuracy']:.4f} std {s['std_accuracy']:.4f} "
            f"min {s['min_accuracy']:.4f} ci95 [{lo:.4f}, {hi:.4f}]; "
            f"time mean {s['mean_train_seconds']:.2f}s median {s['median_train_seconds']:.2f}s"
        )
        self.console.print(line, markup=False)
