"""The baseline priors against scipy, and sampling against their exact CDFs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import kstest, multivariate_normal, norm

from trip.priors import GMMPrior, NormalPrior
from trip.priors.gmm import GMM_INIT_STD


def _gmm(seed=0, d=3, k=4):
    prior = GMMPrior(d, k, generator=torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():
        prior.logits.copy_(torch.randn(k, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64))
        prior.log_scale.add_(torch.rand(k, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2)
    return prior


def _gmm_reference(prior, z, observed):
    w = prior.weights.detach().numpy()
    mu, sd = prior.means.detach().numpy(), prior.stds.detach().numpy()
    obs = np.asarray(observed)
    per = [np.log(w[j]) + norm.logpdf(z[:, obs], mu[j, obs], sd[j, obs]).sum(-1) for j in range(len(w))]
    return logsumexp(np.stack(per), axis=0)


def test_normal_matches_scipy_including_far_codes():
    prior = NormalPrior(4).double()
    z = torch.randn(5, 4, dtype=torch.float64)
    z[0] = 1e3
    expected = multivariate_normal(np.zeros(4), np.eye(4)).logpdf(z.numpy())
    np.testing.assert_allclose(prior.log_prob(z).numpy(), expected, rtol=1e-12)
    mask = torch.tensor([True, False, False, True])
    np.testing.assert_allclose(prior.log_prob(z, mask).numpy(), norm.logpdf(z[:, mask].numpy()).sum(-1), rtol=1e-12)


def test_normal_sampling_and_conditional():
    prior = NormalPrior(3)
    g = torch.Generator().manual_seed(0)
    s = prior.sample(3000, generator=g)
    assert all(kstest(s[:, k].numpy(), "norm").pvalue > 1e-3 for k in range(3))
    z = torch.full((3000, 3), 7.0)
    out = prior.sample_conditional(z, torch.tensor([False, True, False]), generator=g)
    assert (out[:, [0, 2]] == 7.0).all() and kstest(out[:, 1].numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("observed", [[True, True, True], [True, False, True], [False, False, True]])
def test_gmm_matches_scipy(observed):
    prior = _gmm()
    z = torch.randn(6, 3, dtype=torch.float64) * 3
    z[0] = torch.tensor([50.0, -1e3, 1e3])
    expected = _gmm_reference(prior, z.numpy(), observed)
    got = prior.log_prob(z, torch.tensor(observed)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-8)


def test_gmm_sampling_marginals_and_conditionals():
    prior = _gmm(seed=3, d=2, k=3)
    w, mu, sd = (t.detach().numpy() for t in (prior.weights, prior.means, prior.stds))
    s = prior.sample(4000, generator=torch.Generator().manual_seed(0)).numpy()
    cdf = lambda x, k, ws: sum(ws[j] * norm.cdf(x, mu[j, k], sd[j, k]) for j in range(3))  # noqa: E731
    assert kstest(s[:, 1], lambda x: cdf(x, 1, w)).pvalue > 1e-3
    # p(z_1 | z_0): posterior component weights from z_0 alone.
    z0 = float(mu[0, 0])
    post = np.log(w) + norm.logpdf(z0, mu[:, 0], sd[:, 0])
    post = np.exp(post - logsumexp(post))
    z = torch.tensor([[z0, 0.0]], dtype=torch.float64).expand(4000, 2)
    out = prior.sample_conditional(z, torch.tensor([False, True]), generator=torch.Generator().manual_seed(1))
    assert kstest(out[:, 1].numpy(), lambda x: cdf(x, 1, post)).pvalue > 1e-3


def test_gmm_fixed_and_learnable():
    fixed = GMMPrior(3, 2, learnable=False)
    assert not fixed.learnable and len(list(fixed.parameters())) == 3
    learnable = GMMPrior(3, 2)
    learnable.log_prob(torch.randn(4, 3)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learnable.parameters())


@pytest.mark.parametrize("k,mean_range", [(4, (-1.0, 1.0)), (1000, (-1.0, 1.0)), (1000, (-3.0, 3.0))])
def test_gmm_default_std_is_the_paper_codes_not_trips_spacing_rule(k, mean_range):
    """The paper's code initialises every log-variance at -1, whatever K: sigma = exp(-1/2), not (high - low)/(2K)."""
    prior = GMMPrior(5, k, mean_range=mean_range)
    torch.testing.assert_close(prior.stds, torch.full((k, 5), math.exp(-0.5)))
    assert GMM_INIT_STD == pytest.approx(0.6065306597)


def test_gmm_of_the_paper_profiles_is_not_a_set_of_point_masses():
    """K = 1000 in d = 100: codes ~ N(0, I) get a log-density of order -d (about -2.2 nats per dimension);
    with sigma = 1/K it would be about -d / (2 sigma^2), i.e. -6.7e7."""
    prior = GMMPrior(100, 1000, generator=torch.Generator().manual_seed(0))
    z = torch.randn(256, 100, generator=torch.Generator().manual_seed(1))
    log_p = prior.log_prob(z)
    assert -300 < log_p.mean().item() < -100
