"""DVC stage ``report``: the paper's tables, the figures index and ``metrics.json`` in ``reports/<profile>/``.

    python -m stages.report [--params params.yaml]

Tables 1 and 2 come from ``evaluate``; Table 3 from ``conditional`` and the
induced-prior table from ``induced``, when the profile has those sections.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipeline.params import PROJECT_ROOT, Grid
from pipeline.repro import close_parent
from pipeline import extra_tables
from pipeline.report import write_reports
from pipeline.tables import collect
from stages.common import start, tracker_for
from trip.io import atomic_write_text

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
    out_dir = PROJECT_ROOT / grid.params.report_root / grid.profile["name"]
    written = write_reports(results, out_dir, grid.profile["name"], protocol(grid))
    # DVC forbids a metrics file inside an output directory: the summary sits beside it.
    summary = out_dir.parent / f"metrics_{grid.profile['name']}.json"
    os.replace(out_dir / "metrics.json", summary)
    written = [summary if p.name == "metrics.json" else p for p in written]
    written += write_extra_tables(grid, out_dir, summary)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    close_parent(tracker_for(grid), grid.experiment)  # the last stage of a repro


def write_extra_tables(grid: Grid, out_dir: Path, summary: Path) -> list[Path]:
    """Table 3 and the induced-prior table (when their stages left results), on the index page and in metrics."""
    root, name = PROJECT_ROOT / grid.params.eval_root, grid.profile["name"]
    sections = [
        ("table3", "Table 3: generation with missing conditions", extra_tables.table3,
         sorted((root / "conditional" / name).glob("*/cond_eval.json")), "cond_samples.png"),
        ("induced", "Data-induced priors", extra_tables.induced_table,
         sorted((root / "induced" / name).glob("induced_*.json")), None),
    ]
    written, page, metrics = [], [], json.loads(summary.read_text())
    for stem, title, build, paths, figure in sections:
        if not paths:
            continue
        results = extra_tables.read_json(paths)
        table = build(results, name)
        written += extra_tables.write_grid(table, out_dir, stem)
        page += [f"## {title}", "", extra_tables.to_markdown(table), *figure_lines(results, figure, out_dir), ""]
        metrics.update(extra_metrics(stem, results))
    if page:
        index = out_dir / "README.md"
        atomic_write_text(index, index.read_text().rstrip() + "\n\n" + "\n".join(page))
        atomic_write_text(summary, json.dumps(metrics, indent=2) + "\n")
    return written


def figure_lines(results: list[dict], figure: str | None, out_dir: Path) -> list[str]:
    """One linked image per result: the conditional sample grid, or the induced prior's samples."""
    lines = []
    for r in results:
        path = Path(r["_path"])
        target = path.parent / (figure or r["files"]["samples"])
        title = (f"{r['run']['method']}, {r['run']['missing']:.0%} hidden, seed {r['run']['seed']}" if figure
                 else f"continued with {r['kind']}")
        if target.is_file():
            lines.append(f"![{title}]({os.path.relpath(target, out_dir)})")
    return lines


def extra_metrics(stem: str, results: list[dict]) -> dict:
    """Flat numbers for ``dvc metrics``: Table 3 per method and hidden fraction, induced per kind."""
    out = {}
    for r in results:
        if stem == "table3":
            key = f"{r['run']['method']}/miss{r['run']['missing'] * 100:g}/s{r['run']['seed']}"
            out[f"violation_any/{key}"] = r["summary"]["violation_any"]
            out[f"free_entropy/{key}"] = r["summary"]["diversity_mean"]
        else:
            out[f"induced_pag_after/{r['kind']}"] = r["after"]["pag"]
            out[f"induced_fid_after/{r['kind']}"] = r["after"]["fid"]["value"]
    return out


if __name__ == "__main__":
    main()
