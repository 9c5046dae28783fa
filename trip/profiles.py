"""Profiles: one YAML file describes every run of an experiment.

A profile has a ``base`` run config, per-model sections under ``models`` and
named prior variants under ``priors``. A run is (model, prior variant, seed);
its config is ``base``, then ``models[model]``, then ``{"prior": priors[variant]}``
merged in that order, so each model can carry its own latent size, learning
rate and TRIP core size (as in the paper) while the prior variants stay shared::

    base:   {data: {name: shapes}, train: {steps: 3000}}
    models: {vae: {model: {name: vae}}, wgan_gp: {model: {name: wgan_gp}, train: {lr: 1.0e-4}}}
    priors: {normal: {name: normal}, trip_learnable: {name: trip, learnable: true}}

A model section may also adjust a prior variant for that model alone under its
``priors`` key, merged over the variant, e.g. a GMM with K = d N components for
each model's latent size d::

    models: {wgan_gp: {model: {latent_dim: 128}, priors: {gmm_fixed: {n_components: 1280}}}}

An optional ``conditional`` section (:class:`ConditionalProfile`) describes the
paper's generation with missing conditions (Section 4): the conditional methods,
the fractions of hidden labels, the partial specifications to generate and the
attribute classifier that judges the samples. A conditional run is (method,
missing, seed); its config is ``base``, then ``{"model": {"name": method}}``,
then ``conditional.methods[method]``, then the labels::

    conditional:
      methods: {vae_trip_cond: {prior: {name: trip}}, cvae: {prior: {name: normal}}}
      missing: [0.0, 0.5, 0.9]
      specs: [{square: 1, large: 0}, {warm: 1}]
      samples_per_spec: 64
      classifier: {steps: 400}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from trip.config import (POSITIVE, ConfigError, RunConfig, build_dataclass, is_number, load_config, rule,
                         static_attributes)
from trip.io import read_yaml_mapping

SECTIONS = ("base", "models", "priors", "name", "conditional", "induced")  # induced: trip.induced.InducedConfig


@dataclass
class ClassifierSettings:
    """The CNN that reads attributes off generated images (:mod:`trip.metrics.conditional`)."""

    steps: int = field(default=800, metadata=POSITIVE)
    batch_size: int = field(default=64, metadata=POSITIVE)
    lr: float = field(default=3e-3, metadata=POSITIVE)
    seed: int = 0


def _overrides_by_method(methods: dict) -> bool:
    return bool(methods) and all(isinstance(v, dict) for v in methods.values())


def _distinct_fractions(levels: list) -> bool:
    return bool(levels) and all(is_number(m) and 0 <= m <= 1 for m in levels) and len(set(levels)) == len(levels)


@dataclass
class ConditionalProfile:
    # method name -> run-config overrides, merged over base
    methods: dict = field(
        metadata=rule(_overrides_by_method, "needs a non-empty mapping of method -> run-config overrides"))
    # labels.missing of the runs
    missing: list = field(default_factory=lambda: [0.0, 0.5, 0.9],
                          metadata=rule(_distinct_fractions, "needs distinct fractions in [0, 1]"))
    attributes: list | None = None  # labels.attributes of every run; null: all of the dataset's
    specs: list = field(default_factory=list)  # partial specifications, {attribute: value}, the rest free
    samples_per_spec: int = field(default=64, metadata=POSITIVE)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)


def read_profile(path: str | Path) -> dict:
    path = Path(path)
    profile = read_yaml_mapping(path, "profile")
    unknown = sorted(set(profile) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown profile section in {path} (known: {', '.join(SECTIONS)})")
    for section in ("models", "priors"):
        if not isinstance(profile.get(section), dict) or not profile[section]:
            raise ConfigError(f"{section}: profile {path} needs a non-empty mapping of {section}")
    _check_model_prior_variants(profile)
    profile.setdefault("name", path.stem)
    if "conditional" in profile:
        conditional_section(profile)  # fail on a bad section now, not after the first runs
    return profile


def _check_model_prior_variants(profile: dict) -> None:
    for model, section in profile["models"].items():
        variants = section.get("priors", {}) if isinstance(section, dict) else {}
        if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
            raise ConfigError(f"models.{model}.priors: needs a mapping of prior variant -> prior overrides")
        unknown = sorted(set(variants) - set(profile["priors"]))
        if unknown:
            raise ConfigError(f"models.{model}.priors.{unknown[0]}: not a prior variant of the profile "
                              f"(has: {', '.join(profile['priors'])})")


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; values of ``update`` win."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(profile: dict, model: str, prior: str, seed: int, run_root: str | Path = "runs",
            overrides: list[str] | None = None) -> RunConfig:
    """The validated RunConfig of one (model, prior variant, seed) of a profile."""
    for key, name in (("models", model), ("priors", prior)):
        if name not in profile[key]:
            raise ConfigError(f"{key}.{name}: not in profile {profile['name']!r} (has: {', '.join(profile[key])})")
    section = dict(profile["models"][model])
    variant = merge(profile["priors"][prior], section.pop("priors", {}).get(prior, {}))
    raw = merge(merge(profile.get("base", {}), section), {"prior": variant, "seed": seed})
    raw.setdefault("run_dir", str(Path(run_root) / profile["name"] / f"{model}-{prior}-s{seed}"))
    return load_config(raw, overrides)


def runs(profile: dict, seeds: list[int]) -> list[tuple[str, str, int]]:
    """Every (model, prior variant, seed) of the profile, in a stable order."""
    return [(m, p, s) for m in profile["models"] for p in profile["priors"] for s in seeds]


# -- conditional generation ------------------------------------------------------------
def conditional_section(profile: dict) -> ConditionalProfile:
    """The profile's validated ``conditional`` section; errors name ``conditional.<key>``."""
    if "conditional" not in profile:
        raise ConfigError(f"conditional: profile {profile['name']!r} has no conditional section")
    section = build_dataclass(ConditionalProfile, profile["conditional"], "conditional.")
    _check_specs(section, profile.get("base", {}).get("data", {}).get("name", "shapes"))
    return section


def _check_specs(section: ConditionalProfile, dataset: str) -> None:
    known = section.attributes or static_attributes(dataset)
    if not section.specs:
        raise ConfigError("conditional.specs: needs at least one specification")
    for i, spec in enumerate(section.specs):
        key = f"conditional.specs.{i}"
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"{key}: must be a non-empty mapping of attribute -> value, got {spec!r}")
        for name, value in spec.items():
            if known is not None and name not in known:
                raise ConfigError(f"{key}.{name}: not an attribute of the runs (have: {', '.join(known)})")
            if type(value) is not int or value not in (0, 1):
                raise ConfigError(f"{key}.{name}: must be 0 or 1, got {value!r}")


def run_name(method: str, missing: float, seed: int) -> str:
    """``cond-<method>-miss<percent hidden>-s<seed>``, e.g. cond-cvae-miss50-s0."""
    return f"cond-{method}-miss{missing * 100:g}-s{seed}"


def resolve_conditional(profile: dict, method: str, missing: float, seed: int, run_root: str | Path = "runs",
                        overrides: list[str] | None = None) -> RunConfig:
    """The validated RunConfig of one (method, missing, seed) of the profile's conditional section."""
    section = conditional_section(profile)
    if method not in section.methods:
        raise ConfigError(f"conditional.methods.{method}: not in profile {profile['name']!r} "
                          f"(has: {', '.join(section.methods)})")
    raw = merge(profile.get("base", {}), {"model": {"name": method}})
    raw = merge(raw, section.methods[method])
    raw = merge(raw, {"labels": {"missing": missing, "attributes": section.attributes}, "seed": seed})
    raw.setdefault("run_dir", str(Path(run_root) / profile["name"] / run_name(method, missing, seed)))
    cfg = load_config(raw, overrides)
    if not cfg.conditional:
        raise ConfigError(f"conditional.methods.{method}: model.name {cfg.model.name!r} is not a conditional model")
    return cfg


def conditional_runs(profile: dict, seeds: list[int]) -> list[tuple[str, float, int]]:
    """Every (method, missing, seed) of the conditional section, in a stable order."""
    section = conditional_section(profile)
    return [(m, f, s) for m in section.methods for f in section.missing for s in seeds]


def classifier_dir(profile: dict, run_root: str | Path = "runs") -> Path:
    """Where the profile's attribute classifier lives: one per profile (its data and settings)."""
    return Path(run_root) / profile["name"] / "cond-classifier"
