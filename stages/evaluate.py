"""DVC stage ``evaluate``: every trained run of the grid, in parallel through Ray.

    python -m stages.evaluate [--params params.yaml]

Results go to ``evals/<profile>/<run>/`` (eval.json and figures), never into
the training outputs; parts whose inputs are unchanged are reused. Each run's
evaluation is added to its MLflow run.
"""

from __future__ import annotations

import argparse
import sys
import logging

from pipeline.params import PROJECT_ROOT, load_params
from pipeline.ray_runner import PipelineError, ray_session, run_all
from pipeline.repro import close_parent, current_parent
from stages.train import tracker_for

log = logging.getLogger("stages.evaluate")


def evaluate_one(job: tuple) -> dict:
    """Runs in a Ray worker."""
    from trip.evaluate import evaluate, summary_line

    cfg, out_dir = job
    return {"summary": summary_line(evaluate(cfg.run_dir, cfg.eval, cfg.device, progress=False, out_dir=out_dir))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(PROJECT_ROOT / "params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    grid = load_params(args.params)
    tracker = tracker_for(grid)
    parent = current_parent(tracker, grid.experiment)
    jobs = [(cfg, grid.eval_dir(label)) for label, cfg in grid.runs.items()]
    with ray_session(grid.params.compute, PROJECT_ROOT):
        report = run_all(evaluate_one, jobs, grid.params.compute, labels=list(grid.runs))
    for label, result in report.results.items():
        tracker.log_run(parent, grid.runs[label].run_dir, "evaluate", eval_dir=grid.eval_dir(label))
        log.info("%s: %s", label, result["summary"])
    if report.failures:
        close_parent(tracker, grid.experiment, "FAILED")
        try:
            report.raise_if_failed()
        except PipelineError as err:  # the others finished; name the failed runs and exit non-zero
            for label, failure in report.failures.items():
                log.error("%s failed:\n%s", label, failure.traceback)
            sys.exit(f"evaluate stage: {err}")


if __name__ == "__main__":
    main()
