"""The GPU side of the pipeline, reached on a CPU machine: gpus_per_run auto, single-use GPU workers, device rules.

No GPU is needed: the resolution and the task options are pure functions, and
the end-to-end test declares two GPUs to a local Ray, which schedules on the
declared resource and sets CUDA_VISIBLE_DEVICES without any card being there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from pipeline import tune as pipeline_tune
from pipeline.params import load_params
from pipeline.ray_runner import (
    _CALL,
    ComputeConfig,
    _devices_of,
    check_ray_device,
    pick_task,
    remote_variants,
    resolve_gpus_per_run,
)
from trip.config import ConfigError, RunConfig, build_dataclass

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _params(tmp_path, **changes) -> str:
    import yaml

    params = {"profile": "shapes", "seeds": [0], "models": ["vae"], "priors": ["trip_learnable"],
              "run_root": str(tmp_path / "runs"), "compute": {"cpus_per_run": 1.0}}
    params.update(changes)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return str(tmp_path / "params.yaml")


# -- compute.gpus_per_run --------------------------------------------------------------
def test_gpus_per_run_defaults_to_auto_one_gpu_per_run_where_the_cluster_has_gpus():
    assert ComputeConfig().gpus_per_run == "auto"
    assert resolve_gpus_per_run("auto", 8.0) == 1.0
    assert resolve_gpus_per_run("auto", 1.0) == 1.0
    assert resolve_gpus_per_run("auto", 0.0) == 0.0  # a CPU cluster: runs on the CPU, as before
    assert resolve_gpus_per_run(0.25, 8.0) == 0.25  # a number is taken as given: fractions share a card
    assert resolve_gpus_per_run(0, 8.0) == 0.0  # an explicit 0 keeps the runs off the GPUs


@pytest.mark.parametrize("value", ["half", "", None, True, -1])
def test_a_bad_gpus_per_run_names_the_key(value):
    with pytest.raises(ConfigError, match=r"^compute\.gpus_per_run: "):
        build_dataclass(ComputeConfig, {"gpus_per_run": value}, "compute.")


def test_params_accept_auto_and_name_the_key_of_a_bad_value(tmp_path):
    assert load_params(_params(tmp_path, compute={"gpus_per_run": "auto"})).params.compute.gpus_per_run == "auto"
    assert load_params(_params(tmp_path)).params.compute.gpus_per_run == "auto"
    with pytest.raises(ConfigError, match=r"^compute\.gpus_per_run: must be auto or a number"):
        load_params(_params(tmp_path, compute={"gpus_per_run": "all"}))


# -- single-use GPU workers ------------------------------------------------------------
@pytest.mark.parametrize("variants", [_CALL, pipeline_tune._CHUNK], ids=["run_all", "tune chunks"])
def test_gpu_tasks_get_single_use_workers_and_cpu_tasks_reusable_ones(variants):
    task, options = pick_task(variants, 1.0, 0.5)
    assert task._max_calls == 1 and options["num_gpus"] == 0.5 and options["num_cpus"] == 1.0
    task, options = pick_task(variants, 1.0, 0.0)
    assert task._max_calls == 0 and options["num_gpus"] == 0.0  # 0: Ray's default, workers are reused
    # Ray refuses max_calls in .options(): it must not be among them, and the rest must be accepted.
    assert "max_calls" not in options
    variants[True].options(name="x", **pick_task(variants, 1.0, 1.0)[1])


def test_remote_variants_differ_only_in_max_calls():
    variants = remote_variants(lambda x: x)
    assert (variants[False]._max_calls, variants[True]._max_calls) == (0, 1)


# -- devices under Ray -----------------------------------------------------------------
@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0"])
def test_devices_a_ray_task_can_use_pass(device):
    check_ray_device(device, 1.0)
    check_ray_device(device, "auto")


def test_cuda_n_above_0_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^device: cuda:1 \(run x\): a Ray task sees the GPU it was given as cuda:0"):
        check_ray_device("cuda:1", 2.0, " (run x)")


def test_cuda_without_gpus_per_run_is_refused():
    check_ray_device("cpu", 0.0)
    check_ray_device("auto", 0.0)  # auto falls back to the CPU in the task
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=rf"^device: {device} needs a GPU, but compute.gpus_per_run gives"):
            check_ray_device(device, 0.0)


def test_run_all_finds_the_device_of_every_kind_of_stage_item(tmp_path):
    cfg = RunConfig(device="cuda:1")

    @dataclasses.dataclass
    class Job:  # as stages.conditional's (a cfg) and stages.induced's (a device of its own)
        cfg: object = None
        device: str | None = None

    assert _devices_of(cfg) == ["cuda:1"]
    assert _devices_of((cfg, tmp_path)) == ["cuda:1"]  # stages.evaluate
    assert _devices_of(Job(cfg=cfg)) == ["cuda:1"]
    assert _devices_of(Job(cfg=object(), device="cuda")) == ["cuda"]
    assert _devices_of(3) == []


def test_the_grid_refuses_cuda_n_before_ray_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"^device: cuda:2 \(run vae-trip_learnable-s0\)"):
        load_params(_params(tmp_path, overrides=["device=cuda:2"]))
    with pytest.raises(ConfigError, match=r"^device: cuda \(run vae-trip_learnable-s0\) needs a GPU"):
        load_params(_params(tmp_path, overrides=["device=cuda"], compute={"gpus_per_run": 0}))


def test_the_tune_stage_refuses_cuda_n_before_any_trial(tmp_path):
    from stages.tune import check_objective

    grid = load_params(_params(tmp_path))
    cfg = next(iter(grid.runs.values()))
    make = lambda overrides, name: dataclasses.replace(cfg, device="cuda:1")  # noqa: E731
    with pytest.raises(ConfigError, match=r"^device: cuda:1 \(tune trials\)"):
        check_objective(grid, pipeline_tune.TuneParams(), make)


# -- the tune stage's objective --------------------------------------------------------
def test_the_validation_elbo_runs_on_the_trials_device_with_a_generator_there(tiny_profile, tmp_path, monkeypatch):
    """Model, images and noise generator all on the device the run's ``device`` resolves to in the task
    (on a GPU, a CPU generator would make randn raise); on the CPU the value is what it always was."""
    import numpy as np
    import torch

    import trip.train
    from trip.data.prepared import to_float
    from trip.models.vae import VAE
    from trip.profiles import resolve

    cfg = resolve(tiny_profile(tmp_path), "vae", "trip_learnable", 0, tmp_path / "runs", ["device=auto"])
    trip.train.run(cfg, progress=False)
    asked, seen = [], []
    resolve_device, elbo = trip.train.resolve_device, VAE.elbo
    monkeypatch.setattr(trip.train, "resolve_device", lambda name: asked.append(name) or resolve_device(name))
    monkeypatch.setattr(VAE, "elbo", lambda self, x, g=None: seen.append(
        {x.device, g.device, next(self.parameters()).device}) or elbo(self, x, g))
    value = pipeline_tune.validation_elbo(cfg.run_dir, 20, seed=3)
    assert asked == ["auto"] and seen == [{torch.device("cpu")}]
    monkeypatch.undo()
    _, model = trip.train.load_run(cfg.run_dir)  # the value before the change: CPU model, CPU generator
    images = to_float(torch.from_numpy(np.ascontiguousarray(trip.train.load_data(cfg)[1].images[:20])))
    with torch.no_grad():
        assert value == model.elbo(images, torch.Generator().manual_seed(3)).double().sum().item() / 20


# -- end to end, on a local Ray told it has two GPUs ------------------------------------
@pytest.mark.slow
def test_gpu_runs_see_their_card_and_never_share_a_worker(tmp_path):
    """auto gives each run one of the (declared) GPUs, CUDA_VISIBLE_DEVICES names it despite
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO, and each run has a fresh worker process (max_calls=1)."""
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    script = textwrap.dedent(
        f"""
        import json, os, time
        import pipeline.ray_runner as rr

        real = rr._init_args
        rr._init_args = lambda compute, root: {{**real(compute, root), "num_gpus": 2}}

        def facts(_):
            time.sleep(0.2)
            return [os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")]

        compute = rr.ComputeConfig(num_cpus=2, max_parallel=1, temp_dir={temp!r})
        with rr.ray_session(compute, {str(PROJECT_ROOT)!r}):
            gpus = rr.gpus_per_run(compute)
            report = rr.run_all(facts, [0, 1, 2], compute, ["a", "b", "c"], progress=False)
        print(json.dumps({{"gpus": gpus, "results": list(report.results.values()), "failures": len(report.failures)}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert outcome["gpus"] == 1.0 and outcome["failures"] == 0
    pids = [pid for pid, _ in outcome["results"]]
    assert len(set(pids)) == 3  # one after the other, yet never in the same worker
    assert all(visible in ("0", "1") for _, visible in outcome["results"])
