"""DVC stage ``train``: every (model, prior, seed) run of the grid, in parallel through Ray.

    python -m stages.train [--params params.yaml]

Each run is a Ray task with ``compute.cpus_per_run`` / ``compute.gpus_per_run``.
Run directories are content-hashed by their configs: a complete one is skipped,
a killed one resumes. Every run is logged to MLflow as a child of this repro's
parent run, and its training curves are written to ``plots/<profile>/`` for
``dvc plots``. A failed run does not stop the others; the stage then exits
non-zero naming it.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from pipeline.params import PROJECT_ROOT
from pipeline.ray_runner import ray_session, run_all
from pipeline.repro import current_parent
from stages.common import finish, start, tracker_for

log = logging.getLogger("stages.train")


def train_one(cfg) -> dict:
    """Runs in a Ray worker."""
    from trip.train import run

    result = run(cfg, progress=False)
    return {"run_dir": str(result.run_dir), "skipped": result.skipped, "wall_seconds": result.wall_seconds}


def write_plot(run_dir: Path, out: Path) -> None:
    """metrics.jsonl as a CSV (one column per metric) for `dvc plots`."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    tracker = tracker_for(grid)
    parent = current_parent(tracker, grid.experiment)
    with ray_session(grid.params.compute, PROJECT_ROOT):
        report = run_all(train_one, list(grid.runs.values()), grid.params.compute, labels=list(grid.runs))
    for label, result in report.results.items():
        run_dir = Path(result["run_dir"])
        write_plot(run_dir, PROJECT_ROOT / grid.params.plots_root / grid.profile["name"] / f"{label}.csv")
        tracker.log_run(parent, run_dir, "train")
        log.info("%s: %s (%.0fs)", label, "already complete" if result["skipped"] else "trained",
                 result["wall_seconds"])
    log.info("train: %d runs in %.0fs wall time", len(grid.runs), report.wall_seconds)
    finish("train", report, grid, tracker)


if __name__ == "__main__":
    main()
