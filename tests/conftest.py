"""Shared fixtures: a tiny profile that trains any model x prior in a second, and a stand-in FID network."""

from __future__ import annotations

import os
import secrets

import pytest
import torch

PRIOR_VARIANTS = {
    "normal": {"name": "normal"},
    "gmm_fixed": {"name": "gmm", "learnable": False},
    "gmm_learnable": {"name": "gmm", "learnable": True},
    "trip_fixed": {"name": "trip", "learnable": False},
    "trip_learnable": {"name": "trip", "learnable": True},
}


@pytest.fixture(scope="session", autouse=True)
def _ray_auth_token_inside_the_test_session(tmp_path_factory):
    """Keep Ray's auth token out of the home directory for the whole suite.

    Ray 2.60 turns token authentication on for any new local cluster and, if no
    token can be found, a plain ``ray.init()`` (e.g. the module-wide Ray of
    ``tests/pipeline/test_pipeline_tracking.py``) writes a fresh one to
    ``~/.ray/auth_token`` (``generate_and_save_token``, always under
    ``Path.home()``). A token file made here and named by ``RAY_AUTH_TOKEN_PATH``
    is found first, so nothing is written there. ``ray_session`` treats the
    variable as the user's own setting and uses it; tests of its own token
    (and of HOME staying empty) remove the variable from their subprocess's
    environment. A variable the user already set is left alone.
    """
    if any(var in os.environ for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        yield
        return
    path = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
        yield


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
