"""DVC stage ``tune``: an Optuna study over TRIP's N (components per dimension) and m (core size).

    python -m stages.tune [--params params.yaml] [--tune-config tune.yaml]

The settings (:class:`pipeline.tune.TuneParams`) come from ``--tune-config`` (a
YAML file of those fields) or else from a top-level ``tune:`` mapping of the
params file; without either, the defaults. Every trial trains the profile's
``tune.model`` / ``tune.prior`` run with ``params.overrides``, then the trial's
N, m (and latent size) and ``train.steps=tune.steps``, into
``<run_root>/tune/<study>/trial-<number>``. Trials run as Ray tasks, the study
lives in ``tune.storage`` (SQLite) and resumes when the stage runs again; each
trial is an MLflow run under a ``tune`` parent in experiment ``<experiment>-tune``.
The report goes to ``<report_root>/tuning/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from optuna.trial import FrozenTrial

from pipeline.params import PROJECT_ROOT, Grid, absolute_paths
from pipeline.ray_runner import check_ray_device, ray_session
from pipeline.tracking import PARENT_TAG, Tracker, config_params, run_tags, training_metrics
from pipeline.tune import Objective, TuneParams, objective_for, open_study, run_study, tune_params, write_tuning_report
from stages.common import start, tracker_for
from trip.config import ConfigError, RunConfig
from trip.io import read_yaml_mapping
from trip.profiles import resolve

log = logging.getLogger("stages.tune")


def load(argv=None) -> tuple[Grid, TuneParams]:
    """The grid (through :func:`stages.common.start`) and the tune settings.

    The settings are the ``tune:`` section of the params file, or ``--tune-config PATH``.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--tune-config", default=None)
    args, rest = parser.parse_known_args(argv)
    grid = start(__doc__, rest)
    section = read_yaml_mapping(args.tune_config, "tune config") if args.tune_config else grid.params.tune
    return grid, tune_params(section)


def study_name(grid: Grid, tune: TuneParams) -> str:
    return tune.study_name or f"{grid.profile['name']}-{tune.model}-{tune.prior}"


def config_factory(grid: Grid, tune: TuneParams, trial_root: Path):
    """``make(overrides, dir_name) -> RunConfig`` for the trials of this grid."""
    def make(overrides: dict, dir_name: str) -> RunConfig:
        extra = [f"{k}={v}" for k, v in overrides.items()]
        extra += [f"train.steps={tune.steps}", f"run_dir={trial_root / dir_name}"]
        return absolute_paths(resolve(grid.profile, tune.model, tune.prior, tune.seed, trial_root,
                                      [str(o) for o in grid.params.overrides] + extra))

    return make


def check_objective(grid: Grid, tune: TuneParams, make) -> Objective:
    """The objective of the tuned model (with a TRIP prior); bad settings fail before any trial starts,
    and before Ray does: a ``device`` no trial's Ray task could use, too."""
    for key, section in (("model", "models"), ("prior", "priors")):
        if getattr(tune, key) not in grid.profile[section]:
            raise ConfigError(f"tune.{key}: {getattr(tune, key)!r} is not in profile {grid.profile['name']!r} "
                              f"({', '.join(grid.profile[section])})")
    cfg = make({}, "check")
    check_ray_device(cfg.device, grid.params.compute.gpus_per_run, " (tune trials)")
    if cfg.prior.name != "trip":
        raise ConfigError(f"tune.prior: {tune.prior!r} is a {cfg.prior.name} prior; N and m are TRIP's")
    return objective_for(cfg.model.name)


def trial_logger(tracker: Tracker, parent: str, study: str, objective: Objective):
    """Log a finished trial as an MLflow run, keyed by study and trial number so re-logging updates it."""
    def log_trial(trial: FrozenTrial, cfg: RunConfig) -> None:
        run_dir = Path(cfg.run_dir)
        config = read_yaml_mapping(run_dir / "config.yaml", "run config")
        tags = {**run_tags(config, "tune"), PARENT_TAG: parent, "study": study, "trial": str(trial.number),
                "trial_state": trial.state.name, "N": str(trial.params.get("n_components")),
                "m": str(trial.params.get("core_size"))}
        experiment_id = tracker.logger.run_state(parent)["experiment_id"]
        # Not keyed by config_hash as Tracker.log_run does: two trials may draw the same N and m.
        run_id, _ = tracker.logger.find_or_create_run(
            experiment_id, "tune_trial", f"{study}/{trial.number}", f"trial-{trial.number}", tags)
        train = training_metrics(run_dir / "metrics.jsonl")
        train += [(objective.metric, v, s) for s, v in sorted(trial.intermediate_values.items())]
        final = {"tune.value": trial.value} if trial.value is not None else {}
        tracker.logger.update_run(run_id, train, final, config_params(config), tags)
        tracker.logger.log_artifacts(run_id, [(str(p), None) for p in (run_dir / "config.yaml", run_dir / "samples.png")
                                              if p.is_file()])
        tracker.logger.set_terminated(run_id, "FINISHED" if trial.state.name != "FAIL" else "FAILED")

    return log_trial


def main(argv=None, pruner=None) -> None:
    """Run (or resume) the study and write its report; ``pruner`` replaces the MedianPruner."""
    grid, tune = load(argv)
    name = study_name(grid, tune)
    make = config_factory(grid, tune, PROJECT_ROOT / grid.params.run_root / "tune" / name)
    objective = check_objective(grid, tune, make)
    study = open_study(tune, PROJECT_ROOT / tune.storage, name, pruner, objective.direction)
    tracker = tracker_for(grid)
    parent = tracker.start_parent(f"{grid.experiment}-tune", f"tune {name}", {"stage": "tune", "study": name})
    status = "FAILED"
    try:
        with ray_session(grid.params.compute, PROJECT_ROOT):
            outcome = run_study(study, tune, make, grid.params.compute, trial_logger(tracker, parent, name, objective))
        status = "FAILED" if outcome.failed else "FINISHED"
    finally:
        tracker.end_parent(parent, status)
    out_dir = PROJECT_ROOT / grid.params.report_root / "tuning"
    write_tuning_report(study, out_dir, objective)
    log.info("tune: %d trials finished this session, report in %s", len(outcome.finished), out_dir)
    if outcome.failed:
        lines = "\n".join(f"  trial {n}: {err}" for n, err in outcome.failed.items())
        sys.exit(f"tune stage: {len(outcome.failed)} trials failed:\n{lines}")


if __name__ == "__main__":
    main()
