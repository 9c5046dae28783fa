"""TRIP against brute-force enumeration, gradients, and behaviour far from the mass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kstest

from trip.priors import TRIPPrior

FAR = [50.0, 1e3]


def _codes(d, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, d, generator=g, dtype=torch.float64) * 2
    z[0, 0], z[1, -1], z[2] = FAR[0], -FAR[1], FAR[1]  # far outside every component
    return z.to(dtype)


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-8), (torch.float32, 1e-5, 1e-4)])
def test_log_prob_matches_enumeration(make_trip, brute, dtype, rtol, atol, narrow):
    prior = make_trip(d=3, n=3, m=2, seed=3, dtype=dtype, narrow=narrow)
    z = _codes(3, dtype)
    expected = brute(prior).log_prob(z.double().numpy())
    got = prior.log_prob(z).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-8), (torch.float32, 1e-5, 1e-4)])
def test_marginals_match_enumeration(make_trip, brute, dtype, rtol, atol):
    prior = make_trip(d=4, n=3, m=3, seed=5, dtype=dtype)
    z = _codes(4, dtype)
    ref = brute(prior)
    for observed in ([True, False, True, False], [False, False, False, True], [True, True, True, False]):
        mask = torch.tensor(observed)
        expected = ref.log_prob(z.double().numpy(), observed)
        np.testing.assert_allclose(prior.log_prob(z, mask).double().numpy(), expected, rtol=rtol, atol=atol)


def test_per_row_masks_and_full_marginal(make_trip, brute):
    prior = make_trip(d=3, n=2, m=2, seed=7)
    z = _codes(3, torch.float64)
    masks = torch.rand(z.shape[0], 3, generator=torch.Generator().manual_seed(0)) > 0.5
    ref = brute(prior)
    expected = [ref.log_prob(zi[None].numpy(), mi.numpy())[0] for zi, mi in zip(z, masks)]
    np.testing.assert_allclose(prior.log_prob(z, masks).numpy(), expected, rtol=1e-10, atol=1e-8)
    # Summing out every dimension leaves the total mass: log 1.
    nothing = torch.zeros(3, dtype=torch.bool)
    np.testing.assert_allclose(prior.log_prob(z, nothing).numpy(), 0.0, atol=1e-12)


def test_conditional_is_ratio_of_marginals(make_trip, brute):
    prior = make_trip(d=3, n=3, m=2, seed=11)
    z = _codes(3, torch.float64)
    target, given = torch.tensor([True, False, False]), torch.tensor([False, True, True])
    ref = brute(prior)
    expected = ref.log_prob(z.numpy()) - ref.log_prob(z.numpy(), given.numpy())
    got = prior.conditional_log_prob(z, target, given)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-8)


def test_density_integrates_to_one_in_1d():
    prior = TRIPPrior(1, n_components=4, core_size=3, generator=torch.Generator().manual_seed(0)).double()
    grid = torch.linspace(-12, 12, 200001, dtype=torch.float64)[:, None]
    mass = torch.trapezoid(prior.log_prob(grid).exp(), grid[:, 0])
    assert abs(mass.item() - 1.0) < 1e-8


def test_gradcheck_wrt_codes_and_parameters(make_trip):
    prior = make_trip(d=3, n=2, m=2, seed=13)
    names = ["log_cores", "loc", "log_scale"]
    params = [getattr(prior, n).detach().clone().requires_grad_() for n in names]
    z = _codes(3, torch.float64)[3:].clone().requires_grad_()
    mask = torch.tensor([True, False, True])

    def f(z, *ps):
        out = torch.func.functional_call(prior, dict(zip(names, ps)), (z,))
        marg = torch.func.functional_call(prior, dict(zip(names, ps)), (z, mask))
        return out, marg

    assert torch.autograd.gradcheck(f, (z, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("far", [1e3, 1e4])
def test_far_codes_have_finite_gradients_pointing_back(dtype, far):
    prior = TRIPPrior(8, 5, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    z = torch.zeros(2, 8, dtype=dtype)
    z[0, :4], z[1, :4] = far, -far
    z.requires_grad_()
    prior.log_prob(z).sum().backward()
    grad = z.grad[:, :4]
    assert torch.isfinite(z.grad).all()
    assert (grad[0] < 0).all() and (grad[1] > 0).all()
    # Every component's slope is at least (|z| - |mu|) / sigma^2, so the mixture's is too.
    bound = (far - prior.means.abs().max()) / prior.stds.max() ** 2
    assert (grad.abs() >= 0.999 * bound).all()


def test_float32_accurate_in_high_dimensions_far_away():
    """d = 300, |z| up to 1e4: float32 agrees with float64 to float32 precision."""
    g = torch.Generator().manual_seed(0)
    prior64 = TRIPPrior(300, 10, 8, generator=g).double()
    z = torch.randn(16, 300, generator=g, dtype=torch.float64)
    z[:4] *= 1e4
    exact = prior64.log_prob(z)
    approx = prior64.float().log_prob(z.float()).double()
    assert torch.isfinite(approx).all()
    torch.testing.assert_close(approx, exact, rtol=2e-6, atol=1e-2)


def test_reference_floor_problem_is_absent():
    """The paper's code adds 1e-10 to densities: its log-density saturates near d*ln(1e-10).

    Ours keeps decreasing quadratically; its gradient stays non-zero.
    """
    prior = TRIPPrior(4, 10, 4, generator=torch.Generator().manual_seed(0)).double()
    values = [prior.log_prob(torch.full((1, 4), r, dtype=torch.float64)).item() for r in (20, 40, 80)]
    floor = 4 * np.log(1e-10)
    assert values[0] < floor and values[1] < 3 * values[0] and values[2] < 3 * values[1]


# -- sampling --------------------------------------------------------------------------
def test_sample_marginals_pass_ks_and_wrong_weights_fail(make_trip, brute):
    prior = make_trip(d=3, n=3, m=2, seed=17)
    ref = brute(prior)
    samples = prior.sample(4000, generator=torch.Generator().manual_seed(0)).numpy()
    for k in range(3):
        weights = ref.state_marginal(k)
        assert kstest(samples[:, k], ref.mixture_cdf(k, weights)).pvalue > 1e-3
    # Power: the same test rejects a mixture with the weights reversed.
    wrong = ref.state_marginal(0)[::-1]
    assert not np.allclose(wrong, ref.state_marginal(0), atol=0.1)
    assert kstest(samples[:, 0], ref.mixture_cdf(0, wrong)).pvalue < 1e-3


def test_sample_conditional_matches_exact_conditional(make_trip, brute):
    # Well-separated components and sparse cores: observing z_0 moves the others a lot.
    cores = make_trip(d=3, n=3, m=2, seed=19, power=6.0).cores
    means = torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64).expand(3, 3)
    prior = TRIPPrior.from_parameters(cores, means, torch.full((3, 3), 0.5, dtype=torch.float64), learnable=False)
    ref = brute(prior)
    resample = torch.tensor([False, True, True])
    shift = [np.abs(ref.state_marginal(1, [mu, 0, 0], ~resample.numpy()) - ref.state_marginal(1)).sum() for mu in ref.means[0]]
    z0 = torch.tensor([[ref.means[0, int(np.argmax(shift))], 0.0, 0.0]], dtype=torch.float64)
    z = prior.sample_conditional(z0.expand(4000, 3), resample, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z[:, 0], z0.expand(4000, 3)[:, 0])
    for k in (1, 2):
        weights = ref.state_marginal(k, z0[0].numpy(), ~resample.numpy())
        assert kstest(z[:, k].numpy(), ref.mixture_cdf(k, weights)).pvalue > 1e-3
    # Power: the unconditional marginal is clearly different and is rejected.
    prior_weights = ref.state_marginal(1)
    assert not np.allclose(prior_weights, ref.state_marginal(1, z0[0].numpy(), ~resample.numpy()), atol=0.05)
    assert kstest(z[:, 1].numpy(), ref.mixture_cdf(1, prior_weights)).pvalue < 1e-3


def test_sampling_is_reproducible_with_a_generator():
    prior = TRIPPrior(6, 4, 3, generator=torch.Generator().manual_seed(0))
    a = prior.sample(10, generator=torch.Generator().manual_seed(5))
    b = prior.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# -- construction and initialisation ---------------------------------------------------
def test_from_parameters_round_trip(make_trip):
    prior = make_trip(d=3, n=3, m=2, seed=23)
    again = TRIPPrior.from_parameters(prior.cores, prior.means, prior.stds)
    torch.testing.assert_close(again.cores, prior.cores)
    torch.testing.assert_close(again.means, prior.means)
    z = _codes(3, torch.float64)
    torch.testing.assert_close(again.log_prob(z), prior.log_prob(z))


def test_zero_core_entries_are_exact(brute):
    cores = torch.rand(3, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cores[0, 1] = 0.0  # state 1 of dimension 0 is impossible
    cores[2, 0, 0, 1] = 0.0
    prior = TRIPPrior.from_parameters(cores, torch.randn(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64))
    z = _codes(3, torch.float64)
    np.testing.assert_allclose(prior.log_prob(z).detach().numpy(), brute(prior).log_prob(z.numpy()), rtol=1e-10, atol=1e-8)
    assert brute(prior).state_marginal(0)[1] < 1e-30


def test_fit_marginals_recovers_well_separated_modes():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([-3.0, 0.0, 3.0])
    codes = centres[torch.randint(0, 3, (3000, 2), generator=g)] + 0.1 * torch.randn(3000, 2, generator=g)
    codes[:, 1] *= 2
    prior = TRIPPrior(2, n_components=3, core_size=2, core_init_std=0.0)
    prior.fit_marginals(codes, seed=0)
    torch.testing.assert_close(prior.means[0], centres, atol=0.02, rtol=0)
    torch.testing.assert_close(prior.means[1], 2 * centres, atol=0.04, rtol=0)
    torch.testing.assert_close(prior.stds[0], torch.full((3,), 0.1), atol=0.01, rtol=0)
    # Noise-free cores around the fitted weights make the ring rank 1: the prior is
    # the product of the fitted 1-D mixtures, so its marginal is scikit-learn's fit.
    from sklearn.mixture import GaussianMixture

    fit = GaussianMixture(3, max_iter=100, random_state=0).fit(codes[:, :1].double().numpy())
    marg = prior.log_prob(codes[:50], torch.tensor([True, False])).detach()
    np.testing.assert_allclose(marg.numpy(), fit.score_samples(codes[:50, :1].double().numpy()), rtol=1e-5, atol=1e-5)


def test_fixed_prior_has_frozen_parameters():
    prior = TRIPPrior(4, 3, 2, learnable=False)
    assert not prior.learnable and all(not p.requires_grad for p in prior.parameters())
    assert len(list(prior.parameters())) == 3
    z = torch.randn(5, 4, requires_grad=True)
    prior.log_prob(z).sum().backward()  # codes still get gradients
    assert z.grad is not None and prior.log_cores.grad is None


DEVICES = [
    "cpu",
    # Always collected, so a machine without a GPU reports it as skipped instead of silently running CPU only.
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_conversion(dtype, device, make_trip):
    prior = TRIPPrior(5, 3, 2).to(device=device, dtype=dtype)
    assert prior.cores.dtype == dtype and prior.dtype == dtype and prior.device.type == device
    assert prior.sample(3).dtype == dtype
    z = torch.randn(3, 5, dtype=dtype, device=device)
    assert prior.log_prob(z).dtype == dtype
    assert prior.sample_conditional(z, torch.tensor([True, False, True, False, False])).device.type == device
    # Same numbers on every device (CPU float64 is the reference).
    small = make_trip(d=3, n=3, m=2, seed=29)
    codes = _codes(3, torch.float64)
    torch.testing.assert_close(
        small.to(device=device, dtype=dtype).log_prob(codes.to(device, dtype)).cpu().double(),
        make_trip(d=3, n=3, m=2, seed=29).log_prob(codes),
        rtol=1e-5, atol=1e-4,
    )
