"""What every stage does the same way: read params, log, track, and end on failures."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.params import PROJECT_ROOT, Grid, load_params
from pipeline.ray_runner import PipelineError, RunReport
from pipeline.repro import close_parent
from pipeline.tracking import Tracker

log = logging.getLogger("stages")


def start(doc: str, argv=None) -> Grid:
    """Parse ``--params``, set up logging, and return the validated grid."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(PROJECT_ROOT / "params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return load_params(args.params)


def tracker_for(grid: Grid) -> Tracker:
    return Tracker(PROJECT_ROOT, uri=grid.params.tracking.uri)


def finish(stage: str, report: RunReport, grid: Grid, tracker: Tracker) -> None:
    """After every run has finished: exit non-zero naming the failed ones, with their tracebacks."""
    if not report.failures:
        return
    close_parent(tracker, grid.experiment, "FAILED")
    for label, failure in report.failures.items():
        log.error("%s failed:\n%s", label, failure.traceback)
    try:
        report.raise_if_failed()
    except PipelineError as err:
        sys.exit(f"{stage} stage: {err}")
