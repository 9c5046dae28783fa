"""Run identity is declared on each config field (issue 14): what ``config_hash`` covers, and that the
hashes of every run configured before the declarations (and before the GPU switches) stay the same."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from trip.config import RunConfig, config_hash, load_config, to_dict
from trip.profiles import conditional_runs, read_profile, resolve, resolve_conditional, runs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _profile_hashes() -> dict[str, str]:
    out = {}
    for name in ("shapes", "cifar10", "celeba64"):
        profile = read_profile(CONFIGS / f"{name}.yaml")
        for model, prior, seed in runs(profile, [0, 1]):
            out[f"{name}/{model}-{prior}-s{seed}"] = config_hash(resolve(profile, model, prior, seed))
        if "conditional" in profile:
            for method, missing, seed in conditional_runs(profile, [0]):
                out[f"{name}/cond-{method}-{missing}-s{seed}"] = config_hash(
                    resolve_conditional(profile, method, missing, seed))
    return out


def test_every_profile_run_keeps_the_hash_it_had_before_field_level_identity():
    """102 runs of the three profiles; the digest was taken with the hand-written exclusion lists."""
    hashes = _profile_hashes()
    assert len(hashes) == 102
    assert hashes["shapes/vae-trip_learnable-s0"] == "c5103962948dcffa"
    assert hashes["cifar10/wgan_gp-trip_learnable-s0"] == "e02d233f5abaecb6"
    assert hashes["celeba64/vae-normal-s1"] == "2b812f6bf6691a2d"
    assert hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16] == "e36741b30e14a8ce"


def _leaves(cfg) -> list[tuple[str, ...]]:
    """Dotted paths of every non-section field of the config."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out += [(f.name, *p) for p in _leaves(value)] if dataclasses.is_dataclass(value) else [(f.name,)]
    return out


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, 0]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return 1  # None


def _with(cfg, path: tuple[str, ...], value):
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _with(getattr(cfg, path[0]), path[1:], value)})


def _get(cfg, path):
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


OUTSIDE = {("run_dir",), ("device",), ("data", "prepared_root"), ("train", "log_every"), ("train", "checkpoint_every"),
           ("train", "fd_every"), ("train", "fd_samples"), ("train", "channels_last"), ("train", "cudnn_benchmark"),
           ("train", "compile"), ("train", "resident_data"), ("train", "deterministic")}


@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_each_field_is_in_the_identity_unless_it_declares_otherwise(model):
    cfg = load_config({"model": {"name": model}, "prior": {"name": "normal"}})
    digest = config_hash(cfg)
    for path in _leaves(cfg):
        moved = config_hash(_with(cfg, path, _changed(_get(cfg, path))))
        outside = path in OUTSIDE or path[0] == "eval" or (path[0] == "labels" and not cfg.conditional)
        assert (moved == digest) == outside, ".".join(path)


def test_a_numerics_switch_is_hashed_only_when_set():
    default = RunConfig()
    assert config_hash(load_config({"train": {"amp": "none"}})) == config_hash(default)
    assert config_hash(load_config({"train": {"amp": "bf16"}})) != config_hash(default)


def test_labels_are_written_and_hashed_for_conditional_models_only():
    assert "labels" not in to_dict(RunConfig())
    assert "labels" in to_dict(load_config({"model": {"name": "cvae"}, "prior": {"name": "normal"}}))
