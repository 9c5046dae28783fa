"""pipeline.ray_runner: runs as Ray tasks, failure reports, parallelism, a leak-free local Ray.

One local Ray (2 CPUs) serves the whole module: starting one costs seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import ray

from pipeline.ray_runner import (
    _SOCKET_PATH_MAX,
    _SOCKET_TAIL,
    ComputeConfig,
    PipelineError,
    ray_session,
    run_all,
    temp_dir_for,
)
from trip.config import ConfigError, build_dataclass

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# -- task functions (run in Ray workers) -----------------------------------------------
def square(x):
    return x * x


def explode_on_one(x):
    if x == 1:
        raise ValueError("boom")
    time.sleep(0.5)  # still running when the failure comes back
    return x


def stamp(seconds):
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def die(marker):
    """Kill the worker process: always, or only on the first attempt if ``marker`` is a path."""
    if marker is None or not os.path.exists(marker):
        if marker is not None:
            Path(marker).touch()
        os._exit(1)
    return "second attempt"


def worker_facts(_):
    import trip

    return {
        "version": trip.__version__,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }


# -- the shared session ----------------------------------------------------------------
@pytest.fixture(scope="module")
def session():
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    compute = ComputeConfig(num_cpus=2, temp_dir=temp)
    try:
        with ray_session(compute, PROJECT_ROOT) as context:
            yield compute, context, temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# -- ComputeConfig ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, key",
    [
        ({"cpus_per_run": 0}, "cpus_per_run"),
        ({"cpus_per_run": -1.0}, "cpus_per_run"),
        ({"cpus_per_run": "1"}, "cpus_per_run"),
        ({"gpus_per_run": -0.5}, "gpus_per_run"),
        ({"gpus_per_run": 1.5}, "gpus_per_run"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"max_parallel": 1.5}, "max_parallel"),
        ({"num_cpus": True}, "num_cpus"),
        ({"num_cpus": 2, "cpus_per_run": 4}, "cpus_per_run"),
        ({"dashboard": "yes"}, "dashboard"),
        ({"temp_dir": ""}, "temp_dir"),
        ({"ray_address": ""}, "ray_address"),
    ],
)
def test_compute_config_rejects_bad_values_naming_the_key(values, key):
    with pytest.raises(ValueError, match=rf"^compute\.{key}: "):
        build_dataclass(ComputeConfig, values, "compute.")  # as params.yaml's compute section is read


def test_compute_config_accepts_fractional_gpus_and_cluster_addresses():
    assert ComputeConfig(gpus_per_run=0.25).gpus_per_run == 0.25
    assert ComputeConfig(gpus_per_run=2).gpus_per_run == 2
    cluster = ComputeConfig(ray_address="auto", num_cpus=1, cpus_per_run=4)  # num_cpus is local-only
    assert not cluster.is_local and ComputeConfig().is_local


def test_run_all_needs_one_distinct_label_per_item():
    with pytest.raises(ValueError, match="one distinct label per item"):
        run_all(square, [1, 2], ComputeConfig(), ["a"])
    with pytest.raises(ValueError, match="one distinct label per item"):
        run_all(square, [1, 2], ComputeConfig(), ["a", "a"])


# -- temp dir --------------------------------------------------------------------------
def test_temp_dir_is_under_the_project_when_short_enough():
    root = Path("/tmp/proj")
    assert temp_dir_for(ComputeConfig(), root) == root / ".ray"
    assert temp_dir_for(ComputeConfig(temp_dir="/tmp/abs"), root) == Path("/tmp/abs")


def test_temp_dir_falls_back_to_a_short_per_project_path_when_too_long():
    deep = Path("/tmp") / ("d" * 60) / "project"
    other = Path("/tmp") / ("e" * 60) / "project"
    fallback = temp_dir_for(ComputeConfig(), deep)
    assert fallback.parent == Path("/tmp") and fallback.name.startswith("ray-")
    assert len(os.fsencode(fallback)) + _SOCKET_TAIL <= _SOCKET_PATH_MAX
    assert fallback == temp_dir_for(ComputeConfig(), deep)
    assert fallback != temp_dir_for(ComputeConfig(), other)


# -- runs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_results_come_back_keyed_by_label(session):
    compute, _, _ = session
    report = run_all(square, [1, 2, 3], compute, ["a", "b", "c"], progress=False)
    assert report.results == {"a": 1, "b": 4, "c": 9}
    assert report.failures == {} and report.wall_seconds > 0
    report.raise_if_failed()
    assert run_all(functools.partial(pow, 2), [3], compute, ["p"], progress=False).results == {"p": 8}


@pytest.mark.slow
def test_a_failing_run_is_reported_while_the_others_finish(session):
    compute, _, _ = session
    report = run_all(explode_on_one, [0, 1, 2], compute, ["r0", "r1", "r2"], progress=False)
    assert report.results == {"r0": 0, "r2": 2}
    failure = report.failures["r1"]
    assert failure.error == "ValueError: boom"
    assert "explode_on_one" in failure.traceback and "boom" in failure.traceback
    with pytest.raises(PipelineError) as raised:
        report.raise_if_failed()
    assert "1 of 3 runs failed" in str(raised.value)
    assert "r1: ValueError: boom" in str(raised.value)
    assert "r0" not in str(raised.value)


@pytest.mark.slow
def test_a_dead_worker_is_retried_once_then_reported(session, tmp_path):
    compute, _, _ = session
    report = run_all(die, [str(tmp_path / "died"), None], compute, ["once", "always"], progress=False)
    assert report.results == {"once": "second attempt"}
    assert report.failures["always"].error.startswith("WorkerCrashedError: ")


@pytest.mark.slow
def test_max_parallel_one_runs_one_task_at_a_time(session):
    compute, _, _ = session
    report = run_all(stamp, [0.3] * 3, dataclasses.replace(compute, max_parallel=1), ["a", "b", "c"], progress=False)
    spans = sorted(report.results.values())
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("max_parallel", [None, 2])
def test_two_one_cpu_tasks_overlap(session, max_parallel):
    compute, _, _ = session
    report = run_all(stamp, [1.0, 1.0], dataclasses.replace(compute, max_parallel=max_parallel), ["a", "b"],
                     progress=False)
    (start_a, end_a), (start_b, end_b) = report.results.values()
    assert max(start_a, start_b) < min(end_a, end_b)


@pytest.mark.slow
def test_tasks_import_trip_and_see_no_gpu_and_one_thread(session):
    compute, _, _ = session
    facts = run_all(worker_facts, [None], compute, ["facts"], progress=False).results["facts"]
    import trip

    assert facts["version"] == trip.__version__
    assert facts["pythonpath"].split(os.pathsep)[0] == str(PROJECT_ROOT)
    assert facts["cuda_visible"] == ""  # gpus_per_run: 0 hides every card, even on a GPU machine
    assert facts["omp_threads"] == "1"  # = cpus_per_run


@pytest.mark.slow
def test_runs_that_fit_no_node_are_refused_instead_of_hanging(session):
    compute, _, _ = session
    with pytest.raises(ConfigError, match=r"^compute\.gpus_per_run: a run needs 64"):
        run_all(square, [1], dataclasses.replace(compute, gpus_per_run=64), ["a"], progress=False)


# -- the session -----------------------------------------------------------------------
@pytest.mark.slow
def test_local_session_keeps_temp_files_where_asked_and_opens_no_dashboard(session):
    _, context, temp = session
    assert Path(context.address_info["session_dir"]).parent == Path(temp)
    assert not context.dashboard_url
    with socket.socket() as probe:  # the dashboard's default port stays closed
        assert probe.connect_ex(("127.0.0.1", 8265)) != 0


@pytest.mark.slow
def test_a_second_session_in_the_same_process_is_refused(session):
    compute, _, _ = session
    with pytest.raises(PipelineError, match="already open"):
        with ray_session(compute, PROJECT_ROOT):
            pass
    assert ray.is_initialized()


@pytest.mark.slow
def test_session_shuts_down_on_interrupt_and_leaves_no_trace(tmp_path):
    """In a fresh interpreter, so that this module's session stays open meanwhile."""
    project = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    script = textwrap.dedent(
        f"""
        import json, os, ray
        from pipeline.ray_runner import ComputeConfig, ray_session

        try:
            with ray_session(ComputeConfig(num_cpus=1), {str(project)!r}) as context:
                session_dir = context.address_info["session_dir"]
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        outcome = {{
            "initialized": ray.is_initialized(),
            "session_dir": session_dir,
            "auth_env": [k for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN") if k in os.environ],
            "home_ray": os.path.exists(os.path.expanduser("~/.ray")),
        }}
        # A plain ray.init later in the process must not trip over the session's cached token.
        ray.init(num_cpus=1, include_dashboard=False, _temp_dir={str(project / "plain")!r})
        outcome["plain"] = ray.get(ray.remote(lambda: "ok").remote())
        ray.shutdown()
        print(json.dumps(outcome))
        """
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        assert outcome["initialized"] is False
        assert Path(outcome["session_dir"]).parent == project / ".ray"
        assert outcome["auth_env"] == []
        assert outcome["home_ray"] is False  # no auth token written to the home directory
        assert outcome["plain"] == "ok"
    finally:
        shutil.rmtree(project, ignore_errors=True)



def test_the_private_ray_apis_of_reload_auth_are_still_there():
    """``pipeline.ray_runner._reload_auth`` calls private Ray APIs: a Ray upgrade that moves or changes them
    fails here, by name (see how Ray's own tests reset the auth state in the new version)."""
    # In a fresh process: re-initialising Ray's config must not disturb the Ray this module may be connected to.
    done = subprocess.run([sys.executable, "-c", "from pipeline.ray_runner import _reload_auth; _reload_auth()"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"Ray {ray.__version__} (the code was written against 2.60): the private ray._raylet.Config.initialize "
        f"or ray._raylet.AuthenticationTokenLoader.instance().reset_cache that pipeline.ray_runner._reload_auth "
        f"calls is gone or changed:\n{done.stderr[-2000:]}")
