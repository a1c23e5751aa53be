"""``--track tensorboard[:DIR]``: TensorBoard event files (the ``tensorboard`` extra), written
with ``torch.utils.tensorboard``.

The log folder: DIR, else ``tensorboard/`` in the ``--out`` folder (the working folder without
one). A run is the folder ``ARM/seedN`` in it (ARM: the arm's folder for ``hlb ablate``, as under
``OUT/arms/``: ``baseline``, ``no-ema``; else the
command, ``train`` or ``bench``), so TensorBoard groups the runs by arm. Per epoch: the scalars
``train/loss``, ``train/accuracy``, ``test/accuracy`` (the epochs evaluated), ``time/seconds``;
per run: ``final/accuracy``, ``final/train_seconds`` and an hparams summary (the arm, the seed,
the tricks and the resolved config's settings, flat ``section.key``) that the HParams tab
compares arms by. Open it with ``tensorboard --logdir DIR``."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from hlbcli.tracking import Command, Run, Tracker, flat_config

#: an epoch row's keys -> the scalar's tag
EPOCH_SCALARS = {"train_loss": "train/loss", "train_acc": "train/accuracy", "val_acc": "test/accuracy", "elapsed": "time/seconds"}
#: the per-run scalars the hparams summary names as its metrics
FINAL_SCALARS = {"accuracy": "final/accuracy", "train_seconds": "final/train_seconds"}


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=,-]", "_", text) or "_"


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def hparams_of(run: Run) -> dict[str, Any]:
    """The run's hyperparameters as TensorBoard takes them (bool, int, float or str)."""
    out = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat_config(run.config).items()}
    return {**out, "arm": run.arm or "", "seed": run.seed, "tricks": ", ".join(run.tricks)}


class TensorBoardTracker(Tracker):
    requires = ("tensorboard",)
    extra = "tensorboard"

    def start(self, command: Command) -> None:
        self.root = (Path(self.target).expanduser() if self.target else (command.out or Path.cwd()) / "tensorboard").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.group = command.kind
        self.writers: dict[tuple[str | None, int], Any] = {}
        self.where = f"{self.root} (see it: tensorboard --logdir {self.root})"

    def run_dir(self, run: Run) -> Path:
        return self.root / _folder_name(run.folder or run.arm or self.group) / f"seed{run.seed}"

    def run_start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writers[(run.arm, run.seed)] = SummaryWriter(log_dir=str(self.run_dir(run)))

    def epoch(self, run: Run, metrics: dict) -> None:
        w = self.writers[(run.arm, run.seed)]
        step = int(metrics.get("epoch", 0))
        for key, tag in EPOCH_SCALARS.items():
            v = _number(metrics.get(key))
            if v is not None:
                w.add_scalar(tag, v, step)
        w.flush()

    def run_end(self, run: Run, record: dict, path: Path | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        w = self.writers.pop((run.arm, run.seed))
        try:
            step = len(record.get("epochs") or [])
            finals = {tag: v for key, tag in FINAL_SCALARS.items() if (v := _number(record.get(key))) is not None}
            # the session's hparams and its end; no experiment summary: TensorBoard then builds
            # the experiment from every run's, the union of the arms' settings
            _, start, end = hparams(hparams_of(run), {tag: 0.0 for tag in FINAL_SCALARS.values()})
            w.file_writer.add_summary(start)
            w.file_writer.add_summary(end)
            for tag, v in finals.items():
                w.add_scalar(tag, v, step)
        finally:
            w.close()

    def end(self, summary: dict, exit_code: int) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()
