"""The shipped profiles: every run resolves, and the paper profiles build the paper's networks and train."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trip.config import ConfigError
from trip.data.celeba import ATTRIBUTES
from trip.profiles import read_profile, resolve, resolve_conditional, runs
from trip.train import dry_run, load_run, reinit_steps, run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROFILES = ["shapes", "cifar10", "celeba64"]


@pytest.mark.parametrize("name", PROFILES)
def test_every_run_of_every_profile_resolves(name):
    profile = read_profile(CONFIGS / f"{name}.yaml")
    grid = runs(profile, seeds=[0])
    assert len(grid) == 15
    assert {p for _, p, _ in grid} == {"normal", "gmm_fixed", "gmm_learnable", "trip_fixed", "trip_learnable"}
    for model, prior, seed in grid:
        cfg = resolve(profile, model, prior, seed)
        assert cfg.model.name == model and cfg.run_dir.endswith(f"{model}-{prior}-s0")


def test_paper_profiles_carry_the_papers_sizes():
    celeba = read_profile(CONFIGS / "celeba64.yaml")
    vae = resolve(celeba, "vae", "trip_learnable", 0)
    gan = resolve(celeba, "wgan_gp", "trip_learnable", 0)
    assert (vae.model.latent_dim, vae.prior.core_size, vae.prior.n_components) == (100, 20, 10)
    assert (gan.model.latent_dim, gan.prior.core_size, gan.train.gp_weight, gan.train.n_critic) == (128, 40, 10.0, 4)
    assert vae.model.arch == gan.model.arch == "paper" and vae.data.image_size == 64


def test_unknown_profile_entries_are_named(tmp_path):
    profile = read_profile(CONFIGS / "shapes.yaml")
    with pytest.raises(ConfigError, match="priors.trip: not in profile 'shapes'"):
        resolve(profile, "vae", "trip", 0)
    (tmp_path / "bad.yaml").write_text("base: {}\nmodels: {vae: {}}\npriors: {normal: {}}\ngrids: {}\n")
    with pytest.raises(ConfigError, match="grids: unknown profile section"):
        read_profile(tmp_path / "bad.yaml")


# -- the paper profiles' schedules and protocols, checked without data (what --dry-run prints) --------
PAPER = {"celeba64": {"train": 182_339, "test": 20_260}, "cifar10": {"train": 50_000, "test": 10_000}}


def _plan(profile: str, model: str, prior: str, overrides: list[str] | None = None) -> dict:
    return dry_run(resolve(read_profile(CONFIGS / f"{profile}.yaml"), model, prior, 0, overrides=overrides))


@pytest.mark.parametrize("profile", PAPER)
def test_paper_vae_trains_80k_steps_and_refits_at_the_papers_steps(profile):
    schedule = _plan(profile, "vae", "trip_learnable")["schedule"]
    assert schedule["steps"] == schedule["batches"] == 80_000 and "critic_updates" not in schedule
    assert schedule["reinit_steps"] == [0, 10_000, 60_000]  # train_vaes.py: before blocks 1 and 6 of 8 x 10k
    assert schedule["train_images"] == PAPER[profile]["train"]
    assert schedule["batches_per_epoch"] == PAPER[profile]["train"] // 128


@pytest.mark.parametrize("profile", PAPER)
@pytest.mark.parametrize("model", ["wgan", "wgan_gp"])
def test_paper_gans_make_20k_generator_and_80k_critic_updates(profile, model):
    """train_wgan.py: 100 x 1k iterations of one batch each, the generator updated on every 5th."""
    schedule = _plan(profile, model, "trip_learnable")["schedule"]
    assert (schedule["generator_updates"], schedule["critic_updates"], schedule["batches"]) == (20_000, 80_000, 80_000)
    assert schedule["reinit_steps"] == [] and schedule["train_images"] == PAPER[profile]["train"]
    assert schedule["batches_per_epoch"] == PAPER[profile]["train"] // 256


def test_celeba_offers_the_official_partition_beside_the_papers_random_split():
    plan = _plan("celeba64", "vae", "trip_learnable", ["data.options.partition=official"])
    assert (plan["schedule"]["train_images"], plan["schedule"]["batches_per_epoch"]) == (162_770, 1271)
    assert plan["eval"]["likelihood"]["test_images"] == 19_962  # the whole official test partition
    assert _plan("celeba64", "vae", "normal")["config"]["data"]["options"] == {"partition": "random"}


@pytest.mark.parametrize("profile", PAPER)
def test_paper_eval_protocol_has_the_issues_sample_counts(profile):
    vae, gan = _plan(profile, "vae", "normal")["eval"], _plan(profile, "wgan_gp", "normal")["eval"]
    likelihood = vae["likelihood"]
    assert likelihood["test_images"] == likelihood["test_split_size"] == PAPER[profile]["test"] >= 5000
    assert likelihood["iwae_k"] == 100 and "bits per dimension" in likelihood["units"]
    assert vae["fid"] == gan["fid"] and gan["fid"]["generated"] == gan["fid"]["reference_images"] >= 10_000
    assert gan["reversal"]["codes"] >= 8 * gan["reversal"]["latent_dim"] == 8 * 128
    assert gan["reversal"]["pag_reference"] == "N(0, I)"


def test_cifar10_fid_is_50k_samples_against_the_full_training_set():
    fid = _plan("cifar10", "wgan_gp", "trip_learnable")["eval"]["fid"]
    assert fid == {"generated": 50_000, "reference_images": 50_000, "reference_split": "train",
                   "reference_split_size": 50_000}


@pytest.mark.parametrize("profile", PAPER)
def test_paper_optimisers(profile):
    profile = read_profile(CONFIGS / f"{profile}.yaml")
    wgan, gp, vae = (resolve(profile, m, "trip_learnable", 0).train for m in ("wgan", "wgan_gp", "vae"))
    assert (wgan.optimizer, wgan.lr, wgan.clip) == ("rmsprop", 5e-5, 0.01)  # Arjovsky et al. with clipping
    assert (gp.optimizer, gp.lr, gp.betas) == ("adam", 1e-4, [0.5, 0.9])
    assert (vae.optimizer, vae.lr, vae.betas) == ("adam", 3e-4, [0.9, 0.999])
    assert wgan.prior_betas == gp.prior_betas == vae.prior_betas == [0.9, 0.999]  # the prior's own Adam
    assert (wgan.prior_lr, gp.prior_lr, vae.prior_lr) == (1e-4, 1e-4, 3e-4)


@pytest.mark.parametrize("profile", PAPER)
def test_paper_gmm_has_d_times_n_components_of_std_exp_minus_half(profile):
    profile = read_profile(CONFIGS / f"{profile}.yaml")
    for model, components in (("vae", 1000), ("wgan", 1280), ("wgan_gp", 1280)):
        prior = resolve(profile, model, "gmm_learnable", 0).prior
        assert prior.n_components == components == 10 * resolve(profile, model, "normal", 0).model.latent_dim
        assert prior.init_std == pytest.approx(math.exp(-0.5))
        assert resolve(profile, model, "trip_learnable", 0).prior.n_components == 10  # TRIP keeps N = 10


@pytest.mark.parametrize("profile", PAPER)
def test_only_the_vae_with_learnable_trip_refits(profile):
    profile = read_profile(CONFIGS / f"{profile}.yaml")
    for model, prior, seed in runs(profile, [0]):
        expected = [0, 10_000, 60_000] if (model, prior) == ("vae", "trip_learnable") else []
        assert reinit_steps(resolve(profile, model, prior, seed)) == expected, (model, prior)


def test_celeba_conditional_vae_trip_refits_on_the_vaes_schedule():
    cfg = resolve_conditional(read_profile(CONFIGS / "celeba64.yaml"), "vae_trip_cond", 0.5, 0)
    assert reinit_steps(cfg) == [0, 10_000, 60_000]
    assert cfg.train.prior_betas == [0.9, 0.999] and cfg.train.steps == 80_000


def test_a_model_section_adjusts_a_prior_variant_for_that_model_only(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("models: {vae: {}, wgan: {model: {name: wgan}, priors: {gmm: {n_components: 7}}}}\n"
                    "priors: {gmm: {name: gmm}, trip: {name: trip}}\n")
    profile = read_profile(path)
    assert resolve(profile, "wgan", "gmm", 0).prior.n_components == 7
    assert resolve(profile, "vae", "gmm", 0).prior.n_components == 10
    assert resolve(profile, "wgan", "trip", 0).prior.n_components == 10
    path.write_text("models: {vae: {priors: {gmmm: {n_components: 7}}}}\npriors: {gmm: {name: gmm}}\n")
    with pytest.raises(ConfigError, match="models.vae.priors.gmmm: not a prior variant"):
        read_profile(path)


def _write_cifar(root: Path, per_batch: int = 8) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "labels": list(range(per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def _write_celeba(root: Path, count: int = 20) -> None:
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / "img_align_celeba" / name)
    rows = [f"{n} " + " ".join(rng.choice(["-1", "1"], len(ATTRIBUTES))) for n in names]
    (root / "list_attr_celeba.txt").write_text(f"{count}\n" + " ".join(ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    parts = [f"{n} {0 if i < count - 4 else 2}" for i, n in enumerate(names)]
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")


@pytest.mark.parametrize(
    "profile,model,writer,first_width,size",
    [
        ("cifar10", "vae", _write_cifar, 64, 32),
        ("cifar10", "wgan_gp", _write_cifar, 64, 32),
        ("celeba64", "vae", _write_celeba, 64, 64),
    ],
)
def test_paper_profiles_build_paper_networks_and_train(tmp_path, profile, model, writer, first_width, size):
    writer(tmp_path / "raw")
    overrides = [
        f"data.options.root={tmp_path / 'raw'}", f"data.prepared_root={tmp_path / 'prepared'}",
        "train.steps=1", "train.batch_size=4", "train.n_critic=1", "train.sample_count=4",
        "prior.reinit_codes=16", "device=cpu",
    ]
    cfg = resolve(read_profile(CONFIGS / f"{profile}.yaml"), model, "trip_learnable", 0, tmp_path / "runs", overrides)
    result = run(cfg, progress=False)
    assert result.steps == 1 and (result.run_dir / "complete.json").exists()
    _, net = load_run(result.run_dir)
    first_conv = next(m for m in net.modules() if m.__class__.__name__ == "Conv2d")
    assert first_conv.out_channels == first_width and net.prior.dim == cfg.model.latent_dim
    assert net.sample(2).shape == (2, 3, size, size)
