"""MLflow tracking: run layout, idempotent updates, batch limits, system metrics, UI links, and no lost
metrics with several processes writing one store."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline import tracking
from pipeline.tracking import SerializedLogger, SystemMetrics, Tracker, TrackingParams, system_metrics, with_retries
from trip.config import ConfigError, build_dataclass

PROCESSES = 3
METRICS_PER_PROCESS = 100


# ----------------------------------------------------------------------------- fixtures
# migrated_db and project: tests/pipeline/conftest.py

def _config(hash_: str = "abc123") -> dict:
    return {
        "data": {"name": "shapes", "image_size": 16, "options": {"n_train": 96, "seed": 0}},
        "model": {"name": "vae", "latent_dim": 4},
        "prior": {"name": "trip", "learnable": True, "dim": None, "core_size": 2},
        "train": {"steps": 5, "lr": 0.001, "betas": [0.9, 0.999]},
        "seed": 0,
        "config_hash": hash_,
    }


def _eval(fid: float = 279.25) -> dict:
    return {
        "run": {"model": "vae", "prior": "trip", "learnable": True, "seed": 0},
        "fid": {"value": fid, "n_samples": 500, "text": "FID", "inputs": "714e"},
        "likelihood": {"n_examples": 100, "elbo": -13968.9, "iwae": -13922.2, "inputs": "efcb"},
        "figures": {"files": ["figures/curves.png"], "inputs": "902f"},
    }


def _metric_lines(steps) -> str:
    return "".join(json.dumps({"step": s, "epoch": 0, "elbo": -100.0 + s, "kl": 1.5 * s}) + "\n"
                   for s in steps)


def make_run_dir(root: Path, name: str = "vae-trip_learnable-s0", hash_: str = "abc123") -> Path:
    """A run directory shaped like a trained one, with tiny files."""
    run_dir = root / "runs" / name
    (run_dir / "figures").mkdir(parents=True)
    config = {**_config(hash_), "run_dir": str(run_dir)}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text(_metric_lines(range(1, 6)))
    (run_dir / "eval.json").write_text(json.dumps(_eval()))
    Image.new("RGB", (4, 4), "red").save(run_dir / "samples.png")
    Image.new("RGB", (4, 4), "blue").save(run_dir / "figures" / "curves.png")
    return run_dir


def _client(uri: str):
    """A plain MlflowClient to check what was stored. MLflow is imported here, after
    pipeline.tracking set the offline switches, and not at module level, so the spawned
    processes of the retry test, which import this module, do not pay for it."""
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _runs_with_hash(client, experiment: str, hash_: str) -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.config_hash = '{hash_}'")


def _artifact_paths(client, run_id: str) -> set[str]:
    top = client.list_artifacts(run_id)
    nested = [f.path for d in top if d.is_dir for f in client.list_artifacts(run_id, d.path)]
    return {f.path for f in top if not f.is_dir} | set(nested)


# ----------------------------------------------------------------------------- locations

def test_tracking_uri_defaults_to_sqlite_at_project_root_and_honours_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.artifact_location(tmp_path, "sqlite:///x.db", "tiny profile") == \
        (tmp_path.resolve() / "mlartifacts" / "tiny_profile").as_uri()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    assert tracking.artifact_location(tmp_path, "http://127.0.0.1:5000", "tiny") is None


def test_module_keeps_mlflow_and_ray_offline():
    for key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        assert os.environ[key] == "true"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"


def test_importing_the_module_loads_neither_mlflow_nor_ray():
    code = "import sys, pipeline.tracking; print(sorted({'mlflow', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trip_library_never_imports_mlflow_or_ray():
    sources = (Path(__file__).parents[2] / "trip").rglob("*.py")
    offenders = [p.name for p in sources
                 if any(w in p.read_text() for w in ("import mlflow", "import ray", "from mlflow",
                                                     "from ray"))]
    assert offenders == []


# ----------------------------------------------------------------------------- retries

def test_with_retries_waits_out_a_real_sqlite_lock(tmp_path):
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, holder.execute, ["COMMIT"]).start()
    attempts = []

    def insert():  # timeout=0: fail at once instead of waiting in SQLite's busy handler
        attempts.append(1)
        with closing(sqlite3.connect(path, timeout=0)) as conn, conn:
            conn.execute("INSERT INTO t VALUES (1)")

    with_retries(insert, attempts=30, base_delay=0.02, max_delay=0.1)
    assert len(attempts) > 1
    assert holder.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_with_retries_retries_lock_errors_only():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert with_retries(locked_twice, base_delay=0.001) == "ok" and len(calls) == 3

    calls.clear()

    def wrapped_lock():  # how MLflow's SQLAlchemy store reports it
        calls.append(1)
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as exc:
            raise MlflowException("store failed") from exc

    with pytest.raises(MlflowException):
        with_retries(wrapped_lock, attempts=3, base_delay=0.001)
    assert len(calls) == 3
    assert tracking.is_lock_error(MlflowException("x", error_code=TEMPORARILY_UNAVAILABLE))

    calls.clear()

    def broken():
        calls.append(1)
        raise ValueError("not a lock")

    with pytest.raises(ValueError):
        with_retries(broken, base_delay=0.001)
    assert len(calls) == 1


def _log_directly(uri: str, worker: int, count: int) -> str:
    """A spawned process with its own logger: opens the store, makes a run, writes one metric
    per transaction straight to the SQLite file."""
    logger = SerializedLogger(uri)
    run_id = logger.create_run(logger.experiment_id("direct"), f"process-{worker}", {})
    for step in range(count):
        logger.log_batch(run_id, [(f"p{worker}.loss", float(step), step)])
    return run_id


def test_retry_wrapper_loses_nothing_with_processes_writing_one_sqlite_file(tmp_path):
    # A store nobody has opened yet: the processes also race to create and migrate it.
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        run_ids = pool.starmap(_log_directly, [(uri, w, METRICS_PER_PROCESS)
                                               for w in range(PROCESSES)])

    client = _client(uri)
    steps = [sorted(m.step for m in client.get_metric_history(r, f"p{w}.loss"))
             for w, r in enumerate(run_ids)]
    assert steps == [list(range(METRICS_PER_PROCESS))] * PROCESSES
    assert len(client.search_experiments(filter_string="name = 'direct'")) == 1


# ----------------------------------------------------------------------------- log_run

def test_log_run_logs_params_metrics_tags_and_artifacts_under_the_parent(project):
    tracker = Tracker(project)
    run_dir = make_run_dir(project)
    parent = tracker.start_parent("tiny", "repro-1", {"profile": "tiny"})
    run_id = tracker.log_run(parent, run_dir, "evaluate")
    tracker.end_parent(parent)

    client = _client(tracker.uri)
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "tiny"
    assert experiment.artifact_location.startswith((project / "mlartifacts").as_uri())
    assert run.info.run_name == "vae-trip_learnable-s0" and run.info.status == "FINISHED"
    assert client.get_run(parent).info.status == "FINISHED"

    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert {k: tags[k] for k in ("model", "prior", "prior_learnable", "dataset", "config_hash",
                                 "seed", "stage")} == {
        "model": "vae", "prior": "trip", "prior_learnable": "true", "dataset": "shapes",
        "config_hash": "abc123", "seed": "0", "stage": "evaluate"}

    params = run.data.params
    assert params["model.name"] == "vae" and params["prior.core_size"] == "2"
    assert params["train.betas"] == "[0.9, 0.999]" and params["prior.dim"] == "null"
    assert params["data.options.n_train"] == "96" and params["config_hash"] == "abc123"

    history = client.get_metric_history(run_id, "train.elbo")
    assert sorted((m.step, m.value) for m in history) == [(s, -100.0 + s) for s in range(1, 6)]
    assert {"train.kl", "train.epoch"} <= set(run.data.metrics)
    assert run.data.metrics["eval.fid"] == pytest.approx(279.25)
    assert run.data.metrics["eval.elbo"] == pytest.approx(-13968.9)
    assert run.data.metrics["eval.iwae"] == pytest.approx(-13922.2)
    assert run.data.metrics["eval.fid.n_samples"] == 500
    assert not any(k.startswith(("eval.run", "eval.figures")) for k in run.data.metrics)

    assert _artifact_paths(client, run_id) == {
        "config.yaml", "eval.json", "samples.png", "figures/curves.png"}


def test_log_run_again_updates_the_same_run_without_duplicates(project):
    tracker = Tracker(project)
    run_dir = make_run_dir(project)
    first_parent = tracker.start_parent("tiny", "repro-1", {})
    run_id = tracker.log_run(first_parent, run_dir, "train")

    second_parent = tracker.start_parent("tiny", "repro-2", {})
    assert tracker.log_run(second_parent, run_dir, "train") == run_id  # nothing new

    with (run_dir / "metrics.jsonl").open("a") as f:  # training went on; eval was redone
        f.write(_metric_lines([6, 7]))
    (run_dir / "eval.json").write_text(json.dumps(_eval(fid=250.0)))
    assert tracker.log_run(second_parent, run_dir, "evaluate") == run_id

    client = _client(tracker.uri)
    assert len(_runs_with_hash(client, "tiny", "abc123")) == 1
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train.elbo"))
    assert steps == list(range(1, 8))
    fid = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval.fid"))
    assert fid == [(0, 279.25), (1, 250.0)]
    assert len(client.get_metric_history(run_id, "eval.elbo")) == 1
    run = client.get_run(run_id)
    assert run.data.metrics["eval.fid"] == 250.0
    assert run.data.tags["mlflow.parentRunId"] == second_parent
    assert run.data.tags["stage"] == "evaluate"


def test_same_config_hash_in_another_experiment_is_a_separate_run(project):
    tracker = Tracker(project)
    run_dir = make_run_dir(project)
    run_a = tracker.log_run(tracker.start_parent("profile-a", "r", {}), run_dir, "train")
    run_b = tracker.log_run(tracker.start_parent("profile-b", "r", {}), run_dir, "train")
    assert run_a != run_b


# ----------------------------------------------------------------------------- MLflow's limits

def test_log_batch_leaves_splitting_to_mlflow_beyond_its_batch_limits(project):
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    logger = SerializedLogger(tracking.tracking_uri(project))
    run_id = logger.create_run(logger.experiment_id("limits"), "big", {})
    metrics = [("loss", float(s), s) for s in range(MAX_METRICS_PER_BATCH + 500)]
    params = {f"p{i}": str(i) for i in range(MAX_PARAMS_TAGS_PER_BATCH + 50)}
    tags = {f"t{i}": str(i) for i in range(MAX_PARAMS_TAGS_PER_BATCH + 50)}
    logger.log_batch(run_id, metrics, params, tags)

    client = _client(logger.uri)
    run = client.get_run(run_id)
    assert len(client.get_metric_history(run_id, "loss")) == len(metrics)
    assert run.data.params == params
    assert tags.items() <= run.data.tags.items()


def test_a_batch_repeated_by_a_retry_is_stored_once(project):
    from mlflow.entities import Metric, Param, RunTag

    logger = SerializedLogger(tracking.tracking_uri(project))
    run_id = logger.create_run(logger.experiment_id("limits"), "retry", {})
    batch = dict(metrics=[Metric("loss", float(s), 1000, s) for s in range(1200)],
                 params=[Param(f"p{i}", "v") for i in range(120)], tags=[RunTag("t", "v")])
    client = _client(logger.uri)
    client.log_batch(run_id, **batch)
    client.log_batch(run_id, **batch)  # the same entities, as with_retries repeats them after a partial write
    assert len(client.get_metric_history(run_id, "loss")) == 1200


def test_keys_and_param_values_fit_mlflow_limits():
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    params = tracking.config_params({"a" * 300: "x" * 7000, "b" * 300: 1})
    assert len(params) == 2 and all(len(k) <= MAX_ENTITY_KEY_LENGTH for k in params)
    assert max(len(v) for v in params.values()) == MAX_PARAM_VAL_LENGTH


# ----------------------------------------------------------------------------- settings and links

def test_tracking_params_bounds_name_the_key():
    assert TrackingParams().system_metrics is False
    with pytest.raises(ConfigError, match="tracking.system_metrics_interval: must be > 0"):
        build_dataclass(TrackingParams, {"system_metrics": True, "system_metrics_interval": 0}, "tracking.")
    with pytest.raises(ConfigError, match="tracking.experiment"):
        build_dataclass(TrackingParams, {"experiment": " "}, "tracking.")


def test_ui_link_opens_the_runs_table(project):
    assert tracking.ui_link("sqlite:////x/mlflow.db", "7") == \
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert tracking.ui_link("http://tracking.example:8080/", "7") == \
        "http://tracking.example:8080/#/experiments/7?workflowType=machine_learning"
    tracker = Tracker(project)
    assert tracker.experiment_link("tiny") is None  # nothing logged: no link, and no experiment made
    assert _client(tracker.uri).get_experiment_by_name("tiny") is None
    parent = tracker.start_parent("tiny", "repro", {})
    experiment_id = _client(tracker.uri).get_run(parent).info.experiment_id
    assert tracker.experiment_link("tiny").endswith(f"/#/experiments/{experiment_id}?workflowType=machine_learning")


# ----------------------------------------------------------------------------- system metrics

def test_system_metrics_are_logged_into_an_open_run_while_the_block_runs(project):
    tracker = Tracker(project)
    parent = tracker.start_parent("tiny", "repro", {})
    config = yaml.safe_load((make_run_dir(project) / "config.yaml").read_text())
    run_id = tracker.open_run(parent, config, "vae-trip_learnable-s0", "train")
    assert _client(tracker.uri).get_run(run_id).info.status == "RUNNING"

    with system_metrics(SystemMetrics(tracker.uri, run_id, interval=0.05)):
        time.sleep(0.6)
    with system_metrics(None):  # off: nothing starts
        pass
    tracker.end_run(run_id)

    client = _client(tracker.uri)
    metrics = client.get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) >= 2
    # The same run, found by its config hash, keeps its system metrics when the run directory is logged.
    assert tracker.log_run(parent, project / "runs" / "vae-trip_learnable-s0", "train") == run_id
    assert "system/cpu_utilization_percentage" in client.get_run(run_id).data.metrics
