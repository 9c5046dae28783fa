"""Profiles: one YAML file describes every run of an experiment.

A profile has a ``base`` run config, per-model sections under ``models`` and
named prior variants under ``priors``. A run is (model, prior variant, seed);
its config is ``base``, then ``models[model]``, then ``{"prior": priors[variant]}``
merged in that order, so each model can carry its own latent size, learning
rate and TRIP core size (as in the paper) while the prior variants stay shared::

    base:   {data: {name: shapes}, train: {steps: 3000}}
    models: {vae: {model: {name: vae}}, wgan_gp: {model: {name: wgan_gp}, train: {lr: 1.0e-4}}}
    priors: {normal: {name: normal}, trip_learnable: {name: trip, learnable: true}}
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from trip.config import ConfigError, RunConfig, load_config

SECTIONS = ("base", "models", "priors", "name")


def read_profile(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"profile {path} does not exist")
    profile = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(profile) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown profile section in {path} (known: {', '.join(SECTIONS)})")
    for section in ("models", "priors"):
        if not isinstance(profile.get(section), dict) or not profile[section]:
            raise ConfigError(f"{section}: profile {path} needs a non-empty mapping of {section}")
    profile.setdefault("name", path.stem)
    return profile


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
    raw = merge(profile.get("base", {}), profile["models"][model])
    raw = merge(raw, {"prior": profile["priors"][prior], "seed": seed})
    raw.setdefault("run_dir", str(Path(run_root) / profile["name"] / f"{model}-{prior}-s{seed}"))
    return load_config(raw, overrides)


def runs(profile: dict, seeds: list[int]) -> list[tuple[str, str, int]]:
    """Every (model, prior variant, seed) of the profile, in a stable order."""
    return [(m, p, s) for m in profile["models"] for p in profile["priors"] for s in seeds]
