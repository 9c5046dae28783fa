"""Nothing outside the project: a stage run with HOME pointed at an empty directory leaves it empty.

Ray 2.60 turns token authentication on for a new local cluster and, if no
token is around, writes one to ``~/.ray/auth_token`` (``ray._private.
authentication.authentication_token_setup.generate_and_save_token``, always
under ``Path.home()``). The pipeline's ``ray_session`` hands Ray a token of its
own instead; this test runs the real ``train`` stage end to end (local Ray,
a tiny VAE-TRIP run, MLflow) in a fresh interpreter whose HOME is an empty directory,
with every variable that could redirect a cache elsewhere removed, and checks
that nothing appeared there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from trip.config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.steps=3", "train.log_every=1", "train.checkpoint_every=2", "train.batch_size=16",
        "train.sample_count=4", "data.image_size=16", "data.options.n_train=64", "data.options.n_test=16",
        "model.latent_dim=4", "prior.n_components=3", "prior.core_size=2", "prior.reinit_codes=32", "device=cpu"]
if "fd_every" in {f.name for f in dataclasses.fields(TrainConfig)}:
    TINY.append("train.fd_every=0")  # no FD probe along training: it needs thousands of reference images
# Variables that would send a library's files somewhere other than HOME (and so hide a write there).
REDIRECTS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "MPLCONFIGDIR", "TORCH_HOME",
             "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.mark.slow
def test_train_stage_writes_nothing_into_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ray_temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    params = {
        "profile": "shapes", "seeds": [0], "models": ["vae"], "priors": ["trip_learnable"],
        "overrides": [*TINY, f"data.prepared_root={tmp_path / 'prepared'}"],
        "run_root": str(tmp_path / "runs"), "eval_root": str(tmp_path / "evals"),
        "report_root": str(tmp_path / "reports"), "plots_root": str(tmp_path / "plots"),
        "compute": {"ray_address": None, "cpus_per_run": 1.0, "max_parallel": 1, "temp_dir": ray_temp},
        "tracking": {"experiment": "home-test", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in REDIRECTS}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    try:
        done = subprocess.run([sys.executable, "-m", "stages.train", "--params", str(tmp_path / "params.yaml")],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (tmp_path / "runs/shapes/vae-trip_learnable-s0/complete.json").exists()
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], f"the stage wrote into HOME: {written}"


@pytest.mark.parametrize(
    "environment, local, gets_token",
    [
        ({}, True, True),
        ({"RAY_AUTH_MODE": "token"}, True, True),  # token mode alone: Ray would write ~/.ray/auth_token
        ({"RAY_AUTH_MODE": "disabled"}, True, False),
        ({"RAY_AUTH_TOKEN": "abc"}, True, False),  # the user's own token wins
        ({"RAY_AUTH_TOKEN_PATH": "/some/file"}, True, False),
        ({}, False, False),  # joining a cluster: its token comes from the user's environment, as it is
    ],
)
def test_a_local_session_brings_its_own_token_unless_the_user_has_one(monkeypatch, environment, local, gets_token):
    from pipeline.ray_runner import ComputeConfig, _session_env

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    for var, value in environment.items():
        monkeypatch.setenv(var, value)
    env = _session_env(ComputeConfig(ray_address=None if local else "127.0.0.1:6379"))
    assert ("RAY_AUTH_TOKEN" in env) == gets_token
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    if gets_token:
        assert len(env["RAY_AUTH_TOKEN"]) == 64 and env["RAY_AUTH_TOKEN"] != _session_env(ComputeConfig())["RAY_AUTH_TOKEN"]
