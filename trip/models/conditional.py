"""Conditional VAEs that learn from partly labelled data (paper Section 4).

Both train on batches ``(x, y, observed)``: images, attribute values y (B, c)
and a boolean mask (B, c) of the values that are known; hidden values are
never read. Both generate with ``sample_given(y, observed)``, where the
unspecified attributes are free.

* :class:`ConditionalVAETRIP` (``vae_trip_cond``): VAE-TRIP whose prior is a
  joint tensor ring p(z, y) (:class:`~trip.priors.joint.JointTRIPPrior`). Its
  loss is minus the bound of Eq. 14,

      E_q [log p(x | z) + log p(y_ob | z)] - KL(q(z | x) || p(z)),

  one sample, KL = log q(z | x) - log p(z) as in the unconditional VAE-TRIP.
  Missing attributes are summed out of the ring, and generation draws
  z ~ p(z | y_ob) from the same ring.
* :class:`ConditionalVAE` (``cvae``): the usual baseline, N(0, I) prior, with
  each attribute fed to encoder and decoder as a one-hot over K + 1 values,
  the last meaning "unknown".

Without labels (``loss(x)``, ``elbo``, ``iwae``, ``sample``) the first is the
unconditional VAE-TRIP with the latent marginal p(z) as prior, the second a
CVAE told that every attribute is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trip.models.vae import VAE, _noise, kl_to_standard_normal, log_q_from_noise
from trip.priors.joint import JointTRIPPrior
from trip.priors.normal import NormalPrior


class ConditionalVAETRIP(VAE):
    """A VAE with a joint TRIP over latents and attributes; the encoder and decoder see no labels."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: JointTRIPPrior, likelihood: nn.Module,
                 latent_dim: int | None = None):
        if not isinstance(prior, JointTRIPPrior):
            raise ValueError(f"vae_trip_cond needs a JointTRIPPrior, got {type(prior).__name__}")
        super().__init__(encoder, decoder, prior, likelihood, latent_dim)

    @property
    def attribute_sizes(self) -> tuple[int, ...]:
        return self.prior.attribute_sizes

    def conditional_terms(self, x: Tensor, y: Tensor, observed: Tensor,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One-sample estimates of E_q log p(x | z), E_q log p(y_ob | z) and KL(q || p(z)), each (B,)."""
        mean, logvar = self.encode(x)
        noise = _noise(mean.shape, mean, generator)
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = self.likelihood.log_prob(x, self.decode(z))
        # log p(y_ob | z) as one ratio inside the ring (exact in float32, unlike the difference of
        # two separate log-densities); exactly 0 for rows with nothing observed.
        label = self.prior.attribute_log_prob(z, y, observed)
        return recon, label, log_q_from_noise(noise, logvar) - self.prior.log_prob(z)

    def loss(self, x: Tensor, y: Tensor | None = None, observed: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Minus the mean Eq. 14 bound on log p(x, y_ob); the batch means of its terms."""
        if y is None:
            return super().loss(x, generator)
        recon, label, kl = self.conditional_terms(x, y, observed, generator)
        return _loss({"recon": recon, "label": label, "kl": kl})

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None, observed: Tensor | None = None) -> Tensor:
        """Decoded posterior means; the networks see no labels, so ``y`` is ignored."""
        return self.likelihood.mean(self.decode(self.encode(x)[0]))

    @torch.no_grad()
    def sample_given(self, y: Tensor, observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Decoded means of z ~ p(z | y_ob), one per row of y (B, c); unobserved attributes are free."""
        z = self.prior.sample_given_attributes(y.to(self.prior.device), observed.to(self.prior.device), generator)
        return self.likelihood.mean(self.decode(z))


class ConditionalVAE(VAE):
    """The CVAE baseline: labels as one-hots with an "unknown" value, appended to the encoder's
    flattened features and to the decoder's code; prior N(0, I).

    Args:
        encoder: an :class:`~trip.models.architectures.Encoder` built with
            ``extra_inputs=label_width(attribute_sizes)``.
        decoder: a network of the code with the labels appended (``build_decoder(...,
            extra_inputs=...)``).
        attribute_sizes: number of values K_j of each attribute.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module, latent_dim: int,
                 attribute_sizes: Sequence[int]):
        sizes = tuple(attribute_sizes)
        super().__init__(encoder, LabelledDecoder(decoder, sizes), NormalPrior(latent_dim), likelihood, latent_dim)
        self.attribute_sizes = sizes

    def encode(self, x: Tensor, code: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | x, y_ob) from a label code (``label_code``); None means every attribute unknown."""
        if code is None:
            code = unknown_code(x.shape[0], self.attribute_sizes, x.device)
        return self.encoder(x, code)

    def decode(self, z: Tensor, code: Tensor | None = None) -> Tensor:
        return self.decoder(z, code)

    def loss(self, x: Tensor, y: Tensor | None = None, observed: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Minus the mean ELBO of log p(x | y_ob), closed-form KL; the batch means of its terms."""
        code = None if y is None else label_code(y, observed, self.attribute_sizes)
        mean, logvar = self.encode(x, code)
        z = mean + torch.exp(0.5 * logvar) * _noise(mean.shape, mean, generator)
        recon = self.likelihood.log_prob(x, self.decode(z, code))
        return _loss({"recon": recon, "kl": kl_to_standard_normal(mean, logvar)})

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None, observed: Tensor | None = None) -> Tensor:
        """Decoded posterior means given the labels y_ob (none: all unknown)."""
        code = None if y is None else label_code(y, observed, self.attribute_sizes)
        return self.likelihood.mean(self.decode(self.encode(x, code)[0], code))

    @torch.no_grad()
    def sample_given(self, y: Tensor, observed: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Decoded means of z ~ N(0, I) with the labels y_ob, the rest "unknown"."""
        code = label_code(y.to(self.prior.device), observed.to(self.prior.device), self.attribute_sizes)
        z = self.prior.sample(y.shape[0], generator)
        return self.likelihood.mean(self.decode(z, code))


class LabelledDecoder(nn.Module):
    """A decoder of [z, label code]; without a code every attribute is "unknown"."""

    def __init__(self, net: nn.Module, attribute_sizes: Sequence[int]):
        super().__init__()
        self.net = net
        self.attribute_sizes = tuple(attribute_sizes)

    def forward(self, z: Tensor, code: Tensor | None = None) -> Tensor:
        if code is None:
            code = unknown_code(z.shape[0], self.attribute_sizes, z.device)
        return self.net(torch.cat([z, code.to(z)], dim=1))


def label_width(attribute_sizes: Sequence[int]) -> int:
    """Length of a label code: K_j + 1 values per attribute."""
    return sum(k + 1 for k in attribute_sizes)


def label_code(y: Tensor, observed: Tensor, attribute_sizes: Sequence[int]) -> Tensor:
    """One-hots (B, sum K_j + 1) of the observed values; a hidden attribute takes its last, "unknown", slot."""
    observed = observed.expand_as(y) if observed.dim() == 1 else observed
    parts = [F.one_hot(torch.where(observed[:, j], y[:, j].long(), k), k + 1)
             for j, k in enumerate(attribute_sizes)]
    return torch.cat(parts, dim=1).float()


def unknown_code(batch: int, attribute_sizes: Sequence[int], device=None) -> Tensor:
    y = torch.zeros(batch, len(attribute_sizes), dtype=torch.long, device=device)
    return label_code(y, torch.zeros_like(y, dtype=torch.bool), attribute_sizes)


def _loss(terms: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """-mean ELBO, where ELBO = recon (+ label) - kl, and the batch means of elbo and each term
    (detached 0-d tensors, not read back: see VAE.loss)."""
    elbo = sum(v for k, v in terms.items() if k != "kl") - terms["kl"]
    names = ["elbo", *terms]
    stats = torch.stack([elbo.mean(), *(v.mean() for v in terms.values())]).detach()
    return -elbo.mean(), dict(zip(names, stats.unbind()))


__all__ = ["ConditionalVAE", "ConditionalVAETRIP", "LabelledDecoder", "label_code", "label_width", "unknown_code"]
