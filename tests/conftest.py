"""Shared fixtures: a tiny profile that trains any model x prior in a second, and a stand-in FID network."""

from __future__ import annotations

import pytest
import torch

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


class StubFeatures(torch.nn.Module):
    """InceptionV3's output convention with 6-d features: keeps FID tests off the real network and a 2048-d sqrtm."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 6, 1)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return [torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.proj(2 * x - 1)), 1)]


@pytest.fixture
def stub_features() -> torch.nn.Module:
    """A fresh stand-in for the FID feature network, in eval mode."""
    return StubFeatures().eval()
