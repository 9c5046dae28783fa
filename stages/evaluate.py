"""DVC stage ``evaluate``: every trained run of the grid, in parallel through Ray.

    python -m stages.evaluate [--params params.yaml]

Results go to ``evals/<profile>/<run>/`` (eval.json and figures), never into
the training outputs; parts whose inputs are unchanged are reused. Each run's
evaluation is added to its MLflow run, under this repro's parent (:mod:`pipeline.repro`).
"""

from __future__ import annotations

import logging

from pipeline.params import PROJECT_ROOT
from pipeline.ray_runner import ray_session, run_all
from pipeline.repro import stage_parent
from stages.common import finish, start, tracker_for

log = logging.getLogger("stages.evaluate")


def evaluate_one(job: tuple) -> dict:
    """Runs in a Ray worker."""
    from trip.evaluate import evaluate, summary_line

    cfg, out_dir = job
    return {"summary": summary_line(evaluate(cfg.run_dir, cfg.eval, cfg.device, progress=False, out_dir=out_dir))}


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    tracker = tracker_for(grid)
    with stage_parent(tracker, grid.experiment) as parent:
        jobs = [(cfg, grid.eval_dir(label)) for label, cfg in grid.runs.items()]
        with ray_session(grid.params.compute, PROJECT_ROOT):
            report = run_all(evaluate_one, jobs, grid.params.compute, labels=list(grid.runs))
        for label, result in report.results.items():
            tracker.log_run(parent, grid.runs[label].run_dir, "evaluate", eval_dir=grid.eval_dir(label))
            log.info("%s: %s", label, result["summary"])
        finish("evaluate", report)


if __name__ == "__main__":
    main()
