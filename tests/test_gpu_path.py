"""The GPU path of training, reached on the CPU where it can be (issue 12), and on CUDA where there is one.

* checkpoints hold the run device's CUDA RNG state only, and restore across CPU and GPU;
* the resolved device is logged and recorded in complete.json;
* deterministic mode and the process-wide backend switches;
* no host-device synchronisation in a training step: on the CPU, a count of the calls that would
  synchronise on a GPU (``.item()``, ``.tolist()``, ``bool(tensor)``, ...) made by trip's code while
  the GPU branch of the input checks is taken; on CUDA, ``torch.cuda.set_sync_debug_mode("error")``;
* the speed switches: bf16 autocast gives finite losses with the prior and the gradient penalty in
  float32, a resident dataset gives the same batches, channels_last the same losses, compile trains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from trip import train
from trip.config import ConfigError, load_config
from trip.models.gan import gradient_penalty
from trip.priors import base
from trip.priors.trip_prior import TRIPPrior
from trip.profiles import merge, resolve
from trip.train import load_data, load_labels, read_means, run, start_state, train_step

TRIP_DIR = str(Path(train.__file__).resolve().parent)
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _restore_backends():
    """Runs set process-wide switches (deterministic algorithms, cuDNN benchmark): undo them after each test."""
    deterministic, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _cfg(profile: dict, tmp_path, model: str, prior: str, *overrides: str):
    """A tiny run config; the conditional models get their own prior and half their labels hidden."""
    if model in ("vae_trip_cond", "cvae"):
        prior = {"name": "normal" if model == "cvae" else "trip"}
        raw = merge(profile["base"], {"model": {"name": model}, "prior": prior, "labels": {"missing": 0.5},
                                      "run_dir": str(tmp_path / "runs" / model)})
        return load_config(raw, list(overrides))
    return resolve(profile, model, prior, seed=0, run_root=tmp_path / "runs", overrides=list(overrides))


def _state(cfg, device="cpu"):
    split, _ = load_data(cfg)
    images = torch.from_numpy(split.images.copy())
    labels = load_labels(cfg, split) if cfg.conditional else None
    state = start_state(cfg, images, labels, torch.device(device))
    state.model.train()
    return state


# -- checkpoints and the device -----------------------------------------------------------
def test_checkpoints_hold_the_cuda_rng_state_of_the_run_device_only(monkeypatch):
    asked, zeros = [], torch.zeros(8, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or zeros)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state was saved"))
    assert "cuda" not in train.rng_state(torch.device("cpu"))
    state = train.rng_state(torch.device("cuda:1"))
    assert asked == [torch.device("cuda:1")] and torch.equal(state["cuda"], zeros)


@pytest.mark.parametrize(
    "device,saved,restored",
    [
        ("cpu", torch.ones(8, dtype=torch.uint8), None),  # written on a GPU, resumed on the CPU
        ("cuda:0", None, None),  # written on the CPU, resumed on a GPU
        ("cuda:0", torch.ones(8, dtype=torch.uint8), 1),
        ("cuda:0", [torch.ones(8, dtype=torch.uint8) * 2, torch.ones(8, dtype=torch.uint8)], 2),  # older: all GPUs
        ("cuda:1", [torch.ones(8, dtype=torch.uint8)], None),  # older, from a task that saw one GPU
    ],
)
def test_a_cuda_rng_state_is_restored_on_its_device_only(monkeypatch, device, saved, restored):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((int(state[0]), device)))
    state = train.rng_state(torch.device("cpu"))
    if saved is not None:
        state["cuda"] = saved
    train.set_rng_state(state, torch.device(device))
    assert calls == ([] if restored is None else [(restored, torch.device(device))])


def test_a_checkpoint_with_a_cuda_rng_state_resumes_on_the_cpu_exactly(tiny_profile, tmp_path):
    profile = tiny_profile(tmp_path)
    profile["base"]["train"].update(steps=4, checkpoint_every=100)
    full = resolve(profile, "wgan_gp", "trip_learnable", seed=2, run_root=tmp_path / "a")
    parts = resolve(profile, "wgan_gp", "trip_learnable", seed=2, run_root=tmp_path / "b")
    run(full, progress=False)
    run(parts, stop_after=2, progress=False)
    path = Path(parts.run_dir) / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)
    saved["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as a GPU run writes it
    torch.save(saved, path)
    run(parts, progress=False)
    a, b = train.load_run(full.run_dir)[1].state_dict(), train.load_run(parts.run_dir)[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_resolved_device_is_logged_and_recorded(tiny_profile, tmp_path, caplog):
    cfg = resolve(tiny_profile(tmp_path), "vae", "normal", 0, tmp_path / "runs", overrides=["device=auto"])
    with caplog.at_level(logging.INFO, logger="trip.train"):
        run(cfg, progress=False)
    expected = "cuda" if CUDA else "cpu"  # resolve_device("auto") gives the plain type
    assert any(r.getMessage().endswith(f" on {expected}") or f" on {expected} (" in r.getMessage()
               for r in caplog.records if r.getMessage().startswith("training "))
    assert json.loads((Path(cfg.run_dir) / "complete.json").read_text())["device"] == expected


# -- deterministic mode ----------------------------------------------------------------------
def test_deterministic_mode_sets_the_backends_and_the_next_run_unsets_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg = load_config({"train": {"deterministic": True, "cudnn_benchmark": True}})
    train.configure_backends(cfg.train)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    train.configure_backends(load_config({"train": {"cudnn_benchmark": True}}).train)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


@pytest.mark.parametrize("model,prior", [("vae", "trip_learnable"), ("wgan_gp", "trip_learnable")])
def test_deterministic_runs_train_and_resume_exactly(tiny_profile, tmp_path, model, prior):
    """No op of the training step lacks a deterministic implementation (on a GPU: the CUDA ones)."""
    profile = tiny_profile(tmp_path)
    profile["base"]["train"].update(steps=4, checkpoint_every=100, deterministic=True)
    profile["base"]["device"] = "cuda" if CUDA else "cpu"
    full = resolve(profile, model, prior, seed=1, run_root=tmp_path / "a")
    parts = resolve(profile, model, prior, seed=1, run_root=tmp_path / "b")
    run(full, progress=False)
    run(parts, stop_after=2, progress=False)
    run(parts, progress=False)
    a, b = train.load_run(full.run_dir)[1].state_dict(), train.load_run(parts.run_dir)[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- no host-device synchronisation in a step -------------------------------------------------
SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")
STEP_CASES = [("vae", "normal"), ("vae", "trip_learnable"), ("wgan", "normal"), ("wgan", "trip_learnable"),
              ("wgan_gp", "normal"), ("wgan_gp", "trip_learnable"), ("vae_trip_cond", None), ("cvae", None)]


@contextlib.contextmanager
def count_reads(monkeypatch):
    """Count the calls of trip's code that read a tensor back to the host (they wait for a GPU)."""
    calls, active = [], [True]
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if active[0] and caller.startswith(TRIP_DIR):  # torch's bookkeeping (Adam's CPU step count) is not ours
                calls.append(f"{_name} at {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    yield calls
    active[0] = False


@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("model,prior", STEP_CASES)
def test_a_training_step_reads_nothing_back(tiny_profile, tmp_path, monkeypatch, model, prior, amp):
    cfg = _cfg(tiny_profile(tmp_path), tmp_path, model, prior, f"train.amp={amp}", "train.resident_data=true")
    state, sums = _state(cfg), {}
    train_step(cfg, state, sums)  # the first step builds optimiser state
    monkeypatch.setattr(base, "checks_now", lambda t: False)  # the input checks take the GPU branch
    with count_reads(monkeypatch) as calls:
        for _ in range(3):
            train_step(cfg, state, sums)
    assert calls == []
    means = read_means(sums, 4)  # the one read, at log time
    assert means and all(torch.isfinite(torch.tensor(v)) for v in means.values())


@needs_cuda
@pytest.mark.parametrize("resident", [True, False])
@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("model,prior", STEP_CASES)
def test_a_cuda_training_step_never_synchronises(tiny_profile, tmp_path, model, prior, amp, resident):
    cfg = _cfg(tiny_profile(tmp_path), tmp_path, model, prior, f"train.amp={amp}", f"train.resident_data={resident}")
    state, sums = _state(cfg, "cuda"), {}
    for _ in range(2):  # optimiser state, cuBLAS handles, cached index tensors
        train_step(cfg, state, sums)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(cfg, state, sums)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in read_means(sums, 5).values())


def test_the_checks_gpu_branch_still_fails_on_bad_codes(monkeypatch):
    monkeypatch.setattr(base, "checks_now", lambda t: False)
    with pytest.raises(RuntimeError, match="input check failed"):  # torch._assert_async raises at once on the CPU
        TRIPPrior(3, 4, 2).log_prob(torch.tensor([[0.0, float("nan"), 0.0]]))


# -- the speed switches --------------------------------------------------------------------
def test_amp_takes_none_or_bf16():
    with pytest.raises(ConfigError, match="train.amp"):
        load_config({"train": {"amp": "fp16"}})


@pytest.mark.parametrize("model,prior", [("vae", "trip_learnable"), ("wgan", "normal"), ("wgan_gp", "trip_learnable"),
                                         ("vae_trip_cond", None)])
def test_a_bf16_run_gives_finite_losses(tiny_profile, tmp_path, model, prior):
    cfg = _cfg(tiny_profile(tmp_path), tmp_path, model, prior, "train.amp=bf16", "train.steps=4")
    result = run(cfg, progress=False)
    lines = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(torch.isfinite(torch.tensor(v)) for ln in lines for v in ln.values())
    assert result.final_metrics["step"] == 4


def test_under_bf16_the_networks_give_float32_and_the_prior_and_penalty_compute_in_float32(tiny_profile, tmp_path):
    cfg = _cfg(tiny_profile(tmp_path), tmp_path, "wgan_gp", "trip_learnable", "train.amp=bf16")
    state = _state(cfg)
    gan, seen = state.model, []
    inner = [m for m in gan.critic.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    inner.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    x = state.next_batch()[0]
    with state.autocast():
        z = gan.prior.sample(x.shape[0])
        fake = gan.generator(z)
        assert z.dtype == torch.float32 and fake.dtype == torch.float32  # a hook casts the network's output
        assert gan.critic(x).dtype == torch.float32 and seen[-1] == torch.bfloat16  # inside: bf16
        assert gan.prior.log_prob(z).dtype == torch.float32
        assert gradient_penalty(gan.critic, x, fake).dtype == torch.float32
        assert seen[-1] == torch.float32  # the penalty's critic pass


def test_a_resident_dataset_gives_the_same_batches(tiny_profile, tmp_path):
    devices = ["cpu"] + (["cuda"] if CUDA else [])
    for model in ("vae", "vae_trip_cond"):
        reference = None
        for device in devices:
            for resident in (False, True):
                cfg = _cfg(tiny_profile(tmp_path), tmp_path, model, "normal", f"train.resident_data={resident}")
                state = _state(cfg, device)
                batches = [[t.cpu() for t in state.next_batch()] for _ in range(2 * state.batches.per_epoch + 1)]
                if reference is None:
                    reference = batches
                assert all(torch.equal(a, b) for x, y in zip(reference, batches) for a, b in zip(x, y))
                assert state.batches.images.device.type == (device if resident else "cpu")


@pytest.mark.parametrize("model,prior", [("vae", "trip_learnable"), ("wgan_gp", "normal")])
def test_channels_last_gives_the_same_losses(tiny_profile, tmp_path, model, prior):
    means = []
    for channels_last in (False, True):
        cfg = _cfg(tiny_profile(tmp_path), tmp_path, model, prior, f"train.channels_last={channels_last}")
        state, sums = _state(cfg), {}
        for _ in range(3):
            train_step(cfg, state, sums)
        if channels_last:
            assert state.next_batch()[0].is_contiguous(memory_format=torch.channels_last)
        means.append(read_means(sums, 3))
    assert means[0].keys() == means[1].keys()
    for k in means[0]:
        assert means[1][k] == pytest.approx(means[0][k], rel=1e-4, abs=1e-5), k


def test_compile_compiles_each_network_and_the_penalty_runs_eagerly(tiny_profile, tmp_path, monkeypatch):
    """WGAN-GP: a compiled critic cannot be differentiated twice, so its penalty pass runs eagerly."""
    compiled, original = [], torch.nn.Module.compile

    def compile_cheaply(self, *args, **kwargs):  # graphs captured and differentiated as on a GPU, no C++ build
        compiled.append(type(self).__name__)
        return original(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_cheaply)
    cfg = _cfg(tiny_profile(tmp_path), tmp_path, "wgan_gp", "trip_learnable", "train.compile=true", "train.steps=2")
    result = run(cfg, progress=False)
    assert len(compiled) == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.final_metrics.values())
    _, model = train.load_run(cfg.run_dir)  # same state_dict keys as an uncompiled run
    assert not any("_orig_mod" in k for k in model.state_dict())
