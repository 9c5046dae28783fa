"""The VAE likelihood part of eval.json: nats per image and bits per dimension, with their counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trip.config import load_config
from trip.data import Split
from trip.evaluate import EvalContext, likelihood_part
from trip.models import MODELS


def test_likelihood_reports_nats_and_bits_per_dimension_of_the_same_images():
    cfg = load_config({"data": {"image_size": 16}, "model": {"name": "vae", "latent_dim": 4},
                       "eval": {"likelihood_examples": 5, "iwae_k": 3}})
    torch.manual_seed(0)
    model = MODELS.get("vae")(cfg, 3).eval()
    rng = np.random.default_rng(0)
    test = Split(rng.integers(0, 256, (7, 3, 16, 16), dtype=np.uint8), np.zeros((7, 0), np.int8), ())
    out = likelihood_part(cfg, model, None, test, cfg.eval, EvalContext(torch.device("cpu")))
    dims = 3 * 16 * 16
    assert (out["n_examples"], out["iwae_k"], out["dims"]) == (5, 3, dims)
    for name in ("elbo", "iwae"):
        assert out[name + "_bpd"] == pytest.approx(-out[name] / (dims * math.log(2)), rel=1e-9)
        assert out[name + "_bpd_se"] == pytest.approx(out[name + "_se"] / (dims * math.log(2)), rel=1e-9)
        assert out[name + "_bpd"] > 0
