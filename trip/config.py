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
import math
import operator
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

# Run identity (``config_hash``) is declared on each field, so that adding a field is one local
# decision: ``field(metadata=...)`` with one of these; a field without one is part of the identity.
# NOT_IDENTITY: the field never changes what a run computes (where it is written or cached, how often
#   it is logged or checkpointed, which device or kernels do the arithmetic: resumes are exact and the
#   hash already ignores the device, so kernel choices that only change rounding are ignored too).
# IDENTITY_IF_SET: a later field that changes the numerics; hashed only when it differs from its
#   default, so that every run configured before the field existed keeps its hash.
# IDENTITY_IF_CONDITIONAL: hashed, and written to config.yaml, for conditional models only.
NOT_IDENTITY = {"identity": "never"}
IDENTITY_IF_SET = {"identity": "if_set"}
IDENTITY_IF_CONDITIONAL = {"identity": "conditional"}
AMP_MODES = ("none", "bf16")

# Validation is declared the same way, so that every config section is checked by one mechanism as
# ``build_dataclass`` builds it: a field's value rule sits in its metadata, merged with its identity
# (``metadata=NOT_IDENTITY | bounds(gt=0)``), and a section's cross-field rules in an optional
# ``check(self, prefix)`` method, called once the section is built. Both name the dotted key.


def rule(test, wording: str) -> dict:
    """Field metadata: ``test(value)`` must hold (null always passes); else ``<key>: <wording>, got <value>``.
    One rule a field; ``|`` merges it with the field's identity marker."""
    return {"rule": (test, wording)}


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def bounds(*, gt=None, ge=None, lt=None, le=None, finite: bool = False) -> dict:
    """Field metadata: a number within the given bounds, worded ``> 0``, ``>= 1`` or ``in [0, 1)``."""
    sides = [(op, b) for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    if len(sides) == 2:
        (low_op, low), (high_op, high) = sides
        wording = f"in {'[' if low_op == '>=' else '('}{low}, {high}{']' if high_op == '<=' else ')'}"
    else:
        wording = f"{sides[0][0]} {sides[0][1]}"

    def test(value) -> bool:
        return all(_OPS[op](value, b) for op, b in sides) and (not finite or math.isfinite(value))

    return rule(test, f"must be {'a finite number ' if finite else ''}{wording}")


def choices(*options: str) -> dict:
    """Field metadata: one of ``options``."""
    return rule(lambda v: v in options, f"must be {' or '.join(options)}")


NON_EMPTY = rule(lambda v: bool(v.strip() if isinstance(v, str) else v), "must not be empty")
POSITIVE = bounds(gt=0)


def is_number(value) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _are_betas(betas) -> bool:
    return len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)


BETAS = rule(_are_betas, "must be two numbers in [0, 1)")


def _is_range(pair) -> bool:
    return len(pair) == 2 and all(is_number(v) for v in pair) and pair[0] < pair[1]


def _distinct_names(names) -> bool:
    return bool(names) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)


def _registered(key: str, registry, name: str) -> None:
    if name not in registry:
        raise ConfigError(f"{key}: unknown name {name!r}; known: {', '.join(registry.names())}")


@dataclass
class DataConfig:
    name: str = "shapes"  # a name in trip.data.DATASETS
    image_size: int = 32
    options: dict = field(default_factory=dict)  # extra keyword options of the loader
    # prepared arrays are cached here, keyed by name and options: a cache location, not an input
    prepared_root: str = field(default="data/prepared", metadata=NOT_IDENTITY)

    def check(self, prefix: str) -> None:
        from trip.data import DATASETS

        _registered(f"{prefix}name", DATASETS, self.name)
        accepted = inspect.signature(DATASETS.get(self.name)).parameters
        for name in self.options:
            if name == "image_size":
                raise ConfigError(f"{prefix}options.image_size: set {prefix}image_size instead")
            if name not in accepted:
                raise ConfigError(f"{prefix}options.{name}: not an option of this dataset "
                                  f"(options: {', '.join(accepted)})")


@dataclass
class ModelConfig:
    name: str = "vae"  # vae | wgan | wgan_gp
    arch: str = "small"  # a name in trip.models.architectures.ARCHITECTURES
    latent_dim: int = field(default=16, metadata=POSITIVE)
    likelihood: str = "discretized_gaussian"  # VAE decoder likelihood

    def check(self, prefix: str) -> None:
        from trip.models import MODELS
        from trip.models.architectures import ARCHITECTURES
        from trip.models.likelihoods import LIKELIHOODS

        for name, registry in (("name", MODELS), ("arch", ARCHITECTURES), ("likelihood", LIKELIHOODS)):
            _registered(prefix + name, registry, getattr(self, name))


@dataclass
class PriorConfig:
    name: str = "normal"  # normal | gmm | trip
    learnable: bool = True
    dim: int | None = None  # defaults to model.latent_dim; set only to pin it
    n_components: int = field(default=10, metadata=POSITIVE)  # N per dimension (TRIP) or K in total (GMM)
    core_size: int = field(default=20, metadata=POSITIVE)  # TRIP core size m
    mean_range: list = field(default_factory=lambda: [-1.0, 1.0],
                             metadata=rule(_is_range, "must be [low, high] with low < high"))
    # null: the prior's own default. TRIP: half the spacing of N means on mean_range (1/N on [-1, 1],
    # paper Sec. 3.2); GMM: exp(-1/2), the paper's code's log-variance -1 (trip.priors.gmm.GMM_INIT_STD).
    init_std: float | None = None
    core_init_std: float = 0.5
    # VAE-TRIP re-fit from encoder codes (paper Sec. 3.1; VAEs with a learnable TRIP prior only),
    # counted in optimiser steps done: at step 0, at `reinit_first_step`, then every
    # `reinit_every_steps` (0: no repeats). The defaults are the paper's code's (train_vaes.py):
    # before its 10k-iteration blocks 1 and 6 of 8, i.e. at 0, 10,000 and 60,000 of 80,000 steps.
    reinit_first_step: int = field(default=10000, metadata=bounds(ge=0))
    reinit_every_steps: int = field(default=50000, metadata=bounds(ge=0))
    reinit_codes: int = field(default=10000, metadata=POSITIVE)  # training images encoded for each re-initialisation

    def check(self, prefix: str) -> None:
        from trip.priors import PRIORS

        _registered(f"{prefix}name", PRIORS, self.name)
        if self.name == "trip" and self.reinit_codes < self.n_components:
            raise ConfigError(f"{prefix}reinit_codes: {self.reinit_codes} codes cannot fit "
                              f"{self.n_components} components")


@dataclass
class TrainConfig:
    steps: int = field(default=3000, metadata=POSITIVE)  # generator (GAN) or optimiser (VAE) steps
    batch_size: int = field(default=64, metadata=POSITIVE)
    lr: float = field(default=1e-3, metadata=POSITIVE)
    prior_lr: float | None = field(default=None, metadata=POSITIVE)  # defaults to lr
    optimizer: str = field(default="adam", metadata=choices("adam", "rmsprop"))
    betas: list = field(default_factory=lambda: [0.9, 0.999], metadata=BETAS)
    # A learnable prior's own Adam with these betas (the paper's code: Adam(prior, lp_lr), default
    # betas); null: the prior is a parameter group of the networks' optimiser (optimizer, betas).
    prior_betas: list | None = field(default=None, metadata=BETAS)
    n_critic: int = field(default=5, metadata=POSITIVE)
    clip: float = field(default=0.01, metadata=POSITIVE)  # WGAN weight clipping
    gp_weight: float = field(default=10.0, metadata=POSITIVE)  # WGAN-GP gamma
    # Resumes are exact, so how often a run logs and checkpoints changes nothing.
    log_every: int = field(default=50, metadata=NOT_IDENTITY | POSITIVE)
    checkpoint_every: int = field(default=500, metadata=NOT_IDENTITY | POSITIVE)
    sample_count: int = field(default=64, metadata=POSITIVE)
    # Convergence tracking: the domain FD (trip.metrics.domain) of fd_samples images from a fixed
    # seed, every fd_every steps and at half and all of the steps; 0 disables it. Measurement only:
    # the probe draws from a forked RNG.
    fd_every: int = field(default=0, metadata=NOT_IDENTITY)
    fd_samples: int = field(default=2000, metadata=NOT_IDENTITY)
    # Speed switches for GPUs (README, "Training on GPUs"); the defaults are the float32 path as it
    # always was. amp: none | bf16, bf16 autocast for the networks only (the prior, the likelihood,
    # the KL and the gradient penalty stay float32). bf16 changes what the networks compute, so it is
    # part of the run's identity.
    amp: str = field(default="none", metadata=IDENTITY_IF_SET | choices(*AMP_MODES))
    # The rest change at most the rounding, as the device does, and a run may resume with them
    # switched: NHWC layout of the networks and batches; cuDNN's per-shape kernel timing (off under
    # deterministic); torch.compile of the networks; the uint8 training images held on the run
    # device with batches indexed there (the same batches); deterministic kernels
    # (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG), which a bit-identical resume on
    # CUDA needs (on the CPU it is always bit-identical).
    channels_last: bool = field(default=False, metadata=NOT_IDENTITY)
    cudnn_benchmark: bool = field(default=False, metadata=NOT_IDENTITY)
    compile: bool = field(default=False, metadata=NOT_IDENTITY)
    resident_data: bool = field(default=False, metadata=NOT_IDENTITY)
    deterministic: bool = field(default=False, metadata=NOT_IDENTITY)


@dataclass
class LabelsConfig:
    """Attribute labels of the conditional models (paper Sec. 4); other models ignore this section."""

    # fraction of each attribute's values hidden, fixed per training example
    missing: float = field(default=0.0, metadata=bounds(ge=0, le=1))
    # dataset attribute names to condition on; null: all of them
    attributes: list | None = field(
        default=None, metadata=rule(_distinct_names, "must be null or a non-empty list of distinct names"))


@dataclass
class EvalConfig:
    """What ``python -m trip.evaluate`` computes; not part of the run's identity."""

    fid_samples: int = field(default=1000, metadata=POSITIVE)  # generated images, and reference images of fid_split
    fid_split: str = field(default="train", metadata=choices("train", "test"))
    fid_batch_size: int = field(default=50, metadata=POSITIVE)
    fid_stats_dir: str = "data/fid_stats"
    likelihood_examples: int = field(default=1000, metadata=POSITIVE)  # test images for ELBO and IWAE (VAE)
    iwae_k: int = field(default=100, metadata=POSITIVE)
    # training images reversed into codes (GAN); PAG needs >= 8 d of them
    reversal_examples: int = field(default=1024, metadata=POSITIVE)
    reversal_steps: int = field(default=200, metadata=POSITIVE)
    reversal_lr: float | None = None  # Adam's step on the codes; None: trip.metrics.reversal's default (0.1)
    disagreement_prior_samples: int = field(default=2000, metadata=POSITIVE)
    disagreement_count: int = field(default=16, metadata=POSITIVE)
    hop_trajectories: int = field(default=6, metadata=POSITIVE)
    hop_steps: int = field(default=8, metadata=POSITIVE)
    hop_dims: int = field(default=5, metadata=POSITIVE)
    seed: int = 0
    # Dataset-native metrics (trip.metrics.domain) in the feature space of the attribute classifier:
    # Frechet distance, KID and precision/recall of domain_samples generated images against the first
    # domain_real test images (the floor: the next domain_real test images), and mode coverage, KL and TV
    # over the exact attribute joint of mode_samples generated (and test) images where the dataset has one.
    domain_samples: int = field(default=5000, metadata=POSITIVE)
    domain_real: int = field(default=5000, metadata=POSITIVE)
    mode_samples: int = field(default=10000, metadata=POSITIVE)
    kid_subsets: int = field(default=50, metadata=POSITIVE)
    kid_subset_size: int = field(default=1000, metadata=bounds(ge=2))
    pr_k: int = field(default=3, metadata=POSITIVE)  # neighbours that define the precision/recall manifolds
    domain_classifier_steps: int = field(default=2000, metadata=POSITIVE)  # training steps of the feature network
    domain_batch_size: int = field(default=500, metadata=POSITIVE)
    domain_cache_dir: str = "data/domain"  # the network and reference features, keyed by the data config

    def check(self, prefix: str) -> None:
        if self.pr_k >= min(self.domain_samples, self.domain_real):
            raise ConfigError(f"{prefix}pr_k: must be below {prefix}domain_samples ({self.domain_samples}) and "
                              f"{prefix}domain_real ({self.domain_real}), got {self.pr_k}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig, metadata=NOT_IDENTITY)
    labels: LabelsConfig = field(default_factory=LabelsConfig, metadata=IDENTITY_IF_CONDITIONAL)
    seed: int = 0
    device: str = field(default="auto", metadata=NOT_IDENTITY | rule(
        lambda d: d in ("auto", "cpu", "cuda") or d.startswith("cuda:"), "must be auto, cpu, cuda or cuda:N"))
    run_dir: str = field(default="runs/default", metadata=NOT_IDENTITY)

    @property
    def prior_dim(self) -> int:
        return self.model.latent_dim if self.prior.dim is None else self.prior.dim

    @property
    def conditional(self) -> bool:
        return self.model.name in CONDITIONAL_MODELS

    def check(self, prefix: str) -> None:
        """The rules across sections, each section being checked already; messages name the key."""
        from trip.models.architectures import check_image_size

        sizes = known_split_sizes(self.data)  # loader option values and the batch size, before any data is read
        if sizes is not None and self.train.batch_size > sizes[0]:
            raise ConfigError(f"train.batch_size: {self.train.batch_size} exceeds the {sizes[0]} training images")
        try:
            check_image_size(self.model.arch, self.data.image_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None  # the message names data.image_size
        if self.model.name in GAN_MODELS and self.eval.reversal_examples < self.model.latent_dim:
            raise ConfigError(
                f"eval.reversal_examples: {self.eval.reversal_examples} codes give a singular code matrix "
                f"in {self.model.latent_dim} dimensions (PAG = inf); use at least model.latent_dim")
        if self.prior.dim is not None and self.prior.dim != self.model.latent_dim:
            raise ConfigError(f"prior.dim: {self.prior.dim} does not match model.latent_dim {self.model.latent_dim}")
        known = static_attributes(self.data.name)
        unknown = [n for n in self.labels.attributes or [] if known is not None and n not in known]
        if unknown:
            raise ConfigError(f"labels.attributes: {unknown[0]!r} is not an attribute of {self.data.name} "
                              f"(has: {', '.join(known)})")
        wanted = CONDITIONAL_MODELS.get(self.model.name)
        if wanted is not None and self.prior.name != wanted:
            raise ConfigError(f"prior.name: {self.model.name} is built with the {wanted!r} prior, "
                              f"got {self.prior.name!r}")


# -- reading ---------------------------------------------------------------------------
def load_config(raw: dict | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build and validate a RunConfig from a nested dict and ``key.path=value`` overrides."""
    return build_with_overrides(RunConfig, raw, overrides)


def build_with_overrides(cls, raw: dict | None, overrides: list[str] | None = None):
    """``build_dataclass`` of a copy of ``raw`` with ``key.path=value`` overrides applied first."""
    raw = json.loads(json.dumps(raw or {}))  # a deep copy with plain types
    for item in overrides or []:
        apply_override(raw, item)
    return build_dataclass(cls, raw, "")


def read_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    from trip.io import read_yaml_mapping  # trip.io imports this module

    raw = read_yaml_mapping(path, "config file")
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
    """A dataclass instance from a nested dict, type-checked and validated as it is built: each value
    against its field's ``rule``, then the section's ``check`` hook; errors name the dotted key."""
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
            continue
        values[name] = value = _check_type(key, value, kind)
        test, wording = fields[name].metadata.get("rule", (None, None))
        if test is not None and value is not None and not test(value):
            raise ConfigError(f"{key}: {wording}, got {value!r}")
    section = cls(**values)
    if hasattr(section, "check"):
        section.check(prefix)
    return section


def validate(cfg, prefix: str = "") -> None:
    """Check a config section built in code as ``build_dataclass`` checks one read from a dict."""
    build_dataclass(type(cfg), dataclasses.asdict(cfg), prefix)


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


# -- dataset facts used by the checks -------------------------------------------------
def static_attributes(dataset: str) -> tuple[str, ...] | None:
    """A dataset's attribute names when they are fixed by its loader; None when they come from its files."""
    from trip.data import celeba, shapes

    return {"shapes": shapes.ATTRIBUTES, "celeba": celeba.ATTRIBUTES}.get(dataset)


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


# -- identity --------------------------------------------------------------------------
def to_dict(cfg: RunConfig) -> dict:
    """The config as plain data; ``labels`` only for conditional models, so other runs keep their hash."""
    content = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("identity") == "conditional" and not cfg.conditional:
            content.pop(f.name)
    return content


def config_hash(cfg: RunConfig) -> str:
    """Content hash of everything that changes the result, as each field declares (see NOT_IDENTITY)."""
    content = _identity(cfg, cfg.conditional)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _identity(section, conditional: bool) -> dict:
    """The fields of a config section that are part of the run's identity, as plain data."""
    content = {}
    for f in dataclasses.fields(section):
        kind, value = f.metadata.get("identity", "always"), getattr(section, f.name)
        if kind == "never" or (kind == "conditional" and not conditional):
            continue
        if kind == "if_set" and value == _default(f):
            continue
        content[f.name] = _identity(value, conditional) if dataclasses.is_dataclass(value) else value
    return content


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
