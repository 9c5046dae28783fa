"""MLflow tracking for pipeline runs.

Layout in MLflow:

* one experiment per profile (:attr:`pipeline.params.Grid.experiment`);
* one *parent* run per ``dvc repro`` (or per stage run on its own; see :mod:`pipeline.repro`);
* one *child* run per trained run directory, nested under the parent through the
  ``mlflow.parentRunId`` tag. A child carries the flattened config as params, the training
  curves (``train.<name>``) with their steps, the evaluation numbers (``eval.<name>``), the tags
  ``model``, ``prior``, ``prior_learnable``, ``dataset``, ``config_hash``, ``seed``, ``stage``,
  and the artifacts config.yaml, eval.json, samples.png and figures/*.png. With
  ``tracking.system_metrics`` on, a training run's child also holds MLflow's system metrics
  (``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``, disk and
  network, and ``system/gpu_<i>_*`` where NVML finds a GPU), sampled while it trains.

Update rule (idempotency): within one experiment a run is identified by its ``config_hash``
tag. Logging a run directory whose hash is already there updates that run instead of creating
a new one: it is re-parented under the current parent, params that are missing are added
(MLflow params are immutable, existing ones are left alone), a training metric is added only
if its (key, step) pair is not stored yet, an eval metric only if its value differs from the
stored latest value (its step counts the revisions: 0, 1, ...; MLflow shows the highest step as
the run's value), and artifacts are overwritten.

Where the data goes: ``tracking.uri`` of params.yaml if set, else ``MLFLOW_TRACKING_URI`` if
set (e.g. ``http://127.0.0.1:5000`` for a tracking server started with
``mlflow server --backend-store-uri sqlite:///mlflow.db``), else
``sqlite:///<project_root>/mlflow.db``. Artifacts of a new
experiment go to ``<project_root>/mlartifacts/<experiment>`` unless the URI names a server,
which then decides. :func:`ui_link` is the address of an experiment's runs in the MLflow UI.

Who writes: each stage's driver process, after its Ray tasks have returned. Ray workers only
train and evaluate; they never log, except MLflow's own system-metrics thread (see
:func:`system_metrics`), which writes the ``system/`` metrics of the run it watches with
MLflow's client. In the driver every read and write goes through one :class:`SerializedLogger`:
one ``MlflowClient``, a lock around each call (so :meth:`SerializedLogger.update_run` reads and
writes as one step), and retries of calls that fail because SQLite is locked. Separate processes
(two stages, a stage and ``mlflow ui``, the system-metrics threads) therefore lose nothing:
the retries, SQLite's own busy wait, and a file lock around opening a SQLite store, whose
first-use migrations must not run twice at once. Two processes logging the *same* run directory
at the same moment could still duplicate a run or a metric; the stages never do that.

MLflow is imported here only, and only where it is used, so importing this module stays cheap
(``pipeline.params`` does, to validate ``tracking``); the ``trip`` library never imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from trip.config import NON_EMPTY, POSITIVE, is_number
from trip.io import read_metrics, read_yaml_mapping

# Nothing may reach the network. MLflow starts its telemetry client when it is imported and
# Ray reads its usage-stats switch when a cluster starts, so these must be set before either
# is imported; Ray workers inherit them from the driver's environment.
_OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}
for _key, _value in _OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# MLflow takes about 1.5 s to import: it is imported where it is used, never at module level.

_log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default

# Eval numbers that get a short name; everything else numeric is eval.<section>.<field>.
EVAL_HEADLINES = {
    "fid.value": "eval.fid",
    "likelihood.elbo": "eval.elbo",
    "likelihood.iwae": "eval.iwae",
    "reversal.pag": "eval.pag",
}
# Sections of eval.json that describe the run rather than measure it.
EVAL_SKIP_SECTIONS = {"run", "figures", "settings", "source", "config", "files", "reversal_cache"}


# ----------------------------------------------------------------------------- settings

@dataclass
class TrackingParams:
    """The ``tracking`` section of params.yaml."""

    experiment: str | None = field(default=None, metadata=NON_EMPTY)  # default: the profile's name
    uri: str | None = None  # null: MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db at the project root
    system_metrics: bool = False  # MLflow's system metrics (CPU, memory, disk, network, GPU) of training runs
    system_metrics_interval: float = field(default=10.0, metadata=POSITIVE)  # seconds between two samples


# ----------------------------------------------------------------------------- locations

def tracking_uri(project_root: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute ``sqlite:///`` path at the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    """True for stores this machine writes itself (SQLite, files); False for tracking servers."""
    return not re.match(r"^(https?|databricks[\w-]*)://", uri)


def artifact_location(project_root: str | Path, uri: str, experiment: str) -> str | None:
    """Artifact root for a new experiment: a local folder, unless a server owns the artifacts."""
    if not is_local_store(uri):
        return None
    slug = re.sub(r"[^\w.-]+", "_", experiment).strip("_") or "default"
    return (Path(project_root).resolve() / "mlartifacts" / slug).as_uri()


def ui_link(uri: str, experiment_id: str) -> str:
    """The address of an experiment's runs table in the MLflow UI.

    ``workflowType=machine_learning`` makes the UI open on "Runs": without it MLflow 3 keeps
    one global workflow type, GenAI by default, and lands on the traces overview. A tracking
    server serves its own UI; a local store is read by ``mlflow ui`` at :data:`UI_ADDRESS`.
    """
    base = uri.rstrip("/") if re.match(r"^https?://", uri) else UI_ADDRESS
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


# ----------------------------------------------------------------------------- retries

_LOCK_MESSAGES = ("database is locked", "database table is locked")  # SQLITE_BUSY, SQLITE_LOCKED


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it wraps, is worth retrying.

    That is SQLite's busy/locked error, whether raw (sqlite3), wrapped by SQLAlchemy or by
    MLflow, and MLflow's TEMPORARILY_UNAVAILABLE (what a tracking server answers when busy).
    """
    from mlflow.exceptions import MlflowException

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(message in str(exc) for message in _LOCK_MESSAGES):
            return True
        if isinstance(exc, MlflowException) and exc.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def with_retries(fn: Callable, *args, attempts: int = 12, base_delay: float = 0.05,
                 max_delay: float = 2.0, **kwargs):
    """Call ``fn``; on a lock error, sleep a jittered, growing delay and try again.

    A failed SQLAlchemy transaction is rolled back, so repeating the whole call is safe.
    Full jitter spreads the retries of processes that collided at the same moment.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not is_lock_error(exc):
                raise
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** attempt))
            _log.info("MLflow store busy (%s); retry %d in %.2fs", exc, attempt + 1, delay)
            time.sleep(delay)


@contextlib.contextmanager
def _store_init_lock(uri: str):
    """Hold an exclusive file lock next to a SQLite store while a client opens it.

    Opening a new store runs MLflow's schema migrations; processes doing that at the same time
    fail ("table ... already exists", alembic version mismatches) and can leave the file
    half-migrated, which no retry repairs. Other stores need no lock.
    """
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if not path or path == ":memory:":
        yield
        return
    lock_path = Path(path + ".init.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- the logger

class SerializedLogger:
    """The driver's path for MLflow reads and writes: one client, one call at a time, retried.

    Arguments and results are plain Python values (ids, dicts, tuples).
    """

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.uri = uri
        self._lock = threading.RLock()  # re-entered by update_run
        with _store_init_lock(uri):
            self._client = with_retries(MlflowClient, tracking_uri=uri)

    def _call(self, name: str, *args, **kwargs):
        with self._lock:
            return with_retries(getattr(self._client, name), *args, **kwargs)

    def experiment_id(self, name: str, location: str | None = None) -> str:
        """The id of experiment ``name``, created (with artifact root ``location``) if needed."""
        from mlflow.exceptions import MlflowException

        found = self._call("get_experiment_by_name", name)
        if found is not None:
            return found.experiment_id
        try:
            return self._call("create_experiment", name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self._call("get_experiment_by_name", name).experiment_id  # lost a race

    def find_experiment(self, name: str) -> str | None:
        """The id of experiment ``name``, or None; creates nothing."""
        found = self._call("get_experiment_by_name", name)
        return found.experiment_id if found is not None else None

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        run = self._call("create_run", experiment_id, tags=tags, run_name=run_name)
        return run.info.run_id

    def find_or_create_run(self, experiment_id: str, key: str, value: str, run_name: str,
                           tags: dict[str, str]) -> tuple[str, bool]:
        """The oldest active run tagged ``key=value``, or a new one; returns (run_id, created).

        Under the logger's lock, so find-then-create is one step for the threads of a process.
        """
        with self._lock:
            runs = self._call("search_runs", [experiment_id], filter_string=f"tags.`{key}` = '{value}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
            if runs:
                return runs[0].info.run_id, False
            return self.create_run(experiment_id, run_name, {**tags, key: value}), True

    def run_state(self, run_id: str) -> dict[str, Any]:
        """Experiment id, params, latest metric values, tags and status of a run."""
        run = self._call("get_run", run_id)
        return {"experiment_id": run.info.experiment_id, "status": run.info.status,
                "params": dict(run.data.params), "metrics": dict(run.data.metrics),
                "tags": dict(run.data.tags)}

    def metric_steps(self, run_id: str, keys: Iterable[str]) -> dict[str, set[int]]:
        """The steps already stored for each metric key."""
        return {key: {m.step for m in self._call("get_metric_history", run_id, key)}
                for key in keys}

    def metric_count(self, run_id: str, key: str) -> int:
        return len(self._call("get_metric_history", run_id, key))

    def log_batch(self, run_id: str, metrics: list[tuple[str, float, int]] = (),
                  params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        """Log ``(key, value, step)`` metrics, params and tags in one call.

        ``MlflowClient.log_batch`` splits them to MLflow's batch limits itself. A retried call
        may repeat batches that were already stored: MLflow skips a metric it already has, a
        param logged again with the same value and a tag set again are no-ops.
        """
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self._call("log_batch", run_id, metrics=[Metric(k, float(v), now, int(s)) for k, v, s in metrics],
                   params=[Param(k, v) for k, v in (params or {}).items()],
                   tags=[RunTag(k, v) for k, v in (tags or {}).items()], synchronous=True)

    def update_run(self, run_id: str, train: list[tuple[str, float, int]],
                   evaluation: dict[str, float], params: dict[str, str],
                   tags: dict[str, str]) -> int:
        """Add what the run lacks (the update rule of the module docstring); return #metrics.

        Read and write happen under one lock hold, so two threads updating the same run through
        one logger cannot both decide that the same metric or param is missing.
        """
        with self._lock:
            state = self.run_state(run_id)
            params = {k: v for k, v in params.items() if k not in state["params"]}
            metrics = _new_metrics(self, run_id, train, evaluation, state["metrics"])
            self.log_batch(run_id, metrics, params, tags)
        return len(metrics)

    def log_artifacts(self, run_id: str, files: list[tuple[str, str | None]]) -> None:
        """Copy ``(local_path, artifact_dir)`` files into the run's artifact store."""
        for local_path, artifact_dir in files:
            self._call("log_artifact", run_id, local_path, artifact_path=artifact_dir)

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("set_terminated", run_id, status=status)

    def set_running(self, run_id: str) -> None:
        """Mark an ended run RUNNING again (it keeps its start time; its end time is set when it ends)."""
        self._call("update_run", run_id, status="RUNNING")


# ----------------------------------------------------------------------------- system metrics

@dataclass(frozen=True)
class SystemMetrics:
    """Where a training task sends its system metrics: plain values, so Ray can ship it to a worker."""

    uri: str
    run_id: str
    interval: float  # seconds between samples (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins)


@contextlib.contextmanager
def system_metrics(target: SystemMetrics | None) -> Iterator[None]:
    """Sample this machine into ``target``'s run while the block runs; with None, do nothing.

    MLflow's :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`
    (needs psutil; GPUs through NVML, i.e. the ``nvidia-ml-py`` package, where present) runs a
    thread that logs one aggregated sample per interval as ``system/<name>`` at steps 0, 1, ...;
    a resumed run continues after its last step. The run must be RUNNING: the thread stops
    when it is not, and when the block ends. A block shorter than one interval logs nothing.
    """
    if target is None:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    with _store_init_lock(target.uri):  # the monitor opens the store (a SQLite file is migrated once)
        monitor = SystemMetricsMonitor(target.run_id, sampling_interval=target.interval, resume_logging=True,
                                       tracking_uri=target.uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


# ----------------------------------------------------------------------------- run directory

def _fit_key(key: str) -> str:
    """A key within MLflow's limit (250 characters), which MLflow rejects rather than cuts;
    long ones keep a hash so they stay distinct."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    if len(key) <= MAX_ENTITY_KEY_LENGTH:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return f"{key[:MAX_ENTITY_KEY_LENGTH - 17]}~{digest}"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def config_params(config: dict) -> dict[str, str]:
    """Flattened config as MLflow params: ``model.name``, ``prior.core_size``, ...

    Strings stay as they are; everything else is JSON (``null``, ``true``, ``[0.9, 0.999]``).
    A value is cut to MLflow's limit here: MLflow cuts it too, with a warning per value, unless
    ``MLFLOW_TRUNCATE_LONG_VALUES=false``, which makes it reject the whole batch.
    """
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params = {}
    for key, value in _flatten(config).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[_fit_key(key)] = text[:MAX_PARAM_VAL_LENGTH]
    return params


def training_metrics(path: Path) -> list[tuple[str, float, int]]:
    """``(train.<name>, value, step)`` for every numeric field of every metrics.jsonl line; none without the file."""
    return [(_fit_key(f"train.{k}"), float(v), int(record["step"]))
            for record in read_metrics(path, missing_ok=True)
            for k, v in record.items() if k != "step" and is_number(v)]


def eval_metrics(evaluation: dict) -> dict[str, float]:
    """Numeric scalars of eval.json: headlines like ``eval.fid``, else ``eval.<section>.<key>``."""
    metrics = {}
    for path, value in _flatten(evaluation).items():
        if path.split(".")[0] in EVAL_SKIP_SECTIONS or not is_number(value):
            continue
        metrics[_fit_key(EVAL_HEADLINES.get(path, f"eval.{path}"))] = float(value)
    return metrics


def run_tags(config: dict, stage: str) -> dict[str, str]:
    """The tags every child run carries."""
    prior = config.get("prior", {})
    return {
        "model": str(config["model"]["name"]),
        "prior": str(prior.get("name")),
        "prior_learnable": json.dumps(bool(prior.get("learnable", False))),
        "dataset": str(config["data"]["name"]),
        "config_hash": str(config["config_hash"]),
        "seed": str(config.get("seed")),
        "stage": stage,
        **({"missing": str(config["labels"]["missing"])} if "labels" in config else {}),
    }


def run_artifacts(run_dir: Path, eval_dir: Path | None = None,
                  eval_name: str = "eval.json") -> list[tuple[str, str | None]]:
    """``(local_path, artifact_dir)`` for the files of a run (and its evaluation) that exist."""
    eval_dir = eval_dir or run_dir
    top = [(str(d / name), None) for d, name in ((run_dir, "config.yaml"), (eval_dir, eval_name),
                                                 (run_dir, "samples.png")) if (d / name).is_file()]
    if eval_dir != run_dir:
        top += [(str(path), None) for path in sorted(eval_dir.glob("*.png"))]
    figures = [(str(path), "figures") for path in sorted((eval_dir / "figures").glob("*.png"))]
    return top + figures


def _new_metrics(logger, run_id: str, train: list[tuple[str, float, int]],
                 evaluation: dict[str, float], latest: dict[str, float]) -> list:
    """The metrics not stored yet, following the update rule in the module docstring."""
    changed = {k: v for k, v in evaluation.items() if k not in latest or not _same(latest[k], v)}
    stored = logger.metric_steps(run_id, sorted({k for k, _, _ in train} | set(changed)))
    fresh = [(k, v, s) for k, v, s in train if s not in stored[k]]
    # An eval revision goes one step past the last, so MLflow's latest value is the newest.
    revised = [(k, v, max(stored[k], default=-1) + 1) for k, v in changed.items()]
    return fresh + revised


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


# ----------------------------------------------------------------------------- the tracker

class Tracker:
    """What the stages use: parent runs (opened and closed by :mod:`pipeline.repro`), and one
    child run per run directory or derived result."""

    def __init__(self, project_root: str | Path, *, uri: str | None = None):
        self.project_root = Path(project_root).resolve()
        self.uri = uri or tracking_uri(self.project_root)
        self.logger = SerializedLogger(self.uri)

    def start_parent(self, experiment: str, run_name: str, tags: dict | None = None) -> str:
        """Open a parent run in experiment ``experiment`` (created if needed); return its id."""
        location = artifact_location(self.project_root, self.uri, experiment)
        experiment_id = self.logger.experiment_id(experiment, location)
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        return self.logger.create_run(experiment_id, run_name, tags)

    def end_parent(self, parent_id: str, status: str = "FINISHED") -> None:
        """Close the parent run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        self.logger.set_terminated(parent_id, status)

    def experiment_link(self, experiment: str) -> str | None:
        """The MLflow UI address of the experiment's runs (:func:`ui_link`); None if it has none yet."""
        experiment_id = self.logger.find_experiment(experiment)
        return ui_link(self.uri, experiment_id) if experiment_id is not None else None

    def _child(self, parent_id: str, config: dict, run_name: str, stage: str) -> tuple[str, dict[str, str]]:
        """The run of ``config`` (by its config_hash) in the parent's experiment, or a new one; and its tags."""
        tags = {**run_tags(config, stage), PARENT_TAG: parent_id}
        experiment_id = self.logger.run_state(parent_id)["experiment_id"]
        run_id, _ = self.logger.find_or_create_run(
            experiment_id, "config_hash", tags["config_hash"], run_name, tags)
        return run_id, tags

    def open_run(self, parent_id: str, config: dict, run_name: str, stage: str) -> str:
        """The child run of a run directory about to be trained, re-parented and RUNNING; return its id.

        ``config`` is what training writes to config.yaml (the config and its ``config_hash``).
        System metrics go into this run while it trains; :meth:`log_run` then fills and ends it,
        or :meth:`end_run` ends it FAILED.
        """
        run_id, tags = self._child(parent_id, config, run_name, stage)
        self.logger.log_batch(run_id, tags=tags)
        if self.logger.run_state(run_id)["status"] != "RUNNING":
            self.logger.set_running(run_id)
        return run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.logger.set_terminated(run_id, status)

    def log_result(self, parent_id: str, result_file: str | Path, source_run_dir: str | Path, stage: str,
                   name: str, artifacts: list[str | Path] = ()) -> str:
        """Log (or update) a child run for a result derived from a run (e.g. an induced prior); return its id.

        Params and tags come from the source run's config; the result's numbers are the metrics.
        """
        result_file, source_run_dir = Path(result_file), Path(source_run_dir)
        config = read_yaml_mapping(source_run_dir / "config.yaml", "run config")
        tags = {**run_tags(config, stage), PARENT_TAG: parent_id, "result": name}
        experiment_id = self.logger.run_state(parent_id)["experiment_id"]
        run_id, _ = self.logger.find_or_create_run(experiment_id, "result", name, name, tags)
        self.logger.update_run(run_id, [], eval_metrics(json.loads(result_file.read_text())),
                               config_params(config), tags)
        files = [result_file, *artifacts]
        self.logger.log_artifacts(run_id, [(str(p), None) for p in map(Path, files) if p.is_file()])
        self.logger.set_terminated(run_id, "FINISHED")
        return run_id

    def log_run(self, parent_id: str, run_dir: str | Path, stage: str, eval_dir: str | Path | None = None,
                eval_name: str = "eval.json") -> str:
        """Log (or update) the child run for ``run_dir`` under ``parent_id``, and end it FINISHED; return its id.

        ``eval_dir`` holds the run's evaluation (``eval_name``) and figures when they are kept apart from it.
        """
        run_dir = Path(run_dir)
        eval_dir = Path(eval_dir) if eval_dir else run_dir
        config = read_yaml_mapping(run_dir / "config.yaml", "run config")
        eval_file = eval_dir / eval_name
        train = training_metrics(run_dir / "metrics.jsonl")
        evaluation = eval_metrics(json.loads(eval_file.read_text())) if eval_file.is_file() else {}

        run_id, tags = self._child(parent_id, config, run_dir.name, stage)
        self.logger.update_run(run_id, train, evaluation, config_params(config), tags)
        self.logger.log_artifacts(run_id, run_artifacts(run_dir, eval_dir, eval_name))
        self.logger.set_terminated(run_id, "FINISHED")
        return run_id
