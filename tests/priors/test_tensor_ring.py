"""The log-space ring algebra against plain float64 matrix products."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trip.priors import tensor_ring as tr


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 13])
def test_log_trace_chain_matches_plain_product(length):
    g = torch.Generator().manual_seed(length)
    mats = torch.rand(length, 4, 3, 3, generator=g, dtype=torch.float64)
    log_scale = torch.randn(length, 4, generator=g, dtype=torch.float64) * 100
    expected = []
    for b in range(4):
        product = np.eye(3)
        for k in range(length):
            product = product @ mats[k, b].numpy()
        expected.append(np.log(np.trace(product)) + log_scale[:, b].sum().item())
    np.testing.assert_allclose(tr.log_trace_chain(mats, log_scale).numpy(), expected, rtol=1e-12)


def test_chain_survives_products_beyond_float64():
    """500 matrices: products grow like 1e238 in one row and shrink like 1e-900 in the other."""
    g = torch.Generator().manual_seed(0)
    mats = 0.5 + torch.rand(500, 2, 3, 3, generator=g, dtype=torch.float64)
    mats[:, 1] *= 1e-2
    exact = tr.log_trace_chain(mats, torch.zeros(500, 2, dtype=torch.float64))
    got = tr.log_trace_chain(mats.float(), torch.zeros(500, 2))
    assert exact[0] > 200 * np.log(10) and exact[1] < -700 * np.log(10)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=0)
    # The float64 value agrees with a product rescaled by hand at every step.
    log_ref, product = 0.0, np.eye(3)
    for k in range(500):
        product = product @ mats[k, 1].numpy()
        log_ref += np.log(product.max())
        product /= product.max()
    assert abs(exact[1].item() - (log_ref + np.log(np.trace(product)))) < 1e-9 * abs(log_ref)


def test_weighted_cores_equal_dense_sum():
    g = torch.Generator().manual_seed(1)
    log_cores = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) * 3
    log_em = torch.randn(5, 4, 3, generator=g, dtype=torch.float64) * 50
    log_em[0, 1, 2] = -float("inf")  # an excluded state, as for an observed attribute
    cores, log_max = tr.split_log_cores(log_cores)
    mats, scale = tr.weighted_cores(cores, log_max, log_em)
    dense = torch.einsum("bkn,knij->kbij", log_em.exp(), log_cores.exp())
    ratio = mats * scale.exp()[..., None, None] / dense
    torch.testing.assert_close(ratio, torch.ones_like(ratio))
    assert (mats.amax((-2, -1)) >= 1 - 1e-12).all()  # the offset keeps the largest term at ~1


def test_one_hot_emissions_select_a_state():
    """Emission 0 on one state and -inf elsewhere is the ring entry Tr(prod Q_k[s_k])."""
    g = torch.Generator().manual_seed(2)
    log_cores = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    state = [1, 0, 1]
    log_em = torch.full((1, 3, 2), -float("inf"), dtype=torch.float64)
    log_em[0, [0, 1, 2], state] = 0.0
    cores, log_max = tr.split_log_cores(log_cores)
    q = log_cores.exp()
    expected = torch.log(torch.trace(q[0, 1] @ q[1, 0] @ q[2, 1]))
    torch.testing.assert_close(tr.log_ring_value(cores, log_max, log_em)[0], expected)
