"""The standard normal prior N(0, I): the baseline column of the paper's tables."""

from __future__ import annotations

import torch
from torch import Tensor

from trip.priors.base import LOG_2PI, Prior


class NormalPrior(Prior):
    """N(0, I) in ``dim`` dimensions. It has no parameters, so it is always fixed."""

    def _log_prob(self, z: Tensor, observed: Tensor | None) -> Tensor:
        log_density = -0.5 * (z**2 + LOG_2PI)
        if observed is not None:
            log_density = log_density * observed
        return log_density.sum(-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(n, self.dim, dtype=self.dtype, device=self.device, generator=generator)

    def _sample_conditional(self, z: Tensor, resample: Tensor, generator) -> Tensor:
        fresh = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
        return torch.where(resample, fresh, z)
