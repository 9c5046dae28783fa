"""TRIP sampling tested jointly: chi-square of the joint lattice states against exact enumeration.

The KS tests in ``test_trip_prior.py`` look at one dimension at a time, so a
sampler that draws every position from its exact marginal, ignoring the states
already drawn (independent dimensions), passes them. Here the components are
far apart (means -10, 0, 10, std 0.5), so the state behind every coordinate is
read off the code without error (a misread needs a 10-sigma draw), and the
joint frequencies of the d = 3, N = 3 states (27 cells) are compared with the
exact p(s) of the ring by Pearson's chi-square test.

Size and power (stated, and asserted below from the noncentral chi-square):

* level alpha = 1e-3 per test: a correct sampler fails with probability 1e-3
  for a given random stream (the streams here are seeded, so the test is
  deterministic);
* power against the independent-dimensions mutant, at the draws used: at
  least 0.999 for ``sample`` and for both patterns of ``sample_conditional``.
  The paired check draws from that mutant (written here, not patched into the
  library) and shows the same test rejecting it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2, chisquare, ncx2

from trip.priors import TRIPPrior

ALPHA = 1e-3
MIN_POWER = 0.999
DRAWS = 4000
MEANS = (-10.0, 0.0, 10.0)


def _ring(make_trip) -> TRIPPrior:
    """d = 3, N = 3, m = 2 with sparse random cores: the dimensions depend clearly (TV to independence 0.22)."""
    cores = make_trip(d=3, n=3, m=2, seed=3, power=3.0).cores
    means = torch.tensor(MEANS, dtype=torch.float64).expand(3, 3)
    return TRIPPrior.from_parameters(cores, means, torch.full((3, 3), 0.5, dtype=torch.float64), learnable=False)


def _states(z: np.ndarray, dims) -> np.ndarray:
    """The component behind each coordinate: the nearest mean."""
    return np.abs(z[:, list(dims), None] - np.array(MEANS)).argmin(-1)


def _cell_index(states: np.ndarray, n: int = 3) -> np.ndarray:
    return (states * n ** np.arange(states.shape[1])[::-1]).sum(1)


def _cells(probs: np.ndarray, draws: int) -> np.ndarray:
    """Bins of the chi-square test: every cell with expected count >= 5 kept, the rest pooled (if any)."""
    return probs * draws >= 5


def _pool(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    rest = values[~keep].sum()
    return np.append(values[keep], rest) if (~keep).any() else values[keep]


def _chisquare_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    keep = _cells(probs, counts.sum())
    expected = _pool(probs, keep) * counts.sum()
    return chisquare(_pool(counts.astype(float), keep), expected).pvalue


def _power(probs: np.ndarray, alternative: np.ndarray, draws: int) -> float:
    """Power of the level-ALPHA chi-square test against draws from ``alternative`` (noncentral chi-square)."""
    keep = _cells(probs, draws)
    p, q = _pool(probs, keep), _pool(alternative, keep)
    df = len(p) - 1
    noncentrality = draws * ((q - p) ** 2 / p).sum()
    return float(ncx2.sf(chi2.ppf(1 - ALPHA, df), df, noncentrality))


def _joint(ref, dims, z=None, observed=None) -> np.ndarray:
    """Exact p(s_dims | z_observed) over the 3^len(dims) cells, by enumeration of every lattice node."""
    log_post = ref.log_w.copy()
    if z is not None:
        log_post = log_post + ref._emission(np.asarray(z, np.float64), np.asarray(observed))
    post = np.exp(log_post - log_post.max())
    probs = np.zeros(3 ** len(dims))
    for node, weight in zip(ref.nodes, post):
        probs[_cell_index(np.array([[node[k] for k in dims]]))[0]] += weight
    return probs / probs.sum()


def _product_of_marginals(ref, dims, z=None, observed=None) -> np.ndarray:
    """What the mutant's cells have: the exact marginals of each dimension, multiplied."""
    marginals = [ref.state_marginal(k, z, observed) for k in dims]
    out = marginals[0]
    for m in marginals[1:]:
        out = np.outer(out, m).ravel()
    return out


def _independent_dimensions_mutant(ref, dims, draws, seed, z=None, observed=None) -> np.ndarray:
    """The defect to catch: each position drawn from its exact (conditional) marginal, ignoring the others.

    Returns states (draws, len(dims)).
    """
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(3, size=draws, p=ref.state_marginal(k, z, observed)) for k in dims], axis=1)


def _counts(states: np.ndarray) -> np.ndarray:
    return np.bincount(_cell_index(states), minlength=3 ** states.shape[1])


def test_sample_joint_states_match_enumeration_and_the_independent_mutant_is_rejected(make_trip, brute):
    prior = _ring(make_trip)
    ref = brute(prior)
    dims = (0, 1, 2)
    exact = _joint(ref, dims)
    np.testing.assert_allclose(exact, np.exp(ref.log_w), rtol=1e-12)  # cell order = node order
    independent = _product_of_marginals(ref, dims)
    assert 0.5 * np.abs(exact - independent).sum() > 0.2  # the ring really couples the dimensions
    assert _power(exact, independent, DRAWS) >= MIN_POWER

    z = prior.sample(DRAWS, generator=torch.Generator().manual_seed(0)).numpy()
    assert _chisquare_pvalue(_counts(_states(z, dims)), exact) > ALPHA

    mutant = _independent_dimensions_mutant(ref, dims, DRAWS, seed=0)
    assert _chisquare_pvalue(_counts(mutant), exact) < ALPHA
    # The mutant is right about every single dimension: one-dimensional tests cannot see it.
    for k in dims:
        one_dim = np.bincount(mutant[:, k], minlength=3)
        assert chisquare(one_dim, ref.state_marginal(k) * DRAWS).pvalue > ALPHA


@pytest.mark.parametrize("observed_dim", [0, 1])
def test_sample_conditional_joint_states_match_enumeration_and_the_mutant_is_rejected(
    make_trip, brute, observed_dim
):
    """Observe one code halfway between two components (its state is uncertain), redraw the other two jointly.

    Observing dimension 1 couples dimensions 0 and 2 through the ring's closure (Q_2 ... Q_0).
    """
    prior = _ring(make_trip)
    ref = brute(prior)
    dims = tuple(k for k in range(3) if k != observed_dim)
    observed = np.arange(3) == observed_dim
    code = np.zeros(3)
    code[observed_dim] = -5.0  # halfway between the components at -10 and 0: p(s_observed | z) is mixed
    exact = _joint(ref, dims, code, observed)
    independent = _product_of_marginals(ref, dims, code, observed)
    assert ref.state_marginal(observed_dim, code, observed)[:2].min() > 0.3
    assert _power(exact, independent, DRAWS) >= MIN_POWER
    # Conditioning matters: the unconditional joint of these dimensions is rejected too.
    assert _power(exact, _joint(ref, dims), DRAWS) >= MIN_POWER

    z_in = torch.from_numpy(code).expand(DRAWS, 3)
    resample = torch.from_numpy(~observed)
    z = prior.sample_conditional(z_in, resample, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z[:, observed_dim], z_in[:, observed_dim])  # the observed code stays as given
    counts = _counts(_states(z.numpy(), dims))
    assert _chisquare_pvalue(counts, exact) > ALPHA
    assert _chisquare_pvalue(counts, _joint(ref, dims)) < ALPHA

    mutant = _independent_dimensions_mutant(ref, dims, DRAWS, seed=1, z=code, observed=observed)
    assert _chisquare_pvalue(_counts(mutant), exact) < ALPHA
