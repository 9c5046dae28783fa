"""The joint TRIP over codes and attributes against brute-force enumeration of every state."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import kstest, norm
from torch import nn

from trip.priors import JointTRIPPrior, TRIPPrior
from trip.priors import tensor_ring as tr

SIZES = (2, 3)  # attribute values: the ring pads N = 3 latent states and K = 2 up to S = 3


def random_joint(d=2, n=3, sizes=SIZES, m=2, seed=0, power=1.0, seed_order=1, dtype=torch.float64):
    """A small joint ring with random cores, means and stds; larger ``power`` = sparser cores."""
    g = torch.Generator().manual_seed(seed)
    cores = torch.rand(d, n, m, m, generator=g, dtype=torch.float64) ** power + 0.01
    means = torch.randn(d, n, generator=g, dtype=torch.float64) * 2
    stds = 0.2 + 1.3 * torch.rand(d, n, generator=g, dtype=torch.float64)
    attributes = [torch.rand(k, m, m, generator=g, dtype=torch.float64) ** power + 0.01 for k in sizes]
    prior = JointTRIPPrior.from_parameters(
        cores, means, stds, learnable=False, attribute_cores=attributes, permutation_seed=seed_order
    )
    return prior.to(dtype)


class BruteJoint:
    """p(z, y) by enumerating every state of every position, in the prior's stored ring order."""

    def __init__(self, prior: JointTRIPPrior, order=None):
        self.order = prior.ring_order.tolist() if order is None else list(order)
        self.means = prior.means.detach().double().numpy()
        self.stds = prior.stds.detach().double().numpy()
        self.d, n = self.means.shape
        self.sizes = list(prior.attribute_sizes)
        cores = list(prior.cores.detach().double().numpy()) + [c.detach().double().numpy() for c in prior.attribute_cores]
        self.configs = np.array(list(itertools.product(*[range(k) for k in [n] * self.d + self.sizes])))
        weights = []
        for config in self.configs:
            product = np.eye(cores[0].shape[-1])
            for var in self.order:
                product = product @ cores[var][config[var]]
            weights.append(np.trace(product))
        self.log_w = np.log(weights) - np.log(np.sum(weights))

    def log_joint(self, z, y=None, y_observed=None, observed=None) -> float:
        """log p(z_observed, y_observed) for one row."""
        observed = np.ones(self.d, bool) if observed is None else np.asarray(observed)
        keep = np.ones(len(self.configs), bool)
        for j in range(len(self.sizes)):
            if y_observed is not None and y_observed[j]:
                keep &= self.configs[:, self.d + j] == y[j]
        total = self.log_w.copy()
        for k in np.flatnonzero(observed):
            s = self.configs[:, k]
            total += norm.logpdf(z[k], self.means[k, s], self.stds[k, s])
        return logsumexp(total[keep])

    def attribute_probabilities(self, z) -> list[np.ndarray]:
        base = self.log_joint(z)
        out = []
        for j, size in enumerate(self.sizes):
            mask = np.eye(len(self.sizes), dtype=bool)[j]
            out.append(np.exp([self.log_joint(z, np.full(len(self.sizes), k), mask) - base for k in range(size)]))
        return out

    def latent_state_weights(self, k: int, y=None, y_observed=None) -> np.ndarray:
        """p(s_k | y_observed) over the N components of dimension k."""
        keep = np.ones(len(self.configs), bool)
        for j in range(len(self.sizes)):
            if y_observed is not None and y_observed[j]:
                keep &= self.configs[:, self.d + j] == y[j]
        weights = np.array([np.exp(self.log_w[keep & (self.configs[:, k] == s)]).sum() for s in range(self.means.shape[1])])
        return weights / weights.sum()

    def mixture_cdf(self, k: int, weights: np.ndarray):
        return lambda x: sum(w * norm.cdf(x, self.means[k, s], self.stds[k, s]) for s, w in enumerate(weights))


def _codes(d=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(5, d, generator=g, dtype=torch.float64) * 2
    z[0, 0], z[1, -1] = 50.0, -1e3  # far from every component
    return z


SUBSETS = [(False, False), (True, False), (False, True), (True, True)]


# -- exact queries ---------------------------------------------------------------------
@pytest.mark.parametrize("y_observed", SUBSETS)
def test_joint_and_attribute_log_prob_match_enumeration(y_observed):
    prior = random_joint(seed=3)
    ref = BruteJoint(prior)
    z = _codes()
    y = torch.tensor([[1, 2], [0, 0], [1, 1], [0, 2], [1, 0]])
    mask = torch.tensor(y_observed)
    y_in = torch.where(mask, y, -1)  # hidden entries may hold anything
    joint = [ref.log_joint(zi, yi, mask.numpy()) for zi, yi in zip(z.numpy(), y.numpy())]
    marginal = [ref.log_joint(zi) for zi in z.numpy()]
    np.testing.assert_allclose(prior.joint_log_prob(z, y_in, mask).numpy(), joint, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(prior.log_prob(z).numpy(), marginal, rtol=1e-10, atol=1e-8)
    got = prior.attribute_log_prob(z, y_in, mask).numpy()
    np.testing.assert_allclose(got, np.subtract(joint, marginal), rtol=1e-9, atol=1e-9)
    if not any(y_observed):
        assert (got == 0).all()


def test_per_row_masks_and_latent_marginals_match_enumeration():
    prior = random_joint(seed=5)
    ref = BruteJoint(prior)
    z = _codes(seed=2)
    y = torch.tensor([[1, 2], [0, 0], [1, 1], [0, 2], [1, 0]])
    y_mask = torch.tensor([[True, False], [False, False], [True, True], [False, True], [True, True]])
    z_mask = torch.tensor([[True, False], [False, True], [True, True], [False, False], [True, False]])
    expected = [ref.log_joint(*row) for row in zip(z.numpy(), y.numpy(), y_mask.numpy(), z_mask.numpy())]
    np.testing.assert_allclose(prior.joint_log_prob(z, y, y_mask, z_mask).numpy(), expected, rtol=1e-10, atol=1e-8)
    marginal = [ref.log_joint(zi, observed=[False, True]) for zi in z.numpy()]
    np.testing.assert_allclose(prior.log_prob(z, torch.tensor([False, True])).numpy(), marginal, rtol=1e-10, atol=1e-8)
    # Nothing observed at all: the total mass, log 1.
    nothing = prior.joint_log_prob(z, y, torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
    np.testing.assert_allclose(nothing.numpy(), 0.0, atol=1e-12)


def test_attribute_probabilities_match_enumeration_and_sum_to_one():
    prior = random_joint(seed=7, power=3.0)
    ref = BruteJoint(prior)
    z = _codes(seed=3)
    probs = prior.attribute_probabilities(z)
    assert probs.shape == (5, 2, 3)
    assert (probs[:, 0, 2] == 0).all()  # attribute 0 has two values: the padded one has no mass
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 2, dtype=torch.float64), rtol=0, atol=1e-12)
    for zi, row in zip(z.numpy(), probs.numpy()):
        for j, (size, expected) in enumerate(zip(SIZES, ref.attribute_probabilities(zi))):
            np.testing.assert_allclose(row[j, :size], expected, rtol=1e-9, atol=1e-12)
    log_probs = prior.attribute_log_probabilities(z)
    assert torch.isneginf(log_probs[:, 0, 2]).all()


def test_hidden_attributes_give_the_marginal():
    prior = random_joint(seed=9)
    z = _codes(seed=4)
    junk = torch.full((5, 2), -7)
    hidden = torch.zeros(2, dtype=torch.bool)
    torch.testing.assert_close(prior.joint_log_prob(z, junk, hidden), prior.log_prob(z), rtol=1e-13, atol=1e-12)
    # Summing p(z, y) over every y also gives p(z).
    values = torch.stack([
        prior.joint_log_prob(z, torch.tensor([[a, b]]).expand(5, 2)) for a in range(2) for b in range(3)
    ])
    torch.testing.assert_close(values.logsumexp(0), prior.log_prob(z), rtol=1e-12, atol=1e-12)


def test_latent_count_below_attribute_count_pads_latent_states():
    """N = 2 latent components, K = 4 values: latent positions carry a padded state."""
    prior = random_joint(d=2, n=2, sizes=(4,), seed=11)
    ref = BruteJoint(prior)
    z = _codes(seed=5)
    y = torch.tensor([[3], [0], [1], [2], [3]])
    expected = [ref.log_joint(zi, yi, [True]) for zi, yi in zip(z.numpy(), y.numpy())]
    np.testing.assert_allclose(prior.joint_log_prob(z, y).numpy(), expected, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(prior.log_prob(z).numpy(), [ref.log_joint(zi) for zi in z.numpy()], rtol=1e-10, atol=1e-8)


def test_float32_agrees_with_float64():
    prior = random_joint(seed=13)
    z = _codes(seed=6)
    y, mask = torch.tensor([[1, 2]]).expand(5, 2), torch.tensor([True, True])
    exact = prior.joint_log_prob(z, y, mask)
    approx = prior.float().joint_log_prob(z.float(), y, mask).double()
    torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-3)


# -- the ring order --------------------------------------------------------------------
def test_seeds_give_different_orders_and_the_order_matters():
    orders = [JointTRIPPrior(4, [2, 3], 3, 2, permutation_seed=s).ring_order for s in range(5)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(6)) and order.dtype == torch.long
    assert len({tuple(o.tolist()) for o in orders}) > 1
    assert JointTRIPPrior(4, [2, 3], 3, 2, permutation_seed=None).ring_order.tolist() == list(range(6))
    # The same cores in another (non-cyclic) order are another distribution.
    prior = random_joint(seed=15, seed_order=1)
    order = prior.ring_order.tolist()
    swapped = [order[1], order[0], *order[2:]]
    z = _codes(seed=7)[2].numpy()
    assert abs(BruteJoint(prior, swapped).log_joint(z) - BruteJoint(prior).log_joint(z)) > 1e-3


def test_order_round_trips_through_the_state_dict():
    source = random_joint(seed=17, seed_order=3)
    fresh = JointTRIPPrior(2, SIZES, 3, 2, permutation_seed=4).double()
    assert not torch.equal(fresh.ring_order, source.ring_order)
    assert "ring_order" in source.state_dict()
    fresh.load_state_dict(source.state_dict())
    assert torch.equal(fresh.ring_order, source.ring_order)
    z, y = _codes(seed=8), torch.tensor([[1, 0]]).expand(5, 2)
    torch.testing.assert_close(fresh.joint_log_prob(z, y), source.joint_log_prob(z, y), rtol=0, atol=0)


# -- sampling --------------------------------------------------------------------------
def _informative_ring(n=3, sizes=(4,)):
    """One latent with well-separated components and sparse cores: the attribute moves z a lot."""
    g = torch.Generator().manual_seed(21)
    cores = torch.rand(1, n, 2, 2, generator=g, dtype=torch.float64) ** 6 + 0.01
    attributes = [torch.rand(k, 2, 2, generator=g, dtype=torch.float64) ** 6 + 0.01 for k in sizes]
    means = torch.linspace(-3, 3, n, dtype=torch.float64)[None]
    stds = torch.full((1, n), 0.5, dtype=torch.float64)
    return JointTRIPPrior.from_parameters(cores, means, stds, attribute_cores=attributes)


def test_sample_given_attributes_matches_exact_conditional():
    prior = _informative_ring()  # N = 3 < K = 4: the latent position has a padded state
    ref = BruteJoint(prior)
    marginal = ref.latent_state_weights(0)
    shifts = [np.abs(ref.latent_state_weights(0, [k], [True]) - marginal).sum() for k in range(4)]
    k_star = int(np.argmax(shifts))
    assert shifts[k_star] > 0.2  # the test below has power
    rows = 3000
    y = torch.tensor([[k_star]] * rows + [[0]] * rows + [[-1]] * rows)
    mask = torch.tensor([[True]] * 2 * rows + [[False]] * rows)
    z = prior.sample_given_attributes(y, mask, generator=torch.Generator().manual_seed(0))[:, 0].numpy()
    groups = [(z[:rows], [k_star], [True]), (z[rows : 2 * rows], [0], [True]), (z[2 * rows :], None, None)]
    for sample, value, observed in groups:
        assert kstest(sample, ref.mixture_cdf(0, ref.latent_state_weights(0, value, observed))).pvalue > 1e-3
    # Power: the unconditional marginal is rejected for the informative value.
    assert kstest(z[:rows], ref.mixture_cdf(0, marginal)).pvalue < 1e-3


def test_joint_samples_never_draw_padded_states_and_match_exact_frequencies():
    prior = _informative_ring(n=4, sizes=(2,))  # K = 2 < N = 4: the attribute has padded states
    ref = BruteJoint(prior)
    z, y = prior.sample_joint(6000, generator=torch.Generator().manual_seed(1))
    assert z.shape == (6000, 1) and y.shape == (6000, 1) and y.dtype == torch.long
    assert set(y.unique().tolist()) <= {0, 1}
    p_y1 = np.exp(ref.log_joint(np.zeros(1), [1], [True], [False]))
    assert abs((y == 1).double().mean().item() - p_y1) < 4 * np.sqrt(p_y1 * (1 - p_y1) / 6000)
    for k in (0, 1):
        weights = ref.latent_state_weights(0, [k], [True])
        assert kstest(z[y[:, 0] == k, 0].numpy(), ref.mixture_cdf(0, weights)).pvalue > 1e-3
    # A latent padded state has no component: drawing it would fail in the gather.
    small = _informative_ring(n=2, sizes=(4,))
    assert torch.isfinite(small.sample_joint(2000, generator=torch.Generator().manual_seed(2))[0]).all()


def test_marginal_and_latent_conditional_samples_match_enumeration():
    prior = random_joint(seed=23, power=4.0)
    ref = BruteJoint(prior)
    samples = prior.sample(4000, generator=torch.Generator().manual_seed(3)).numpy()
    for k in range(2):
        assert kstest(samples[:, k], ref.mixture_cdf(k, ref.latent_state_weights(k))).pvalue > 1e-3
    z = prior.sample_conditional(torch.zeros(10, 2, dtype=torch.float64), torch.tensor([True, False]))
    assert (z[:, 1] == 0).all() and torch.isfinite(z).all()


def test_sampling_is_reproducible():
    prior = random_joint(seed=25)
    y, mask = torch.tensor([[1, 2], [0, 0]]), torch.tensor([[True, False], [False, True]])
    a = prior.sample_given_attributes(y, mask, generator=torch.Generator().manual_seed(5))
    b = prior.sample_given_attributes(y, mask, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# -- gradients and extremes ------------------------------------------------------------
class _Queries(nn.Module):
    def __init__(self, prior):
        super().__init__()
        self.prior = prior

    def forward(self, z, y, y_observed):
        p = self.prior
        probs = p.attribute_log_probabilities(z)
        valid = torch.cat([probs[:, j, :k] for j, k in enumerate(p.attribute_sizes)], dim=-1)
        return p.joint_log_prob(z, y, y_observed), p.attribute_log_prob(z, y, y_observed), p.log_prob(z), valid


def test_gradcheck_wrt_codes_and_all_cores():
    queries = _Queries(random_joint(seed=27))
    names = [name for name, _ in queries.named_parameters()]
    assert names == ["prior.loc", "prior.log_scale", "prior.log_cores", "prior.attribute_log_cores.0", "prior.attribute_log_cores.1"]
    params = [p.detach().clone().requires_grad_() for p in queries.parameters()]
    z = _codes(seed=9)[2:].clone().requires_grad_()
    y = torch.tensor([[1, 2], [0, -1], [1, 0]])
    mask = torch.tensor([[True, True], [True, False], [False, True]])

    def f(z, *ps):
        return torch.func.functional_call(queries, dict(zip(names, ps)), (z, y, mask))

    assert torch.autograd.gradcheck(f, (z, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_codes_with_hidden_attributes_stay_finite(dtype):
    # N = 2 < K = 4: the latent positions have padded states, which must not set the offsets.
    prior = JointTRIPPrior(6, [2, 3, 4], 2, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    z = torch.zeros(3, 6, dtype=dtype)
    z[0], z[1], z[2, ::2] = 1e3, -1e3, 1e3
    z.requires_grad_()
    hidden = torch.zeros(3, dtype=torch.bool)
    y = torch.full((3, 3), -1)
    joint = prior.joint_log_prob(z, y, hidden)
    torch.testing.assert_close(joint, prior.log_prob(z))
    observed = prior.attribute_log_prob(z, torch.ones(3, 3, dtype=torch.long))
    probs = prior.attribute_probabilities(z)
    (joint.sum() + observed.sum() + probs[..., 0].sum()).backward()
    assert torch.isfinite(joint).all() and torch.isfinite(observed).all() and (observed < 0).all()
    assert torch.isfinite(z.grad).all() and all(torch.isfinite(p.grad).all() for p in prior.parameters())
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 3, dtype=dtype))
    # log p(y | z) is a ratio of two values near -5e7: float32 still gets it to float32 precision.
    exact = prior.double().attribute_log_prob(z.detach().double(), torch.ones(3, 3, dtype=torch.long))
    torch.testing.assert_close(observed.detach().double(), exact, rtol=1e-4, atol=1e-4)
    exact_probs = prior.attribute_probabilities(z.detach().double())
    torch.testing.assert_close(probs.detach().double(), exact_probs, rtol=1e-4, atol=1e-5)


def test_log_ring_ratio_is_the_difference_of_values_in_every_chunk(monkeypatch):
    g = torch.Generator().manual_seed(31)
    cores, log_max = tr.split_log_cores(torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64))
    num = torch.randn(7, 5, 3, generator=g, dtype=torch.float64) * 1e3
    ref = num.clone()
    ref[:, 2] = torch.randn(7, 3, generator=g, dtype=torch.float64)
    ref[0, 2, 1] = -torch.inf
    expected = tr.log_ring_value(cores, log_max, num) - tr.log_ring_value(cores, log_max, ref)
    monkeypatch.setattr(tr, "CPU_CHUNK_ELEMENTS", 5 * 4 * 4)  # two rows per chunk
    torch.testing.assert_close(tr.log_ring_ratio(cores, log_max, num, ref), expected, rtol=1e-10, atol=1e-8)
    approx = tr.log_ring_ratio(cores.float(), log_max.float(), num.float(), ref.float())
    torch.testing.assert_close(approx.double(), expected, rtol=1e-4, atol=1e-4)
    # Grouped rows: three rows per reference, each reference chain computed once.
    grouped = tr.log_ring_ratio(cores, log_max, num[:6], ref[[0, 3]])
    expected = tr.log_ring_value(cores, log_max, num[:6]) - tr.log_ring_value(cores, log_max, ref[[0, 3]]).repeat_interleave(3)
    torch.testing.assert_close(grouped, expected, rtol=1e-10, atol=1e-8)
    with pytest.raises(ValueError, match="multiple of the reference rows"):
        tr.log_ring_ratio(cores, log_max, num, ref[:2])


# -- construction, the TRIPPrior interface and bad input -------------------------------
def test_is_a_trip_prior_with_learnable_attribute_cores():
    prior = JointTRIPPrior(3, [2, 5], 4, 2, learnable=False)
    assert isinstance(prior, TRIPPrior) and not prior.learnable
    assert len(list(prior.parameters())) == 5
    prior.set_learnable(True)
    assert all(p.requires_grad for p in prior.attribute_log_cores)
    assert prior.attribute_log_cores[1].shape == (5, 2, 2) and prior.n_states == 5
    prior = prior.double()
    assert prior.attribute_log_cores[0].dtype == torch.float64 and prior.ring_order.dtype == torch.long
    assert prior.means.shape == (3, 4) and prior.stds.shape == (3, 4)
    codes = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = [c.clone() for c in prior.attribute_log_cores]
    prior.fit_marginals(codes)
    assert torch.isfinite(prior.log_prob(codes)).all()
    assert not torch.equal(before[0], prior.attribute_log_cores[0])  # redrawn with the latent cores


def test_bad_input_is_rejected_with_clear_messages():
    prior = JointTRIPPrior(2, [2, 3], 3, 2)
    z = torch.zeros(2, 2)
    y = torch.tensor([[0, 2], [1, 0]])
    cases = [
        (lambda: prior.joint_log_prob(z, y.float()), "integer tensor"),
        (lambda: prior.joint_log_prob(z, y.bool()), "integer tensor"),
        (lambda: prior.joint_log_prob(z, [[0, 2], [1, 0]]), "must be a torch.Tensor"),
        (lambda: prior.joint_log_prob(z, y[:1]), r"shape \(2, 2\), got \(1, 2\)"),
        (lambda: prior.joint_log_prob(z, y[:, :1]), r"shape \(2, 2\), got \(2, 1\)"),
        (lambda: prior.joint_log_prob(z, torch.tensor([[0, 3], [1, 0]])), r"attribute 1 takes values 0..2, got 3 \(row 0\)"),
        (lambda: prior.joint_log_prob(z, torch.tensor([[0, 0], [-1, 0]])), r"attribute 0 takes values 0..1, got -1 \(row 1\)"),
        (lambda: prior.joint_log_prob(z, y, torch.tensor([1, 0])), "y_observed mask must be boolean"),
        (lambda: prior.joint_log_prob(z, y, torch.ones(3, dtype=torch.bool)), r"y_observed mask must have shape \(2,\) or \(2, 2\)"),
        (lambda: prior.joint_log_prob(z, y, None, torch.ones(3, dtype=torch.bool)), "observed mask must have shape"),
        (lambda: prior.joint_log_prob(torch.zeros(2, 3), y), r"codes must have shape \(batch, 2\)"),
        (lambda: prior.attribute_log_prob(z, y[:1]), r"shape \(2, 2\)"),
        (lambda: prior.attribute_probabilities(torch.full((1, 2), float("nan"))), "NaN or inf"),
        (lambda: prior.sample_given_attributes(torch.tensor([0, 1])), r"shape \(batch, 2\)"),
        (lambda: prior.sample_joint(0), "n must be an integer >= 1"),
        (lambda: JointTRIPPrior(2, [2, 1]), "number of values >= 2"),
        (lambda: JointTRIPPrior(2, [2.0]), "number of values >= 2"),
        (lambda: JointTRIPPrior(2, []), "at least one attribute"),
        (lambda: JointTRIPPrior(2, [2], permutation_seed=1.5), "permutation_seed must be an integer"),
        (lambda: JointTRIPPrior.from_parameters(
            torch.ones(2, 3, 2, 2), torch.zeros(2, 3), torch.ones(2, 3), attribute_cores=[torch.ones(2, 3, 3)]
        ), r"attribute core 0 must have shape \(K >= 2, 2, 2\)"),
        (lambda: JointTRIPPrior.from_parameters(
            torch.ones(2, 3, 2, 2), torch.zeros(2, 3), torch.ones(2, 3), attribute_cores=[-torch.ones(2, 2, 2)]
        ), "non-negative"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
