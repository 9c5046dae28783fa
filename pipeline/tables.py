"""The paper's Tables 1 and 2 from our ``eval.json`` files, with the paper's numbers beside ours.

Layout. As in the paper, the priors are the columns (N(0,I), GMM fixed, GMM
learnable, TRIP fixed, TRIP learnable) and each row is one metric of one model.
Every row of ours is followed directly by the paper's row for the same metric
and model, when the paper reports one::

    |                 | source         | N(0,I) | GMM fixed | ... | TRIP learnable |
    | FID ↓ · VAE     | ours (shapes)  | 326.72 | —         | ... | **279.26**     |
    |                 | paper (CelebA) | 86.72  | 85.64     | ... | **83.54**      |

Paired rows keep the table five value columns wide in Markdown and LaTeX.
Paired columns would need ten. The "source" column says whose number a row
holds. The paper reports no PAG, so the PAG rows of WGAN and WGAN-GP have no
paper row.

Cells. A cell of ours is the mean over seeds, with the sample std (ddof=1)
when there are two seeds or more. A run that is missing leaves the cell empty
("—"); it never raises. The best value of each row is set in bold. Best means
lowest for FID and PAG and highest for ELBO and IWAE.

Paper numbers (``PAPER_TABLE1`` and ``PAPER_TABLE2``) are copied from
Kuznetsov et al., "A Prior of a Googol Gaussians: a Tensor Ring Induced Prior
for Generative Models", NeurIPS 2019: Table 1 (CelebA) and Table 2
(CIFAR-10). They are rendered with ``{:g}``, which prints them as the paper
did, except that trailing zeros are dropped (67.10 becomes 67.1). Table 2
gives a single WGAN-GP-TRIP number without saying whether its prior was fixed
or learnable. It is listed under TRIP learnable, because Sec. 6 calls it "our
best model", and learnable TRIP is best for WGAN-GP in Table 1. The table's
other baselines (SN-GANs, and WGAN-GP with two time-scale updates) are other
architectures and fit no prior column. They are kept as ``extra`` and shown
as a note.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# (prior name, learnable, column label); None: N(0, I) has no fixed/learnable variant.
PRIOR_COLUMNS = [
    ("normal", None, "N(0,I)"),
    ("gmm", False, "GMM fixed"),
    ("gmm", True, "GMM learnable"),
    ("trip", False, "TRIP fixed"),
    ("trip", True, "TRIP learnable"),
]

MODEL_LABELS = {"vae": "VAE", "wgan": "WGAN", "wgan_gp": "WGAN-GP"}


@dataclass(frozen=True)
class Metric:
    name: str  # the key prefix in metrics.json, e.g. "fid"
    precision: int
    higher_is_better: bool


# The metric paths a row may use (section.key inside eval.json).
METRICS = {
    "fid.value": Metric("fid", 2, False),
    "likelihood.elbo": Metric("elbo", 1, True),
    "likelihood.iwae": Metric("iwae", 1, True),
    "reversal.pag": Metric("pag", 1, False),  # lower: codes closer to the isotropic prior
}

# (row label, model, metric path).
TABLE1_ROWS = [
    ("FID ↓ · VAE", "vae", "fid.value"),
    ("FID ↓ · WGAN", "wgan", "fid.value"),
    ("FID ↓ · WGAN-GP", "wgan_gp", "fid.value"),
    ("ELBO ↑ · VAE", "vae", "likelihood.elbo"),
    ("IWAE ELBO ↑ · VAE", "vae", "likelihood.iwae"),
    ("PAG ↓ · WGAN", "wgan", "reversal.pag"),
    ("PAG ↓ · WGAN-GP", "wgan_gp", "reversal.pag"),
]
TABLE2_ROWS = [row for row in TABLE1_ROWS if row[2] in ("fid.value", "reversal.pag")]


@dataclass(frozen=True)
class PaperTable:
    """Numbers printed in the paper: ``values[(model, metric path)]`` in PRIOR_COLUMNS order."""

    table: str  # which table of the paper, e.g. "Table 1"
    dataset: str
    values: dict
    extra: tuple = ()  # (label, value) of baselines that fit no prior column
    source: str = ""  # where the numbers were copied from
    remark: str = ""  # how the printed numbers were placed in our columns, when that needs saying


PAPER_REFERENCE = ("Kuznetsov, Polykovskiy, Vetrov, Zhebrak: A Prior of a Googol Gaussians: a Tensor Ring "
                   "Induced Prior for Generative Models. NeurIPS 2019, pp. 4102-4112")

PAPER_TABLE1 = PaperTable(
    table="Table 1",
    dataset="CelebA",
    values={
        ("vae", "fid.value"): (86.72, 85.64, 84.48, 85.31, 83.54),
        ("wgan", "fid.value"): (63.46, 67.10, 61.82, 62.48, 57.6),
        ("wgan_gp", "fid.value"): (54.71, 57.82, 62.10, 63.06, 52.86),
        ("vae", "likelihood.elbo"): (-194.16, -201.60, -193.88, -202.04, -193.32),
        ("vae", "likelihood.iwae"): (-185.09, -191.99, -184.73, -190.09, -184.43),  # k = 100
    },
    source=f"{PAPER_REFERENCE}, Table 1",
)

PAPER_TABLE2 = PaperTable(
    table="Table 2",
    dataset="CIFAR-10",
    values={
        # WGAN-GP's 29.3 is the paper's citation of Gulrajani et al. [32], not a run of its own.
        ("wgan_gp", "fid.value"): (29.3, None, None, None, 16.72),
    },
    extra=(("FID · SN-GANs [33]", 21.7), ("FID · WGAN-GP + Two Time-Scale [34]", 24.8)),
    source=f"{PAPER_REFERENCE}, Table 2",
    remark=("The paper's WGAN-GP 29.3 is quoted from Gulrajani et al. [32]. Its WGAN-GP-TRIP 16.72 is "
            "under TRIP learnable: the paper calls it its best model, and learnable TRIP is the best "
            "WGAN-GP prior of its Table 1."),
)


class ReportError(ValueError):
    """An eval.json that cannot be tabulated; the message names the file."""


# -- reading eval.json -----------------------------------------------------------------
def collect(eval_paths: list[Path]) -> list[dict]:
    """Read eval.json files; each result gets ``eval_path`` (where it was read from).

    The run directory used for figures is ``eval_path``'s parent, not the
    ``run.run_dir`` stored inside, which may be relative to another working
    directory or stale after a move.
    """
    results = []
    for path in map(Path, eval_paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such eval.json (evaluate the run first)")
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReportError(f"{path}: not valid JSON ({err})") from err
        _check_run(result, path)
        results.append({**result, "eval_path": str(path)})
    return results


def _check_run(result, path: Path) -> None:
    if not isinstance(result, dict) or not isinstance(result.get("run"), dict):
        raise ReportError(f"{path}: has no 'run' section")
    missing = [k for k in ("model", "prior", "learnable", "dataset", "seed") if k not in result["run"]]
    if missing:
        raise ReportError(f"{path}: run.{missing[0]} is missing")


def column_of(run: dict) -> int | None:
    """Index into PRIOR_COLUMNS of a run's prior; None for a prior outside the grid."""
    for i, (prior, learnable, _) in enumerate(PRIOR_COLUMNS):
        if run["prior"] == prior and (learnable is None or bool(run["learnable"]) == learnable):
            return i
    return None


def variant_name(run: dict) -> str:
    """The profile's name of a prior variant: normal, gmm_fixed, ..., trip_learnable."""
    if run["prior"] == "normal":
        return "normal"
    return f"{run['prior']}_{'learnable' if run['learnable'] else 'fixed'}"


def metric_value(result: dict, path: str) -> float | None:
    """``result["fid"]["value"]`` for ``"fid.value"``; None when the run has no such part."""
    node = result
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if node is None:
        return None
    try:
        return float(node)
    except (TypeError, ValueError) as err:
        raise ReportError(f"{result.get('eval_path', '?')}: {path} is not a number: {node!r}") from err


# -- the table -------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    values: tuple  # one value per seed (ours) or the single printed value (paper)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None


@dataclass
class Row:
    label: str
    model: str
    metric: str  # a key of METRICS
    source: str  # "ours" or "paper"
    source_label: str  # e.g. "ours (shapes)", "paper (CelebA)"
    cells: list  # Cell or None, in PRIOR_COLUMNS order

    @property
    def info(self) -> Metric:
        return METRICS[self.metric]

    def best(self) -> set[int]:
        """Column indices of the best mean; empty when fewer than two cells can be compared."""
        means = {i: c.mean for i, c in enumerate(self.cells) if c is not None and math.isfinite(c.mean)}
        if len(means) < 2:
            return set()
        target = (max if self.info.higher_is_better else min)(means.values())
        return {i for i, m in means.items() if m == target}


@dataclass
class Table:
    columns: list
    rows: list
    extra: list = field(default_factory=list)  # (label, value) of the paper's column-less baselines
    paper_table: str | None = None  # e.g. "Table 2"

    def seed_counts(self) -> list[int]:
        return [c.n for r in self.rows if r.source == "ours" for c in r.cells if c is not None]


def build_table(results: list[dict], rows: list[tuple], paper: PaperTable | None = None) -> Table:
    """Aggregate results over seeds into ``rows`` x PRIOR_COLUMNS, each row of ours followed by the paper's."""
    datasets = sorted({r["run"]["dataset"] for r in results})
    if len(datasets) > 1:
        raise ReportError(f"results mix datasets {datasets}: one table holds one dataset")
    groups = _group(results)
    ours = f"ours ({datasets[0]})" if datasets else "ours"
    table = Table(columns=[c[2] for c in PRIOR_COLUMNS], rows=[])
    for label, model, metric in rows:
        if metric not in METRICS:
            raise ReportError(f"{metric}: unknown metric path (known: {', '.join(METRICS)})")
        cells = [_cell(groups.get((model, i), []), metric) for i in range(len(PRIOR_COLUMNS))]
        table.rows.append(Row(label, model, metric, "ours", ours, cells))
        printed = paper.values.get((model, metric)) if paper else None
        if printed:
            cells = [None if v is None else Cell((float(v),)) for v in printed]
            table.rows.append(Row(label, model, metric, "paper", f"paper ({paper.dataset})", cells))
    if paper:
        table.extra, table.paper_table = list(paper.extra), paper.table
    return table


def _group(results: list[dict]) -> dict:
    """{(model, column index): [results]}; two results for one (model, prior, seed) are an error."""
    groups, seen = {}, {}
    for result in results:
        run, col = result["run"], column_of(result["run"])
        if col is None:
            continue
        key = (run["model"], col, run["seed"])
        if key in seen:
            raise ReportError(f"{seen[key]} and {result.get('eval_path', '?')} are the same run "
                              f"({run['model']}, {variant_name(run)}, seed {run['seed']})")
        seen[key] = result.get("eval_path", "?")
        groups.setdefault((run["model"], col), []).append(result)
    return groups


def _cell(results: list[dict], metric: str) -> Cell | None:
    values = [v for v in (metric_value(r, metric) for r in results) if v is not None]
    return Cell(tuple(values)) if values else None


def summary_metrics(results: list[dict]) -> dict:
    """Flat ``{"fid/vae/trip_learnable": mean, ...}`` over seeds, for ``dvc metrics show``.

    Non-finite values are left out: JSON has no NaN, and DVC would reject the file.
    """
    values = {}
    for result in results:
        run = result["run"]
        for path, metric in METRICS.items():
            value = metric_value(result, path)
            if value is not None:
                values.setdefault(f"{metric.name}/{run['model']}/{variant_name(run)}", []).append(value)
    means = {key: float(np.mean(v)) for key, v in sorted(values.items())}
    return {key: m for key, m in means.items() if math.isfinite(m)}


# -- formatting ------------------------------------------------------------------------
EMPTY = "—"


def format_cell(cell: Cell | None, row: Row) -> str:
    if cell is None:
        return EMPTY
    if row.source == "paper":
        return f"{cell.mean:g}"
    text = f"{cell.mean:.{row.info.precision}f}"
    if cell.std is not None:
        text += f" ± {cell.std:.{row.info.precision}f}"
    return text


def _typical_count(table: Table) -> int | None:
    counts = table.seed_counts()
    return max(set(counts), key=counts.count) if counts else None


def _count_mark(cell: Cell | None, row: Row, typical: int | None) -> str:
    # Only cells whose seed count differs from the table's usual one are marked.
    return f" (n={cell.n})" if cell is not None and row.source == "ours" and cell.n != typical else ""


def uncertainty_note(table: Table) -> str:
    typical = _typical_count(table)
    if typical is None:
        return f"No runs of ours were found; every cell of ours is {EMPTY}."
    text = ("Ours: one seed per cell, no std." if typical == 1 else
            f"Ours: mean ± std over n={typical} seeds (sample std, ddof=1).")
    if any(c != typical for c in table.seed_counts()):
        text += " Cells marked (n=k) have k seeds instead."
    return text + f" {EMPTY}: no run. Bold: best of the row."


def extra_note(table: Table) -> str | None:
    if not table.extra:
        return None
    listed = "; ".join(f"{label} {value:g}" for label, value in table.extra)
    return f"Other baselines of the paper's {table.paper_table}, which fit no prior column: {listed}."


# -- writers ---------------------------------------------------------------------------
def to_markdown(table: Table, caption: str, notes: list[str]) -> str:
    typical = _typical_count(table)
    lines = [f"**{_md(caption)}**", "", "| | source | " + " | ".join(map(_md, table.columns)) + " |",
             "|:--|:--|" + "--:|" * len(table.columns)]
    for i, row in enumerate(table.rows):
        # A paper row sits directly under ours for the same metric and model, so its label is left blank.
        label = "" if row.source == "paper" and i and table.rows[i - 1].label == row.label else _md(row.label)
        best = row.best()
        cells = [_bold_md(format_cell(c, row) + _count_mark(c, row, typical), j in best)
                 for j, c in enumerate(row.cells)]
        lines.append(f"| {label} | {_md(row.source_label)} | " + " | ".join(cells) + " |")
    notes = [uncertainty_note(table), *filter(None, [extra_note(table)]), *notes]
    return "\n".join(lines + [""] + [f"- {_md(n)}" for n in notes]) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _bold_md(text: str, bold: bool) -> str:
    return f"**{text}**" if bold and text != EMPTY else text


CSV_FIELDS = ["row", "model", "metric", "column", "source", "mean", "std", "n"]


def to_csv(table: Table) -> str:
    """Long format, one line per non-empty cell; the paper's cells have no std or n."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        for column, cell in zip(table.columns, row.cells):
            if cell is None:
                continue
            ours = row.source == "ours"
            writer.writerow({"row": row.label, "model": row.model, "metric": row.metric, "column": column,
                             "source": row.source, "mean": repr(cell.mean),
                             "std": "" if cell.std is None else repr(cell.std), "n": cell.n if ours else ""})
    for label, value in table.extra:
        writer.writerow({"row": label, "model": "", "metric": "fid.value", "column": "", "source": "paper",
                         "mean": repr(float(value)), "std": "", "n": ""})
    return out.getvalue()


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "—": "---", "–": "--",
    "·": r"$\cdot$", "×": r"$\times$",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table, caption: str, notes: list[str]) -> str:
    """A ``table`` float with a booktabs tabular; needs ``\\usepackage{booktabs}``."""
    typical = _typical_count(table)
    lines = [r"% Requires \usepackage{booktabs}.", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(caption)}}}", r"\begin{tabular}{ll" + "r" * len(table.columns) + "}",
             r"\toprule", " & ".join(["", "source", *map(latex_escape, table.columns)]) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        starts_group = row.source == "ours" and i > 0
        if starts_group:
            lines.append(r"\addlinespace")
        label = "" if row.source == "paper" and i and table.rows[i - 1].label == row.label else row.label
        best = row.best()
        cells = [_bold_tex(latex_escape(format_cell(c, row) + _count_mark(c, row, typical)), j in best)
                 for j, c in enumerate(row.cells)]
        lines.append(" & ".join([latex_escape(label), latex_escape(row.source_label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [uncertainty_note(table), *filter(None, [extra_note(table)]), *notes]
    lines += [r"\par\smallskip", r"{\footnotesize"] + [latex_escape(n) + r"\par" for n in notes] + ["}"]
    return "\n".join(lines + [r"\end{table}"]) + "\n"


def _bold_tex(text: str, bold: bool) -> str:
    return rf"\textbf{{{text}}}" if bold and text != latex_escape(EMPTY) else text
