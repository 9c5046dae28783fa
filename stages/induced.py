"""DVC stage ``induced``: data-induced priors for a trained GAN (Kilcher et al., ICLR 2018 submission), through Ray.

    python -m stages.induced [--params params.yaml]

The profile's ``induced`` section (:class:`trip.induced.InducedConfig`, with
``params.induced_overrides`` applied) names the source GAN run of the ``train``
stage. Each kind -- ``pgan`` (a secondary GAN over the reversed codes),
``trip`` (a TRIP fitted to them by maximum likelihood) and ``original`` (the
run's own prior: the control that trains as long) -- is one Ray task: reverse
training images into codes, score PAG and FID, fit the prior, continue training,
score again. Results go to ``<eval_root>/induced/<profile>/`` (the source run is
only read); each kind is an MLflow child run of this repro. A profile without an
``induced`` section does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import PROJECT_ROOT, Grid
from pipeline.ray_runner import ray_session, run_all
from pipeline.repro import stage_parent
from stages.common import finish, start, tracker_for

log = logging.getLogger("stages.induced")


@dataclass(frozen=True)
class Job:
    source: Path
    kind: str
    cfg: object  # trip.induced.InducedConfig
    out_dir: Path
    device: str


def run_job(job: Job) -> dict:
    """Runs in a Ray worker."""
    from trip.induced import run_induced, summary_line

    return {"summary": summary_line(run_induced(job.source, job.kind, job.cfg, job.out_dir, job.device))}


def induced_jobs(grid: Grid) -> dict[str, Job] | None:
    """One job per kind, by label; None when the profile has no ``induced`` section."""
    from trip.induced import KINDS, load_induced_config, source_run_dir

    if "induced" not in grid.profile:
        return None
    cfg = load_induced_config(grid.profile["induced"], [str(o) for o in grid.params.induced_overrides])
    source = source_run_dir(PROJECT_ROOT / grid.params.run_root, grid.profile["name"], cfg)
    label = source.name
    if label not in grid.runs:
        log.warning("induced: the source run %s is not in this grid (params models/priors/seeds leave it out); "
                    "set induced_overrides source_model/source_prior/seed to one that is", label)
        return {}
    out_dir = out_root(grid)
    return {f"{label}-{kind}": Job(source, kind, cfg, out_dir, grid.runs[label].device) for kind in KINDS}


def out_root(grid: Grid) -> Path:
    return PROJECT_ROOT / grid.params.eval_root / "induced" / grid.profile["name"]


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    out_root(grid).mkdir(parents=True, exist_ok=True)  # the stage's DVC output, even when empty
    jobs = induced_jobs(grid)
    if not jobs:
        log.info("profile %s: no induced-prior experiment to run", grid.profile["name"])
        return
    tracker = tracker_for(grid)
    with stage_parent(tracker, grid.experiment) as parent:
        with ray_session(grid.params.compute, PROJECT_ROOT):
            report = run_all(run_job, list(jobs.values()), grid.params.compute, labels=list(jobs))
        for label, result in report.results.items():
            log.info("%s: %s", label, result["summary"])
            job = jobs[label]
            tracker.log_result(parent, job.out_dir / f"induced_{job.kind}.json", job.source, "induced", label,
                               [job.out_dir / f"induced_{job.kind}_samples.png"])
        finish("induced", report)


if __name__ == "__main__":
    main()
