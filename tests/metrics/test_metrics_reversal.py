"""Generator reversal (Algorithm 1), the PAG score (Eq. 2) and disagreement samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from trip.metrics.reversal import (
    disagreement_indices,
    evaluate_reversal,
    nearest_distances,
    pag_score,
    reverse_generator,
)
from trip.models.gan import WassersteinGAN
from trip.priors import NormalPrior

LATENT, SHAPE = 5, (1, 4, 4)  # 16 pixels: an injective map from 5 dimensions


def linear_generator(seed: int = 0) -> nn.Sequential:
    """G(z) = A z as a (1, 4, 4) image; A's singular values lie in [0.8, 1.2].

    The Dropout layer would scramble the output in train mode, so a correct
    reversal also shows that the generator ran in eval mode.
    """
    rng = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(16, LATENT, generator=rng))
    linear = nn.Linear(LATENT, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(basis * torch.linspace(0.8, 1.2, LATENT))
    return nn.Sequential(linear, nn.Dropout(0.5), nn.Unflatten(1, SHAPE)).train()


def orthonormal_columns(n: int, d: int, seed: int) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=rng, dtype=torch.float64))
    return q


def codes_with_singular_values(nu: torch.Tensor, n: int = 40, seed: int = 0) -> torch.Tensor:
    """Z = sqrt(N) Q diag(nu): the singular values of Z / sqrt(N) are exactly nu."""
    return math.sqrt(n) * orthonormal_columns(n, len(nu), seed) * nu


def closed_form_kl(nu: torch.Tensor, sigma: float) -> float:
    """KL(N(0, diag(nu^2)) || N(0, sigma^2 I)) by torch.distributions, independently of Eq. 2's algebra."""
    d = len(nu)
    p = MultivariateNormal(torch.zeros(d, dtype=torch.float64), torch.diag(nu**2))
    q = MultivariateNormal(torch.zeros(d, dtype=torch.float64), sigma**2 * torch.eye(d, dtype=torch.float64))
    return float(kl_divergence(p, q))


# --- reverse_generator ------------------------------------------------------------------


@pytest.fixture
def truth() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    generator = linear_generator()
    codes = torch.randn(20, LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = generator.eval()(codes)
    return generator.train(), codes, images


def test_reversal_recovers_codes_of_injective_linear_generator(truth):
    generator, codes, images = truth
    rng = torch.Generator().manual_seed(2)
    result = reverse_generator(generator, images, LATENT, steps=400, generator_rng=rng)
    assert result.codes.shape == (20, LATENT) and result.final_error.shape == (20,)
    assert result.curve.shape == (401,)
    torch.testing.assert_close(result.codes, codes, atol=1e-4, rtol=0)
    assert result.final_error.max() < 1e-9
    assert result.curve[-1] == pytest.approx(result.final_error.mean())
    # lr * largest eigenvalue of A^T A = 0.05 * 1.44 < 2: gradient descent never goes up.
    assert np.all(np.diff(result.curve) <= 1e-12)


def test_curve_starts_at_error_of_near_zero_init(truth):
    generator, _, images = truth
    at_zero = float(images.pow(2).mean())  # per-pixel MSE of G(0) = 0
    exact = reverse_generator(generator, images, LATENT, steps=3, init_std=0.0)
    assert exact.curve[0] == pytest.approx(at_zero, rel=1e-6)
    rng = torch.Generator().manual_seed(0)
    noisy = reverse_generator(generator, images, LATENT, steps=3, generator_rng=rng)
    assert noisy.curve[0] == pytest.approx(at_zero, rel=1e-3)
    assert noisy.curve[1] < noisy.curve[0]


def test_generator_untouched_and_its_modes_restored(truth):
    generator, _, images = truth
    generator[1].eval()  # a mixed state: restoring one flag for all would lose it
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    with torch.no_grad():  # callers evaluating under no_grad still get a reversal
        reverse_generator(generator, images, LATENT, steps=5)
    for key, value in generator.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.grad is None for p in generator.parameters())
    assert generator.training and generator[0].training and not generator[1].training


def test_batch_size_does_not_change_the_result(truth):
    generator, _, images = truth
    runs = [
        reverse_generator(generator, images, LATENT, steps=30, batch_size=size,
                          generator_rng=torch.Generator().manual_seed(3))
        for size in (7, 64)
    ]
    torch.testing.assert_close(runs[0].codes, runs[1].codes, atol=1e-6, rtol=0)
    np.testing.assert_allclose(runs[0].curve, runs[1].curve, rtol=1e-5)


def test_reversal_rejects_mismatched_latent_size(truth):
    generator, _, images = truth
    with pytest.raises(RuntimeError):
        reverse_generator(generator, images, LATENT + 1, steps=1)
    with pytest.raises(ValueError, match="does not match"):
        reverse_generator(generator, images[:, :, :2], LATENT, steps=1)


# --- pag_score ---------------------------------------------------------------------------


def test_pag_is_zero_when_normalised_singular_values_equal_sigma():
    sigma = 0.7
    codes = codes_with_singular_values(torch.full((6,), sigma))
    assert pag_score(codes, sigma=sigma) == pytest.approx(0.0, abs=1e-12)
    assert pag_score(codes, sigma=1.0) > 0.1


def test_pag_matches_closed_form_kl_for_diagonal_case():
    nu = torch.tensor([0.3, 0.8, 1.0, 1.5, 2.5], dtype=torch.float64)
    codes = codes_with_singular_values(nu, n=33)
    for sigma in (1.0, 0.5):
        expected = 0.5 * float(torch.sum(nu**2 / sigma**2 - 1 - torch.log(nu**2 / sigma**2)))
        assert pag_score(codes, sigma=sigma) == pytest.approx(expected, rel=1e-10)
        assert pag_score(codes, sigma=sigma) == pytest.approx(closed_form_kl(nu, sigma), rel=1e-10)
    assert pag_score(codes.numpy()) == pytest.approx(pag_score(codes), rel=1e-12)
    assert pag_score(codes.float()) == pytest.approx(pag_score(codes), rel=1e-5)


def test_pag_grows_with_anisotropy():
    def spectrum(t: float) -> torch.Tensor:
        return torch.tensor([math.exp(t), math.exp(-t), 1.0, 1.0], dtype=torch.float64)

    scores = [pag_score(codes_with_singular_values(spectrum(t))) for t in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert scores[0] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in zip(scores, scores[1:]))


def test_pag_invariant_to_row_permutation_and_rotation():
    rng = torch.Generator().manual_seed(5)
    scales = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    codes = torch.randn(60, 8, generator=rng, dtype=torch.float64) * scales
    rotation = orthonormal_columns(8, 8, seed=6)
    score = pag_score(codes)
    assert pag_score(codes[torch.randperm(60, generator=rng)]) == pytest.approx(score, rel=1e-10)
    assert pag_score(codes @ rotation) == pytest.approx(score, rel=1e-10)


def test_pag_scales_prior_codes_as_the_paper_does_only_when_unnormalised():
    codes = torch.randn(1024, 20, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert pag_score(codes) < 1.0  # codes from N(0, I) agree with N(0, I)
    paper_scale = 10 * (1024 - 1 - math.log(1024))  # d/2 (N - 1 - ln N), ~1.0e4 as in Fig. 4
    assert pag_score(codes, normalise=False) == pytest.approx(paper_scale, rel=0.05)


def test_pag_is_infinite_for_degenerate_codes_and_checks_inputs():
    assert pag_score(torch.randn(3, 5)) == math.inf  # N < d: Sigma is singular
    with pytest.raises(ValueError):
        pag_score(torch.randn(10, 3), sigma=0.0)
    with pytest.raises(ValueError):
        pag_score(torch.randn(10))


# --- disagreement samples ----------------------------------------------------------------


def test_disagreement_indices_pick_planted_outliers_farthest_first():
    rng = torch.Generator().manual_seed(8)
    data = 0.5 * torch.randn(300, 4, generator=rng)
    prior = torch.randn(500, 4, generator=rng)
    planted = {250: 14.0, 3: 12.0, 77: 10.0}
    for index, radius in planted.items():
        prior[index] = radius * torch.nn.functional.normalize(torch.randn(4, generator=rng), dim=0)
    chosen = disagreement_indices(prior, data, count=3, chunk_size=64)
    assert chosen.tolist() == list(planted)


def test_chunked_nearest_distances_equal_unchunked():
    rng = torch.Generator().manual_seed(9)
    queries, references = torch.randn(203, 6, generator=rng), torch.randn(131, 6, generator=rng)
    brute = torch.cdist(queries, references).amin(dim=1)
    torch.testing.assert_close(nearest_distances(queries, references, chunk_size=10**6), brute)
    torch.testing.assert_close(nearest_distances(queries, references, chunk_size=17), brute)
    assert torch.equal(
        disagreement_indices(queries, references, 10, chunk_size=17),
        disagreement_indices(queries, references, 10, chunk_size=10**6),
    )


# --- evaluate_reversal -------------------------------------------------------------------


def test_evaluate_reversal_on_a_gan(truth):
    generator, _, images = truth
    gan = WassersteinGAN(generator, nn.Sequential(nn.Flatten(), nn.Linear(16, 1)), NormalPrior(LATENT))
    out = evaluate_reversal(gan, images, steps=50, n_prior=200, count=6, seed=0)
    assert math.isfinite(out["pag"]) and out["pag"] >= 0
    assert out["pag_unnormalised"] > out["pag"]
    assert len(out["reversal_curve"]) == 51
    assert out["reversal_final_mse"] == pytest.approx(out["reversal_curve"][-1])
    assert out["reversal_curve"][-1] < out["reversal_curve"][0]
    assert out["disagreement_images"].shape == (6, *SHAPE)
    assert out["disagreement_images"].abs().max() <= 1
    distances = out["disagreement_distances"]
    assert len(distances) == 6 and distances == sorted(distances, reverse=True)
    assert generator.training
    again = evaluate_reversal(gan, images, steps=50, n_prior=200, count=6, seed=0)
    assert again["pag"] == out["pag"] and again["disagreement_distances"] == distances


def test_evaluate_reversal_warns_when_too_few_images_for_the_pag(truth):
    generator, _, images = truth
    gan = WassersteinGAN(generator, nn.Sequential(nn.Flatten(), nn.Linear(16, 1)), NormalPrior(LATENT))
    with pytest.warns(UserWarning, match="PAG will be inf"):
        out = evaluate_reversal(gan, images[:3], steps=2, n_prior=10, count=2, seed=0)
    assert out["pag"] == math.inf
