"""Priors over latent codes: N(0, I), a full-space GMM, and TRIP.

Each is registered by name in :data:`PRIORS` and built with :func:`build_prior`;
all share the interface of :class:`trip.priors.base.Prior`. :class:`JointTRIPPrior`
(TRIP over codes and discrete attributes) is exported but not registered: it
needs ``attribute_sizes``.
"""

from __future__ import annotations

from trip.priors.base import Prior
from trip.priors.gmm import GMMPrior
from trip.priors.joint import JointTRIPPrior
from trip.priors.normal import NormalPrior
from trip.priors.trip_prior import TRIPPrior
from trip.registry import Registry

PRIORS: Registry[type[Prior]] = Registry("prior")
PRIORS.register("normal")(NormalPrior)
PRIORS.register("gmm")(GMMPrior)
PRIORS.register("trip")(TRIPPrior)


def build_prior(name: str, dim: int, learnable: bool = True, **options) -> Prior:
    """Build the prior registered as ``name``; ``options`` go to its constructor.

    The Normal prior has no parameters, so ``learnable`` has no effect on it.
    """
    cls = PRIORS.get(name)
    if cls is NormalPrior:
        if options:
            raise ValueError(f"prior 'normal' takes no options, got {sorted(options)}")
        return NormalPrior(dim)
    try:
        return cls(dim, learnable=learnable, **options)
    except TypeError as err:  # an unknown option name: say which prior rejected it
        raise ValueError(f"bad options for prior {name!r}: {err}") from None


__all__ = ["PRIORS", "Prior", "NormalPrior", "GMMPrior", "TRIPPrior", "JointTRIPPrior", "build_prior"]
