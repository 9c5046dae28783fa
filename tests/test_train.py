"""Training runs end to end on tiny data: every model x prior, resume, run directories, bad configs."""

from __future__ import annotations

import json

import pytest
import torch

from trip.config import ConfigError
from trip.models import MODELS
from trip.profiles import resolve
from trip.train import load_run, run

PRIOR_VARIANTS = ["normal", "gmm_fixed", "gmm_learnable", "trip_fixed", "trip_learnable"]


@pytest.mark.parametrize("prior", PRIOR_VARIANTS)
@pytest.mark.parametrize("model", ["vae", "wgan", "wgan_gp"])
def test_every_model_and_prior_trains(tiny_profile, tmp_path, model, prior):
    cfg = resolve(tiny_profile(tmp_path), model, prior, seed=0, run_root=tmp_path / "runs")
    torch.manual_seed(cfg.seed)
    initial = MODELS.get(model)(cfg, 3).state_dict()
    result = run(cfg, progress=False)
    run_dir = result.run_dir
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "samples.png", "complete.json"):
        assert (run_dir / name).exists(), name
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(v)) for ln in lines for v in ln.values())
    _, trained = load_run(run_dir)
    final = trained.state_dict()
    networks = [k for k in final if not k.startswith("prior.") and final[k].is_floating_point()]
    assert any(not torch.equal(initial[k], final[k]) for k in networks)
    prior_keys = [k for k in final if k.startswith("prior.") and k != "prior._anchor"]
    changed = [k for k in prior_keys if not torch.equal(initial[k], final[k])]
    if prior.endswith("_learnable"):
        assert changed, "a learnable prior must move"
    else:
        assert not changed, f"a fixed prior moved: {changed}"


def test_resume_after_stop_equals_uninterrupted_run(tiny_profile, tmp_path):
    profile = tiny_profile(tmp_path)
    profile["base"]["train"].update(steps=6, checkpoint_every=100)
    full = resolve(profile, "wgan_gp", "trip_learnable", seed=3, run_root=tmp_path / "a")
    run(full, progress=False)
    parts = resolve(profile, "wgan_gp", "trip_learnable", seed=3, run_root=tmp_path / "b")
    assert run(parts, stop_after=4, progress=False).steps == 4
    assert not (parts_dir := tmp_path / "b" / "tiny" / "wgan_gp-trip_learnable-s3" / "complete.json").exists()
    resumed = run(parts, progress=False)
    assert parts_dir.exists() and resumed.steps == 6
    a, b = load_run(full.run_dir)[1].state_dict(), load_run(parts.run_dir)[1].state_dict()
    # Same ops in the same order on CPU: the resumed run is bit-identical.
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = (tmp_path / "a/tiny/wgan_gp-trip_learnable-s3/metrics.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b/tiny/wgan_gp-trip_learnable-s3/metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "steps_per_s"} for x in lines]  # noqa: E731
    assert strip(log_a) == strip(log_b)


def test_vae_trip_resume_across_reinitialisation(tiny_profile, tmp_path):
    """Epochs are 6 steps here, so the paper's re-initialisation after epoch 1 falls inside the run."""
    profile = tiny_profile(tmp_path)
    profile["base"]["train"].update(steps=9, checkpoint_every=100)
    full = resolve(profile, "vae", "trip_learnable", seed=1, run_root=tmp_path / "a")
    parts = resolve(profile, "vae", "trip_learnable", seed=1, run_root=tmp_path / "b")
    run(full, progress=False)
    run(parts, stop_after=5, progress=False)
    run(parts, progress=False)
    a, b = load_run(full.run_dir)[1].state_dict(), load_run(parts.run_dir)[1].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_complete_runs_are_skipped_and_foreign_dirs_refused(tiny_profile, tmp_path):
    cfg = resolve(tiny_profile(tmp_path), "vae", "normal", seed=0, run_root=tmp_path / "runs")
    assert not run(cfg, progress=False).skipped
    assert run(cfg, progress=False).skipped
    other = resolve(tiny_profile(tmp_path), "vae", "normal", seed=0, run_root=tmp_path / "runs",
                    overrides=["train.lr=0.01"])
    with pytest.raises(ConfigError, match="run_dir: .* holds a run of another config"):
        run(other, progress=False)


@pytest.mark.parametrize(
    "override,message",
    [
        (["model.name=vaee"], "model.name: unknown name 'vaee'"),
        (["prior.name=tripp"], "prior.name: unknown name 'tripp'"),
        (["prior.dim=5"], "prior.dim: 5 does not match model.latent_dim 4"),
        (["train.lr=-0.1"], "train.lr: must be > 0"),
        (["data.image_size=24"], "data.image_size"),
        (["train.stpes=3"], "train.stpes: unknown key"),
        (["train.steps=ten"], "train.steps: expected int"),
        (["data.options.colour=1"], "data.options.colour: not an option"),
        (["device=tpu"], "device: must be auto"),
        (["prior.reinit_codes=2"], "prior.reinit_codes: 2 codes cannot fit 3 components"),
    ],
)
def test_bad_configs_name_the_key(tiny_profile, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(tiny_profile(tmp_path), "vae", "trip_learnable", seed=0, overrides=override)


def test_cli_trains_a_run_from_a_profile(tiny_profile, tmp_path):
    import subprocess
    import sys

    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_profile(tmp_path)))
    cmd = [sys.executable, "-m", "trip.train", "--profile", str(path), "--model", "wgan_gp",
           "--prior", "trip_fixed", "--run-root", str(tmp_path / "runs")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "trained 3 steps" in out.stdout
    bad = subprocess.run(cmd + ["--set", "train.lr=-1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "train.lr: must be > 0" in bad.stderr
