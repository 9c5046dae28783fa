"""TRIP: Tensor Ring Induced Prior and learnable priors for generative models.

The library is usable on its own (no pipeline packages needed):

    from trip.priors import TRIPPrior
"""

__version__ = "0.1.0"
