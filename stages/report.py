"""DVC stage ``report``: the paper's tables, the figures index and ``metrics.json`` in ``reports/<profile>/``.

    python -m stages.report [--params params.yaml]

Tables 1 and 2 come from ``evaluate``; Table 3 from ``conditional`` and the
induced-prior table from ``induced``, when the profile has those sections.
``<report_root>/metrics_<profile>.json``, beside the report, is the stage's DVC
metrics file: tracked by git, so that every DVC experiment's commit holds its
metrics (``dvc exp show``, ``dvc exp diff``, ``dvc exp apply``). The index page
and the stage's last log line give the MLflow UI address of the profile's runs.
"""

from __future__ import annotations

import logging

from pipeline.params import PROJECT_ROOT, Grid
from pipeline.report import write_reports
from pipeline.tables import collect, read_results
from pipeline.tracking import is_local_store
from stages.common import start, tracker_for

log = logging.getLogger("stages.report")


def protocol(grid: Grid) -> dict:
    """The facts stated under the tables, from the resolved run configs."""
    cfgs = list(grid.runs.values())
    first = cfgs[0]
    return {
        "dataset": first.data.name,
        "image_size": first.data.image_size,
        "steps": {c.model.name: c.train.steps for c in cfgs},
        "batch_size": {c.model.name: c.train.batch_size for c in cfgs},
        "seeds": grid.params.seeds,
        "fid_samples": first.eval.fid_samples,
        "fid_split": first.eval.fid_split,
        "iwae_k": first.eval.iwae_k,
        "test_examples": first.eval.likelihood_examples,
        "reversal_examples": first.eval.reversal_examples,
    }


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    paths = [grid.eval_dir(label) / "eval.json" for label in grid.runs]
    results = collect([p for p in paths if p.exists()])
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        log.warning("%d runs have no evaluation yet; their cells stay empty: %s", len(missing), ", ".join(missing))
    name = grid.profile["name"]
    root = PROJECT_ROOT / grid.params.eval_root
    out_dir = PROJECT_ROOT / grid.params.report_root / name
    tracker = tracker_for(grid)
    link = tracker.experiment_link(grid.experiment)
    written = write_reports(
        results, out_dir, name, protocol(grid),
        conditional=read_results(sorted((root / "conditional" / name).glob("*/cond_eval.json"))),
        induced=read_results(sorted((root / "induced" / name).glob("induced_*.json"))),
        # DVC forbids a metrics file inside an output directory: the summary sits beside it.
        metrics_path=out_dir.parent / f"metrics_{name}.json",
        mlflow_link=link,
    )
    log.info("wrote %s", ", ".join(str(p) for p in written))
    if link is None:
        log.info("MLflow: experiment %s has no runs yet in %s", grid.experiment, tracker.uri)
    elif is_local_store(tracker.uri):
        log.info("MLflow runs of experiment %s: %s (serve them with `mlflow ui --backend-store-uri %s`)",
                 grid.experiment, link, tracker.uri)
    else:
        log.info("MLflow runs of experiment %s: %s", grid.experiment, link)


if __name__ == "__main__":
    main()
