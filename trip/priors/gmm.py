"""A K-component diagonal Gaussian mixture over the full latent space."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trip.priors.base import GaussianComponents, Prior, _positive_int, gaussian_log_density


# The paper's code initialises every GMM log-variance at -1 (core/learnable_priors/gmm_lp.py),
# whatever the number of components: sigma = exp(-1/2) ~ 0.61.
GMM_INIT_STD = math.exp(-0.5)


def default_std(mean_range: tuple[float, float], n_components: int) -> float:
    """Half the spacing of an even grid of ``n_components`` means on the range: TRIP's per-dimension rule.

    For the paper's range [-1, 1] this is 1/N, its GAN-TRIP initialisation (Sec. 3.2). It is not
    the GMM's: there K components share the whole space, and 1/K would make them point masses.
    """
    low, high = mean_range
    return (high - low) / (2 * n_components)


def check_range(mean_range) -> tuple[float, float]:
    low, high = (float(v) for v in mean_range)
    if not low < high:
        raise ValueError(f"mean_range must be (low, high) with low < high, got {mean_range!r}")
    return low, high


class GMMPrior(GaussianComponents, Prior):
    """p(z) = sum_k pi_k N(z | mu_k, diag(sigma_k^2)), exact log-density by logsumexp.

    Means start uniform on ``mean_range``, standard deviations at ``init_std``
    (default :data:`GMM_INIT_STD`, the paper's code's), weights uniform.
    """

    def __init__(
        self,
        dim: int,
        n_components: int = 10,
        learnable: bool = True,
        mean_range: tuple[float, float] = (-1.0, 1.0),
        init_std: float | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(dim)
        self.n_components = _positive_int("n_components", n_components)
        low, high = check_range(mean_range)
        std = GMM_INIT_STD if init_std is None else float(init_std)
        if not std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std!r}")
        loc = low + (high - low) * torch.rand(n_components, dim, generator=generator)
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.loc = nn.Parameter(loc)
        self.log_scale = nn.Parameter(torch.full((n_components, dim), float(torch.tensor(std).log())))
        self.set_learnable(learnable)

    @property
    def weights(self) -> Tensor:
        return torch.softmax(self.logits, -1)

    def _component_log_probs(self, z: Tensor, observed: Tensor | None) -> Tensor:
        """log pi_k + log N(z_observed | component k): (B, K)."""
        per_dim = gaussian_log_density(z[:, None, :], self.loc, self.stds)  # (B, K, d)
        if observed is not None:
            per_dim = per_dim * observed[:, None, :]
        return per_dim.sum(-1) + torch.log_softmax(self.logits, -1)

    def _log_prob(self, z: Tensor, observed: Tensor | None) -> Tensor:
        return torch.logsumexp(self._component_log_probs(z, observed), -1)

    def _draw(self, logits: Tensor, generator) -> Tensor:
        """Components for each row of logits, then a Gaussian draw from each: (B, d)."""
        k = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
        eps = torch.randn(k.shape[0], self.dim, dtype=self.dtype, device=self.device, generator=generator)
        return self.loc[k] + self.stds[k] * eps

    def _sample(self, n: int, generator) -> Tensor:
        return self._draw(self.logits.expand(n, -1), generator)

    def _sample_conditional(self, z: Tensor, resample: Tensor, generator) -> Tensor:
        posterior = self._component_log_probs(z, ~resample)
        return torch.where(resample, self._draw(posterior, generator), z)
