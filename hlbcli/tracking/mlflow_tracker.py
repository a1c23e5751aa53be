"""``--track mlflow[:TARGET]``: runs in an MLflow tracking store (the ``mlflow`` extra).

The store: TARGET (a tracking URI, ``sqlite:///FILE``, ``http://HOST:PORT``, or a path taken as
a SQLite file), else ``$MLFLOW_TRACKING_URI``, else the SQLite file ``mlflow.db`` in the
``--out`` folder (the working folder without one); artifacts beside that file, in
``mlflow-artifacts/``. The experiment: ``$MLFLOW_EXPERIMENT_NAME``, else ``hlb``.

What a command is there: ``hlb ablate`` is a parent run, each arm a run nested in it and each
seed a run nested in its arm; ``hlb train`` and ``hlb bench`` with several seeds are a parent
run with a nested run per seed, one seed is one run. A seed's run has the resolved config as
parameters (flat ``section.key``, and ``seed``), per-epoch metrics (``train_loss``,
``train_accuracy``, ``test_accuracy``, ``seconds``, step = epoch), per-run metrics
(``accuracy``, ``train_seconds``, ``seconds_<phase>``), tags (``arm``, ``tricks``,
``hlb_version``, ``device``, ``status``, ``git_commit`` when hlb runs from a git checkout,
``out``: the ``--out`` folder) and its run record as the artifact ``record.json``. An arm's run
gets the arm's config and, at the end, its statistics; the parent gets the baseline's config
and ``summary.json``. Runs of the ``--out`` folder that a process killed hard left RUNNING are
ended as KILLED when the next command on that folder starts."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from hlbcli.errors import UsageError
from hlbcli.tracking import Command, Run, Tracker, flat_config, source_commit
from hlbcli import __version__

#: MLflow's limits per log_batch call
_MAX_PARAMS, _MAX_METRICS, _MAX_VALUE = 100, 1000, 6000

#: what an epoch row's keys are called in MLflow
EPOCH_METRICS = {"train_loss": "train_loss", "train_acc": "train_accuracy", "val_acc": "test_accuracy", "elapsed": "seconds"}
#: MLflow's HTTP settings hlb sets unless the environment has them
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
#: a run's end status -> MLflow's
RUN_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}


#: the tracking URIs MLflow's stores take, by scheme (a database's may name its driver,
#: ``postgresql+psycopg2://``): what the rest must look like, and an example
URI_FORMS = {
    "http": (r"//([^/\s@]+@)?[^/\s:@]+(:\d+)?(/\S*)?", "http://HOST:PORT"),
    "https": (r"//([^/\s@]+@)?[^/\s:@]+(:\d+)?(/\S*)?", "https://HOST"),
    "sqlite": (r"///\S+", "sqlite:///FILE"),
    "postgresql": (r"//\S+", "postgresql://USER@HOST/DB"),
    "mysql": (r"//\S+", "mysql://USER@HOST/DB"),
    "mssql": (r"//\S+", "mssql://USER@HOST/DB"),
    "file": (r"\S+", "file:///FOLDER"),
    "databricks": (r"(//\S+)?", "databricks"),
    "databricks-uc": (r"(//\S+)?", "databricks-uc"),
}
_HINT = "write e.g. --track mlflow:sqlite:///runs.db, --track mlflow:http://HOST:PORT, or a SQLite file's path"


def check_uri(uri: str) -> None:
    """A TARGET (or ``$MLFLOW_TRACKING_URI``) MLflow cannot use is a one-line error before
    anything trains: a URI of a scheme it has no store for, or of the wrong form
    (``http:/x``), or a path with ``:`` in it (``::bad``, ``foo:bar``: a mistyped URI)."""
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", uri, re.S)
    if m is None:
        if ":" in uri or not uri.strip():
            raise UsageError("neither a tracking URI (SCHEME://...) nor a path", _HINT)
        return
    scheme, rest = m.group(1).lower(), m.group(2)
    base, driver, _ = scheme.partition("+")
    form = URI_FORMS.get(base) if not driver or base in ("postgresql", "mysql", "mssql") else None
    if form is None:
        raise UsageError(f"MLflow has no tracking store for the scheme '{scheme}'",
                         f"use one of {', '.join(s + ':' for s in URI_FORMS)}, or a SQLite file's path")
    if re.fullmatch(form[0], rest, re.S) is None:
        raise UsageError(f"not a tracking URI of the form {form[1]}", _HINT)


def tracking_uri(target: str | None, out: Path | None) -> tuple[str, Path | None]:
    """The tracking URI, and the folder of its SQLite file when hlb chose or was given one
    (the artifacts go beside it)."""
    if target is None and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    if target is not None and ("://" in target or target.startswith(("sqlite:", "databricks"))):
        return target, None
    db = Path(target).expanduser() if target else (out or Path.cwd()) / "mlflow.db"
    db = db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}", db.parent


def _now() -> int:
    return int(time.time() * 1000)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


class MlflowTracker(Tracker):
    requires = ("mlflow",)
    extra = "mlflow"

    def __init__(self, target: str | None = None):
        super().__init__(target)
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if target is not None:
            check_uri(target)
        elif env:
            try:
                check_uri(env)
            except UsageError as e:
                raise UsageError(f"$MLFLOW_TRACKING_URI={env!r}: {e.message}", e.hint) from None

    def start(self, command: Command) -> None:
        # a tracking server that is down fails within seconds, not after MLflow's default minutes
        # of retries (7, backoff factor 2, 120 s a request); what the user set stays
        for var, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(var, value)
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # its database set-up says INFO lines on stderr
            logging.getLogger(name).setLevel(logging.WARNING)

        uri, folder = tracking_uri(self.target, command.out)
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "hlb"
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            where = (folder / "mlflow-artifacts").as_uri() if folder else None
            self.experiment = self.client.create_experiment(name, artifact_location=where)
        else:
            self.experiment = exp.experiment_id
        self.where = f"{uri}, experiment {name}" + (f" (see it: mlflow ui --backend-store-uri {uri})" if uri.startswith("sqlite:") else "")
        self.command = command
        self.commit = source_commit()
        self.out = str(Path(command.out).resolve()) if command.out is not None else None
        if self.out is not None:
            self._close_dead()
        self.arms: dict[str, str] = {}
        self.runs: dict[tuple[str | None, int], str] = {}
        self.parent = None
        if command.arms or command.runs > 1:
            label = f"{command.kind} {command.preset}" + (f" ({command.out.name})" if command.out else "")
            self.parent = self._create(label, None, {"hlb.kind": command.kind, "preset": command.preset,
                                                     "command": " ".join(command.argv)},
                                       command.config)

    def _close_dead(self) -> None:
        """Runs of this ``--out`` folder that the store still has RUNNING were left by a process
        killed before it could end them: this process holds the folder (hlbcli.record.claim),
        so no live one writes them. They end as KILLED (best effort: a store that cannot
        search is left as it is)."""
        if "'" in self.out:
            return
        try:
            for run in self.client.search_runs([self.experiment], f"tags.out = '{self.out}' and attributes.status = 'RUNNING'",
                                               max_results=5000):
                self.client.set_terminated(run.info.run_id, "KILLED")
        except Exception:
            pass

    def _tags(self) -> dict[str, str]:
        tags = {"hlb_version": __version__, "mlflow.source.name": "hlb", **({"out": self.out} if self.out else {})}
        if self.commit:
            tags.update(git_commit=self.commit, **{"mlflow.source.git.commit": self.commit})
        return tags

    def _create(self, name: str, parent: str | None, tags: dict, config: dict, params: dict | None = None) -> str:
        from mlflow.entities import Param, RunTag

        tags = {**self._tags(), **{k: v for k, v in tags.items() if v not in ("", None)},
                **({"mlflow.parentRunId": parent} if parent else {})}
        run = self.client.create_run(self.experiment, run_name=name, tags={k: str(v)[:_MAX_VALUE] for k, v in tags.items()})
        flat = {**flat_config(config), **(params or {})}
        items = [Param(k, str(v)[:_MAX_VALUE]) for k, v in flat.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(run.info.run_id, params=items[i:i + _MAX_PARAMS])
        return run.info.run_id

    def _metrics(self, run_id: str, values: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = _now()
        items = [Metric(k, x, now, step) for k, v in values.items() if (x := _number(v)) is not None]
        for i in range(0, len(items), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=items[i:i + _MAX_METRICS])

    def run_start(self, run: Run) -> None:
        parent = self.parent
        if run.arm is not None and self.command.arms:
            if run.arm not in self.arms:
                self.arms[run.arm] = self._create(run.arm, self.parent, {"arm": run.arm, "tricks": ", ".join(run.tricks)}, run.config)
            parent = self.arms[run.arm]
        name = f"seed {run.seed}" if parent else f"{self.command.kind} {self.command.preset} seed {run.seed}"
        tags = {"arm": run.arm or "", "seed": run.seed, "tricks": ", ".join(run.tricks), "device": run.device or ""}
        self.runs[(run.arm, run.seed)] = self._create(name, parent, tags, run.config, {"seed": run.seed})

    def epoch(self, run: Run, metrics: dict) -> None:
        values = {EPOCH_METRICS[k]: v for k, v in metrics.items() if k in EPOCH_METRICS}
        self._metrics(self.runs[(run.arm, run.seed)], values, int(metrics.get("epoch", 0)))

    def run_end(self, run: Run, record: dict, path: Path | None) -> None:
        run_id = self.runs.pop((run.arm, run.seed))
        values = {"accuracy": record.get("accuracy"), "train_seconds": record.get("train_seconds")}
        values.update({f"seconds_{k}": v for k, v in (record.get("phases") or {}).items()})
        self._metrics(run_id, values)
        status = str(record.get("status"))
        self.client.set_tag(run_id, "status", status)
        if record.get("message"):
            self.client.set_tag(run_id, "message", str(record["message"])[:_MAX_VALUE])
        if path is not None and Path(path).is_file():
            self.client.log_artifact(run_id, str(path))
        else:
            self.client.log_dict(run_id, record, "record.json")
        self.client.set_terminated(run_id, RUN_STATUS.get(status, "FAILED"))

    def end(self, summary: dict, exit_code: int) -> None:
        status = "FINISHED" if exit_code == 0 else "KILLED" if exit_code >= 128 else "FAILED"
        for run_id in self.runs.values():  # runs that never ended (an error went up)
            self.client.set_terminated(run_id, "FAILED")
        stats = ("n", "mean_accuracy", "std_accuracy", "delta_accuracy", "delta_paired", "p_value", "p_paired",
                 "mean_train_seconds", "delta_train_seconds")
        for row in summary.get("arms") or []:
            if row.get("name") in self.arms:
                self._metrics(self.arms[row["name"]], {k: row.get(k) for k in stats})
        for run_id in self.arms.values():
            self.client.set_terminated(run_id, status)
        if self.parent is not None:
            if "arms" not in summary:
                self._metrics(self.parent, {k: summary.get(k) for k in stats})
            out = self.command.out
            if out is not None and (out / "summary.json").is_file():
                self.client.log_artifact(self.parent, str(out / "summary.json"))
            self.client.set_terminated(self.parent, status)
