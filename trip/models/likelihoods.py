"""Decoder likelihoods p(x | z): proper normalised densities, summed over pixels, in nats.

Each likelihood is an ``nn.Module`` with

* ``log_prob(x, params)`` -> (B,): log p(x | params) summed over every
  non-batch dimension, where ``params`` is the decoder output (a mean, or
  logits for the Bernoulli);
* ``mean(params)``: the expected value of x, what a sample from the model shows.

Because every likelihood is normalised (a probability mass for discrete data,
a density for continuous data), the ELBO and IWAE bounds built on them are
log-likelihoods in nats per example and can be compared across priors.

Registered in :data:`LIKELIHOODS`:

* ``"discretized_gaussian"``: 8-bit images in [-1, 1] (the default for images);
* ``"gaussian"``: a continuous Gaussian for real-valued data;
* ``"bernoulli"``: binary data in {0, 1}, parameterised by logits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.special import log_ndtr

from trip.priors.base import check_all
from trip.registry import Registry

LOG_2PI = math.log(2 * math.pi)
LOG_2 = math.log(2.0)


class Likelihood(nn.Module, ABC):
    """log p(x | params) summed over all but the batch dimension."""

    @abstractmethod
    def log_prob(self, x: Tensor, params: Tensor) -> Tensor: ...

    def mean(self, params: Tensor) -> Tensor:
        """E[x | params]; the decoder output itself for the Gaussian likelihoods."""
        return params

    def forward(self, x: Tensor, params: Tensor) -> Tensor:
        return self.log_prob(x, params)


LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")


def build_likelihood(name: str, **options) -> Likelihood:
    """Build the likelihood registered as ``name``; ``options`` go to its constructor."""
    cls = LIKELIHOODS.get(name)
    try:
        return cls(**options)
    except TypeError as err:  # an unknown option name: say which likelihood rejected it
        raise ValueError(f"bad options for likelihood {name!r}: {err}") from None


# -- shared helpers --------------------------------------------------------------------
def _check_pair(x: Tensor, params: Tensor) -> None:
    if x.shape != params.shape:
        raise ValueError(f"data shape {tuple(x.shape)} and decoder output {tuple(params.shape)} differ")
    if x.dim() < 1:
        raise ValueError("data must have a batch dimension")


def _sum_per_example(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1).sum(-1)


def _check_channels(channels) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    return channels


def _log_std_per_channel(init_std: float, channels: int, learnable: bool) -> nn.Parameter:
    if not float(init_std) > 0:
        raise ValueError(f"std must be > 0, got {init_std!r}")
    _check_channels(channels)
    log_std = torch.full((channels,), math.log(float(init_std)))
    return nn.Parameter(log_std, requires_grad=learnable)


def _broadcast_channels(log_std: Tensor, x: Tensor) -> Tensor:
    """A (C,) per-channel parameter shaped to broadcast against x (B, C, ...)."""
    if log_std.numel() == 1:
        return log_std.reshape(())
    if x.dim() < 2 or x.shape[1] != log_std.numel():
        raise ValueError(
            f"data of shape {tuple(x.shape)} does not have {log_std.numel()} channels in dimension 1"
        )
    return log_std.reshape(-1, *([1] * (x.dim() - 2)))


def log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a <= 0, accurate everywhere (Maechler 2012).

    Each branch gets a harmless input where it is not selected, so its
    gradient there is finite and the masked backward pass stays NaN-free.
    """
    near_zero = a > -LOG_2
    a_near = torch.where(near_zero, a, -1.0)
    a_far = torch.where(near_zero, -1.0, a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def log_normal_interval(lower: Tensor, upper: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, stable in both tails.

    The interval is mirrored (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)) so that its
    midpoint is <= 0: there ``log_ndtr`` keeps full relative precision, and
    the difference is log Phi(hi) + log(1 - Phi(lo) / Phi(hi)) with no
    subtraction of two numbers close to 1 and no underflow far in the tail.
    """
    mirror = lower + upper > 0
    lo = torch.where(mirror, -upper, lower)
    hi = torch.where(mirror, -lower, upper)
    log_hi = log_ndtr(hi)
    return log_hi + log1mexp(log_ndtr(lo) - log_hi)


# -- likelihoods -----------------------------------------------------------------------
@LIKELIHOODS.register("discretized_gaussian")
class DiscretizedGaussian(Likelihood):
    """A Gaussian integrated over the bins of 8-bit images in [-1, 1].

    Pixel value v in 0..255 is stored as x = v / 127.5 - 1, so the bins have
    half-width delta = 1/255 and

        P(x | mu, sigma) = Phi((x + delta - mu) / sigma) - Phi((x - delta - mu) / sigma),

    with the first bin open to -inf and the last to +inf, so the 256 masses
    sum to exactly 1 and log P <= 0: the ELBO is a log-probability of the
    image in nats, with no density-vs-mass ambiguity, and (unlike a continuous
    Gaussian on discrete data) a shrinking sigma cannot drive it to +inf.

    sigma is a per-channel learnable scale, initialised to ``init_std`` = 0.1
    (about 13 intensity levels): at the start the Tanh decoder outputs ~0
    while pixels spread over [-1, 1], so a much smaller sigma would make the
    reconstruction term (x - mu)^2 / 2 sigma^2 huge and swamp the KL with
    exploding gradients, and a sigma near 1 would make the likelihood almost
    flat over the data so the decoder can ignore z (posterior collapse).
    0.1 is of the order of the per-pixel reconstruction error a VAE reaches on
    64x64 images, and it spans many bins, where the discretised and continuous
    Gaussians agree; sigma then follows the reconstruction error as it trains.

    The computation runs in float64 (cast back at the end): at large sigma the
    bin mass is a difference of two close CDF values, and float64 keeps that
    difference, and the sum over pixels, well inside float32 precision.
    ``x`` must lie on the 8-bit grid; anything else raises ``ValueError``.
    """

    def __init__(self, channels: int = 3, init_std: float = 0.1, learnable: bool = True, bits: int = 8):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an integer in 1..16, got {bits!r}")
        self.bits = bits
        self.half_levels = (2**bits - 1) / 2  # 127.5 for 8 bits
        self.log_scale = _log_std_per_channel(init_std, channels, learnable)

    @property
    def std(self) -> Tensor:
        return self.log_scale.exp()

    def bin_index(self, x: Tensor) -> Tensor:
        """The integer level v of each value x = v / half_levels - 1, as float64."""
        level = (x.double() + 1) * self.half_levels
        index = level.round()
        bad = ((level - index).abs() > 1e-3) | (index < 0) | (index > 2 * self.half_levels)
        check_all(~bad, lambda: (  # off the grid: e.g. [0, 1]- or 0..255-scaled data passed by mistake
            f"discretized_gaussian expects {self.bits}-bit images mapped to [-1, 1] "
            f"(v / {self.half_levels} - 1); got values off that grid, in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]"
        ))
        return index

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        _check_pair(x, params)
        index = self.bin_index(x)
        mean = params.double()
        log_std = _broadcast_channels(self.log_scale, x).double()
        inv_std = torch.exp(-log_std)
        # Bin edges from the integer level, so float32 rounding of x cannot move them.
        lower = ((index - 0.5) / self.half_levels - 1 - mean) * inv_std
        upper = ((index + 0.5) / self.half_levels - 1 - mean) * inv_std
        log_mass = torch.where(
            index == 0,
            log_ndtr(upper),
            torch.where(index == 2 * self.half_levels, log_ndtr(-lower), log_normal_interval(lower, upper)),
        )
        return _sum_per_example(log_mass).to(torch.promote_types(params.dtype, self.log_scale.dtype))

    def extra_repr(self) -> str:
        learnable = self.log_scale.requires_grad
        return f"channels={self.log_scale.numel()}, bits={self.bits}, learnable={learnable}"


@LIKELIHOODS.register("gaussian")
class Gaussian(Likelihood):
    """A continuous Gaussian N(x | mu, sigma^2 I), a density over real-valued x.

    sigma is per channel (dimension 1 of x; one shared value by default),
    fixed unless ``learnable``. Use it for real-valued data, not for 8-bit
    images: there it is a density, not a probability, and a learnable sigma
    could shrink without bound.
    """

    def __init__(self, std: float = 1.0, learnable: bool = False, channels: int = 1):
        super().__init__()
        self.log_scale = _log_std_per_channel(std, channels, learnable)

    @property
    def std(self) -> Tensor:
        return self.log_scale.exp()

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        _check_pair(x, params)
        log_std = _broadcast_channels(self.log_scale, x)
        z = (x - params) * torch.exp(-log_std)
        return _sum_per_example(-0.5 * z**2 - log_std - 0.5 * LOG_2PI)

    def extra_repr(self) -> str:
        return f"channels={self.log_scale.numel()}, learnable={self.log_scale.requires_grad}"


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with the decoder output as logits.

    log p(x | l) = x * l - softplus(l), computed without forming sigmoid(l), so
    it stays finite for any logit. It is a normalised probability for binary
    x in {0, 1}; for grey values in [0, 1] it is the usual cross-entropy, not
    a normalised likelihood, and its ELBO is not comparable to the others.
    ``channels`` is accepted (and checked) only so that every likelihood can
    be built as ``cls(channels=C)``; Bernoulli pixels have no parameters.
    """

    def __init__(self, channels: int = 1):
        super().__init__()
        _check_channels(channels)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        _check_pair(x, params)
        check_all(~((x < 0) | (x > 1)), "bernoulli expects targets in [0, 1]")
        return _sum_per_example(x * params - F.softplus(params))

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)
