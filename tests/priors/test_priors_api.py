"""The shared interface: registry, bad input, and property-based extremes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trip.priors import PRIORS, GMMPrior, NormalPrior, TRIPPrior, build_prior

ALL = [lambda: NormalPrior(4), lambda: GMMPrior(4, 3), lambda: TRIPPrior(4, 3, 2)]


def test_registry_builds_every_prior_by_name():
    assert PRIORS.names() == ["gmm", "normal", "trip"]
    assert isinstance(build_prior("trip", 8, n_components=3, core_size=2), TRIPPrior)
    assert not build_prior("gmm", 8, learnable=False, n_components=2).learnable
    with pytest.raises(ValueError, match="unknown prior 'tripp'.*gmm, normal, trip"):
        build_prior("tripp", 8)
    with pytest.raises(ValueError, match="bad options for prior 'trip'.*core_sise"):
        build_prior("trip", 8, core_sise=3)
    with pytest.raises(ValueError, match="prior 'normal' takes no options"):
        build_prior("normal", 8, n_components=3)


@pytest.mark.parametrize("make", ALL)
def test_bad_codes_and_masks_are_rejected_with_clear_messages(make):
    prior = make()
    with pytest.raises(ValueError, match=r"shape \(batch, 4\).*\(3, 5\)"):
        prior.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        prior.log_prob(torch.zeros(4))
    for bad in (float("nan"), float("inf")):
        z = torch.zeros(2, 4)
        z[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            prior.log_prob(z)
    with pytest.raises(ValueError, match=r"observed mask must have shape \(4,\) or \(2, 4\), got \(3,\)"):
        prior.log_prob(torch.zeros(2, 4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="observed mask must be boolean"):
        prior.log_prob(torch.zeros(2, 4), torch.ones(4))
    with pytest.raises(ValueError, match="resample mask"):
        prior.sample_conditional(torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="codes must be a torch.Tensor"):
        prior.log_prob([[0.0] * 4])
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        prior.sample(0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="core_size must be an integer >= 1, got 0"):
        TRIPPrior(4, 3, 0)
    with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
        TRIPPrior(4, 0, 2)
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        GMMPrior(-1, 2)
    with pytest.raises(ValueError, match="mean_range"):
        TRIPPrior(4, 3, 2, mean_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="init must be 'uniform' or 'grid'"):
        TRIPPrior(4, 3, 2, init="normal")
    with pytest.raises(ValueError, match="cores must be non-negative"):
        TRIPPrior.from_parameters(-torch.ones(2, 3, 2, 2), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"stds must have shape \(2, 3\)"):
        TRIPPrior.from_parameters(torch.ones(2, 3, 2, 2), torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="stds must be positive"):
        TRIPPrior.from_parameters(torch.ones(2, 3, 2, 2), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="fit_marginals needs at least n_components=3 codes"):
        TRIPPrior(4, 3, 2).fit_marginals(torch.zeros(2, 4))


@st.composite
def trip_case(draw):
    d = draw(st.integers(1, 6))
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    log_std = draw(st.floats(-7.0, 4.0))  # stds from 1e-3 to 55
    core_spread = draw(st.floats(0.0, 20.0))  # core entries over up to e^40
    values = draw(st.lists(st.one_of(st.floats(-1e4, 1e4), st.sampled_from([0.0, 1e4, -1e4, 1e-30])), min_size=d, max_size=d))
    mask = draw(st.lists(st.booleans(), min_size=d, max_size=d))
    return d, n, m, dtype, seed, log_std, core_spread, values, mask


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trip_case())
def test_trip_never_returns_nan_or_inf(case):
    d, n, m, dtype, seed, log_std, core_spread, values, mask = case
    g = torch.Generator().manual_seed(seed)
    prior = TRIPPrior(d, n, m, core_init_std=core_spread, generator=g).to(dtype)
    with torch.no_grad():
        prior.log_scale.add_(log_std - prior.log_scale.mean())
    z = torch.tensor([values, [0.0] * d], dtype=dtype, requires_grad=True)
    mask = torch.tensor(mask)
    out = prior.log_prob(z) + prior.log_prob(z, mask)
    assert torch.isfinite(out).all()
    out.sum().backward()
    grads = [z.grad] + [p.grad for p in prior.parameters()]
    assert all(torch.isfinite(gr).all() for gr in grads)
    assert torch.isfinite(prior.sample(4, generator=g)).all()
    assert torch.isfinite(prior.sample_conditional(z.detach(), mask, generator=g)).all()
    # Summing out every dimension leaves probability one.
    nothing = torch.zeros(d, dtype=torch.bool)
    assert prior.log_prob(z, nothing).abs().max() < 1e-4


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.sampled_from([torch.float32, torch.float64]), st.floats(-1e4, 1e4))
def test_gmm_and_normal_never_nan(d, k, dtype, value):
    for prior in (GMMPrior(d, k).to(dtype), NormalPrior(d).to(dtype)):
        z = torch.full((2, d), value, dtype=dtype)
        assert torch.isfinite(prior.log_prob(z)).all()
        assert torch.isfinite(prior.sample(3)).all()
