"""Data-induced priors for a trained GAN (Kilcher et al., "Flexible Prior Distributions
for Deep Generative Models", Sec. 3 and 4.4), and TRIP as the flexible prior.

    python -m trip.induced runs/shapes/wgan_gp-normal-s0 --kind trip pgan original --out induced/

For one trained GAN run and one ``kind``:

1. reverse ``reversal_examples`` training images into codes (Algorithm 1); the
   codes are cached in the output directory keyed by the checkpoint's digest,
   so every kind reuses one reversal;
2. score the trained GAN BEFORE: PAG (Eq. 2) of the codes, their log-likelihood
   under the prior, FID (with its sample count), and the mean distance from
   prior samples to the nearest code;
3. fit the induced prior to the codes: ``pgan``, the paper's secondary GAN, or
   ``trip``, a TRIP fitted by maximum likelihood; ``original`` keeps the run's
   own prior, the control that separates "trained longer" from "new prior";
4. swap it into the GAN as a fixed prior (``original``: the run's prior, learnable
   if it was) and continue training for ``continue_steps`` (fresh optimisers
   for every kind, the run's own training settings);
5. score AFTER the same way, reversing the same images with the continued
   generator; write ``induced_<kind>.json``, the continued checkpoint
   ``induced_<kind>.pt`` and a sample grid ``induced_<kind>_samples.png``.

The source run directory is only read.

The modules: :mod:`~trip.induced.config` (settings), :mod:`~trip.induced.pgan`
(the secondary-GAN prior), :mod:`~trip.induced.trip_fit` (TRIP by maximum
likelihood), :mod:`~trip.induced.experiment` (the steps above) and
:mod:`~trip.induced.cli`.
"""

from trip.induced.config import (
    GAN_MODELS,
    KINDS,
    InducedConfig,
    PGANConfig,
    TRIPFitConfig,
    load_induced_config,
    source_run_dir,
    validate,
)
from trip.induced.pgan import PGANPrior, fit_pgan
from trip.induced.trip_fit import fit_trip, mean_log_likelihood, split_codes
from trip.induced.experiment import code_scores, load_induced, load_source, run_induced, summary_line
from trip.induced.cli import main

__all__ = [
    "GAN_MODELS", "KINDS", "InducedConfig", "PGANConfig", "PGANPrior", "TRIPFitConfig", "code_scores", "fit_pgan",
    "fit_trip", "load_induced", "load_induced_config", "load_source", "main", "mean_log_likelihood", "run_induced",
    "source_run_dir", "split_codes", "summary_line", "validate",
]
