"""The interface every prior implements, and its input checks.

A prior is an ``nn.Module`` over codes z of shape (B, dim):

* ``log_prob(z, observed=None)`` -> (B,): log-density; with a boolean mask
  (dim,) or (B, dim) the unobserved dimensions are summed out exactly.
* ``sample(n)`` -> (n, dim).
* ``sample_conditional(z, resample=mask)`` -> (B, dim): the masked dimensions
  redrawn from p(z_masked | z_rest), the rest copied.
* ``conditional_log_prob(z, target, given)``: log p(z_target | z_given).

"Fixed" and "learnable" differ only in ``requires_grad`` on the parameters,
so a fixed prior is a flag, not another class.

Priors compute in their own dtype (float32) inside a bf16 autocast region too
(:func:`without_autocast`), and their input checks never make the host wait for
a GPU (:func:`check_all`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise log N(z | mean, std^2), broadcast over all arguments."""
    return -0.5 * ((z - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI


class GaussianComponents:
    """``means`` and ``stds`` of the Gaussian components of a mixture prior, stored unconstrained as
    the parameters ``loc`` and ``log_scale`` (the exponential keeps every std positive)."""

    @property
    def means(self) -> Tensor:
        return self.loc

    @property
    def stds(self) -> Tensor:
        return self.log_scale.exp()


def no_autocast(device: torch.device):
    """A context that leaves any autocast region of ``device`` (and costs nothing outside one)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def without_autocast(method):
    """Run a prior method outside autocast: bf16 would round the ring's products and the densities."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with no_autocast(self.device):
            return method(self, *args, **kwargs)

    return wrapper


def checks_now(t: Tensor) -> bool:
    """Whether a check of ``t``'s values may read them now: on the CPU that is free; on a GPU it would
    make the host wait for the device at every training step, so there the check is queued instead."""
    return t.device.type == "cpu"


def check_all(ok: Tensor, message) -> None:
    """Fail unless every entry of ``ok`` is true; ``message``: a string or a function giving one.

    On the CPU a failure raises ``ValueError(message)`` at once. On a GPU the assertion runs on the
    device (``torch._assert_async``) and a failure surfaces as a device-side assert error at the
    next synchronisation, at the latest when the training loop reads its statistics.
    """
    if checks_now(ok):
        if not ok.all():
            raise ValueError(message() if callable(message) else message)
    else:
        torch._assert_async(ok.all(), "a trip input check failed on the device (NaN, inf or a bad value)")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class StateStamp:
    """Which values a module's parameters and buffers hold: ``current(module)`` is False once any changed.

    A change is an in-place write (optimiser steps, ``copy_``, ``load_state_dict``:
    torch bumps the tensor's version counter), a replaced tensor (``.to``,
    ``.double()``, ``param.data = ...``) or a new parameter. Writes through
    ``.data`` bypass the version counter and are not seen (torch's autograd
    does not see them either). The stamp holds detached aliases of the tensors,
    so a freed storage's address cannot be reused to fake a match.
    """

    def __init__(self, module: nn.Module):
        tensors = _state_tensors(module)
        self._refs = [t.detach() for t in tensors]
        self._versions = [t._version for t in tensors]

    def current(self, module: nn.Module) -> bool:
        tensors = _state_tensors(module)
        return len(tensors) == len(self._refs) and all(
            t.data_ptr() == r.data_ptr() and t._version == v and t.dtype == r.dtype and t.shape == r.shape
            and t.device == r.device
            for t, r, v in zip(tensors, self._refs, self._versions)
        )


def _state_tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


class Prior(nn.Module, ABC):
    """Base class: input validation and the fixed/learnable switch."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = _positive_int("dim", dim)
        # Carries dtype and device for priors without parameters.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)
        self._derived: dict = {}  # cached(): values derived from the parameters, with their stamps

    def cached(self, name: str, build):
        """``build()``, reused until a parameter or buffer of this prior changes (see :class:`StateStamp`)."""
        derived = self.__dict__.setdefault("_derived", {})
        entry = derived.get(name)
        if entry is not None and entry[0].current(self):
            return entry[1]
        value = build()
        derived[name] = (StateStamp(self), value)
        return value

    # -- dtype, device, learnability -------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def learnable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def set_learnable(self, learnable: bool) -> "Prior":
        """Fixed priors keep their parameters registered but frozen."""
        for p in self.parameters():
            p.requires_grad_(learnable)
        return self

    # -- public API --------------------------------------------------------------------
    @without_autocast
    def log_prob(self, z: Tensor, observed: Tensor | None = None) -> Tensor:
        z = self.check_codes(z)
        mask = None if observed is None else self.check_mask(observed, z.shape[0], "observed")
        return self._log_prob(z, mask)

    def forward(self, z: Tensor, observed: Tensor | None = None) -> Tensor:
        return self.log_prob(z, observed)

    @torch.no_grad()
    @without_autocast
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self._sample(_positive_int("n", n), generator)

    @torch.no_grad()
    @without_autocast
    def sample_conditional(
        self, z: Tensor, resample: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        z = self.check_codes(z)
        mask = self.check_mask(resample, z.shape[0], "resample").expand_as(z)
        return self._sample_conditional(z, mask, generator)

    @without_autocast
    def conditional_log_prob(self, z: Tensor, target: Tensor, given: Tensor) -> Tensor:
        """log p(z_target | z_given) as the difference of two exact marginals."""
        z = self.check_codes(z)
        target = self.check_mask(target, z.shape[0], "target")
        given = self.check_mask(given, z.shape[0], "given")
        if (target & given).any():
            raise ValueError("target and given masks overlap")
        return self._log_prob(z, target | given) - self._log_prob(z, given)

    # -- to implement ------------------------------------------------------------------
    @abstractmethod
    def _log_prob(self, z: Tensor, observed: Tensor | None) -> Tensor: ...

    @abstractmethod
    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor: ...

    @abstractmethod
    def _sample_conditional(
        self, z: Tensor, resample: Tensor, generator: torch.Generator | None
    ) -> Tensor: ...

    # -- checks ------------------------------------------------------------------------
    def check_codes(self, z: Tensor) -> Tensor:
        """Codes must be a finite (B, dim) tensor on the prior's device."""
        if not isinstance(z, Tensor):
            raise ValueError(f"codes must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(
                f"codes must have shape (batch, {self.dim}) for this prior, got {tuple(z.shape)}"
            )
        if z.device != self.device:
            raise ValueError(f"codes are on {z.device} but the prior is on {self.device}")
        check_all(torch.isfinite(z), "codes contain NaN or inf")
        return z.to(self.dtype)

    def check_mask(self, mask, batch: int, name: str) -> Tensor:
        """A boolean mask of shape (dim,) or (batch, dim), returned as (1 or batch, dim)."""
        mask = torch.as_tensor(mask, device=self.device)
        if mask.dtype != torch.bool:
            raise ValueError(f"{name} mask must be boolean, got dtype {mask.dtype}")
        if mask.shape == (self.dim,):
            return mask[None]
        if mask.shape == (batch, self.dim):
            return mask
        raise ValueError(
            f"{name} mask must have shape ({self.dim},) or ({batch}, {self.dim}), "
            f"got {tuple(mask.shape)}"
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, learnable={self.learnable}"
