"""What ``hlb train``, ``hlb bench`` and ``hlb ablate`` share of their options, one model:
the seeds, where they train, the data, the output folder. Each command's options extend it
(:class:`hlbcli.experiments.batch.TrainOptions`, :class:`hlbcli.experiments.plan.AblateOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True)
class RunOptions:
    #: the recipe, as the user gave it (``--preset``: a name or a file)
    preset: str = ""
    #: seeds to train (per arm for ``hlb ablate``): ``seed`` .. ``seed + runs - 1``
    runs: int = 1
    seed: int = 0
    #: ``auto``, ``cpu`` or ``cuda``
    device: str = "auto"
    #: where CIFAR lives (None: ``$HLB_DATA_DIR``, else the default folder)
    data_dir: str | None = None
    #: fetch the dataset where it is missing (``--no-download``: False)
    download: bool = True
    #: the folder the records and the summary go to (None: nothing kept, where allowed)
    out: Path | None = None
    quiet: bool = False
    #: ``--out`` holds this command's records, stopped: keep the finished ones, train the rest
    resume: bool = False
