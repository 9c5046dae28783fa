"""A variational autoencoder with a plug-in prior (paper Section 3.1, Eqs. 6-8).

The encoder gives a diagonal Gaussian q(z | x) = N(mu(x), diag(exp(logvar(x))))
sampled by reparameterisation (Eq. 6); the decoder gives the parameters of a
normalised likelihood from :mod:`trip.models.likelihoods`; the prior is any
:class:`trip.priors.Prior`. All bounds are per example, in nats:

* ``elbo``: E_q log p(x | z) - KL(q(z | x) || p(z)) from one sample (Eq. 7).
  The KL is closed-form for the N(0, I) prior (lower variance, as the paper
  notes) and the one-sample estimate log q(z | x) - log p(z) for the others;
* ``iwae``: log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x), z_i ~ q (Eq. 8 with
  the average inside the log; Burda et al.), the paper's "IWAE ELBO (k = 100)".

:func:`bits_per_dim` puts either bound on the scale of the likelihood literature.
The paper's Table 1 ELBOs (e.g. -194.16) are on neither scale: its code's
"reconstruction" is the unnormalised -sum (x_hat - x)^2 over rows and columns,
averaged over channels and images, so only their order compares with ours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from trip.priors.base import LOG_2PI, Prior
from trip.priors.normal import NormalPrior


def bits_per_dim(nats: Tensor | float, dims: int) -> Tensor | float:
    """A log-likelihood (or a bound on it) in nats per example over ``dims`` values, as -log2 p / dims.

    For the discrete likelihoods (the discretised Gaussian of 8-bit images, the Bernoulli) this is the
    usual bits per dimension; for a continuous density it is the density's, without the bin width.
    """
    return -nats / (_positive_int("dims", dims) * math.log(2))


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per row: (B,)."""
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(-1)


def log_q_from_noise(noise: Tensor, logvar: Tensor) -> Tensor:
    """log q(z | x) of z = mean + exp(logvar / 2) * noise, summed over the last dim.

    Written in the noise rather than (z - mean) / std: it is the same number
    without the rounding of that division, and the same total derivative.
    """
    return (-0.5 * noise**2 - 0.5 * logvar - 0.5 * LOG_2PI).sum(-1)


class VAE(nn.Module):
    """A VAE whose prior is any :class:`~trip.priors.Prior` (N(0, I), GMM or TRIP).

    Args:
        encoder: x -> (mean, logvar), each (B, latent_dim).
        decoder: z (B, latent_dim) -> the likelihood's parameters, shaped like x
            (for images, a Tanh image in [-1, 1]).
        prior: the prior p(z); its ``dim`` is the latent size.
        likelihood: a normalised decoder likelihood with ``log_prob(x, params) -> (B,)``.
        latent_dim: the configured latent size (``model.latent_dim``), if known.

    The latent size is checked when the model is built: against ``latent_dim``
    (or an encoder/decoder ``latent_dim`` attribute) when given, and always by
    running the decoder once, in eval mode and without gradients, on two zero
    codes of the prior's size. ``encode`` checks the encoder's output as well.
    A mismatch raises ``ValueError`` naming ``model.latent_dim`` and the prior.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        likelihood: nn.Module,
        latent_dim: int | None = None,
    ):
        super().__init__()
        if not isinstance(prior, Prior):
            raise ValueError(f"prior must be a trip.priors.Prior, got {type(prior).__name__}")
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        declared = (latent_dim, getattr(encoder, "latent_dim", None), getattr(decoder, "latent_dim", None))
        for size in declared:
            if size is not None and size != prior.dim:
                raise ValueError(_mismatch(prior, f"model.latent_dim={size}"))
        _probe_decoder(decoder, prior)

    @property
    def latent_dim(self) -> int:
        return self.prior.dim

    @property
    def analytic_kl(self) -> bool:
        """True when the KL term is closed-form (the N(0, I) prior)."""
        return isinstance(self.prior, NormalPrior)

    # -- encoder and decoder -----------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The parameters (mean, logvar) of q(z | x), each (B, latent_dim)."""
        mean, logvar = self.encoder(x)
        if mean.dim() != 2 or mean.shape[1] != self.prior.dim:
            raise ValueError(_mismatch(self.prior, f"the encoder gives codes of shape {tuple(mean.shape)}"))
        if logvar.shape != mean.shape:
            raise ValueError(f"encoder mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
        return mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters for codes z (for images, the mean image)."""
        return self.decoder(z)

    # -- bounds ------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One-sample estimates of E_q log p(x | z) and KL(q || p), each (B,)."""
        mean, logvar = self.encode(x)
        noise = _noise(mean.shape, mean, generator)
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = self.likelihood.log_prob(x, self.decode(z))
        if self.analytic_kl:
            kl = kl_to_standard_normal(mean, logvar)
        else:
            kl = log_q_from_noise(noise, logvar) - self.prior.log_prob(z)
        return recon, kl

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-example ELBO in nats (one reparameterised sample): (B,)."""
        recon, kl = self.elbo_terms(x, generator)
        return recon - kl

    def forward(self, x: Tensor) -> Tensor:
        return self.elbo(x)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss -mean ELBO, and the batch means of elbo, recon and kl.

        The means are detached 0-d tensors, not floats: reading them would make the host wait for
        the device at every step (trip.train reads them at log time).
        """
        recon, kl = self.elbo_terms(x, generator)
        elbo = recon - kl
        stats = torch.stack([elbo.mean(), recon.mean(), kl.mean()]).detach()
        return -elbo.mean(), dict(zip(("elbo", "recon", "kl"), stats.unbind()))

    def iwae(
        self, x: Tensor, k: int = 100, chunk: int | None = 1024, generator: torch.Generator | None = None
    ) -> Tensor:
        """The importance-weighted bound with k samples per example, in nats: (B,).

        All B*k codes go through the decoder, the likelihood and the prior's
        ``log_prob`` together, ``chunk`` codes at a time (None: all at once) to
        bound memory; the noise is drawn up front, so the result does not
        depend on ``chunk``. Gradients flow unless the caller disables them
        (wrap evaluation in ``torch.no_grad()``).
        """
        k = _positive_int("k", k)
        chunk = None if chunk is None else _positive_int("chunk", chunk)
        mean, logvar = self.encode(x)
        batch, dim = mean.shape
        noise = _noise((batch, k, dim), mean, generator)
        z = (mean[:, None] + torch.exp(0.5 * logvar)[:, None] * noise).reshape(batch * k, dim)
        log_q = log_q_from_noise(noise, logvar[:, None]).reshape(batch * k)
        rows = torch.arange(batch * k, device=x.device)
        step = batch * k if chunk is None else chunk
        log_joint = torch.cat([self._log_joint(x, z[r], r // k) for r in rows.split(step)])
        log_w = (log_joint - log_q).reshape(batch, k)
        return torch.logsumexp(log_w, dim=1) - math.log(k)

    def _log_joint(self, x: Tensor, z: Tensor, example: Tensor) -> Tensor:
        """log p(x_example, z) for codes z paired with the examples they came from."""
        # Index per chunk instead of repeating x k times: only one chunk of copies exists.
        x_rep = x.index_select(0, example)
        return self.likelihood.log_prob(x_rep, self.decode(z)) + self.prior.log_prob(z)

    # -- sampling and codes ------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoded means E[x | z] of n codes from the prior; train/eval mode is the caller's."""
        return self.likelihood.mean(self.decode(self.prior.sample(n, generator)))

    @torch.no_grad()
    def encode_means(self, data: Tensor | Dataset | Iterable, batch_size: int = 256) -> Tensor:
        """Encoder means (N, latent_dim) of a set of images, for ``prior.fit_marginals``.

        ``data`` is a tensor of images, a map-style ``Dataset`` of images or
        (image, ...) tuples, or an iterable of batches (tensors or tuples whose
        first element is the images, as a ``DataLoader`` yields); every batch is
        cut to at most ``batch_size``. The encoder runs in eval mode (so
        batch-norm statistics are neither used per batch nor updated) and is
        put back in its previous mode afterwards.
        """
        batch_size = _positive_int("batch_size", batch_size)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            means = [self.encode(b.to(self.prior.device))[0] for b in _image_batches(data, batch_size)]
        finally:
            self.encoder.train(was_training)
        if not means:
            raise ValueError("encode_means got no images")
        return torch.cat(means)


# -- helpers -------------------------------------------------------------------------------
def _mismatch(prior: Prior, found: str) -> str:
    return (
        f"{found}; the prior ({type(prior).__name__}) has dim={prior.dim}, "
        "and model.latent_dim must equal it"
    )


def _probe_decoder(decoder: nn.Module, prior: Prior) -> None:
    """Run the decoder once on codes of the prior's size; a failure is a size mismatch."""
    reference = next(decoder.parameters(), None)
    dtype, device = (prior.dtype, prior.device) if reference is None else (reference.dtype, reference.device)
    codes = torch.zeros(2, prior.dim, dtype=dtype, device=device)
    was_training = decoder.training
    decoder.eval()  # no batch-norm statistics updated by the probe
    try:
        with torch.no_grad():
            decoder(codes)
    except RuntimeError as err:
        raise ValueError(_mismatch(prior, f"the decoder fails on codes of the prior's size ({err})")) from err
    finally:
        decoder.train(was_training)


def _noise(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _image_batches(data, batch_size: int) -> Iterator[Tensor]:
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in data:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(images, Tensor):
            raise ValueError(f"encode_means expects batches of image tensors, got {type(images).__name__}")
        yield from images.split(batch_size)
