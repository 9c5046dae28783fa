"""The shipped profiles: every run resolves, and the paper profiles build the paper's networks and train."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trip.config import ConfigError
from trip.data.celeba import ATTRIBUTES
from trip.profiles import read_profile, resolve, runs
from trip.train import load_run, run

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
    assert (gan.model.latent_dim, gan.prior.core_size, gan.train.gp_weight, gan.train.n_critic) == (128, 40, 10.0, 5)
    assert vae.model.arch == gan.model.arch == "paper" and vae.data.image_size == 64


def test_unknown_profile_entries_are_named(tmp_path):
    profile = read_profile(CONFIGS / "shapes.yaml")
    with pytest.raises(ConfigError, match="priors.trip: not in profile 'shapes'"):
        resolve(profile, "vae", "trip", 0)
    (tmp_path / "bad.yaml").write_text("base: {}\nmodels: {vae: {}}\npriors: {normal: {}}\ngrids: {}\n")
    with pytest.raises(ConfigError, match="grids: unknown profile section"):
        read_profile(tmp_path / "bad.yaml")


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
