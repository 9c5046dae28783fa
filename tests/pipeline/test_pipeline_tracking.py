"""MLflow tracking: run layout, idempotent updates, and no lost metrics under concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline import tracking
from pipeline.tracking import (ActorLogger, SerializedLogger, Tracker, get_logger_actor,
                               stop_logger_actor, with_retries)

WORKERS = 6
METRICS_PER_WORKER = 200
METRICS_PER_CALL = 5
PROCESSES = 3
METRICS_PER_PROCESS = 100


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow database; copying it skips the ~2 s of migrations."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    SerializedLogger(f"sqlite:///{path}")
    return path


@pytest.fixture
def project(tmp_path, migrated_db, monkeypatch) -> Path:
    """A project root holding its own copy of the empty database."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for the module; Ray's socket paths need a short temp dir.

    Ray is imported here, not at the top, so the spawned processes of the retry test,
    which import this module, do not pay for it.
    """
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    yield ray
    ray.shutdown()
    for _ in range(10):  # Ray's exiting processes may still write logs for a moment
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not os.path.exists(temp_dir):
            break
        time.sleep(0.2)


@pytest.fixture
def actor_uri(project, ray_cluster) -> str:
    """The project's tracking URI, with its (detached) logger actor stopped afterwards."""
    uri = tracking.tracking_uri(project)
    yield uri
    stop_logger_actor(uri)


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
    pipeline.tracking set the offline switches, and not at module level, so the Ray workers
    that import this module for their task functions do not load it."""
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


# ----------------------------------------------------------------------------- the Ray actor

def _log_through_actor(uri: str, experiment_id: str, worker: int, count: int) -> str:
    """A Ray task: its own run, ``count`` metrics in small calls, all through the actor."""
    logger = ActorLogger(get_logger_actor(uri))
    run_id = logger.create_run(experiment_id, f"worker-{worker}", {"worker": str(worker)})
    for start in range(0, count, METRICS_PER_CALL):
        logger.log_batch(run_id, [(f"w{worker}.loss", float(s), s)
                                  for s in range(start, start + METRICS_PER_CALL)])
    return run_id


def test_logger_actor_loses_nothing_with_parallel_ray_workers(actor_uri, ray_cluster):
    ray, uri = ray_cluster, actor_uri
    task = ray.remote(num_cpus=0.25)(_log_through_actor)  # fractional: all run at once
    experiment_id = ActorLogger(get_logger_actor(uri)).experiment_id("parallel")
    run_ids = ray.get([task.remote(uri, experiment_id, w, METRICS_PER_WORKER)
                       for w in range(WORKERS)])

    client = _client(uri)
    histories = [client.get_metric_history(r, f"w{w}.loss") for w, r in enumerate(run_ids)]
    assert len(set(run_ids)) == WORKERS
    assert sum(len(h) for h in histories) == WORKERS * METRICS_PER_WORKER
    assert all(sorted(m.step for m in h) == list(range(METRICS_PER_WORKER)) for h in histories)


def _log_run_dir(root: str, parent_id: str, run_dir: str, uri: str) -> str:
    tracker = Tracker(root, uri=uri, logger=ActorLogger(get_logger_actor(uri)))
    return tracker.log_run(parent_id, run_dir, "train")


def test_parallel_log_run_through_actor_creates_one_run_per_config_hash(project, actor_uri,
                                                                         ray_cluster):
    ray, uri = ray_cluster, actor_uri
    task = ray.remote(num_cpus=0.25)(_log_run_dir)
    tracker = Tracker(project, logger=ActorLogger(get_logger_actor(uri)))
    parent = tracker.start_parent("tiny", "repro", {})
    dirs = [make_run_dir(project, f"run{i}", hash_=f"h{i % 2}") for i in range(4)]

    ids = ray.get([task.remote(str(project), parent, str(d), uri) for d in dirs])

    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]
    client = _client(uri)
    assert [len(_runs_with_hash(client, "tiny", h)) for h in ("h0", "h1")] == [1, 1]
    assert len(client.get_metric_history(ids[0], "train.elbo")) == 5


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
