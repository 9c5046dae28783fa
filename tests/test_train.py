"""Training runs end to end on tiny data: every model x prior, resume, run directories, bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trip.config import ConfigError
from trip.models import MODELS
from trip.profiles import resolve
from trip import train
from trip.train import JointOptimizer, load_run, make_optimizers, refits_prior, reinit_due, reinit_steps, run

PRIOR_VARIANTS = ["normal", "gmm_fixed", "gmm_learnable", "trip_fixed", "trip_learnable"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


@pytest.mark.parametrize("prior_betas", [None, [0.9, 0.999]], ids=["prior-group", "prior-own-adam"])
def test_resume_after_stop_equals_uninterrupted_run(tiny_profile, tmp_path, prior_betas):
    profile = tiny_profile(tmp_path)
    profile["base"]["train"].update(steps=6, checkpoint_every=100, prior_betas=prior_betas)
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


@pytest.mark.parametrize("prior_betas", [None, [0.9, 0.999]], ids=["prior-group", "prior-own-adam"])
def test_vae_trip_resume_across_reinitialisation(tiny_profile, tmp_path, prior_betas):
    """Re-fits at steps 0, 4 and 7: the run stops after one and resumes before another."""
    profile = tiny_profile(tmp_path)
    profile["base"]["train"].update(steps=9, checkpoint_every=100, prior_betas=prior_betas)
    profile["base"]["prior"].update(reinit_first_step=4, reinit_every_steps=3)
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
        (["prior.reinit_first=1"], "prior.reinit_first: unknown key"),  # the old epoch-counted key
        (["prior.reinit_every_steps=-5"], "prior.reinit_every_steps: must be >= 0"),
        (["train.prior_betas=[0.9]"], "train.prior_betas: must be two numbers in"),
        (["train.prior_betas=[0.9, one]"], "train.prior_betas: must be two numbers in"),
        (["data.name=cifar10", "data.options={}", "train.batch_size=60000"],
         "train.batch_size: 60000 exceeds the 50000 training images"),
        (["data.name=celeba", "data.options={partition: paper}"],
         "data.options.partition: must be 'official' or 'random'"),
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


# -- the VAE-TRIP re-fit schedule, in optimiser steps ------------------------------------------
@pytest.mark.parametrize(
    "first,every,steps,expected",
    [
        (10000, 50000, 80000, [0, 10000, 60000]),  # the paper's code: before blocks 1 and 6 of 8 x 10k
        (312, 1560, 800, [0, 312]),
        (312, 0, 2000, [0, 312]),
        (0, 0, 100, [0]),
        (0, 30, 100, [0, 30, 60, 90]),
        (100, 7, 100, [0]),  # nothing at or after the last step
    ],
)
def test_reinit_steps_are_the_start_the_first_step_and_every_nth_after(tiny_profile, tmp_path, first, every,
                                                                          steps, expected):
    overrides = [f"prior.reinit_first_step={first}", f"prior.reinit_every_steps={every}", f"train.steps={steps}"]
    cfg = resolve(tiny_profile(tmp_path), "vae", "trip_learnable", 0, overrides=overrides)
    assert reinit_steps(cfg) == expected


def test_shapes_schedule_is_the_former_epoch_schedule():
    """configs/shapes.yaml: after epochs 1, 6, 11, ... of 312 batches (20,000 images / 64), as with epochs."""
    from trip.profiles import read_profile, resolve_conditional

    profile = read_profile(CONFIGS / "shapes.yaml")
    cfg = resolve(profile, "vae", "trip_learnable", 0, overrides=["train.steps=10000"])
    assert cfg.train.batch_size == 64 and cfg.data.options["n_train"] == 20000
    assert reinit_steps(cfg) == [312 * epoch for epoch in (0, 1, 6, 11, 16, 21, 26, 31)]
    cond = resolve_conditional(profile, "vae_trip_cond", 0.5, 0, overrides=["train.steps=10000"])
    assert reinit_steps(cond) == [0, 312]


@pytest.mark.parametrize("prior", PRIOR_VARIANTS)
@pytest.mark.parametrize("model", ["vae", "wgan", "wgan_gp"])
def test_only_vae_with_learnable_trip_refits(tiny_profile, tmp_path, model, prior):
    cfg = resolve(tiny_profile(tmp_path), model, prior, 0, overrides=["prior.reinit_first_step=2", "train.steps=9"])
    built = MODELS.get(model)(cfg, 3)
    refits = model == "vae" and prior == "trip_learnable"
    assert refits_prior(cfg) == reinit_due(cfg, built, 0) == reinit_due(cfg, built, 2) == refits
    assert reinit_steps(cfg) == ([0, 2] if refits else [])


def test_training_refits_the_prior_at_the_scheduled_steps(tiny_profile, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "reinit_prior", lambda model, opts, images, cfg, step, device: calls.append(step))
    overrides = ["train.steps=9", "prior.reinit_first_step=2", "prior.reinit_every_steps=3"]
    cfg = resolve(tiny_profile(tmp_path), "vae", "trip_learnable", 0, tmp_path / "runs", overrides)
    run(cfg, progress=False)
    assert calls == reinit_steps(cfg) == [0, 2, 5, 8]


# -- optimisers --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["vae", "wgan"])
def test_learnable_prior_gets_its_own_adam_with_prior_betas(tiny_profile, tmp_path, model):
    cfg = resolve(tiny_profile(tmp_path), model, "trip_learnable", 0,
                  overrides=["train.prior_betas=[0.9, 0.999]", "train.prior_lr=0.02"])
    net = MODELS.get(model)(cfg, 3)
    opt = make_optimizers(net, cfg)["model" if model == "vae" else "generator"]
    assert isinstance(opt, JointOptimizer)
    assert isinstance(opt.networks, torch.optim.RMSprop if model == "wgan" else torch.optim.Adam)
    assert isinstance(opt.prior, torch.optim.Adam)
    (group,) = opt.prior.param_groups
    assert group["betas"] == (0.9, 0.999) and group["lr"] == 0.02
    assert {id(p) for p in group["params"]} == {id(p) for p in net.prior.parameters()}
    network_params = {id(p) for g in opt.networks.param_groups for p in g["params"]}
    assert not network_params & {id(p) for p in net.prior.parameters()}


def test_without_prior_betas_the_prior_is_a_group_of_the_networks_optimiser(tiny_profile, tmp_path):
    cfg = resolve(tiny_profile(tmp_path), "wgan_gp", "trip_learnable", 0, overrides=["train.prior_lr=0.02"])
    opt = make_optimizers(MODELS.get("wgan_gp")(cfg, 3), cfg)["generator"]
    assert isinstance(opt, torch.optim.Adam)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 0.02] and opt.param_groups[1]["betas"] == (0.5, 0.9)
    fixed = resolve(tiny_profile(tmp_path), "wgan_gp", "trip_fixed", 0, overrides=["train.prior_betas=[0.9, 0.999]"])
    assert isinstance(make_optimizers(MODELS.get("wgan_gp")(fixed, 3), fixed)["generator"], torch.optim.Adam)


@pytest.mark.parametrize("prior_betas", [None, [0.9, 0.999]], ids=["prior-group", "prior-own-adam"])
def test_refit_forgets_the_priors_moments_and_keeps_the_networks(tiny_profile, tmp_path, prior_betas):
    overrides = [f"train.prior_betas={json.dumps(prior_betas)}"]
    cfg = resolve(tiny_profile(tmp_path), "vae", "trip_learnable", 0, overrides=overrides)
    torch.manual_seed(0)
    model = MODELS.get("vae")(cfg, 3)
    opts = make_optimizers(model, cfg)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    train.vae_step(model, opts, lambda: (images[:16].float() / 127.5 - 1,), cfg)
    opt = opts["model"]
    prior_state = opt.prior.state if prior_betas else opt.state
    network_state = opt.networks.state if prior_betas else opt.state
    assert all(p in prior_state for p in model.prior.parameters())
    train.reinit_prior(model, opts, images, cfg, 4, torch.device("cpu"))
    assert not any(p in prior_state for p in model.prior.parameters())
    assert all(p in network_state for p in model.encoder.parameters())


# -- --dry-run ---------------------------------------------------------------------------------
def test_dry_run_prints_one_json_object_and_touches_no_data(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "trip.train", "--profile", str(CONFIGS / "cifar10.yaml"), "--model", "vae",
           "--prior", "trip_learnable", "--dry-run", "--set", f"data.options.root={tmp_path / 'absent'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert set(plan) == {"config", "config_hash", "schedule", "eval"}
    assert plan["schedule"]["reinit_steps"] == [0, 10000, 60000] and plan["schedule"]["train_images"] == 50000
    assert plan["config"]["train"]["steps"] == 80000 and plan["eval"]["likelihood"]["test_images"] == 10000
    assert list(tmp_path.iterdir()) == []  # no run directory, no prepared data
    bad = subprocess.run(cmd + ["train.batch_size=50001"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "train.batch_size: 50001 exceeds the 50000 training images" in bad.stderr
