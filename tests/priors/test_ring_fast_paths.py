"""The speed paths of the ring algebra (issue 13) against plain references.

* the hand-written backward of the product tree against autograd through a plain chain;
* levels left unrescaled and the balanced first level (data-dependent, so forced
  here on small rings) against always rescaling, far codes and wide cores included;
* batch chunking and the forward-only workspaces against one autograd pass;
* the vectorised sampler against exact enumeration (shared and per-row
  evidence, a single-position ring), its two bond-chain strategies against each
  other, and the cached sampling plan against parameter changes;
* no host synchronisation in a CUDA sampling call (where a GPU is present).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from trip.priors import JointTRIPPrior, TRIPPrior
from trip.priors import tensor_ring as tr


def _plain_log_trace(mats: torch.Tensor) -> torch.Tensor:
    """log Tr(mats[0] ... mats[L-1]) per batch row by a left-to-right product (float64, small rings)."""
    product = mats[0]
    for k in range(1, mats.shape[0]):
        product = product @ mats[k]
    return torch.log(torch.diagonal(product, dim1=-2, dim2=-1).sum(-1))


@pytest.mark.parametrize("length", [1, 2, 3, 5, 6, 7, 12, 13])
def test_trace_chain_values_and_gradients_match_autograd(length):
    g = torch.Generator().manual_seed(length)
    mats = torch.rand(length, 4, 3, 3, generator=g, dtype=torch.float64) + 0.05
    mats[0, 1, 2] = 0.0  # zero entries
    log_scale = torch.randn(length, 4, generator=g, dtype=torch.float64)
    weights = torch.randn(4, generator=g, dtype=torch.float64)

    leaf = mats.clone().requires_grad_()
    scale = log_scale.clone().requires_grad_()
    got = tr.log_trace_chain(leaf, scale)
    (got * weights).sum().backward()

    ref_leaf = mats.clone().requires_grad_()
    ref_scale = log_scale.clone().requires_grad_()
    expected = _plain_log_trace(ref_leaf) + ref_scale.sum(0)
    (expected * weights).sum().backward()

    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scale.grad, ref_scale.grad)


@pytest.mark.parametrize("length", [2, 5, 8])
def test_gradcheck_of_ring_value_through_every_path(monkeypatch, length):
    """Checks and balancing forced on (threshold 0): gradients stay exact."""
    monkeypatch.setattr(tr, "_CHECK_ELEMENTS", 0)
    g = torch.Generator().manual_seed(length)
    log_cores = (torch.randn(length, 3, 2, 2, generator=g, dtype=torch.float64) * 2).requires_grad_()
    emission = (torch.randn(4, length, 3, generator=g, dtype=torch.float64) * 5).requires_grad_()

    def value(log_cores, emission):
        cores, log_max = tr.split_log_cores(log_cores)
        return tr.log_ring_value(cores, log_max, emission)

    assert torch.autograd.gradcheck(value, (log_cores, emission), eps=1e-6, atol=1e-6)


def _ring_cases():
    """(name, TRIPPrior in float64, codes): generic, wide log-cores, zero slices, far codes."""
    g = torch.Generator().manual_seed(0)
    generic = TRIPPrior(8, 4, 3, generator=g).double()
    wide = TRIPPrior.from_parameters(
        (torch.rand(6, 3, 3, 3, generator=g, dtype=torch.float64) * 18 - 12).exp(),
        torch.randn(6, 3, generator=g, dtype=torch.float64) * 3,
        torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 + 0.01,
        learnable=True,
    )
    cores = torch.rand(7, 3, 2, 2, generator=g, dtype=torch.float64)
    cores[2, 1] = 0.0
    cores[4, :, 0, 1] = 0.0
    means, stds = torch.randn(7, 3, dtype=torch.float64), torch.ones(7, 3, dtype=torch.float64)
    zeros = TRIPPrior.from_parameters(cores, means, stds)
    out = []
    for name, prior in (("generic", generic), ("wide", wide), ("zeros", zeros)):
        z = torch.randn(40, prior.dim, generator=g, dtype=torch.float64) * 2
        z[:5] *= 500  # far from every component
        out.append((name, prior, z))
    return out


@pytest.mark.parametrize("case", _ring_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unrescaled_levels_and_balancing_match_always_rescaling(monkeypatch, case, dtype):
    _, prior, z = case
    prior, z = prior.to(dtype), z.to(dtype)

    def run(check_elements):
        monkeypatch.setattr(tr, "_CHECK_ELEMENTS", check_elements)
        prior.zero_grad(set_to_none=True)
        zz = z.clone().requires_grad_()
        value = prior.log_prob(zz)
        value.sum().backward()
        return value.detach(), zz.grad, prior.log_cores.grad

    forced = run(0)  # every level checked (often left as is), first level balanced
    plain = run(1 << 60)  # every level rescaled, nothing balanced
    rtol, atol = (1e-10, 1e-8) if dtype == torch.float64 else (2e-5, 1e-3)
    for a, b in zip(forced, plain):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_float32_with_forced_checks_tracks_float64_far_away(monkeypatch):
    monkeypatch.setattr(tr, "_CHECK_ELEMENTS", 0)
    g = torch.Generator().manual_seed(1)
    prior = TRIPPrior(64, 10, 8, generator=g).double()
    z = torch.randn(16, 64, generator=g, dtype=torch.float64)
    z[:4] *= 1e4
    exact = prior.log_prob(z)
    approx = prior.float().log_prob(z.float()).double()
    torch.testing.assert_close(approx, exact, rtol=2e-6, atol=1e-2)


@pytest.mark.parametrize("dim", [10, 7])  # 7: an odd carry on the first level
def test_chunks_fused_first_level_workspaces_and_autograd_agree(monkeypatch, dim):
    g = torch.Generator().manual_seed(2)
    prior = TRIPPrior(dim, 5, 4, generator=g)
    z = torch.randn(300, dim, generator=g)
    z[:3] *= 100
    with torch.no_grad():
        whole = prior.log_prob(z)
        monkeypatch.setattr(tr, "CPU_FUSE_FIRST_LEVEL", False)
        unfused = prior.log_prob(z)
        monkeypatch.setattr(tr, "CPU_FUSE_FIRST_LEVEL", True)
        monkeypatch.setattr(tr, "CPU_CHUNK_ELEMENTS", dim * 16 * 7)  # 7 rows per chunk
        monkeypatch.setattr(tr, "CPU_GROUP_ELEMENTS", 1)  # one first-level pair at a time
        chunked = prior.log_prob(z)
    zz = z.clone().requires_grad_()
    with_grad = prior.log_prob(zz)
    with_grad.sum().backward()
    for other in (unfused, chunked, with_grad.detach()):
        torch.testing.assert_close(other, whole, rtol=1e-6, atol=1e-4)
    assert torch.isfinite(zz.grad).all() and torch.isfinite(prior.log_cores.grad).all()


# -- sampling ------------------------------------------------------------------------------
def _exact_states(cores: np.ndarray, log_max: np.ndarray, log_emission: np.ndarray) -> np.ndarray:
    """p(s) over all N^L state tuples, proportional to Tr(prod Q_k[s_k]) exp(sum e_k[s_k]) (float64)."""
    length, n = cores.shape[:2]
    probs = []
    for s in itertools.product(range(n), repeat=length):
        product = np.eye(cores.shape[-1])
        for k in range(length):
            product = product @ (cores[k, s[k]] * np.exp(log_max[k, s[k]] + log_emission[k, s[k]]))
        probs.append(np.trace(product))
    probs = np.array(probs)
    return probs / probs.sum()


def _cell(states: np.ndarray, n: int) -> np.ndarray:
    return (states * n ** np.arange(states.shape[1])[::-1]).sum(1)


def _ring(length=3, n=2, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_cores = torch.randn(length, n, m, m, generator=g, dtype=torch.float64) * 1.5
    return tr.split_log_cores(log_cores)


def _coupled_ring():
    """Positions 0 and 2 pick a bond that position 1 carries: s_0 and s_2 strongly dependent."""
    pick = torch.tensor([[[1.0, 0.1], [0.1, 0.1]], [[0.1, 0.1], [0.1, 1.0]]], dtype=torch.float64)
    carry = torch.tensor([[1.0, 0.05], [0.05, 1.0]], dtype=torch.float64)
    return tr.split_log_cores(torch.stack([pick, torch.stack([carry, 2 * carry]), pick * 1.5]).log())


def test_shared_evidence_draws_match_enumeration():
    cores, log_max = _coupled_ring()
    emission = torch.zeros(1, 3, 2, dtype=torch.float64)
    emission[0, 1] = torch.tensor([0.0, -1.5])  # evidence on position 1, summed out
    draws = 6000
    resample = torch.tensor([[True, False, True]]).expand(draws, 3)
    states = tr.sample_states(cores, log_max, emission, resample, torch.Generator().manual_seed(0)).numpy()
    assert (states[:, 1] == 0).all()
    joint = _exact_states(cores.numpy(), log_max.numpy(), emission[0].numpy()).reshape(2, 2, 2)
    exact = joint.sum(1).ravel()  # p(s_0, s_2 | e_1)
    counts = np.bincount(_cell(states[:, [0, 2]], 2), minlength=4)
    assert chisquare(counts, exact * draws).pvalue > 1e-3
    # Power: the same test rejects independent positions.
    independent = np.outer(joint.sum((1, 2)), joint.sum((0, 1))).ravel()
    assert 0.5 * np.abs(exact - independent).sum() > 0.2
    assert chisquare(counts, independent * draws).pvalue < 1e-3


def test_per_row_evidence_draws_match_enumeration():
    cores, log_max = _ring(seed=1)
    rows = torch.zeros(2, 3, 2, dtype=torch.float64)
    rows[0, 0] = torch.tensor([0.0, -torch.inf])  # position 0 observed in state 0
    rows[1, 0] = torch.tensor([-torch.inf, 0.0])  # ... in state 1
    draws = 4000
    emission = rows.repeat(draws, 1, 1)  # alternate the two evidence rows
    resample = torch.tensor([False, True, True]).expand(2 * draws, 3)
    states = tr.sample_states(cores, log_max, emission, resample, torch.Generator().manual_seed(1)).numpy()
    for r in range(2):
        joint = _exact_states(cores.numpy(), log_max.numpy(), rows[r].numpy()).reshape(2, 2, 2)
        exact = joint.sum(0).ravel()
        counts = np.bincount(_cell(states[r::2, 1:], 2), minlength=4)
        assert chisquare(counts, exact * draws).pvalue > 1e-3


def test_single_position_ring_draws_match_enumeration():
    cores, log_max = _ring(length=1, n=4, m=3, seed=2)
    draws = 6000
    states = tr.draw_states(tr.sampling_plan(cores, log_max, torch.zeros(1, 1, 4, dtype=torch.float64)), draws,
                            generator=torch.Generator().manual_seed(2)).numpy()
    exact = _exact_states(cores.numpy(), log_max.numpy(), np.zeros((1, 4)))
    assert chisquare(np.bincount(states[:, 0], minlength=4), exact * draws).pvalue > 1e-3


@pytest.mark.parametrize("rows", [1, 6])
def test_bond_scan_and_walk_draw_the_same_bonds(rows):
    g = torch.Generator().manual_seed(3)
    steps, batch, m = 9, 6, 4
    log_rows = torch.randn(steps, rows, m, m, generator=g)
    log_rows[0, 0, 1] = -torch.inf  # a forbidden transition row entry
    tail = torch.randn(steps, batch, m, generator=g)
    first = torch.randint(0, m, (batch,), generator=g)
    scanned = tr._bond_chain(log_rows, tail, first, scan=True)
    walked = tr._bond_chain(log_rows, tail, first, scan=False)
    assert torch.equal(scanned, walked)


def test_suffix_scan_is_proportional_to_the_loop():
    g = torch.Generator().manual_seed(4)
    mats = torch.rand(7, 1, 3, 3, generator=g, dtype=torch.float64)
    scanned = tr._suffixes_scan(mats)
    looped, _ = tr._suffixes_loop(mats)
    # The loop scales every column of S_k separately (the scan the whole matrix): compare columns.
    columns = lambda x: x / x.amax(dim=-2, keepdim=True)  # noqa: E731
    torch.testing.assert_close(columns(scanned), columns(looped[:7]), rtol=1e-10, atol=0)


def test_sampling_plan_is_cached_until_the_parameters_change(monkeypatch):
    prior = TRIPPrior(4, 3, 2, generator=torch.Generator().manual_seed(5))
    built = []
    original = tr.sampling_plan
    monkeypatch.setattr(tr, "sampling_plan", lambda *a: built.append(1) or original(*a))
    prior.sample(5)
    prior.sample(7)
    assert len(built) == 1
    opt = torch.optim.SGD(prior.parameters(), lr=0.1)
    prior.log_prob(torch.randn(3, 4)).sum().backward()
    opt.step()  # an optimiser step changes the parameters in place
    prior.sample(5)
    assert len(built) == 2
    prior.load_state_dict(prior.state_dict())
    prior.sample(5)
    assert len(built) == 3
    double = prior.double()
    assert double.sample(5).dtype == torch.float64 and len(built) == 4


def test_cached_plan_follows_new_parameters():
    """Make state 1 of dimension 0 impossible in place: no later draw may use it."""
    means = torch.tensor([-10.0, 10.0]).expand(3, 2)
    cores = torch.rand(3, 2, 2, 2, generator=torch.Generator().manual_seed(6)) + 0.1
    prior = TRIPPrior.from_parameters(cores, means, torch.full((3, 2), 0.1))
    assert (prior.sample(500)[:, 0] > 0).any()
    with torch.no_grad():
        prior.log_cores[0, 1] = -200.0
    assert (prior.sample(500)[:, 0] < 0).all()


def test_joint_prior_cached_plan_and_fresh_conditional_plans():
    prior = JointTRIPPrior(3, [2, 3], n_components=3, core_size=2, generator=torch.Generator().manual_seed(7))
    z, y = prior.sample_joint(200, generator=torch.Generator().manual_seed(0))
    assert z.shape == (200, 3) and y.shape == (200, 2)
    assert (y[:, 0] < 2).all() and (y[:, 1] < 3).all()
    y = torch.tensor([[1, 2]]).expand(50, 2)
    given = prior.sample_given_attributes(y, generator=torch.Generator().manual_seed(1))
    assert given.shape == (50, 3) and torch.isfinite(given).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_makes_no_host_synchronisation():
    prior = TRIPPrior(32, 10, 8, generator=torch.Generator().manual_seed(8)).cuda()
    prior.sample(64)  # builds and caches the plan
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        prior.sample(64)
        cores, log_max = prior._ring()
        emission = torch.randn(64, 32, 10, device="cuda")
        resample = torch.rand(64, 32, device="cuda") > 0.5
        tr.sample_states(cores, log_max, emission, resample)
    finally:
        torch.cuda.set_sync_debug_mode(0)
