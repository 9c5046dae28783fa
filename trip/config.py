"""The run configuration: typed dataclasses, read once, validated, then passed down.

A run is one (dataset, model, prior, seed). ``load_config`` turns a nested
dict (from YAML) into a :class:`RunConfig`; unknown keys, wrong types and
impossible values raise ``ConfigError`` naming the dotted key, before any
data is loaded or any network is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted key."""


# Models trained on (image, attributes) pairs, and the prior each one is built for.
CONDITIONAL_MODELS = {"vae_trip_cond": "trip", "cvae": "normal"}
GAN_MODELS = ("wgan", "wgan_gp")  # the rest are VAEs


@dataclass
class DataConfig:
    name: str = "shapes"  # a name in trip.data.DATASETS
    image_size: int = 32
    options: dict = field(default_factory=dict)  # extra keyword options of the loader
    prepared_root: str = "data/prepared"  # prepared arrays are cached here, keyed by name and options


@dataclass
class ModelConfig:
    name: str = "vae"  # vae | wgan | wgan_gp
    arch: str = "small"  # a name in trip.models.architectures.ARCHITECTURES
    latent_dim: int = 16
    likelihood: str = "discretized_gaussian"  # VAE decoder likelihood


@dataclass
class PriorConfig:
    name: str = "normal"  # normal | gmm | trip
    learnable: bool = True
    dim: int | None = None  # defaults to model.latent_dim; set only to pin it
    n_components: int = 10  # N per dimension (TRIP) or K in total (GMM)
    core_size: int = 20  # TRIP core size m
    mean_range: list = field(default_factory=lambda: [-1.0, 1.0])
    # null: the prior's own default. TRIP: half the spacing of N means on mean_range (1/N on [-1, 1],
    # paper Sec. 3.2); GMM: exp(-1/2), the paper's code's log-variance -1 (trip.priors.gmm.GMM_INIT_STD).
    init_std: float | None = None
    core_init_std: float = 0.5
    # VAE-TRIP re-fit from encoder codes (paper Sec. 3.1; VAEs with a learnable TRIP prior only),
    # counted in optimiser steps done: at step 0, at `reinit_first_step`, then every
    # `reinit_every_steps` (0: no repeats). The defaults are the paper's code's (train_vaes.py):
    # before its 10k-iteration blocks 1 and 6 of 8, i.e. at 0, 10,000 and 60,000 of 80,000 steps.
    reinit_first_step: int = 10000
    reinit_every_steps: int = 50000
    reinit_codes: int = 10000  # training images encoded for each re-initialisation


@dataclass
class TrainConfig:
    steps: int = 3000  # generator (GAN) or optimiser (VAE) steps
    batch_size: int = 64
    lr: float = 1e-3
    prior_lr: float | None = None  # defaults to lr
    optimizer: str = "adam"  # adam | rmsprop
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    # A learnable prior's own Adam with these betas (the paper's code: Adam(prior, lp_lr), default
    # betas); null: the prior is a parameter group of the networks' optimiser (optimizer, betas).
    prior_betas: list | None = None
    n_critic: int = 5
    clip: float = 0.01  # WGAN weight clipping
    gp_weight: float = 10.0  # WGAN-GP gamma
    log_every: int = 50
    checkpoint_every: int = 500
    sample_count: int = 64
    # Convergence tracking: the domain FD (trip.metrics.domain) of fd_samples images from a fixed
    # seed, every fd_every steps and at half and all of the steps; 0 disables it. Measurement only.
    fd_every: int = 0
    fd_samples: int = 2000


@dataclass
class LabelsConfig:
    """Attribute labels of the conditional models (paper Sec. 4); other models ignore this section."""

    missing: float = 0.0  # fraction of each attribute's values hidden, fixed per training example
    attributes: list | None = None  # dataset attribute names to condition on; null: all of them


@dataclass
class EvalConfig:
    """What ``python -m trip.evaluate`` computes; not part of the run's identity."""

    fid_samples: int = 1000  # generated images, and reference images of fid_split
    fid_split: str = "train"
    fid_batch_size: int = 50
    fid_stats_dir: str = "data/fid_stats"
    likelihood_examples: int = 1000  # test images for ELBO and IWAE (VAE)
    iwae_k: int = 100
    reversal_examples: int = 1024  # training images reversed into codes (GAN); PAG needs >= 8 d of them
    reversal_steps: int = 200
    reversal_lr: float | None = None  # Adam's step on the codes; None: trip.metrics.reversal's default (0.1)
    disagreement_prior_samples: int = 2000
    disagreement_count: int = 16
    hop_trajectories: int = 6
    hop_steps: int = 8
    hop_dims: int = 5
    seed: int = 0
    # Dataset-native metrics (trip.metrics.domain) in the feature space of the attribute classifier:
    # Frechet distance, KID and precision/recall of domain_samples generated images against the first
    # domain_real test images (the floor: the next domain_real test images), and mode coverage, KL and TV
    # over the exact attribute joint of mode_samples generated (and test) images where the dataset has one.
    domain_samples: int = 5000
    domain_real: int = 5000
    mode_samples: int = 10000
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    pr_k: int = 3  # neighbours that define the precision/recall manifolds
    domain_classifier_steps: int = 2000  # training steps of the feature/attribute network
    domain_batch_size: int = 500
    domain_cache_dir: str = "data/domain"  # the network and reference features, keyed by the data config

    def __post_init__(self) -> None:
        for name in ("domain_samples", "domain_real", "mode_samples", "kid_subsets", "kid_subset_size", "pr_k",
                     "domain_classifier_steps", "domain_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"eval.{name}: must be an integer >= 1, got {value!r}")
        if self.kid_subset_size < 2:
            raise ConfigError(f"eval.kid_subset_size: must be >= 2, got {self.kid_subset_size}")
        if self.pr_k >= min(self.domain_samples, self.domain_real):
            raise ConfigError(f"eval.pr_k: must be below eval.domain_samples ({self.domain_samples}) and "
                              f"eval.domain_real ({self.domain_real}), got {self.pr_k}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    run_dir: str = "runs/default"

    @property
    def prior_dim(self) -> int:
        return self.model.latent_dim if self.prior.dim is None else self.prior.dim

    @property
    def conditional(self) -> bool:
        return self.model.name in CONDITIONAL_MODELS


# -- reading ---------------------------------------------------------------------------
def load_config(raw: dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build and validate a RunConfig from a nested dict and ``key.path=value`` overrides."""
    cfg = build_with_overrides(RunConfig, raw, overrides)
    validate(cfg)
    return cfg


def build_with_overrides(cls, raw: dict | None, overrides: list[str] | None = None):
    """``build_dataclass`` of a copy of ``raw`` with ``key.path=value`` overrides applied first."""
    raw = json.loads(json.dumps(raw or {}))  # a deep copy with plain types
    for item in overrides or []:
        apply_override(raw, item)
    return build_dataclass(cls, raw, "")


def read_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    raw.pop("config_hash", None)  # written into run directories' config.yaml
    return load_config(raw, overrides)


def apply_override(raw: dict, item: str) -> None:
    """Set ``key.path=value`` in a nested dict; the value is parsed as YAML (``[0.5]``, ``null``, ``1e-3``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, value = item.split("=", 1)
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def build_dataclass(cls, raw: Any, prefix: str = ""):
    """A dataclass instance from a nested dict, type-checked; errors name the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        key, kind = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build_dataclass(kind, value, key + ".")
        else:
            values[name] = _check_type(key, value, kind)
    return cls(**values)


def _check_type(key: str, value: Any, kind) -> Any:
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t in (int, str, bool, list, dict) and type(value) is t:
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


# -- validation ------------------------------------------------------------------------
def validate(cfg: RunConfig) -> None:
    """Every check that can fail before training starts; messages name the key."""
    from trip.data import DATASETS
    from trip.models import MODELS
    from trip.models.architectures import ARCHITECTURES, check_image_size
    from trip.models.likelihoods import LIKELIHOODS
    from trip.priors import PRIORS

    for key, registry, name in (
        ("data.name", DATASETS, cfg.data.name),
        ("model.name", MODELS, cfg.model.name),
        ("model.arch", ARCHITECTURES, cfg.model.arch),
        ("model.likelihood", LIKELIHOODS, cfg.model.likelihood),
        ("prior.name", PRIORS, cfg.prior.name),
    ):
        if name not in registry:
            raise ConfigError(f"{key}: unknown name {name!r}; known: {', '.join(registry.names())}")
    _check_loader_options(DATASETS.get(cfg.data.name), cfg.data.options)
    _check_known_sizes(cfg)
    try:
        check_image_size(cfg.model.arch, cfg.data.image_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None  # the message names data.image_size
    _positive(cfg, ["model.latent_dim", "prior.n_components", "prior.core_size", "prior.reinit_codes"])
    _positive(cfg, ["train.steps", "train.batch_size", "train.n_critic", "train.log_every"])
    _positive(cfg, ["train.checkpoint_every", "train.sample_count", "train.lr", "train.gp_weight"])
    _positive(cfg, ["eval.fid_samples", "eval.fid_batch_size", "eval.likelihood_examples", "eval.iwae_k"])
    _positive(cfg, ["eval.reversal_examples", "eval.reversal_steps", "eval.disagreement_prior_samples"])
    _positive(cfg, ["eval.disagreement_count", "eval.hop_trajectories", "eval.hop_steps", "eval.hop_dims"])
    if cfg.model.name in GAN_MODELS and cfg.eval.reversal_examples < cfg.model.latent_dim:
        raise ConfigError(
            f"eval.reversal_examples: {cfg.eval.reversal_examples} codes give a singular code matrix "
            f"in {cfg.model.latent_dim} dimensions (PAG = inf); use at least model.latent_dim"
        )
    if cfg.eval.fid_split not in ("train", "test"):
        raise ConfigError(f"eval.fid_split: must be train or test, got {cfg.eval.fid_split!r}")
    if cfg.prior.dim is not None and cfg.prior.dim != cfg.model.latent_dim:
        raise ConfigError(
            f"prior.dim: {cfg.prior.dim} does not match model.latent_dim {cfg.model.latent_dim}"
        )
    if cfg.prior.name == "trip" and cfg.prior.reinit_codes < cfg.prior.n_components:
        raise ConfigError(
            f"prior.reinit_codes: {cfg.prior.reinit_codes} codes cannot fit {cfg.prior.n_components} components"
        )
    if cfg.train.prior_lr is not None and not cfg.train.prior_lr > 0:
        raise ConfigError(f"train.prior_lr: must be > 0, got {cfg.train.prior_lr}")
    if cfg.train.optimizer not in ("adam", "rmsprop"):
        raise ConfigError(f"train.optimizer: must be adam or rmsprop, got {cfg.train.optimizer!r}")
    for key, betas in (("train.betas", cfg.train.betas), ("train.prior_betas", cfg.train.prior_betas)):
        if betas is not None and not _are_betas(betas):
            raise ConfigError(f"{key}: must be two numbers in [0, 1), got {betas}")
    if not cfg.train.clip > 0:
        raise ConfigError(f"train.clip: must be > 0, got {cfg.train.clip}")
    for key in ("reinit_first_step", "reinit_every_steps"):
        if getattr(cfg.prior, key) < 0:
            raise ConfigError(f"prior.{key}: must be >= 0 (optimiser steps), got {getattr(cfg.prior, key)}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device: must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    low, high = cfg.prior.mean_range if len(cfg.prior.mean_range) == 2 else (1, 0)
    if not low < high:
        raise ConfigError(f"prior.mean_range: must be [low, high] with low < high, got {cfg.prior.mean_range}")
    _check_labels(cfg)


def _check_labels(cfg: RunConfig) -> None:
    labels = cfg.labels
    if not 0 <= labels.missing <= 1:
        raise ConfigError(f"labels.missing: must be in [0, 1], got {labels.missing}")
    names = labels.attributes
    if names is not None:
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"labels.attributes: must be null or a non-empty list of distinct names, got {names}")
        known = static_attributes(cfg.data.name)
        unknown = [n for n in names if known is not None and n not in known]
        if unknown:
            raise ConfigError(f"labels.attributes: {unknown[0]!r} is not an attribute of {cfg.data.name} "
                              f"(has: {', '.join(known)})")
    wanted = CONDITIONAL_MODELS.get(cfg.model.name)
    if wanted is not None and cfg.prior.name != wanted:
        raise ConfigError(f"prior.name: {cfg.model.name} is built with the {wanted!r} prior, got {cfg.prior.name!r}")


def static_attributes(dataset: str) -> tuple[str, ...] | None:
    """A dataset's attribute names when they are fixed by its loader; None when they come from its files."""
    from trip.data import celeba, shapes

    return {"shapes": shapes.ATTRIBUTES, "celeba": celeba.ATTRIBUTES}.get(dataset)


def _positive(cfg: RunConfig, keys: list[str]) -> None:
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not value > 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")


def _are_betas(betas) -> bool:
    return len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)


def is_number(value) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def known_split_sizes(data: DataConfig) -> tuple[int, int] | None:
    """(train, test) image counts of the configured dataset, from its loader module's ``split_sizes``
    (known constants, no data read); None where the loader declares none. Bad option values raise
    ``ConfigError`` naming ``data.options.<option>``."""
    from trip.data import DATASETS

    sizes = getattr(inspect.getmodule(DATASETS.get(data.name)), "split_sizes", None)
    if sizes is None:
        return None
    try:
        return sizes(**data.options)
    except ValueError as err:
        raise ConfigError(f"data.options.{err}") from None


def _check_known_sizes(cfg: RunConfig) -> None:
    """Loader option values and the batch size against the dataset's known size, before any data is read."""
    sizes = known_split_sizes(cfg.data)
    if sizes is not None and cfg.train.batch_size > sizes[0]:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} exceeds the {sizes[0]} training images")


def _check_loader_options(loader, options: dict) -> None:
    accepted = inspect.signature(loader).parameters
    for name in options:
        if name == "image_size":
            raise ConfigError("data.options.image_size: set data.image_size instead")
        if name not in accepted:
            raise ConfigError(f"data.options.{name}: not an option of this dataset (options: {', '.join(accepted)})")


# -- identity --------------------------------------------------------------------------
def to_dict(cfg: RunConfig) -> dict:
    """The config as plain data; ``labels`` only for conditional models, so other runs keep their hash."""
    content = dataclasses.asdict(cfg)
    if not cfg.conditional:
        content.pop("labels")
    return content


def config_hash(cfg: RunConfig) -> str:
    """Content hash of everything that changes the result (not where it is written or run)."""
    content = to_dict(cfg)
    for key in ("run_dir", "device", "eval"):
        content.pop(key)
    # Resumes are exact and the FD probe draws from a forked RNG, so these change nothing.
    for key in ("log_every", "checkpoint_every", "fd_every", "fd_samples"):
        content["train"].pop(key)
    content["data"].pop("prepared_root")  # a cache location, not an input
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
