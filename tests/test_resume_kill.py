"""Resume, proven: a training process is SIGKILLed between two checkpoints, and the same command is run again.

``tests/test_train.py``'s resume tests stop a run with ``stop_after``, which
writes a checkpoint exactly at the stop step, and compare only the end state,
which a restart from scratch also reaches. Here:

* the first ``python -m trip.train ...`` is killed with SIGKILL while it is in
  the middle of a step, after the metrics of steps past its last checkpoint
  were written (so ``_truncate_metrics`` has something to drop);
* the same command, run again, must log ``resuming <dir> at step <last
  checkpoint>`` and then log only the remaining steps;
* ``metrics.jsonl`` ends with each step exactly once;
* the final checkpoint equals an uninterrupted run's bit for bit (CPU).

The kill point is made deterministic, not raced: the first process runs with
a ``sitecustomize`` on its PYTHONPATH (the command line is the same) that
registers a global optimiser-step pre-hook. Once the metrics of step
``KILL_AFTER`` are on disk, the next optimiser step announces itself in a flag
file and blocks; the test then SIGKILLs the process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trip.config import PriorConfig, TrainConfig
from trip.profiles import read_profile, resolve
from trip.train import load_data

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY = 10, 4
TIMEOUT = 120  # seconds for any one process; a tiny run takes a few

PAUSE_HOOK = textwrap.dedent(
    '''
    """Test hook: block the first optimiser step after step TRIP_TEST_PAUSE_AFTER is logged."""
    import json, os, time
    from pathlib import Path

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    _metrics = Path(os.environ["TRIP_TEST_PAUSE_METRICS"])
    _after = int(os.environ["TRIP_TEST_PAUSE_AFTER"])
    _flag = Path(os.environ["TRIP_TEST_PAUSE_FLAG"])


    def _pause_when_due(optimizer, args, kwargs):
        if not _metrics.exists():
            return None
        lines = [ln for ln in _metrics.read_text().splitlines() if ln.strip()]
        if lines and json.loads(lines[-1])["step"] >= _after:
            _flag.write_text(str(os.getpid()))
            while True:  # until SIGKILL
                time.sleep(60)
        return None


    register_optimizer_step_pre_hook(_pause_when_due)
    '''
)


def _reinit_overrides(first_step: int) -> list[str]:
    """A VAE-TRIP re-fit once ``first_step`` optimiser steps are done (= after epoch 1 here), and no repeats.

    Written against whichever schedule PriorConfig has: counted in steps
    (``reinit_first_step``/``reinit_every_steps``) or in epochs (``reinit_first``/``reinit_every``).
    """
    names = {f.name for f in dataclasses.fields(PriorConfig)}
    if "reinit_first_step" in names:
        return [f"prior.reinit_first_step={first_step}", "prior.reinit_every_steps=0"]
    return ["prior.reinit_first=1", "prior.reinit_every=0"]  # 96 images / batch 16: epoch 1 ends at step 6


def _overrides(prepared: Path, extra: list[str]) -> list[str]:
    overrides = [
        f"train.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1",
        "train.batch_size=16", "train.sample_count=4", "train.n_critic=2",
        "data.image_size=16", "data.options.n_train=96", "data.options.n_test=32", f"data.prepared_root={prepared}",
        "model.latent_dim=4", "prior.n_components=3", "prior.core_size=2", "prior.reinit_codes=64",
        "device=cpu", *extra,
    ]
    if "fd_every" in {f.name for f in dataclasses.fields(TrainConfig)}:
        overrides.append("train.fd_every=0")  # no FD probe along training: it needs thousands of reference images
    return overrides


def _command(model: str, run_root: Path, prepared: Path, extra: list[str]) -> list[str]:
    overrides = _overrides(prepared, extra)
    return [sys.executable, "-m", "trip.train", "--profile", "configs/shapes.yaml", "--model", model,
            "--prior", "trip_learnable", "--seed", "2", "--run-root", str(run_root), "--set", *overrides]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}  # one thread: same op order in every process
    return env


def _run_dir(run_root: Path, model: str) -> Path:
    return run_root / "shapes" / f"{model}-trip_learnable-s2"


def _kill_between_checkpoints(cmd: list[str], metrics: Path, kill_after: int, tmp_path: Path) -> None:
    """Start ``cmd``; once it has logged step ``kill_after`` and entered the next step, SIGKILL it."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(PAUSE_HOOK)
    flag = tmp_path / "paused"
    pythonpath = os.pathsep.join([str(hook_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = _env(PYTHONPATH=pythonpath, TRIP_TEST_PAUSE_METRICS=str(metrics),
               TRIP_TEST_PAUSE_AFTER=str(kill_after), TRIP_TEST_PAUSE_FLAG=str(flag))
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not flag.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n"
                            + (tmp_path / "first.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("the run did not reach the kill point in time")
            time.sleep(0.05)
        assert int(flag.read_text()) == proc.pid
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _steps(metrics: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln.strip()]


def _assert_bit_identical(a, b, where: str = "checkpoint") -> None:
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_bit_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bit_identical(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy arrays in the RNG state
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all(), where
    else:
        assert a == b, where


def _kill_resume_and_compare(tmp_path: Path, model: str, kill_after: int, extra: list[str]) -> str:
    """The whole protocol; returns the resumed process's log."""
    prepared = tmp_path / "prepared"
    # Prepare the data here, once, so that the two first processes do not race to write it.
    load_data(resolve(read_profile(PROJECT_ROOT / "configs/shapes.yaml"), model, "trip_learnable", 2,
                      tmp_path / "scratch", _overrides(prepared, extra)))
    whole_cmd = _command(model, tmp_path / "whole", prepared, extra)
    parts_cmd = _command(model, tmp_path / "parts", prepared, extra)
    whole_dir, parts_dir = _run_dir(tmp_path / "whole", model), _run_dir(tmp_path / "parts", model)
    metrics = parts_dir / "metrics.jsonl"

    uninterrupted = subprocess.Popen(whole_cmd, cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
    try:
        # Meanwhile the first attempt at the same run, killed between two checkpoints.
        _kill_between_checkpoints(parts_cmd, metrics, kill_after, tmp_path)
        out, _ = uninterrupted.communicate(timeout=TIMEOUT)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
    assert uninterrupted.returncode == 0, out[-3000:]

    last_checkpoint = (kill_after // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
    assert 0 < last_checkpoint < kill_after, "the kill must fall between two checkpoints"
    state = torch.load(parts_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == last_checkpoint
    assert _steps(metrics) == list(range(1, kill_after + 1))  # lines past the checkpoint, to be dropped
    assert not (parts_dir / "complete.json").exists()

    # The same command again.
    again = subprocess.run(parts_cmd, cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    resumed = re.findall(r"resuming \S+ at step (\d+)", log)
    assert resumed == [str(last_checkpoint)], f"expected a resume at step {last_checkpoint}:\n{log[-3000:]}"
    trained = [int(s) for s in re.findall(rf"step (\d+)/{STEPS}\b", log)]
    assert trained == list(range(last_checkpoint + 1, STEPS + 1)), "ran other steps than the remaining ones"
    assert (parts_dir / "complete.json").exists()

    steps = _steps(metrics)
    assert steps == list(range(1, STEPS + 1)), f"each step exactly once, in order: {steps}"

    a = torch.load(whole_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    b = torch.load(parts_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert a["step"] == b["step"] == STEPS
    _assert_bit_identical(a, b)
    return log


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_rerun_resumes_exactly(tmp_path):
    """WGAN-GP with a learnable TRIP (critic, generator and REINFORCE prior): killed during step 7, checkpoint at 4."""
    _kill_resume_and_compare(tmp_path, "wgan_gp", kill_after=6, extra=[])


@pytest.mark.slow
def test_sigkill_across_a_vae_trip_reinitialisation_resumes_exactly(tmp_path):
    """VAE-TRIP killed during step 8: the checkpoint is at step 4, the prior re-fit at step 6 lies in between.

    The resumed process must redo that re-fit (same codes, same GMM seeds,
    prior moments dropped) to end bit-identical.
    """
    log = _kill_resume_and_compare(tmp_path, "vae", kill_after=7, extra=_reinit_overrides(6))
    refits = re.findall(r"re-initialised the TRIP prior[^\n]*", log)
    assert len(refits) == 1, f"the resumed run must redo exactly the step-6 re-fit, got: {refits}"
    first = (tmp_path / "first.log").read_text()
    assert len(re.findall(r"re-initialised the TRIP prior", first)) == 2  # at step 0 and at step 6, before the kill
