"""The Tensor Ring Induced Prior (TRIP) of Kuznetsov et al., NeurIPS 2019.

Each latent dimension k has N one-dimensional Gaussian components
N(mu_ks, sigma_ks^2). The weights of the N^d lattice nodes s = (s_1..s_d) form
a tensor ring with non-negative cores Q_k (N, m, m) (paper Eqs. 1, 3):

    p(z) = sum_s p(s) prod_k N(z_k | mu_{k s_k}, sigma_{k s_k}^2),
    p(s) = Tr(Q_1[s_1] ... Q_d[s_d]) / Tr(prod_k sum_s Q_k[s]).

Log-densities, marginals (Algorithm 1), conditionals and samples (Eq. 5) are
exact; the log-space machinery is in :mod:`trip.priors.tensor_ring`. Unlike the
paper's public code, no epsilon is added to densities, so the density keeps
its shape (and its gradient points back to the mass) for codes far from every
component and for narrow components.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

# At import time, not inside fit_marginals: importing sklearn.mixture draws from Python's `random`
# (through rich), which would shift a resumed run's RNG stream at its first re-fit.
from sklearn.mixture import GaussianMixture

from trip.priors import tensor_ring as tr
from trip.priors.base import LOG_2PI, GaussianComponents, Prior, _positive_int, gaussian_log_density
from trip.priors.gmm import check_range, default_std


class TRIPPrior(GaussianComponents, Prior):
    """A Gaussian mixture on an N^d lattice with tensor-ring weights.

    Args:
        dim: latent size d.
        n_components: components per dimension N.
        core_size: tensor-ring core size m.
        learnable: whether the parameters train (a fixed prior is the same
            module with ``requires_grad=False``).
        mean_range: means are drawn on this range (paper: [-1, 1]).
        init_std: component standard deviation (default 1/N on [-1, 1]).
        init: ``"uniform"`` draws means uniformly on the range (paper, GANs);
            ``"grid"`` spaces them evenly.
        core_init_std: std of the Gaussian noise of the log-cores.
        generator: torch generator for a reproducible initialisation.

    The parameters are unconstrained: ``log_cores`` (d, N, m, m), ``loc``
    (d, N) and ``log_scale`` (d, N); ``cores``, ``means`` and ``stds`` are the
    constrained views.
    """

    def __init__(
        self,
        dim: int,
        n_components: int = 10,
        core_size: int = 20,
        learnable: bool = True,
        mean_range: tuple[float, float] = (-1.0, 1.0),
        init_std: float | None = None,
        init: str = "uniform",
        core_init_std: float = 0.5,
        generator: torch.Generator | None = None,
    ):
        super().__init__(dim)
        self.n_components = _positive_int("n_components", n_components)
        self.core_size = _positive_int("core_size", core_size)
        self.core_init_std = _non_negative("core_init_std", core_init_std)
        low, high = check_range(mean_range)
        std = default_std((low, high), n_components) if init_std is None else float(init_std)
        if not std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std!r}")
        shape = (dim, n_components)
        self.loc = nn.Parameter(_initial_means(shape, low, high, init, generator))
        self.log_scale = nn.Parameter(torch.full(shape, float(np.log(std))))
        self.log_cores = nn.Parameter(torch.zeros(dim, n_components, core_size, core_size))
        self.reset_cores(generator=generator)
        self.set_learnable(learnable)

    # -- constrained views -------------------------------------------------------------
    @property
    def cores(self) -> Tensor:
        """Non-negative cores Q_k, shape (d, N, m, m)."""
        return self.log_cores.exp()

    @classmethod
    def from_parameters(
        cls, cores: Tensor, means: Tensor, stds: Tensor, learnable: bool = True
    ) -> "TRIPPrior":
        """Build a prior from non-negative cores (d, N, m, m), means and stds (d, N).

        Zero core entries are stored as log of the dtype's smallest normal
        number, so they stay finite under any optimiser (an exact zero would be
        a -inf parameter) while contributing at most ~1e-38 relative mass.
        """
        cores, means, stds = (torch.as_tensor(t) for t in (cores, means, stds))
        _check_parameters(cores, means, stds)
        d, n, m, _ = cores.shape
        prior = cls(d, n, m, learnable=learnable).to(dtype=cores.dtype, device=cores.device)
        tiny = torch.finfo(cores.dtype).tiny
        with torch.no_grad():
            prior.log_cores.copy_(cores.clamp_min(tiny).log())
            prior.loc.copy_(means)
            prior.log_scale.copy_(stds.log())
        return prior

    # -- initialisation ----------------------------------------------------------------
    @torch.no_grad()
    def reset_cores(self, log_weights: Tensor | None = None, generator=None) -> None:
        """Redraw log-cores as Gaussian noise, plus optional per-dimension log-weights (d, N).

        With ``log_weights`` from 1-D mixture fits the initial prior is close to
        the product of those fitted marginals (a rank-1 ring), perturbed.
        """
        noise = torch.randn(self.log_cores.shape, generator=generator) * self.core_init_std
        noise = noise.to(self.log_cores)
        if log_weights is not None:
            noise = noise + log_weights.to(noise)[:, :, None, None]
        self.log_cores.copy_(noise)

    @torch.no_grad()
    def fit_marginals(self, codes: Tensor, seed: int = 0, max_iter: int = 100) -> None:
        """Paper's VAE-TRIP initialisation: a 1-D N-component GMM per dimension.

        Fits scikit-learn's ``GaussianMixture`` to each column of ``codes``
        (n, d), sets means and stds from the fits (sorted by mean) and redraws
        the cores with noise around the fitted mixture weights.
        """
        codes = self.check_codes(codes).detach().cpu().double().numpy()
        if codes.shape[0] < self.n_components:
            raise ValueError(
                f"fit_marginals needs at least n_components={self.n_components} codes, "
                f"got {codes.shape[0]}"
            )
        fits = [
            GaussianMixture(self.n_components, max_iter=max_iter, random_state=seed + k).fit(
                codes[:, k : k + 1]
            )
            for k in range(self.dim)
        ]
        order = [np.argsort(f.means_[:, 0]) for f in fits]
        means = np.stack([f.means_[o, 0] for f, o in zip(fits, order)])
        stds = np.sqrt(np.stack([f.covariances_.reshape(-1)[o] for f, o in zip(fits, order)]))
        weights = np.stack([f.weights_[o] for f, o in zip(fits, order)])
        self.loc.copy_(torch.from_numpy(means))
        self.log_scale.copy_(torch.from_numpy(np.log(stds)))
        generator = torch.Generator().manual_seed(seed)
        self.reset_cores(torch.from_numpy(np.log(weights)), generator=generator)

    # -- densities ---------------------------------------------------------------------
    def component_log_densities(self, z: Tensor) -> Tensor:
        """log N(z_k | mu_ks, sigma_ks^2) for every dimension and component: (B, d, N)."""
        return gaussian_log_density(z[:, :, None], self.loc, self.stds)

    def _ring(self) -> tuple[Tensor, Tensor]:
        return tr.split_log_cores(self.log_cores)

    def log_normalizer(self) -> Tensor:
        """log Tr(prod_k sum_s Q_k[s]): the log of the unnormalised total mass."""
        cores, log_max = self._ring()
        zeros = torch.zeros(1, self.dim, self.n_components, dtype=self.dtype, device=self.device)
        return tr.log_ring_value(cores, log_max, zeros)[0]

    def _log_prob(self, z: Tensor, observed: Tensor | None) -> Tensor:
        cores, log_max = self._ring()
        values = tr.log_ring_value_tree(cores, self._tree_log_weights(z, observed, log_max))
        return values[:-1] - values[-1]

    def _tree_log_weights(self, z: Tensor, observed: Tensor | None, log_max: Tensor) -> Tensor:
        """log N(z_k | mu_ks, sigma_ks^2) + log_max[k, s], laid out for the chain: (d, B + 1, N).

        Dimensions in :func:`~trip.priors.tensor_ring.tree_index` order, position-major,
        built from the small (d, N) parameters, so the big tensor is written once.
        A summed-out dimension has emission 0 (weight 1) for every state; the last
        row has no evidence at all: the normaliser rides in the same chain.
        """
        index = tr.tree_index(self.dim, self.device)
        loc, log_scale, log_max = (t.index_select(0, index) for t in (self.loc, self.log_scale, log_max))
        z_t = z.T.index_select(0, index)[:, :, None]  # (d, B, 1)
        u = (z_t - loc[:, None, :]) * torch.exp(-log_scale)[:, None, :]
        const = (log_max - log_scale - 0.5 * LOG_2PI)[:, None, :]
        log_w = torch.addcmul(const, u, u, value=-0.5)
        if observed is not None:
            log_w = torch.where(observed.T.index_select(0, index)[..., None], log_w, log_max[:, None, :])
        return torch.cat([log_w, log_max[:, None, :]], dim=1)

    # -- sampling ----------------------------------------------------------------------
    def _draw_codes(self, states: Tensor, generator) -> Tensor:
        """z_k ~ N(mu_{k s_k}, sigma_{k s_k}^2) for given lattice states (B, d)."""
        mean = torch.gather(self.loc.expand(states.shape[0], -1, -1), 2, states[..., None])
        std = torch.gather(self.stds.expand(states.shape[0], -1, -1), 2, states[..., None])
        eps = torch.randn(states.shape, dtype=self.dtype, device=self.device, generator=generator)
        return mean.squeeze(-1) + std.squeeze(-1) * eps

    def _prior_plan(self) -> tr.SamplingPlan:
        """The sampling plan of p(s) (no evidence), kept while the parameters are unchanged."""
        return self.cached("prior_plan", self._build_prior_plan)

    def _build_prior_plan(self) -> tr.SamplingPlan:
        no_evidence = torch.zeros(1, self.dim, self.n_components, dtype=self.dtype, device=self.device)
        return tr.sampling_plan(*self._ring(), no_evidence)

    def _sample(self, n: int, generator) -> Tensor:
        states = tr.draw_states(self._prior_plan(), n, generator=generator)
        return self._draw_codes(states, generator)

    def _sample_conditional(self, z: Tensor, resample: Tensor, generator) -> Tensor:
        log_emission = torch.where(resample[..., None], 0.0, self.component_log_densities(z))
        cores, log_max = self._ring()
        states = tr.sample_states(cores, log_max, log_emission, resample, generator)
        return torch.where(resample, self._draw_codes(states, generator), z)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_components={self.n_components}, core_size={self.core_size}, "
            f"learnable={self.learnable}"
        )


def _non_negative(name: str, value) -> float:
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def _initial_means(shape, low: float, high: float, init: str, generator) -> Tensor:
    if init == "uniform":
        return low + (high - low) * torch.rand(shape, generator=generator)
    if init == "grid":
        return torch.linspace(low, high, shape[1]).expand(shape).clone()
    raise ValueError(f"init must be 'uniform' or 'grid', got {init!r}")


def _check_parameters(cores: Tensor, means: Tensor, stds: Tensor) -> None:
    if not cores.is_floating_point():
        raise ValueError(f"cores must be a floating-point tensor, got dtype {cores.dtype}")
    if cores.dim() != 4 or cores.shape[2] != cores.shape[3]:
        raise ValueError(f"cores must have shape (d, N, m, m), got {tuple(cores.shape)}")
    d, n = cores.shape[:2]
    for name, t in (("means", means), ("stds", stds)):
        if t.shape != (d, n):
            raise ValueError(f"{name} must have shape ({d}, {n}) to match the cores, got {tuple(t.shape)}")
    for name, t in (("cores", cores), ("means", means), ("stds", stds)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contain NaN or inf")
    if (cores < 0).any():
        raise ValueError("cores must be non-negative")
    if not (stds > 0).all():
        raise ValueError("stds must be positive")
    if not (cores.flatten(2).sum(-1) > 0).any(dim=1).all():
        raise ValueError("every core needs at least one non-zero entry")
