"""Decoder likelihoods: normalisation, float64 references, and extremes."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import norm

from trip.models.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    DiscretizedGaussian,
    Gaussian,
    build_likelihood,
    log_normal_interval,
)

LEVELS = torch.arange(256, dtype=torch.float64)
GRID = LEVELS / 127.5 - 1  # every 8-bit value in [-1, 1]


def discretized(std: float, channels: int = 1) -> DiscretizedGaussian:
    """A float64 likelihood whose sigma is ``std`` to float64 precision."""
    likelihood = DiscretizedGaussian(channels=channels, init_std=std).double()
    with torch.no_grad():
        likelihood.log_scale.fill_(math.log(std))
    return likelihood


def reference_mass(v: int, mu: float, sigma: float) -> float:
    """P(bin v) by scipy in float64; the upper tail through sf, where cdf would round to 1."""
    a = -np.inf if v == 0 else ((v - 0.5) / 127.5 - 1 - mu) / sigma
    b = np.inf if v == 255 else ((v + 0.5) / 127.5 - 1 - mu) / sigma
    if a + b > 0:
        return np.log(norm.sf(a) - norm.sf(b))
    return np.log(norm.cdf(b) - norm.cdf(a))


def mpmath_mass(v: int, mu: float, sigma: float) -> float:
    """P(bin v) at 60 significant digits: an independent reference far in the tails."""
    with mpmath.workdps(60):
        mu, sigma = mpmath.mpf(mu), mpmath.mpf(sigma)
        a = -mpmath.inf if v == 0 else ((mpmath.mpf(v) - 0.5) / 127.5 - 1 - mu) / sigma
        b = mpmath.inf if v == 255 else ((mpmath.mpf(v) + 0.5) / 127.5 - 1 - mu) / sigma
        if a + b > 0:  # the upper tail as 1 - Phi(a) = Phi(-a), or the digits round away
            a, b = -b, -a
        return float(mpmath.log(mpmath.ncdf(b) - mpmath.ncdf(a)))


# -- discretised Gaussian ---------------------------------------------------------------
@pytest.mark.parametrize("sigma", [1e-6, 1e-3, 0.1, 1.0, 100.0, 1e6])
@pytest.mark.parametrize("mu", [-50.0, -1.0, 0.0, 0.3, 1.0, 5.0])
def test_the_256_bin_masses_sum_to_one(mu, sigma):
    log_mass = discretized(sigma).log_prob(GRID[:, None], torch.full((256, 1), mu, dtype=torch.float64))
    assert torch.isfinite(log_mass).all()
    assert (log_mass <= 0).all()
    assert torch.logsumexp(log_mass, 0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])  # |x - mu| / sigma < 25: no underflow in scipy
def test_log_mass_matches_scipy_in_float64(sigma):
    g = torch.Generator().manual_seed(0)
    levels = torch.cat([torch.tensor([0, 1, 127, 254, 255]), torch.randint(0, 256, (40,), generator=g)])
    mu = torch.empty(len(levels), dtype=torch.float64).uniform_(-1.2, 1.2, generator=g)
    mu[:5] = torch.tensor([-1.0, 1.0, 0.0, -1.1, 1.1], dtype=torch.float64)
    got = discretized(sigma).log_prob((levels / 127.5 - 1).double()[:, None], mu[:, None])
    want = [reference_mass(int(v), float(m), sigma) for v, m in zip(levels, mu)]
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sigma", [1e-4, 1e-2, 1e3])
@pytest.mark.parametrize("mu", [-30.0, -1.0, 0.5, 40.0])
def test_log_mass_stays_exact_far_in_the_tails(mu, sigma):
    levels = [0, 1, 100, 128, 254, 255]
    x = torch.tensor(levels, dtype=torch.float64)[:, None] / 127.5 - 1
    got = discretized(sigma).log_prob(x, torch.full_like(x, mu))
    want = [mpmath_mass(v, mu, sigma) for v in levels]
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1e-5, 0.1, 1e4])
def test_gradients_are_finite_at_extremes(dtype, sigma):
    likelihood = DiscretizedGaussian(channels=1, init_std=sigma).to(dtype)
    x = GRID[[0, 1, 128, 254, 255]].to(dtype).repeat(4)[:, None]
    mu = torch.tensor([-1e3, -1.0, 0.0, 1.0, 1e3], dtype=dtype).repeat_interleave(4)[:, None].requires_grad_()
    log_mass = likelihood.log_prob(x, mu)
    log_mass.sum().backward()
    assert log_mass.dtype == dtype
    assert torch.isfinite(log_mass).all()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(likelihood.log_scale.grad).all()


def test_float32_input_agrees_with_float64():
    g = torch.Generator().manual_seed(1)
    x = GRID[torch.randint(0, 256, (4, 3, 8, 8), generator=g)]
    mu = torch.tanh(torch.randn(x.shape, generator=g, dtype=torch.float64))
    want = discretized(0.1, channels=3).log_prob(x, mu)
    got = DiscretizedGaussian(channels=3).log_prob(x.float(), mu.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0.0)


def test_per_channel_scales_and_sum_over_pixels():
    g = torch.Generator().manual_seed(2)
    x = GRID[torch.randint(0, 256, (5, 3, 2, 4), generator=g)]
    mu = torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.5
    likelihood = discretized(0.1, channels=3)
    with torch.no_grad():
        likelihood.log_scale.copy_(torch.tensor([0.05, 0.2, 1.0]).log())
    total = likelihood.log_prob(x, mu)
    assert total.shape == (5,)
    per_channel = sum(
        discretized(s).log_prob(x[:, c].reshape(5, -1), mu[:, c].reshape(5, -1))
        for c, s in enumerate([0.05, 0.2, 1.0])
    )
    torch.testing.assert_close(total, per_channel)


def test_wide_bins_approach_the_continuous_density_times_bin_width():
    # sigma = 0.1 spans ~13 bins; within 4 sigma of the mean the mass is the density
    # times the width 2 delta, up to the midpoint rule's (z^2 - 1) h^2 / 6 correction.
    sigma, mu = 0.1, 0.2
    x = GRID[(GRID - mu).abs() < 4 * sigma][:, None]
    got = discretized(sigma).log_prob(x, torch.full_like(x, mu))
    z, h = (x[:, 0].numpy() - mu) / sigma, (1 / 255) / sigma
    want = norm.logpdf(z) - math.log(sigma) + math.log(2 / 255) + np.log1p((z**2 - 1) * h**2 / 6)
    np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-4, rtol=0)


def test_scale_is_learnable_or_fixed():
    assert DiscretizedGaussian().log_scale.requires_grad
    assert DiscretizedGaussian().std.detach().allclose(torch.full((3,), 0.1))
    assert not DiscretizedGaussian(learnable=False).log_scale.requires_grad


def test_discretized_rejects_off_grid_data_and_shape_mismatch():
    likelihood = DiscretizedGaussian(channels=1)
    with pytest.raises(ValueError, match="8-bit images mapped to"):
        likelihood.log_prob(torch.tensor([[0.5 / 255]]), torch.zeros(1, 1))  # [0, 1]-scaled data
    with pytest.raises(ValueError, match="8-bit images mapped to"):
        likelihood.log_prob(torch.tensor([[3.0]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="decoder output"):
        likelihood.log_prob(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="channels"):
        DiscretizedGaussian(channels=3).log_prob(torch.ones(2, 2, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="std must be > 0"):
        DiscretizedGaussian(init_std=0.0)


def test_log_normal_interval_is_exact_for_narrow_and_distant_intervals():
    lower = torch.tensor([-40.0, 39.0, -1e-7, 5.0], dtype=torch.float64)
    upper = torch.tensor([-39.999, 39.5, 1e-7, 7.0], dtype=torch.float64)
    got = log_normal_interval(lower, upper)
    want = []
    with mpmath.workdps(60):
        for a, b in zip(lower.tolist(), upper.tolist()):
            if a + b > 0:  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): the tail mass keeps its digits
                a, b = -b, -a
            want.append(float(mpmath.log(mpmath.ncdf(b) - mpmath.ncdf(a))))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-9)


# -- continuous Gaussian and Bernoulli --------------------------------------------------
def test_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    x, mu = torch.randn(2, 6, 3, 5, generator=g, dtype=torch.float64)
    likelihood = Gaussian(std=0.7, channels=3).double()
    want = torch.distributions.Normal(mu, 0.7).log_prob(x).sum((1, 2))
    torch.testing.assert_close(likelihood.log_prob(x, mu), want)
    assert not likelihood.log_scale.requires_grad
    assert Gaussian(learnable=True).log_scale.requires_grad


def test_bernoulli_is_normalised_and_stable_for_huge_logits():
    logits = torch.tensor([[-1e4], [-3.0], [0.0], [2.5], [1e4]], dtype=torch.float64, requires_grad=True)
    likelihood = Bernoulli()
    ones = likelihood.log_prob(torch.ones_like(logits), logits)
    zeros = likelihood.log_prob(torch.zeros_like(logits), logits)
    torch.testing.assert_close(torch.logaddexp(ones, zeros), torch.zeros(5, dtype=torch.float64))
    (ones + zeros).sum().backward()
    assert torch.isfinite(logits.grad).all()
    want = torch.distributions.Bernoulli(logits=logits[1:4]).log_prob(torch.ones(3, 1, dtype=torch.float64))
    torch.testing.assert_close(ones[1:4], want.sum(-1))
    torch.testing.assert_close(likelihood.mean(logits), torch.sigmoid(logits))
    with pytest.raises(ValueError, match=r"targets in \[0, 1\]"):
        likelihood.log_prob(torch.full((1, 1), 2.0), torch.zeros(1, 1))


def test_registry_builds_every_likelihood_by_name():
    assert LIKELIHOODS.names() == ["bernoulli", "discretized_gaussian", "gaussian"]
    for name in LIKELIHOODS.names():
        assert isinstance(LIKELIHOODS.get(name)(channels=3), torch.nn.Module)
    assert build_likelihood("gaussian", std=0.5).std.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="bad options for likelihood 'bernoulli'"):
        build_likelihood("bernoulli", std=0.5)
