"""A real two-node Ray cluster with token auth loses a node in the middle of the ``train`` stage.

The cluster is what a user builds by hand (README, "Joining a cluster with
token authentication"): ``ray start --head`` and ``ray start --address=...``
on this machine, one CPU each, both with ``RAY_AUTH_MODE=token`` and the
head's token. The ``train`` stage joins it through ``compute.ray_address``
with two tiny runs, so one runs on each node. Once the run on the second node
has written a checkpoint, that node's raylet is SIGKILLed by its PID. Ray
retries the lost task once (``max_retries=1``) on the surviving node, and the
run must resume from its checkpoint rather than start over.

The runs are paced (each optimiser step sleeps 50 ms, through a
``sitecustomize`` on the nodes' PYTHONPATH) so the kill lands mid-run on any
machine without burning CPU. Every process of the cluster is ended by PID in
the fixture's finalizer, whatever happens, and the whole test is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from trip.config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
STEPS, CHECKPOINT_EVERY = 120, 20
KILL_AT_CHECKPOINT = 40  # kill once the second node's run has a checkpoint at least this far
START_TIMEOUT = 150  # per node; `ray start` takes seconds on an idle machine
STAGE_TIMEOUT = 360

PACING_HOOK = textwrap.dedent(
    '''
    """Test pacing: every optimiser step sleeps TRIP_TEST_STEP_SLEEP seconds (torch is hooked when imported)."""
    import importlib.abc, importlib.util, os, sys, time

    _SLEEP = float(os.environ.get("TRIP_TEST_STEP_SLEEP", "0"))


    class _HookOptimizers(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "torch.optim.optimizer":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                module.register_optimizer_step_post_hook(lambda *args: time.sleep(_SLEEP))

            spec.loader.exec_module = exec_module
            return spec


    if _SLEEP > 0:
        sys.meta_path.insert(0, _HookOptimizers())
    '''
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{proc.args[:3]} not ready in {timeout}s:\n{path.read_text()[-3000:]}")


@dataclasses.dataclass
class Cluster:
    address: str
    env: dict  # what every process of the cluster and its drivers see: token auth on, the head's token
    temp: Path
    home: Path
    head: subprocess.Popen
    worker: subprocess.Popen
    doomed: list = dataclasses.field(default_factory=list)  # processes orphaned by a kill, ended at teardown

    def worker_raylet(self) -> psutil.Process:
        (raylet,) = [p for p in psutil.Process(self.worker.pid).children() if p.name() == "raylet"]
        return raylet


def _end(processes: list[psutil.Process]) -> None:
    for p in processes:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture
def two_node_cluster(tmp_path):
    """``ray start --head`` plus one ``ray start --address``, one CPU each, token auth; torn down by PID."""
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    home = tmp_path / "home"  # an empty HOME for every process of the cluster: nothing may land there
    home.mkdir()
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(PACING_HOOK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0", HOME=str(home),
        PYTHONPATH=os.pathsep.join([str(tmp_path / "hook"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        TRIP_TEST_STEP_SLEEP="0.05", OMP_NUM_THREADS="1",
    )
    port = _free_port()
    node = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000",
            "--disable-usage-stats", "--block"]
    started: list[subprocess.Popen] = []
    cluster = None
    try:
        head = subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
             f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
             f"--dashboard-agent-listen-port={_free_port()}", *node],
            env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        started.append(head)
        _wait_for(tmp_path / "head.log", "Ray runtime started", head, START_TIMEOUT)
        worker = subprocess.Popen(
            [RAY, "start", f"--address=127.0.0.1:{port}", f"--dashboard-agent-listen-port={_free_port()}", *node],
            env=env, stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        started.append(worker)
        _wait_for(tmp_path / "worker.log", "Ray runtime started", worker, START_TIMEOUT)
        cluster = Cluster(f"127.0.0.1:{port}", env, temp, home, head, worker)
        yield cluster
    finally:
        # Every process of the cluster, by PID: the `ray start --block` parents stop their children on
        # SIGTERM; whatever is left (and what a kill orphaned) is killed.
        family = list(cluster.doomed) if cluster else []
        for proc in started:
            try:
                family += psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                pass
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _end([p for p in family if p.is_running()])
        shutil.rmtree(temp, ignore_errors=True)


def _params(tmp_path: Path, address: str) -> Path:
    overrides = [
        f"train.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1",
        "train.batch_size=16", "train.sample_count=4", "data.image_size=16", "data.options.n_train=96",
        "data.options.n_test=32", f"data.prepared_root={tmp_path / 'prepared'}", "model.latent_dim=4", "device=cpu",
    ]
    if "fd_every" in {f.name for f in dataclasses.fields(TrainConfig)}:
        overrides.append("train.fd_every=0")
    params = {
        "profile": "shapes", "seeds": [0, 1], "models": ["vae"], "priors": ["normal"], "overrides": overrides,
        "run_root": str(tmp_path / "runs"), "eval_root": str(tmp_path / "evals"),
        "report_root": str(tmp_path / "reports"), "plots_root": str(tmp_path / "plots"),
        "compute": {"ray_address": address, "cpus_per_run": 1.0},
        "tracking": {"experiment": "cluster-test", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _prepare_data(params: Path) -> None:
    """Both runs share one prepared dataset: make it before they start, so they do not race to write it."""
    from pipeline.params import load_params
    from trip.train import load_data

    load_data(next(iter(load_params(params).runs.values())))


def _checkpoint_step(run_dir: Path) -> int:
    import torch

    try:
        return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["step"]
    except Exception:  # not there yet, or being replaced this instant
        return 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_stage_survives_losing_a_node_and_resumes_the_lost_run(two_node_cluster, tmp_path):
    cluster = two_node_cluster
    params = _params(tmp_path, cluster.address)
    _prepare_data(params)
    runs = tmp_path / "runs" / "shapes"
    stage_log = tmp_path / "stage.log"
    stage = subprocess.Popen([sys.executable, "-m", "stages.train", "--params", str(params)], cwd=PROJECT_ROOT,
                             env=cluster.env, stdout=open(stage_log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        # Which run is on the second node: its worker process is titled ray::<label>.
        raylet = cluster.worker_raylet()
        deadline = time.monotonic() + STAGE_TIMEOUT
        lost = None
        while lost is None:
            for p in raylet.children():
                try:
                    title = p.name()
                except psutil.Error:
                    continue
                if title.startswith("ray::vae-normal-s"):
                    lost, lost_worker = title.removeprefix("ray::"), p
            assert stage.poll() is None, stage_log.read_text()[-4000:]
            assert time.monotonic() < deadline, "no run was placed on the second node:\n" + stage_log.read_text()[-4000:]
            time.sleep(0.1)
        survivor = next(label for label in ("vae-normal-s0", "vae-normal-s1") if label != lost)
        while _checkpoint_step(runs / lost) < KILL_AT_CHECKPOINT:
            assert not (runs / lost / "complete.json").exists(), "the run finished before the kill"
            assert stage.poll() is None and time.monotonic() < deadline, stage_log.read_text()[-4000:]
            time.sleep(0.05)
        cluster.doomed += raylet.children(recursive=True)
        raylet.kill()  # SIGKILL, by PID: the second node is lost
        lost_worker.wait(timeout=60)  # its run dies with it: no second writer in the run directory
        checkpoint_at_kill = _checkpoint_step(runs / lost)
        assert KILL_AT_CHECKPOINT <= checkpoint_at_kill < STEPS
        assert not (runs / lost / "complete.json").exists()

        stage.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
            stage.wait()
    log = stage_log.read_text()
    assert stage.returncode == 0, log[-4000:]
    assert "'CPU': 2.0" in log  # the driver saw both nodes

    for label in (lost, survivor):
        assert (runs / label / "complete.json").exists(), label
        steps = [json.loads(ln)["step"] for ln in (runs / label / "metrics.jsonl").read_text().splitlines() if ln]
        assert steps == list(range(1, STEPS + 1)), f"{label}: each step exactly once"
    # The retried run resumed at its checkpoint instead of starting over; the other never resumed.
    # Worker output reaches the driver's log and, reliably, the session's worker log files.
    worker_logs = "".join(p.read_text(errors="replace") for p in cluster.temp.glob("session_*/logs/worker-*"))
    resumed = {int(s) for s in re.findall(rf"resuming \S+/{lost} at step (\d+)", log + worker_logs)}
    assert resumed == {checkpoint_at_kill}, f"resumed at {resumed}, checkpoint at the kill {checkpoint_at_kill}"
    assert not re.search(rf"resuming \S+/{survivor} ", log + worker_logs)
    # Nothing of the cluster, the stage or its runs was written into HOME.
    assert sorted(str(p.relative_to(cluster.home)) for p in cluster.home.rglob("*")) == []
