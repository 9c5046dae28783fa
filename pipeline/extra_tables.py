"""Table 3 (generation with missing conditions) and the data-induced-prior table.

Both are plain grids (a header and rows of text cells) written as Markdown,
CSV and LaTeX, with notes under them:

* **Table 3** from the ``cond_eval.json`` files of the ``conditional`` stage:
  one row per (method, fraction of hidden labels); columns are the fraction
  of samples violating any specified attribute, the violation rate per
  specified attribute, and the entropy (bits) of the free attributes, each
  averaged over the specifications, mean ± std over seeds. Lower violation
  and higher entropy are better. The paper reports Table 3 as images only,
  so there is no paper row.
* **Induced priors** from the ``induced_<kind>.json`` files of the
  ``induced`` stage: one row per kind (the run's own prior as the control,
  the PGAN, TRIP), with PAG, FID and the prior-to-codes distance before and
  after the continued training, and the held-out log-likelihood of the codes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.tables import latex_escape
from trip.io import atomic_write_text

METHOD_LABELS = {"vae_trip_cond": "VAE-TRIP (joint ring)", "cvae": "CVAE (unknown-label baseline)"}
KIND_LABELS = {"original": "own prior (control)", "pgan": "PGAN (secondary GAN)", "trip": "TRIP (max. likelihood)"}


@dataclass
class Grid:
    """A rendered table: a caption, a header, rows of text cells and notes."""

    caption: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def to_markdown(grid: Grid) -> str:
    lines = [f"**{grid.caption}**", "", "| " + " | ".join(grid.header) + " |",
             "|:--|" + "--:|" * (len(grid.header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in grid.rows]
    return "\n".join(lines + [""] + [f"- {n}" for n in grid.notes]) + "\n"


def to_csv(grid: Grid) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(grid.header)
    writer.writerows(grid.rows)
    return out.getvalue()


def to_latex(grid: Grid) -> str:
    """A ``table`` float with a booktabs tabular; needs ``\\usepackage{booktabs}``."""
    lines = [r"% Requires \usepackage{booktabs}.", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(grid.caption)}}}", r"\begin{tabular}{l" + "r" * (len(grid.header) - 1) + "}",
             r"\toprule", " & ".join(map(latex_escape, grid.header)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(latex_escape, row)) + r" \\" for row in grid.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize"]
    lines += [latex_escape(n) + r"\par" for n in grid.notes]
    return "\n".join(lines + ["}", r"\end{table}"]) + "\n"


def write_grid(grid: Grid, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {f"{stem}.md": to_markdown(grid), f"{stem}.csv": to_csv(grid), f"{stem}.tex": to_latex(grid)}
    return [atomic_write_text(out_dir / name, text) for name, text in texts.items()]


def mean_std(values: list[float | None], precision: int) -> str:
    """"m ± s" over seeds (sample std), "m" for one value, "—" for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{precision}f}"
    return f"{np.mean(values):.{precision}f} ± {np.std(values, ddof=1):.{precision}f}"


def read_json(paths: list[Path]) -> list[dict]:
    results = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        result["_path"] = str(path)
        results.append(result)
    return results


# -- Table 3 ---------------------------------------------------------------------------
def table3(results: list[dict], profile: str) -> Grid:
    """Rows (method, missing) in the order of first appearance sorted by missing; cells over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["run"]["method"], r["run"]["missing"], r["run"]["seed"])):
        groups.setdefault((r["run"]["method"], r["run"]["missing"]), []).append(r)
    grid = Grid(
        caption=(f"Table 3 (profile {profile}): generation with missing conditions. Violation (lower is better) "
                 "and entropy of the free attributes (higher is more diverse), averaged over the specifications"),
        header=["method", "labels hidden", "seeds", "violates any ↓", "violation per attribute ↓",
                "free-attribute entropy, bits ↑", "joint free entropy, bits ↑"],
    )
    for (method, missing), runs in groups.items():
        summary = [r["summary"] for r in runs]
        grid.rows.append([METHOD_LABELS.get(method, method), f"{missing:.0%}", str(len(runs)),
                          mean_std([s["violation_any"] for s in summary], 3),
                          mean_std([s["violation_mean"] for s in summary], 3),
                          mean_std([s["diversity_mean"] for s in summary], 3),
                          mean_std([s["diversity_joint"] for s in summary], 3)])
    grid.notes = table3_notes(results)
    return grid


def table3_notes(results: list[dict]) -> list[str]:
    if not results:
        return ["No conditional run has been evaluated."]
    first = results[0]
    specs = [s["label"] for s in first["specs"]]
    notes = [f"Specifications ({len(specs)}): " + "; ".join(specs) + f". {first['settings']['samples_per_spec']} "
             "samples each, attributes read off the samples by a CNN classifier trained on the real images."]
    accuracy = _classifier_accuracy(first)
    if accuracy:
        notes.append("Classifier held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()) + ".")
    notes.append("The paper shows its Table 3 as image grids only; these numbers have no paper counterpart.")
    return notes


def _classifier_accuracy(result: dict) -> dict:
    path = Path(result["classifier"]["path"]) / "classifier.json"
    return json.loads(path.read_text()).get("accuracy", {}) if path.is_file() else {}


# -- the induced-prior table -----------------------------------------------------------
def induced_table(results: list[dict], profile: str) -> Grid:
    order = {k: i for i, k in enumerate(KIND_LABELS)}
    results = sorted(results, key=lambda r: order.get(r["kind"], len(order)))
    source = results[0]["source"] if results else {}
    grid = Grid(
        caption=(f"Data-induced priors (profile {profile}): {source.get('model', '?')} trained with a "
                 f"{source.get('prior', '?')} prior, then continued with each prior fitted to reversed codes"),
        header=["continued with", "PAG before", "PAG after", "FID before", "FID after",
                "prior→codes distance before", "after", "codes held-out log-lik (N(0,I) / initial / fitted)"],
    )
    for r in results:
        b, a = r["before"], r["after"]
        grid.rows.append([KIND_LABELS.get(r["kind"], r["kind"]), f"{b['pag']:.2f}", f"{a['pag']:.2f}",
                          f"{b['fid']['value']:.2f}", f"{a['fid']['value']:.2f}",
                          f"{b['prior_to_codes_distance']:.3f}", f"{a['prior_to_codes_distance']:.3f}",
                          _heldout(r)])
    grid.notes = induced_notes(results)
    return grid


def _heldout(result: dict) -> str:
    h = result["prior"].get("heldout_loglik")
    return "—" if not h else f"{h['normal']:.2f} / {h['initial']:.2f} / {h['fitted']:.2f}"


def induced_notes(results: list[dict]) -> list[str]:
    if not results:
        return ["No induced-prior experiment has run."]
    cfg, first = results[0]["config"], results[0]
    return [
        f"Codes: {cfg['reversal_examples']} training images reversed with {cfg['reversal_steps']} steps of "
        f"Algorithm 1; each prior continues the GAN for {cfg['continue_steps']} generator steps with fresh "
        "optimisers and the run's own settings.",
        f"FID: {first['before']['fid']['text']} before; the same counts after. PAG: lower means the codes the "
        "generator uses sit closer to N(0, I); the prior→codes distance is the mean distance from a prior "
        "sample to the nearest reversed code (lower: the prior covers what the generator uses).",
        "The control row continues with the run's own prior for as many steps, so differences from it are the "
        "prior's effect rather than longer training.",
    ]
