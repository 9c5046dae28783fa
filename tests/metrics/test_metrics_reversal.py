"""Generator reversal (Algorithm 1), the PAG score (Eq. 2) and disagreement samples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from trip.metrics.reversal import (
    PAG_CODES_PER_DIM,
    disagreement_indices,
    evaluate_reversal,
    expected_prior_pag,
    nearest_distances,
    pag_score,
    reverse_generator,
)
from trip.models.gan import WassersteinGAN
from trip.priors import NormalPrior

LATENT, SHAPE = 5, (1, 4, 4)  # 16 pixels: an injective map from 5 dimensions


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These small networks run fastest on one thread; two on a busy machine run ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_generator(seed: int = 0) -> nn.Sequential:
    """G(z) = A z + b as a (1, 4, 4) image; A's singular values lie in [0.8, 1.2].

    The Dropout layer would scramble the output in train mode, so a correct
    reversal also shows that the generator ran in eval mode.
    """
    rng = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(16, LATENT, generator=rng))
    linear = nn.Linear(LATENT, 16)
    with torch.no_grad():
        linear.weight.copy_(basis * torch.linspace(0.8, 1.2, LATENT))
        linear.bias.copy_(0.3 * torch.randn(16, generator=rng))
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
    result = reverse_generator(generator, images, LATENT, steps=300, generator_rng=rng)
    assert result.codes.shape == (20, LATENT) and result.final_error.shape == (20,)
    assert result.curve.shape == (301,)
    torch.testing.assert_close(result.codes, codes, atol=1e-3, rtol=0)
    assert result.final_error.max() < 1e-7
    assert result.final_error.mean() <= result.curve[-1] * (1 + 1e-6)  # the best codes seen, at most the last
    assert curve_settles(result.curve)


def test_paper_gradient_descent_recovers_linear_codes_when_its_step_is_small(truth):
    """optimizer="gd" is Algorithm 1 as written; on this A, lr * max eig(A^T A) = 0.05 * 1.44 < 2."""
    generator, codes, images = truth
    result = reverse_generator(generator, images, LATENT, steps=400, optimizer="gd",
                               generator_rng=torch.Generator().manual_seed(2))
    torch.testing.assert_close(result.codes, codes, atol=1e-4, rtol=0)
    assert np.all(np.diff(result.curve) <= 1e-12)  # a stable fixed step never goes up on a quadratic


def test_curve_starts_at_error_of_near_zero_init(truth):
    """Step 0 is the error at the starting codes ~ 0, i.e. of G(0) = b, before any step."""
    generator, _, images = truth
    bias = generator[0].bias.detach().view(1, *SHAPE)
    at_zero = float((images - bias).pow(2).mean())  # per-pixel MSE of G(0) = b
    exact = reverse_generator(generator, images, LATENT, steps=3, init_std=0.0)
    assert exact.curve[0] == pytest.approx(at_zero, rel=1e-6)
    rng = torch.Generator().manual_seed(0)
    noisy = reverse_generator(generator, images, LATENT, steps=3, generator_rng=rng)
    assert noisy.curve[0] == pytest.approx(at_zero, rel=1e-3)
    assert noisy.curve[1] < noisy.curve[0]


# A generator trained in the test: a small MLP fitted to reproduce images from known codes.
TRAINED_LATENT, TRAINED_SHAPE = 4, (3, 12, 12)  # 432 values per image


def curve_settles(curve: np.ndarray, after: int = 5, tolerance: float = 1e-3) -> bool:
    """After its first ``after`` steps the curve never rises by more than ``tolerance`` x its start."""
    return bool(np.all(np.diff(curve[after:]) <= tolerance * curve[0]))


@pytest.fixture(scope="module")
def trained_generator() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """(G, codes, images): G(codes) ~ images after 400 Adam steps fitting G to 64 (code, image) pairs.

    The images are smooth random patterns squashed into [-1, 1], the codes
    N(0, I): like a trained GAN generator, G is a nonlinear map into tanh
    images whose range contains the data only approximately.
    """
    rng = torch.Generator().manual_seed(10)
    n, pixels = 64, math.prod(TRAINED_SHAPE)
    codes = torch.randn(n, TRAINED_LATENT, generator=rng)
    mixing = torch.randn(TRAINED_LATENT, pixels, generator=rng) / math.sqrt(TRAINED_LATENT)
    images = torch.tanh(torch.sin(2.0 * codes @ mixing) + 0.5 * (codes @ mixing)).view(n, *TRAINED_SHAPE)
    with torch.random.fork_rng():  # seeded weights, the global generator left as it was
        torch.manual_seed(0)
        generator = nn.Sequential(
            nn.Linear(TRAINED_LATENT, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
            nn.Linear(128, pixels), nn.Tanh(), nn.Unflatten(1, TRAINED_SHAPE),
        )
    opt = torch.optim.Adam(generator.parameters(), lr=3e-3)
    for _ in range(400):
        opt.zero_grad()
        (generator(codes) - images).pow(2).mean().backward()
        opt.step()
    generator.eval().requires_grad_(False)
    return generator, codes, images


def test_reversal_converges_on_a_trained_nonlinear_generator(trained_generator):
    generator, codes, images = trained_generator
    with torch.no_grad():
        fitted = float((generator(codes) - images).pow(2).mean())
    result = reverse_generator(generator, images, TRAINED_LATENT, steps=150,
                               generator_rng=torch.Generator().manual_seed(0))
    curve = result.curve
    assert curve[-1] <= 0.5 * curve[0]
    assert result.final_error.mean() <= 0.5 * curve[0]
    assert curve_settles(curve)
    # Close to the error at the true codes: the reversal found the codes' basin, not just any descent.
    assert result.final_error.mean() <= 2 * fitted + 0.01


def test_paper_gradient_descent_fails_the_same_criteria(trained_generator):
    """The criteria above can fail: Algorithm 1's fixed step 0.05 on the pixel-summed loss overshoots."""
    generator, _, images = trained_generator
    result = reverse_generator(generator, images, TRAINED_LATENT, steps=150, optimizer="gd",
                               generator_rng=torch.Generator().manual_seed(0))
    curve = result.curve
    assert not (curve[-1] <= 0.5 * curve[0] and curve_settles(curve))


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


def test_expected_prior_pag_matches_monte_carlo():
    rng = torch.Generator().manual_seed(11)
    for n, d in ((6, 6), (24, 6), (48, 6), (160, 20)):
        scores = [pag_score(torch.randn(n, d, generator=rng, dtype=torch.float64)) for _ in range(300)]
        assert np.mean(scores) == pytest.approx(expected_prior_pag(n, d), rel=0.05)
    assert expected_prior_pag(3, 5) == math.inf
    assert expected_prior_pag(10_000, 16) == pytest.approx(16 * 17 / (4 * 10_000), rel=0.01)


def test_pag_of_prior_codes_is_biased_upwards_with_too_few_codes():
    """Codes from N(0, I) agree with N(0, I): PAG ~ 0 from 8 d codes on, but not from d codes."""
    d = 16
    rng = torch.Generator().manual_seed(12)

    def mean_pag(n: int) -> float:
        return float(np.mean([pag_score(torch.randn(n, d, generator=rng, dtype=torch.float64)) for _ in range(20)]))

    few, enough, many = mean_pag(d), mean_pag(PAG_CODES_PER_DIM * d), mean_pag(64 * d)
    assert few > 5.0  # ~0.55 d: as large as the scores of real GANs
    assert enough < 0.1 * few and enough < 0.05 * d
    assert many < enough


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
    images = images[:PAG_CODES_PER_DIM * LATENT // 2].repeat(2, 1, 1, 1)  # 8 d codes: no warning
    out = evaluate_reversal(gan, images, steps=50, n_prior=200, count=6, seed=0)
    assert math.isfinite(out["pag"]) and out["pag"] >= 0
    assert out["pag_unnormalised"] > out["pag"]
    assert out["pag_prior_baseline"] == pytest.approx(expected_prior_pag(len(images), LATENT))
    assert len(out["reversal_curve"]) == 51
    assert out["reversal_final_mse"] <= out["reversal_curve"][-1] * (1 + 1e-6)
    assert out["reversal_curve"][-1] < 0.05 * out["reversal_curve"][0]
    assert out["disagreement_images"].shape == (6, *SHAPE)
    assert out["disagreement_images"].abs().max() <= 1
    distances = out["disagreement_distances"]
    assert len(distances) == 6 and distances == sorted(distances, reverse=True)
    assert generator.training
    again = evaluate_reversal(gan, images, steps=50, n_prior=200, count=6, seed=0)
    assert again["pag"] == out["pag"] and again["disagreement_distances"] == distances


def _linear_gan(generator) -> WassersteinGAN:
    return WassersteinGAN(generator, nn.Sequential(nn.Flatten(), nn.Linear(16, 1)), NormalPrior(LATENT))


def test_evaluate_reversal_warns_when_too_few_images_for_the_pag(truth):
    generator, _, images = truth
    with pytest.warns(UserWarning, match="PAG will be inf"):
        out = evaluate_reversal(_linear_gan(generator), images[:3], steps=2, n_prior=10, count=2, seed=0)
    assert out["pag"] == math.inf


def test_evaluate_reversal_warns_below_eight_codes_per_dimension(truth):
    generator, _, images = truth  # 20 images, 5 dimensions: between d and 8 d
    with pytest.warns(UserWarning, match="biased upwards.*at least 40 images"):
        out = evaluate_reversal(_linear_gan(generator), images, steps=2, n_prior=10, count=2, seed=0)
    assert out["pag_prior_baseline"] == pytest.approx(expected_prior_pag(20, LATENT))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caller's override: no warning
        evaluate_reversal(_linear_gan(generator), images, steps=2, n_prior=10, count=2, seed=0,
                          min_codes_per_dim=4)
