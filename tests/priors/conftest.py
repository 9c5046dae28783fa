"""Brute-force references for the priors: enumerate every lattice node in float64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from trip.priors import TRIPPrior




def _node_log_weights(cores: np.ndarray) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """All lattice nodes s and log p(s) of the ring with these cores."""
    d, n = cores.shape[:2]
    nodes = list(itertools.product(range(n), repeat=d))
    weights = []
    for s in nodes:
        product = np.eye(cores.shape[-1])
        for k in range(d):
            product = product @ cores[k, s[k]]
        weights.append(np.trace(product))
    weights = np.array(weights)
    return nodes, np.log(weights) - np.log(weights.sum())


def _log_normal(z, mean, std):
    return -0.5 * ((z - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


class BruteTRIP:
    """Exact TRIP queries by enumeration of all N^d nodes (small rings only)."""

    def __init__(self, prior: TRIPPrior):
        self.cores = prior.cores.detach().cpu().double().numpy()
        self.means = prior.means.detach().cpu().double().numpy()
        self.stds = prior.stds.detach().cpu().double().numpy()
        self.nodes, self.log_w = _node_log_weights(self.cores)
        self.d = self.means.shape[0]

    def _emission(self, z: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """log prod_{k observed} N(z_k | node): (num_nodes,)."""
        out = np.zeros(len(self.nodes))
        for i, s in enumerate(self.nodes):
            for k in range(self.d):
                if observed[k]:
                    out[i] += _log_normal(z[k], self.means[k, s[k]], self.stds[k, s[k]])
        return out

    def log_prob(self, z: np.ndarray, observed=None) -> np.ndarray:
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        observed = np.ones(self.d, bool) if observed is None else np.asarray(observed)
        masks = np.broadcast_to(observed, z.shape)
        return np.array([logsumexp(self.log_w + self._emission(zi, mi)) for zi, mi in zip(z, masks)])

    def state_marginal(self, k: int, z=None, observed=None) -> np.ndarray:
        """p(s_k | z_observed) over the N states of dimension k."""
        log_post = self.log_w.copy()
        if z is not None:
            log_post = log_post + self._emission(np.asarray(z, np.float64), np.asarray(observed))
        n = self.means.shape[1]
        probs = np.array([logsumexp(log_post[[s[k] == j for s in self.nodes]]) for j in range(n)])
        return np.exp(probs - logsumexp(probs))

    def mixture_cdf(self, k: int, weights: np.ndarray):
        from scipy.stats import norm

        return lambda x: sum(w * norm.cdf(x, self.means[k, j], self.stds[k, j]) for j, w in enumerate(weights))


@pytest.fixture
def brute():
    return BruteTRIP


def random_trip(d=3, n=3, m=2, seed=0, dtype=torch.float64, narrow=False, power=1.0) -> TRIPPrior:
    """A small ring with random cores, means and stds (optionally very narrow components).

    A larger ``power`` makes the cores sparser, so the dimensions depend more strongly.
    """
    g = torch.Generator().manual_seed(seed)
    cores = torch.rand(d, n, m, m, generator=g, dtype=torch.float64) ** power + 0.01
    means = torch.randn(d, n, generator=g, dtype=torch.float64) * 2
    low, high = (1e-3, 1e-2) if narrow else (0.2, 1.5)
    stds = low + (high - low) * torch.rand(d, n, generator=g, dtype=torch.float64)
    return TRIPPrior.from_parameters(cores.to(dtype), means.to(dtype), stds.to(dtype), learnable=False)


@pytest.fixture
def make_trip():
    return random_trip
