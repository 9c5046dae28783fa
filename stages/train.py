"""DVC stage ``train``: every (model, prior, seed) run of the grid, in parallel through Ray.

    python -m stages.train [--params params.yaml]

Each run is a Ray task with ``compute.cpus_per_run`` / ``compute.gpus_per_run``.
Run directories are content-hashed by their configs: a complete one is skipped,
a killed one resumes. Every run is logged to MLflow as a child of this repro's
parent run (:mod:`pipeline.repro`), and its training curves are written to
``plots/<profile>/`` for ``dvc plots``. With ``tracking.system_metrics`` on, each
run's child is opened before it trains and MLflow's system metrics of the
machine that trains it (CPU, memory, disk, network, GPU) are logged into it
every ``tracking.system_metrics_interval`` seconds. A failed run does not stop
the others; its child ends FAILED and the stage then exits non-zero naming it.
"""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import PROJECT_ROOT, Grid
from pipeline.ray_runner import ray_session, run_all
from pipeline.repro import stage_parent
from pipeline.tracking import SystemMetrics, Tracker
from stages.common import finish, start, tracker_for
from trip.config import RunConfig
from trip.io import read_metrics

log = logging.getLogger("stages.train")


@dataclass(frozen=True)
class Job:
    """One Ray task: train ``cfg``, sampling system metrics into ``system_metrics`` (None: off)."""

    cfg: RunConfig
    system_metrics: SystemMetrics | None = None


def train_one(job: Job) -> dict:
    """Runs in a Ray worker."""
    from pipeline.tracking import system_metrics
    from trip.train import run

    with system_metrics(job.system_metrics):
        result = run(job.cfg, progress=False)
    return {"run_dir": str(result.run_dir), "skipped": result.skipped, "wall_seconds": result.wall_seconds}


def open_runs(grid: Grid, tracker: Tracker, parent: str) -> dict[str, SystemMetrics]:
    """With ``tracking.system_metrics`` on: each run's child, opened RUNNING before it trains; by label."""
    from trip.config import config_hash, to_dict

    settings = grid.params.tracking
    if not settings.system_metrics:
        return {}
    targets = {}
    for label, cfg in grid.runs.items():
        config = {**to_dict(cfg), "config_hash": config_hash(cfg)}  # what training writes to config.yaml
        run_id = tracker.open_run(parent, config, Path(cfg.run_dir).name, "train")
        targets[label] = SystemMetrics(tracker.uri, run_id, settings.system_metrics_interval)
    return targets


def write_plot(run_dir: Path, out: Path) -> None:
    """metrics.jsonl as a CSV (one column per metric) for `dvc plots`."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    tracker = tracker_for(grid)
    with stage_parent(tracker, grid.experiment) as parent:
        monitored, logged = open_runs(grid, tracker, parent), set()
        try:
            jobs = [Job(cfg, monitored.get(label)) for label, cfg in grid.runs.items()]
            with ray_session(grid.params.compute, PROJECT_ROOT):
                report = run_all(train_one, jobs, grid.params.compute, labels=list(grid.runs))
            for label, result in report.results.items():
                run_dir = Path(result["run_dir"])
                write_plot(run_dir, PROJECT_ROOT / grid.params.plots_root / grid.profile["name"] / f"{label}.csv")
                tracker.log_run(parent, run_dir, "train")  # ends the child FINISHED
                logged.add(label)
                log.info("%s: %s (%.0fs)", label, "already complete" if result["skipped"] else "trained",
                         result["wall_seconds"])
        finally:  # children opened for runs that failed, or that a failure or Ctrl-C left unlogged
            status = "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED"
            for label in sorted(set(monitored) - logged):
                tracker.end_run(monitored[label].run_id, status)
        log.info("train: %d runs in %.0fs wall time", len(grid.runs), report.wall_seconds)
        finish("train", report)


if __name__ == "__main__":
    main()
