"""Shared fixtures: a tiny profile that trains any model x prior in a second."""

from __future__ import annotations

import pytest

PRIOR_VARIANTS = {
    "normal": {"name": "normal"},
    "gmm_fixed": {"name": "gmm", "learnable": False},
    "gmm_learnable": {"name": "gmm", "learnable": True},
    "trip_fixed": {"name": "trip", "learnable": False},
    "trip_learnable": {"name": "trip", "learnable": True},
}


def _tiny_profile(root) -> dict:
    return {
        "name": "tiny",
        "base": {
            "data": {"name": "shapes", "image_size": 16, "options": {"n_train": 96, "n_test": 32, "seed": 0},
                     "prepared_root": str(root / "prepared")},
            "model": {"arch": "small", "latent_dim": 4},
            "prior": {"n_components": 3, "core_size": 2, "reinit_codes": 64},
            "train": {"steps": 3, "batch_size": 16, "log_every": 1, "checkpoint_every": 2, "sample_count": 4},
            "device": "cpu",
        },
        "models": {
            "vae": {"model": {"name": "vae"}, "train": {"lr": 1e-3}},
            "wgan": {"model": {"name": "wgan"}, "train": {"optimizer": "rmsprop", "lr": 5e-5, "n_critic": 2}},
            "wgan_gp": {"model": {"name": "wgan_gp"}, "train": {"lr": 1e-4, "betas": [0.5, 0.9], "n_critic": 2}},
        },
        "priors": PRIOR_VARIANTS,
    }



@pytest.fixture
def tiny_profile():
    """A factory: tiny_profile(root) -> a profile dict writing under ``root``."""
    return _tiny_profile
