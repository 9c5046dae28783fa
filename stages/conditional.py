"""DVC stage ``conditional``: generation with missing conditions (paper Sec. 4, Table 3), through Ray.

    python -m stages.conditional [--params params.yaml]

For the profile's ``conditional`` section (see :mod:`trip.profiles`): the
attribute classifier and every (method, fraction of hidden labels, seed) run
train as Ray tasks, then every run is evaluated as a Ray task: samples for each
partial specification, judged by the classifier (violation rate, diversity).
Runs live in ``<run_root>/conditional/<profile>/`` (content-hashed, resumable,
skipped when complete, as in ``train``), evaluations in
``<eval_root>/conditional/<profile>/<run>/``. Every run is an MLflow child run
of this repro. A profile without a ``conditional`` section does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.params import PROJECT_ROOT, Grid, absolute_paths
from pipeline.ray_runner import ray_session, run_all
from pipeline.repro import stage_parent
from stages.common import finish, start, tracker_for
from trip.config import RunConfig

log = logging.getLogger("stages.conditional")


@dataclass(frozen=True)
class Job:
    """One Ray task of the stage: train the classifier, train a run, or evaluate a run."""

    kind: str  # classifier | train | evaluate
    cfg: RunConfig
    classifier_dir: Path
    eval_dir: Path | None = None
    settings: Any = None  # ClassifierSettings (classifier) or the ConditionalProfile (evaluate)


def run_job(job: Job) -> dict:
    """Runs in a Ray worker."""
    from trip.conditional import evaluate_conditional, train_classifier_cached
    from trip.train import resolve_device, run

    device = str(resolve_device(job.cfg.device))
    if job.kind == "classifier":
        info = train_classifier_cached(job.cfg, job.classifier_dir, job.settings, device)
        return {"summary": f"classifier: mean held-out accuracy {info['mean_accuracy']:.3f}"}
    if job.kind == "train":
        result = run(job.cfg, progress=False)
        return {"summary": "already complete" if result.skipped else f"trained in {result.wall_seconds:.0f}s"}
    job.eval_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate_conditional(job.cfg.run_dir, job.classifier_dir, job.settings.specs,
                                  job.settings.samples_per_spec, job.cfg.seed, out_dir=job.eval_dir, device=device)
    s = result["summary"]
    return {"summary": f"violated {s['violation_any']:.3f}, free-attribute entropy {s['diversity_mean']:.3f} bits"}


def conditional_jobs(grid: Grid) -> tuple[Job, dict[str, Job], dict[str, Job]] | None:
    """(classifier job, training jobs, evaluation jobs) by label; None without a conditional section."""
    from trip.profiles import classifier_dir, conditional_runs, conditional_section, resolve_conditional, run_name

    if "conditional" not in grid.profile:
        return None
    section = conditional_section(grid.profile)
    root = PROJECT_ROOT / grid.params.run_root / "conditional"
    classifier = classifier_dir(grid.profile, root)
    trains, evals = {}, {}
    for method, missing, seed in conditional_runs(grid.profile, grid.params.secondary_seeds):
        cfg = absolute_paths(resolve_conditional(grid.profile, method, missing, seed, root,
                                                 [str(o) for o in grid.params.overrides]))
        label = run_name(method, missing, seed)
        trains[label] = Job("train", cfg, classifier)
        evals[label] = Job("evaluate", cfg, classifier, eval_dir(grid, label), section)
    first = next(iter(trains.values())).cfg
    return Job("classifier", first, classifier, settings=section.classifier), trains, evals


def eval_dir(grid: Grid, label: str) -> Path:
    return PROJECT_ROOT / grid.params.eval_root / "conditional" / grid.profile["name"] / label


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    for root in (grid.params.run_root, grid.params.eval_root):  # the stage's DVC outputs, even when empty
        (PROJECT_ROOT / root / "conditional" / grid.profile["name"]).mkdir(parents=True, exist_ok=True)
    jobs = conditional_jobs(grid)
    if jobs is None:
        log.info("profile %s has no conditional section: nothing to do", grid.profile["name"])
        return
    classifier, trains, evals = jobs
    tracker = tracker_for(grid)
    with stage_parent(tracker, grid.experiment) as parent:
        with ray_session(grid.params.compute, PROJECT_ROOT):
            trained = run_all(run_job, [classifier, *trains.values()], grid.params.compute,
                              labels=["classifier", *trains])
            ready = {k: j for k, j in evals.items() if k in trained.results and "classifier" in trained.results}
            evaluated = run_all(run_job, list(ready.values()), grid.params.compute, labels=list(ready))
        for label, result in {**trained.results, **evaluated.results}.items():
            log.info("%s: %s", label, result["summary"])
        for label in evaluated.results:
            tracker.log_run(parent, evals[label].cfg.run_dir, "conditional", eval_dir=evals[label].eval_dir,
                            eval_name="cond_eval.json")
        trained.failures.update(evaluated.failures)
        finish("conditional", trained)


if __name__ == "__main__":
    main()
