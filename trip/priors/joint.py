"""A joint TRIP over latent codes and discrete attributes (paper Section 4, Eqs. 11-14).

The ring has L = d + c positions: d latent dimensions, each with N Gaussian
components, and c attributes, attribute j with K_j values and its own core
(K_j, m, m) and no Gaussian:

    p(z, y) = sum_s P[s, y] prod_k N(z_k | mu_{k s_k}, sigma_{k s_k}^2),

with P a tensor ring over the latent states s and the attribute values y. The
positions sit in the ring in a random order (the paper found one best), kept in
the ``ring_order`` buffer. Every query is exact: missing attributes are summed
out (zero emissions), an observed one keeps only its value (0 there, -inf
elsewhere). All positions share S = max(N, max_j K_j) states; the missing
states of a position have -inf log-cores and -inf emissions, so they carry no
mass and are never sampled.

As a VAE prior, ``log_prob(z)`` and ``sample(n)`` are the latent marginal p(z);
``attribute_log_prob`` is the log p(y_ob | z) term of the ELBO (Eq. 14).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trip.priors import tensor_ring as tr
from trip.priors.base import check_all, without_autocast
from trip.priors.trip_prior import TRIPPrior


class JointTRIPPrior(TRIPPrior):
    """TRIP over (z, y): d latent dimensions and c discrete attributes in one ring.

    Args:
        dim: latent size d.
        attribute_sizes: number of values K_j >= 2 of each attribute.
        n_components, core_size, learnable: as for :class:`TRIPPrior`.
        permutation_seed: seed of the random order of the d + c ring positions;
            ``None`` keeps the natural order (latents, then attributes).
        **options: the other :class:`TRIPPrior` options (``mean_range``,
            ``init_std``, ``init``, ``core_init_std``, ``generator``).

    Parameters: those of :class:`TRIPPrior` plus ``attribute_log_cores``, one
    (K_j, m, m) log-core per attribute. Buffer: ``ring_order`` (L,), the
    variable at each ring position (variables 0..d-1 are latents, d+j is
    attribute j); it is saved in the state_dict.
    """

    def __init__(
        self,
        dim: int,
        attribute_sizes: Sequence[int],
        n_components: int = 10,
        core_size: int = 20,
        permutation_seed: int | None = 0,
        learnable: bool = True,
        **options,
    ):
        sizes = _attribute_sizes(attribute_sizes)
        super().__init__(dim, n_components, core_size, learnable, **options)
        self.attribute_sizes = sizes
        self.n_states = max(self.n_components, *sizes)
        m = self.core_size
        self.attribute_log_cores = nn.ParameterList(nn.Parameter(torch.zeros(k, m, m)) for k in sizes)
        self._reset_attribute_cores(options.get("generator"))
        self.register_buffer("ring_order", _ring_order(dim + len(sizes), permutation_seed))
        valid = torch.arange(self.n_states) < torch.tensor([self.n_components] * dim + list(sizes))[:, None]
        self.register_buffer("_state_valid", valid, persistent=False)  # (d + c, S)
        self.set_learnable(learnable)

    @property
    def n_attributes(self) -> int:
        return len(self.attribute_sizes)

    @property
    def attribute_cores(self) -> list[Tensor]:
        """Non-negative attribute cores, one (K_j, m, m) per attribute."""
        return [c.exp() for c in self.attribute_log_cores]

    @classmethod
    def from_parameters(
        cls,
        cores: Tensor,
        means: Tensor,
        stds: Tensor,
        learnable: bool = True,
        *,
        attribute_cores: Sequence[Tensor],
        permutation_seed: int | None = 0,
    ) -> "JointTRIPPrior":
        """Build from latent cores (d, N, m, m), means, stds (d, N) and attribute cores (K_j, m, m)."""
        base = TRIPPrior.from_parameters(cores, means, stds)  # checks the latent part
        d, n, m, _ = base.log_cores.shape
        attribute_cores = [torch.as_tensor(a).to(base.log_cores) for a in attribute_cores]
        _check_attribute_cores(attribute_cores, m)
        sizes = [a.shape[0] for a in attribute_cores]
        prior = cls(d, sizes, n, m, permutation_seed=permutation_seed, learnable=learnable)
        prior = prior.to(dtype=base.dtype, device=base.device)
        tiny = torch.finfo(base.dtype).tiny
        with torch.no_grad():
            for name in ("log_cores", "loc", "log_scale"):
                getattr(prior, name).copy_(getattr(base, name))
            for log_core, core in zip(prior.attribute_log_cores, attribute_cores):
                log_core.copy_(core.clamp_min(tiny).log())
        return prior

    # -- initialisation ----------------------------------------------------------------
    @torch.no_grad()
    def reset_cores(self, log_weights: Tensor | None = None, generator=None) -> None:
        """Redraw the latent cores (as :class:`TRIPPrior`) and the attribute cores."""
        super().reset_cores(log_weights, generator)
        if "attribute_log_cores" in self._modules:  # absent while TRIPPrior.__init__ runs
            self._reset_attribute_cores(generator)

    @torch.no_grad()
    def _reset_attribute_cores(self, generator) -> None:
        for log_core in self.attribute_log_cores:
            log_core.copy_(torch.randn(log_core.shape, generator=generator).to(log_core) * self.core_init_std)

    # -- checks ------------------------------------------------------------------------
    def check_attributes(self, y, y_observed=None, batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Attributes (B, c) of an integer dtype and a boolean mask (c,) or (B, c), default all.

        Returns ``(y, mask)`` as long (B, c) and bool (1 or B, c). Values at
        unobserved entries are ignored; observed ones must be in 0..K_j-1.
        """
        c = self.n_attributes
        if not isinstance(y, Tensor):
            raise ValueError(f"attributes must be a torch.Tensor, got {type(y).__name__}")
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise ValueError(f"attributes must be an integer tensor, got dtype {y.dtype}")
        if y.dim() != 2 or y.shape[1] != c or (batch is not None and y.shape[0] != batch):
            rows = "batch" if batch is None else batch
            raise ValueError(f"attributes must have shape ({rows}, {c}), got {tuple(y.shape)}")
        if y.device != self.device:
            raise ValueError(f"attributes are on {y.device} but the prior is on {self.device}")
        mask = torch.ones(1, c, dtype=torch.bool, device=self.device)
        if y_observed is not None:
            mask = self._check_attribute_mask(y_observed, y.shape[0])
        y = y.long()
        sizes = tr.cached_index(self.attribute_sizes, self.device)
        bad = mask & ((y < 0) | (y >= sizes))
        check_all(~bad, lambda: self._range_error(y, bad))
        return y, mask

    def _range_error(self, y: Tensor, bad: Tensor) -> str:
        row, j = bad.nonzero()[0].tolist()
        return (f"attribute {j} takes values 0..{self.attribute_sizes[j] - 1}, "
                f"got {y[row, j].item()} (row {row}) at an observed entry")

    def _check_attribute_mask(self, mask, batch: int) -> Tensor:
        c = self.n_attributes
        mask = torch.as_tensor(mask, device=self.device)
        if mask.dtype != torch.bool:
            raise ValueError(f"y_observed mask must be boolean, got dtype {mask.dtype}")
        if mask.shape == (c,):
            return mask[None]
        if mask.shape == (batch, c):
            return mask
        raise ValueError(f"y_observed mask must have shape ({c},) or ({batch}, {c}), got {tuple(mask.shape)}")

    # -- emissions and the ring --------------------------------------------------------
    def _latent_emissions(self, z: Tensor | None = None, observed: Tensor | None = None) -> Tensor:
        """Latent log-weights (B or 1, d, S): Gaussian log-densities, 0 if summed out."""
        log_w = self._state_valid[None, : self.dim].to(self.dtype).log()  # 0, or -inf if padded
        if z is None:
            return log_w
        dens = self.component_log_densities(z)
        if observed is not None:
            dens = torch.where(observed[..., None], dens, 0.0)
        return log_w + F.pad(dens, (0, self.n_states - self.n_components))

    def _attribute_emissions(self, y: Tensor | None = None, y_observed: Tensor | None = None) -> Tensor:
        """Attribute log-weights (B or 1, c, S): 0 on the observed value (-inf elsewhere), on all if hidden."""
        allowed = self._state_valid[None, self.dim :]
        if y is not None:
            hit = tr.cached_index(tuple(range(self.n_states)), self.device) == y[..., None]
            allowed = allowed & (hit | ~y_observed[..., None])
        return allowed.to(self.dtype).log()

    def _in_ring_order(self, latent: Tensor, attributes: Tensor) -> Tensor:
        """Join (..., d, S) and (..., c, S) emissions, broadcast, into ring order: (rows, L, S)."""
        lead = torch.broadcast_shapes(latent.shape[:-2], attributes.shape[:-2])
        both = torch.cat([latent.expand(*lead, -1, -1), attributes.expand(*lead, -1, -1)], dim=-2)
        return both.index_select(-2, self.ring_order).reshape(-1, *both.shape[-2:])

    def _joint_log_cores(self) -> Tensor:
        """All log-cores (L, S, m, m) in ring order, padded states at -inf."""
        def pad(log_core: Tensor) -> Tensor:
            return F.pad(log_core, (0, 0, 0, 0, 0, self.n_states - log_core.shape[-3]), value=-torch.inf)

        attributes = [pad(c) for c in self.attribute_log_cores]
        return torch.cat([pad(self.log_cores), torch.stack(attributes)]).index_select(0, self.ring_order)

    def _ring(self) -> tuple[Tensor, Tensor]:
        return tr.split_log_cores(self._joint_log_cores())

    def _log_value(self, log_emission: Tensor) -> Tensor:
        return tr.log_ring_value(*self._ring(), log_emission)

    def log_normalizer(self) -> Tensor:
        """log of the total unnormalised mass of the joint ring."""
        return self._log_value(self._in_ring_order(self._latent_emissions(), self._attribute_emissions()))[0]

    # -- densities ---------------------------------------------------------------------
    def _log_value_normalised(self, emission: Tensor) -> Tensor:
        """log p of each emission row: the normaliser is one more row of the same chain."""
        everything = self._in_ring_order(self._latent_emissions(), self._attribute_emissions())
        values = self._log_value(torch.cat([emission, everything]))
        return values[:-1] - values[-1]

    def _log_prob(self, z: Tensor, observed: Tensor | None) -> Tensor:
        emission = self._in_ring_order(self._latent_emissions(z, observed), self._attribute_emissions())
        return self._log_value_normalised(emission)

    @without_autocast
    def joint_log_prob(self, z: Tensor, y: Tensor, y_observed=None, observed=None) -> Tensor:
        """log p(z_observed, y_observed): (B,). Hidden attributes and latents are summed out exactly."""
        z = self.check_codes(z)
        y, y_observed = self.check_attributes(y, y_observed, z.shape[0])
        observed = None if observed is None else self.check_mask(observed, z.shape[0], "observed")
        emission = self._in_ring_order(
            self._latent_emissions(z, observed), self._attribute_emissions(y, y_observed)
        )
        return self._log_value_normalised(emission)

    @without_autocast
    def attribute_log_prob(self, z: Tensor, y: Tensor, y_observed=None) -> Tensor:
        """log p(y_observed | z): (B,), 0 for rows with nothing observed (the ELBO term of Eq. 14)."""
        z = self.check_codes(z)
        y, y_observed = self.check_attributes(y, y_observed, z.shape[0])
        latent = self._latent_emissions(z)
        joint = self._in_ring_order(latent, self._attribute_emissions(y, y_observed))
        ratio = tr.log_ring_ratio(*self._ring(), joint, self._in_ring_order(latent, self._attribute_emissions()))
        return torch.where(y_observed.any(-1), ratio, 0.0)

    @without_autocast
    def attribute_log_probabilities(self, z: Tensor) -> Tensor:
        """log p(y_j = k | z) for every attribute j and value k: (B, c, max K), -inf past K_j."""
        z = self.check_codes(z)
        pairs = [(j, k) for j, size in enumerate(self.attribute_sizes) for k in range(size)]
        j, k = (tr.cached_index(v, self.device) for v in zip(*pairs))
        # one ring per (code, attribute, value): that attribute observed, the others hidden
        y = torch.zeros(len(pairs), self.n_attributes, dtype=torch.long, device=self.device)
        y[tr.cached_index(tuple(range(len(pairs))), self.device), j] = k
        attributes = self._attribute_emissions(y, F.one_hot(j, self.n_attributes).bool())
        latent = self._latent_emissions(z)
        values = tr.log_ring_ratio(  # relative to p(z): exact in float32 for far codes too
            *self._ring(),
            self._in_ring_order(latent[:, None], attributes[None]),
            self._in_ring_order(latent, self._attribute_emissions()),
        )
        width = max(self.attribute_sizes)
        flat = torch.full((z.shape[0], self.n_attributes * width), -torch.inf, dtype=self.dtype, device=self.device)
        flat = flat.index_copy(1, j * width + k, values.view(z.shape[0], len(pairs)))
        return torch.log_softmax(flat.view(-1, self.n_attributes, width), dim=-1)

    def attribute_probabilities(self, z: Tensor) -> Tensor:
        """p(y_j = k | z): (B, c, max K), zero past K_j; a classifier of codes."""
        return self.attribute_log_probabilities(z).exp()

    # -- sampling ----------------------------------------------------------------------
    def _variable_order(self, states: Tensor) -> Tensor:
        """Ring-order states (B, d + c) back in variable order."""
        inverse = self.cached("inverse_ring_order", lambda: torch.argsort(self.ring_order))
        return states.index_select(1, inverse)

    def _draw_states(self, log_emission: Tensor, resample: Tensor, generator) -> Tensor:
        """States (B, d + c) in variable order; ``resample`` (B, d + c) is in variable order too."""
        plan = tr.sampling_plan(*self._ring(), log_emission)
        in_ring = resample.index_select(1, self.ring_order)
        return self._variable_order(tr.draw_states(plan, resample.shape[0], in_ring, generator))

    def _build_prior_plan(self) -> tr.SamplingPlan:
        emission = self._in_ring_order(self._latent_emissions(), self._attribute_emissions())
        return tr.sampling_plan(*self._ring(), emission)

    def _sample(self, n: int, generator) -> Tensor:
        states = self._variable_order(tr.draw_states(self._prior_plan(), n, generator=generator))
        return self._draw_codes(states[:, : self.dim], generator)

    def _sample_conditional(self, z: Tensor, resample: Tensor, generator) -> Tensor:
        emission = self._in_ring_order(self._latent_emissions(z, ~resample), self._attribute_emissions())
        hidden = torch.zeros(z.shape[0], self.n_attributes, dtype=torch.bool, device=self.device)
        states = self._draw_states(emission, torch.cat([resample, hidden], dim=1), generator)
        return torch.where(resample, self._draw_codes(states[:, : self.dim], generator), z)

    @torch.no_grad()
    @without_autocast
    def sample_given_attributes(
        self, y: Tensor, y_observed=None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ p(z | y_observed): (B, d), one draw per row of ``y``; hidden attributes are summed out."""
        y, y_observed = self.check_attributes(y, y_observed)
        emission = self._in_ring_order(self._latent_emissions(), self._attribute_emissions(y, y_observed))
        plan = tr.sampling_plan(*self._ring(), emission)
        states = self._variable_order(tr.draw_states(plan, emission.shape[0], generator=generator))
        return self._draw_codes(states[:, : self.dim], generator)

    @torch.no_grad()
    @without_autocast
    def sample_joint(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(z, y) ~ p(z, y): codes (n, d) and attribute values (n, c)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        states = self._variable_order(tr.draw_states(self._prior_plan(), n, generator=generator))
        return self._draw_codes(states[:, : self.dim], generator), states[:, self.dim :]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, attribute_sizes={list(self.attribute_sizes)}"


def _attribute_sizes(sizes) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not sizes:
        raise ValueError("attribute_sizes must name at least one attribute (use TRIPPrior without any)")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"every attribute needs an integer number of values >= 2, got {sizes!r}")
    return sizes


def _ring_order(length: int, seed: int | None) -> Tensor:
    if seed is None:
        return torch.arange(length)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"permutation_seed must be an integer or None, got {seed!r}")
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


def _check_attribute_cores(cores: list[Tensor], m: int) -> None:
    if not cores:
        raise ValueError("attribute_cores must hold at least one core")
    for j, core in enumerate(cores):
        if core.dim() != 3 or core.shape[1:] != (m, m) or core.shape[0] < 2:
            raise ValueError(f"attribute core {j} must have shape (K >= 2, {m}, {m}), got {tuple(core.shape)}")
        if not torch.isfinite(core).all():
            raise ValueError(f"attribute core {j} contains NaN or inf")
        if (core < 0).any():
            raise ValueError(f"attribute core {j} must be non-negative")
        if not (core > 0).any():
            raise ValueError(f"attribute core {j} needs at least one non-zero entry")
