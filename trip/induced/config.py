"""Settings of the data-induced-prior experiment (``induced`` section of a profile), validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trip.config import POSITIVE, ConfigError, bounds, build_with_overrides, choices
from trip.config import validate  # noqa: F401  (trip.induced exports it)


KINDS = ("pgan", "trip", "original")
GAN_MODELS = ("wgan", "wgan_gp")
FINITE_POSITIVE = bounds(gt=0, finite=True)


# -- configuration ---------------------------------------------------------------------
@dataclass
class PGANConfig:
    """The secondary GAN of Sec. 3: noise z' -> code through 4 FC layers; critic of 4 FC layers.

    Appendix E makes the PGAN "analogous to the original GAN"; the GANs here
    are Wasserstein GANs, so the PGAN is a WGAN-GP with Adam(lr, 0.5, 0.9).
    """

    hidden: int = field(default=128, metadata=POSITIVE)  # units of the 3 hidden layers of both networks
    noise_dim: int | None = field(default=None, metadata=POSITIVE)  # size of z'; default the code size d (d' >= d)
    steps: int = field(default=1000, metadata=POSITIVE)  # mapping (generator) updates
    n_critic: int = field(default=5, metadata=POSITIVE)  # critic updates per mapping update
    lr: float = field(default=3e-4, metadata=FINITE_POSITIVE)  # Appendix E's step size
    batch_size: int = field(default=100, metadata=POSITIVE)  # Appendix E: mini-batches of 100
    gp_weight: float = field(default=10.0, metadata=FINITE_POSITIVE)


@dataclass
class TRIPFitConfig:
    """A TRIP fitted to the codes by maximum likelihood, after the 1-D GMM initialisation.

    A few hundred codes overfit the GAN prior's size (N=10, m=8 in the shapes
    profile): on 256 codes of a shapes WGAN-GP, N=5, m=4 held out best.
    """

    n_components: int = field(default=5, metadata=POSITIVE)  # N per dimension
    core_size: int = field(default=4, metadata=POSITIVE)  # tensor-ring core size m
    steps: int = field(default=500, metadata=POSITIVE)  # Adam steps on -mean log p(z)
    lr: float = field(default=1e-2, metadata=FINITE_POSITIVE)
    batch_size: int = field(default=256, metadata=POSITIVE)  # codes per step (capped at the number of training codes)
    # fraction of codes held out to score the fit, never trained on
    holdout: float = field(default=0.2, metadata=bounds(gt=0, lt=1))
    # fraction of the rest that picks the step to keep (early stopping); 0: the last
    validation: float = field(default=0.2, metadata=bounds(ge=0, lt=1))


@dataclass
class InducedConfig:
    """Settings of one induced-prior experiment; sized for the shapes profile on a CPU."""

    # the GAN run to start from (induced priors need a GAN): RUN_ROOT/PROFILE/<model>-<prior>-s<seed>
    source_model: str = field(default="wgan_gp", metadata=choices(*GAN_MODELS))
    source_prior: str = "normal"  # a prior variant of the profile
    # training images reversed into codes (the paper: 1024)
    reversal_examples: int = field(default=512, metadata=POSITIVE)
    # Algorithm 1 steps (the shapes profile's eval.reversal_steps)
    reversal_steps: int = field(default=100, metadata=POSITIVE)
    # Adam on the codes (trip.metrics.reversal: the paper's plain descent diverges)
    reversal_lr: float = field(default=0.1, metadata=FINITE_POSITIVE)
    pgan: PGANConfig = field(default_factory=PGANConfig)
    trip: TRIPFitConfig = field(default_factory=TRIPFitConfig)
    # GAN steps continued with each prior (0: swap the prior only)
    continue_steps: int = field(default=100, metadata=bounds(ge=0))
    # generated images for FID, and reference images (the shapes profile's count)
    fid_samples: int = field(default=200, metadata=bounds(ge=2))
    seed: int = 0  # the source run's seed, and the seed of everything done here

    def check(self, prefix: str) -> None:
        """The codes must split into enough to fit, to validate and to hold out."""
        rest, held = _split_sizes(self.reversal_examples, self.trip.holdout)
        fit_codes, checked = _split_sizes(rest, self.trip.validation)
        if held < 1 or (self.trip.validation > 0 and checked < 1) or fit_codes < self.trip.n_components:
            raise ConfigError(f"{prefix}trip.holdout: {self.reversal_examples} codes split into {fit_codes} to fit "
                              f"{self.trip.n_components} components, {checked} to validate and {held} held out")


def load_induced_config(raw: dict | None = None, overrides: list[str] | None = None) -> InducedConfig:
    """Build and validate an InducedConfig from a dict and ``key.path=value`` overrides."""
    return build_with_overrides(InducedConfig, raw, overrides)


def _split_sizes(n: int, holdout: float) -> tuple[int, int]:
    held = int(round(n * holdout))
    return n - held, held


def source_run_dir(run_root: str | Path, profile: str, cfg: InducedConfig) -> Path:
    """Where the training pipeline puts the source run of ``cfg``."""
    return Path(run_root) / profile / f"{cfg.source_model}-{cfg.source_prior}-s{cfg.seed}"
