"""What every stage does the same way: read params, log, track, and end on failures."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.params import PROJECT_ROOT, Grid, load_params
from pipeline.ray_runner import PipelineError, RunReport
from pipeline.tracking import Tracker
from trip.config import ConfigError

log = logging.getLogger("stages")


def start(doc: str, argv=None) -> Grid:
    """Parse ``--params``, set up logging, and return the validated grid.

    A bad params file ends the stage here (exit status 2, the key named, no traceback),
    before Ray starts or any data is touched.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(PROJECT_ROOT / "params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return load_params(args.params)
    except ConfigError as err:
        parser.exit(2, f"error in {args.params}: {err}\n")


def tracker_for(grid: Grid) -> Tracker:
    return Tracker(PROJECT_ROOT, uri=grid.params.tracking.uri)


def finish(stage: str, report: RunReport) -> None:
    """After every run has finished: exit non-zero naming the failed ones, with their tracebacks.

    The exit ends the stage's ``stage_parent`` block, which closes the MLflow parent FAILED.
    """
    if not report.failures:
        return
    for label, failure in report.failures.items():
        log.error("%s failed:\n%s", label, failure.traceback)
    try:
        report.raise_if_failed()
    except PipelineError as err:
        sys.exit(f"{stage} stage: {err}")
