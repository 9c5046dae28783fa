"""Property-based: over random small rings, TRIP's log-densities equal brute-force enumeration (values).

``test_priors_api.py`` checks finiteness and total mass over extreme inputs;
a finite but wrong density passes that. Here every drawn ring (shape, cores
spread over many orders of magnitude, narrow and wide components, far codes)
is compared value by value with the float64 enumeration of all N^d lattice
nodes: the joint density, the marginal over a random mask, and the exact
conditional of one part given another.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trip.priors import TRIPPrior

# The brute fixture is a stateless class, so sharing it across examples is safe.
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def small_ring(draw):
    """A ring of d <= 4, N <= 3, m <= 3 (at most 81 nodes to enumerate), codes and a mask."""
    d = draw(st.integers(1, 4))
    n = draw(st.integers(1, 3))
    m = draw(st.integers(1, 3))
    entries = st.floats(-12.0, 6.0)  # log core entries: over e^18, sparse and dense rings alike
    log_cores = draw(st.lists(entries, min_size=d * n * m * m, max_size=d * n * m * m))
    means = draw(st.lists(st.floats(-10.0, 10.0), min_size=d * n, max_size=d * n))
    log_stds = draw(st.lists(st.floats(-5.0, 2.5), min_size=d * n, max_size=d * n))  # stds 7e-3 .. 12
    code = st.one_of(st.floats(-30.0, 30.0), st.sampled_from([0.0, 200.0, -1e3]))
    rows = draw(st.integers(1, 3))
    z = draw(st.lists(st.lists(code, min_size=d, max_size=d), min_size=rows, max_size=rows))
    mask = draw(st.lists(st.booleans(), min_size=d, max_size=d))
    prior = TRIPPrior.from_parameters(
        torch.tensor(log_cores, dtype=torch.float64).reshape(d, n, m, m).exp(),
        torch.tensor(means, dtype=torch.float64).reshape(d, n),
        torch.tensor(log_stds, dtype=torch.float64).reshape(d, n).exp(),
        learnable=False,
    )
    return prior, torch.tensor(z, dtype=torch.float64), torch.tensor(mask)


def _close(got: torch.Tensor, expected: np.ndarray, rtol: float, atol: float) -> None:
    np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=rtol, atol=atol)


@SETTINGS
@given(small_ring())
def test_log_prob_and_marginals_equal_enumeration(brute, case):
    prior, z, mask = case
    ref = brute(prior)
    _close(prior.log_prob(z), ref.log_prob(z.numpy()), rtol=1e-10, atol=1e-8)
    _close(prior.log_prob(z, mask), ref.log_prob(z.numpy(), mask.numpy()), rtol=1e-10, atol=1e-8)


@SETTINGS
@given(small_ring())
def test_float32_log_prob_tracks_the_enumeration(brute, case):
    prior, z, mask = case
    expected = brute(prior).log_prob(z.numpy())
    # float32 rounds the parameters and codes themselves: a relative 1e-5 of the value, plus a little.
    _close(prior.float().log_prob(z.float()), expected, rtol=1e-5, atol=2e-3)


@SETTINGS
@given(small_ring(), st.data())
def test_conditional_log_prob_equals_enumerated_ratio(brute, case, data):
    prior, z, target = case
    d = prior.dim
    given_mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=d, max_size=d))) & ~target
    ref = brute(prior)
    joint = ref.log_prob(z.numpy(), (target | given_mask).numpy())
    marginal = ref.log_prob(z.numpy(), given_mask.numpy())
    # A conditional is a difference of two log-densities, and far codes make those ~1e10: no float64
    # computation (the reference's included) resolves it better than ~1e-16 of their size. Hence the scale.
    scale = np.maximum(np.abs(joint), np.abs(marginal))
    got = prior.conditional_log_prob(z, target, given_mask).detach().double().numpy()
    assert (np.abs(got - (joint - marginal)) <= 1e-8 + 1e-11 * scale).all(), (got, joint - marginal, scale)
