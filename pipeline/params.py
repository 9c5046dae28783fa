"""``params.yaml``: read once, validated, resolved into the run configs of the grid.

Everything that can be wrong in ``params.yaml`` or in the profile it names is
found here, before any stage trains or evaluates anything, and the message
names the key (``compute.cpus_per_run: must be > 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.ray_runner import ComputeConfig, check_ray_device
from pipeline.tracking import TrackingParams  # the tracking section; validated as it is built
from trip.config import ConfigError, RunConfig, build_dataclass, rule
from trip.io import read_yaml_mapping
from trip.profiles import read_profile, resolve, runs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SEEDS = rule(lambda s: s and all(type(v) is int for v in s), "must be a non-empty list of integers")


@dataclass
class PipelineParams:
    profile: str = "shapes"  # configs/<profile>.yaml
    seeds: list = field(default_factory=lambda: [0], metadata=SEEDS)
    # the conditional experiment's seeds (Table 3)
    secondary_seeds: list = field(default_factory=lambda: [0], metadata=SEEDS)
    models: list | None = None  # a subset of the profile's models; default all
    priors: list | None = None  # a subset of the profile's prior variants; default all
    overrides: list = field(default_factory=list)  # key=value applied to every run, e.g. "train.steps=100"
    conditional_overrides: list = field(default_factory=list)  # key=value on the profile's conditional section
    induced_overrides: list = field(default_factory=list)  # key=value on the profile's induced section
    run_root: str = "runs"
    eval_root: str = "evals"
    report_root: str = "reports"
    plots_root: str = "plots"  # training curves as CSV, declared as DVC plots
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    tune: dict = field(default_factory=dict)  # the Optuna study: pipeline.tune.TuneParams

    def check(self, prefix: str) -> None:
        from pipeline.tune import tune_params  # optuna loads only here

        tune_params(self.tune)  # every stage fails on a bad tune section, not only the tune stage


@dataclass
class Grid:
    """The validated pipeline: its params, its profile and one RunConfig per run."""

    params: PipelineParams
    profile: dict
    runs: dict[str, RunConfig]  # label "model-prior-sS" -> config

    def eval_dir(self, label: str) -> Path:
        return PROJECT_ROOT / self.params.eval_root / self.profile["name"] / label

    @property
    def experiment(self) -> str:
        return self.params.tracking.experiment or self.profile["name"]


def load_params(path: str | Path = PROJECT_ROOT / "params.yaml") -> Grid:
    raw = read_yaml_mapping(path, "params file")
    return resolve_grid(build_dataclass(PipelineParams, raw))  # validated as it is built


def _override_conditional(profile: dict, overrides: list) -> None:
    """Apply ``conditional_overrides`` to the profile's conditional section and validate it again."""
    from trip.config import apply_override
    from trip.profiles import conditional_section

    if not overrides:
        return
    if "conditional" not in profile:
        raise ConfigError(f"conditional_overrides: profile {profile['name']!r} has no conditional section")
    for item in overrides:
        apply_override(profile["conditional"], str(item))
    conditional_section(profile)


def resolve_grid(params: PipelineParams) -> Grid:
    profile = read_profile(PROJECT_ROOT / "configs" / f"{params.profile}.yaml")
    for key in ("models", "priors"):
        chosen = getattr(params, key)
        unknown = [n for n in chosen or [] if n not in profile[key]]
        if unknown:
            raise ConfigError(f"{key}: {unknown[0]!r} is not in profile {params.profile!r} ({', '.join(profile[key])})")
    _override_conditional(profile, params.conditional_overrides)
    if "induced" in profile:  # the induced stage's settings fail here too, not after training
        from trip.induced import load_induced_config

        load_induced_config(profile["induced"], [str(o) for o in params.induced_overrides])
    grid = {}
    root = PROJECT_ROOT / params.run_root
    for model, prior, seed in runs(profile, params.seeds):
        if (params.models and model not in params.models) or (params.priors and prior not in params.priors):
            continue
        cfg = resolve(profile, model, prior, seed, root, [str(o) for o in params.overrides])
        # Every stage runs these as Ray tasks: a device they cannot use fails here, before Ray starts.
        check_ray_device(cfg.device, params.compute.gpus_per_run, f" (run {model}-{prior}-s{seed})")
        grid[f"{model}-{prior}-s{seed}"] = absolute_paths(cfg)
    return Grid(params, profile, grid)


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its data and FID-statistics directories made absolute against the project root,
    for every run a stage hands to Ray: its workers need not share the driver's working directory."""
    cfg.data.prepared_root = str(PROJECT_ROOT / cfg.data.prepared_root)
    cfg.eval.fid_stats_dir = str(PROJECT_ROOT / cfg.eval.fid_stats_dir)
    return cfg
