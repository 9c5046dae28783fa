"""The report's tables, built as pandas DataFrames and written as Markdown, CSV and LaTeX.

* **Tables 1 and 2** (from each run's ``eval.json``): the priors are the
  columns (N(0,I), GMM fixed, GMM learnable, TRIP fixed, TRIP learnable), each
  row one metric of one model. For ``shapes``, the shapes-native metrics (the
  ``domain`` section of eval.json) are the headline rows, with a "real data" column holding the same metrics for a
  disjoint real set (the floor); Inception FID, ELBO, IWAE and PAG follow as
  secondary rows. Under every row of ours comes its comparison with N(0,I),
  and under that the paper's row for the same metric and model, when the
  paper has one::

      |                 | source              | N(0,I)       | GMM fixed            | ... |
      | FD ↓ · VAE      | ours (shapes)       | 12.10 ± 0.40 | 11.20 ± 0.30         | ... |
      |                 | Δ vs N(0,I), 95% CI |              | -0.90 [-1.40, -0.40]† | ... |
      | FID ↓ · VAE     | ours (shapes)       | ...                                        |
      |                 | paper (CelebA)      | 86.72        | 85.64                | ... |

* **Table 3** (``cond_eval.json`` of the ``conditional`` stage) and the
  **induced-prior table** (``induced_<kind>.json`` of the ``induced`` stage).

Cells of ours. The mean over seeds, "± std" (sample std, ddof=1) with two
seeds or more; "(n=k)" where a cell has k seeds instead of the table's usual
count. "—": no run; a missing run never raises. Bold in a row of ours or the
paper's: the best prior of the row (lowest for ↓ metrics, highest for ↑).
Marks after a cell: ``*`` some run of the cell did not converge (its
eval.json's ``training.converged`` is false), ``?`` convergence unknown (no
``training`` section).

Differences. Each prior column is compared with N(0,I) by the paired
difference prior − N(0,I) (:func:`paired_difference`):

* with S ≥ 2 seeds that both cells have, a t-interval over the per-seed
  differences with S − 1 degrees of freedom; for ELBO and IWAE each per-seed
  difference is itself paired over the same test images (the mean of the
  per-image differences, ``likelihood.elbo_values`` / ``iwae_values``);
* with one seed, for ELBO and IWAE, mean ± 1.96·SE over the per-image
  differences;
* otherwise no interval: the cell says "no CI".

A difference whose 95% interval excludes 0 is marked ``†`` and set in bold.
:func:`difference_sentence` turns a table's differences into the sentence
written under it.

Writing. Every table becomes a :class:`Rendered`: a DataFrame of display
strings with a mask of bold cells, its caption and notes, and a DataFrame of
numbers for the CSV. Markdown comes from ``DataFrame.to_markdown``
(tabulate), LaTeX from ``Styler.to_latex`` (its escaping, bold through the
``textbf`` rule, booktabs rules), CSV from ``DataFrame.to_csv``.

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

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from trip.io import atomic_write_text

# (prior name, learnable, column label); None: N(0, I) has no fixed/learnable variant.
PRIOR_COLUMNS = [
    ("normal", None, "N(0,I)"),
    ("gmm", False, "GMM fixed"),
    ("gmm", True, "GMM learnable"),
    ("trip", False, "TRIP fixed"),
    ("trip", True, "TRIP learnable"),
]
MODEL_LABELS = {"vae": "VAE", "wgan": "WGAN", "wgan_gp": "WGAN-GP"}
DOMAIN_DATASETS = ("shapes",)  # datasets whose tables lead with the domain section, present or not

EMPTY = "—"
REAL_COLUMN = "real data"
DELTA_LABEL = "Δ vs N(0,I), 95% CI"
NOT_CONVERGED, CONVERGENCE_UNKNOWN, SIGNIFICANT = "*", "?", "†"
NO_INTERVAL = "no CI"
LEVEL = 0.95
Z95 = 1.96  # the normal quantile of a 95% interval over per-image differences


class ReportError(ValueError):
    """A result file that cannot be tabulated; the message names the file."""


@dataclass(frozen=True)
class Metric:
    name: str  # the key prefix in metrics.json, e.g. "fid"
    label: str  # as in the row label, e.g. "FID"
    precision: int
    higher_is_better: bool
    per_image: str | None = None  # eval.json path of the per-image values, paired over the same test images
    real: str | None = None  # eval.json path of the real-data floor

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _domain(name: str, label: str, precision: int, higher: bool) -> Metric:
    return Metric(name, label, precision, higher, real=f"domain.real.{name}")


# The metric paths a row may use (section.key inside eval.json).
METRICS = {
    "domain.fd": _domain("fd", "FD", 2, False),
    "domain.kid": _domain("kid", "KID", 4, False),
    "domain.precision": _domain("precision", "precision", 3, True),
    "domain.recall": _domain("recall", "recall", 3, True),
    "domain.modes_covered": _domain("modes_covered", "modes covered", 1, True),
    "domain.mode_kl": _domain("mode_kl", "mode KL", 3, False),
    "domain.mode_tv": _domain("mode_tv", "mode TV", 3, False),
    "fid.value": Metric("fid", "FID", 2, False),
    "likelihood.elbo": Metric("elbo", "ELBO", 1, True, per_image="likelihood.elbo_values"),
    "likelihood.iwae": Metric("iwae", "IWAE ELBO", 1, True, per_image="likelihood.iwae_values"),
    "reversal.pag": Metric("pag", "PAG vs N(0,I)", 1, False),  # lower: codes closer to the isotropic prior
}

# (model, metric path), in row order.
DOMAIN_ROWS = [(model, path) for path in METRICS if path.startswith("domain.") for model in MODEL_LABELS]
TABLE1_ROWS = [
    ("vae", "fid.value"), ("wgan", "fid.value"), ("wgan_gp", "fid.value"),
    ("vae", "likelihood.elbo"), ("vae", "likelihood.iwae"),
    ("wgan", "reversal.pag"), ("wgan_gp", "reversal.pag"),
]
TABLE2_ROWS = [row for row in TABLE1_ROWS if row[1] in ("fid.value", "reversal.pag")]


# -- the paper's numbers ---------------------------------------------------------------
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


# -- reading result files ----------------------------------------------------------------
def read_json(path: str | Path) -> dict:
    """One result file as a dict, with ``eval_path``: where it was read from."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such result file (run its stage first)")
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(result, dict):
        raise ReportError(f"{path}: not a JSON object")
    return {**result, "eval_path": str(path)}


def read_results(paths: list[Path]) -> list[dict]:
    """``read_json`` of each path (Table 3's and the induced table's files)."""
    return [read_json(p) for p in paths]


def collect(eval_paths: list[Path]) -> list[dict]:
    """Read eval.json files; each result gets ``eval_path`` (where it was read from).

    The run directory used for figures is ``eval_path``'s parent, not the
    ``run.run_dir`` stored inside, which may be relative to another working
    directory or stale after a move.
    """
    results = read_results(eval_paths)
    for result in results:
        if not isinstance(result.get("run"), dict):
            raise ReportError(f"{result['eval_path']}: has no 'run' section")
        missing = [k for k in ("model", "prior", "learnable", "dataset", "seed") if k not in result["run"]]
        if missing:
            raise ReportError(f"{result['eval_path']}: run.{missing[0]} is missing")
    return results


def lookup(result: dict, path: str):
    """``result["fid"]["value"]`` for ``"fid.value"``; None where any part is missing."""
    node = result
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def metric_value(result: dict, path: str) -> float | None:
    """The number at ``path``; None when the run has no such part."""
    node = lookup(result, path)
    if node is None:
        return None
    try:
        return float(node)
    except (TypeError, ValueError) as err:
        raise ReportError(f"{result.get('eval_path', '?')}: {path} is not a number: {node!r}") from err


def per_image_values(result: dict, path: str) -> np.ndarray | None:
    node = lookup(result, path)
    if node is None:
        return None
    try:
        values = np.asarray(node, dtype=float)
    except (TypeError, ValueError) as err:
        raise ReportError(f"{result.get('eval_path', '?')}: {path} is not a list of numbers") from err
    if values.ndim != 1:
        raise ReportError(f"{result.get('eval_path', '?')}: {path} is not a flat list of numbers")
    return values


def convergence(result: dict) -> bool | None:
    """``training.converged``: True or False, None when the file does not say."""
    training = result.get("training")
    converged = training.get("converged") if isinstance(training, dict) else None
    return converged if isinstance(converged, bool) else None


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


def group_runs(results: list[dict]) -> dict:
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


# -- statistics --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Cell:
    """One table cell: a value per seed, with each seed's convergence and per-image values."""

    values: pd.Series  # index: seed ("paper" for a printed number)
    converged: pd.Series | None = None  # per seed: True, False or None (unknown); None for the paper and real data
    per_image: dict = field(default_factory=dict)  # {seed: np.ndarray}, for metrics paired over test images

    @classmethod
    def printed(cls, value: float) -> Cell:
        return cls(pd.Series([float(value)], index=["paper"]))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(self.values.mean(skipna=False))

    @property
    def std(self) -> float | None:
        return float(self.values.std(ddof=1, skipna=False)) if self.n >= 2 else None

    @property
    def status(self) -> bool | None:
        """False if a run did not converge, None if one does not say (and none failed), else True."""
        if self.converged is None:
            return None
        flags = list(self.converged)
        return False if any(c is False for c in flags) else None if any(c is None for c in flags) else True

    @property
    def mark(self) -> str:
        if self.converged is None:
            return ""
        return {False: NOT_CONVERGED, None: CONVERGENCE_UNKNOWN, True: ""}[self.status]


@dataclass(frozen=True)
class Difference:
    """A paired difference prior − N(0,I): its mean, and its 95% interval when one can be formed."""

    mean: float
    n: int  # seeds, or test images when over == "images"
    over: str  # "seeds", "images", or "" when there is no interval
    low: float | None = None
    high: float | None = None
    mark: str = ""  # convergence mark of either side

    @property
    def significant(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def t_interval(diffs, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student's t-interval over paired differences, n − 1 degrees of freedom."""
    diffs = np.asarray(diffs, dtype=float)
    mean = float(diffs.mean())
    half = float(stats.t.ppf((1 + level) / 2, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return mean, mean - half, mean + half


def z_interval(diffs) -> tuple[float, float, float]:
    """(mean, low, high): mean ± 1.96·SE over many paired differences (per-image values)."""
    diffs = np.asarray(diffs, dtype=float)
    mean = float(diffs.mean())
    half = Z95 * float(diffs.std(ddof=1)) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def paired_difference(cell: Cell | None, base: Cell | None) -> Difference | None:
    """``cell`` − ``base`` paired over the seeds both have (and over test images where recorded).

    None when the cells share no seed. With one shared seed and no per-image
    values on both sides, the difference has no interval.
    """
    if cell is None or base is None:
        return None
    by_seed = (cell.values - base.values).dropna()  # aligned on the seed
    by_seed = by_seed[np.isfinite(by_seed.to_numpy(dtype=float))]
    if by_seed.empty:
        return None
    mark = _worst_mark(cell.mark, base.mark)
    if len(by_seed) >= 2:
        # Each seed's difference, paired over its test images where both runs recorded them.
        images = {seed: _image_diffs(cell, base, seed) for seed in by_seed.index}
        diffs = [d if images[seed] is None else float(images[seed].mean()) for seed, d in by_seed.items()]
        mean, low, high = t_interval(diffs)
        return Difference(mean, len(diffs), "seeds", low, high, mark)
    seed = by_seed.index[0]
    images = _image_diffs(cell, base, seed)
    if images is not None and len(images) >= 2:
        mean, low, high = z_interval(images)
        return Difference(mean, len(images), "images", low, high, mark)
    return Difference(float(by_seed.iloc[0]), 1, "", mark=mark)


def _image_diffs(cell: Cell, base: Cell, seed) -> np.ndarray | None:
    a, b = cell.per_image.get(seed), base.per_image.get(seed)
    if a is None or b is None or len(a) != len(b) or len(a) == 0:
        return None
    return a - b


def _worst_mark(*marks: str) -> str:
    return NOT_CONVERGED if NOT_CONVERGED in marks else CONVERGENCE_UNKNOWN if CONVERGENCE_UNKNOWN in marks else ""


def make_cell(runs: list[dict], path: str) -> Cell | None:
    """The cell of ``runs`` (one model and prior, one run per seed) for the metric at ``path``."""
    metric = METRICS[path]
    values, converged, images = {}, {}, {}
    for run in runs:
        value = metric_value(run, path)
        if value is None:
            continue
        seed = run["run"]["seed"]
        values[seed], converged[seed] = value, convergence(run)
        per_image = per_image_values(run, metric.per_image) if metric.per_image else None
        if per_image is not None:
            images[seed] = per_image
    if not values:
        return None
    return Cell(pd.Series(values, dtype=float), pd.Series(converged, dtype=object), images)


def real_cell(runs: list[dict], path: str) -> Cell | None:
    """The real-data floor of a model's runs: per seed the mean over its runs, then over seeds."""
    values = [(r["run"]["seed"], metric_value(r, path)) for r in runs]
    values = [(seed, v) for seed, v in values if v is not None]
    if not values:
        return None
    series = pd.Series([v for _, v in values], index=[s for s, _ in values], dtype=float)
    return Cell(series.groupby(level=0).mean())


# -- Tables 1 and 2 ---------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    model: str
    metric: str  # a key of METRICS
    source: str  # "ours" or "paper"
    source_label: str  # e.g. "ours (shapes)", "paper (CelebA)"
    cells: list  # Cell or None, in PRIOR_COLUMNS order
    differences: list = field(default_factory=list)  # ours: Difference or None per column (None for N(0,I))
    real: Cell | None = None  # ours, domain metrics: the real-data floor

    @property
    def info(self) -> Metric:
        return METRICS[self.metric]

    def best(self) -> set[int]:
        """Column indices of the best mean as printed; empty when fewer than two cells can be compared."""
        means = {i: c.mean if self.source == "paper" else round(c.mean, self.info.precision)
                 for i, c in enumerate(self.cells) if c is not None and math.isfinite(c.mean)}
        # PAG is measured against N(0, I) whatever the run's prior, so it never names a best prior (issue 11).
        if len(means) < 2 or self.metric == "reversal.pag":
            return set()
        target = (max if self.info.higher_is_better else min)(means.values())
        return {i for i, m in means.items() if m == target}


@dataclass
class Table:
    dataset: str
    columns: list
    rows: list
    real_column: bool = False  # a "real data" column (tables with domain rows)
    extra: list = field(default_factory=list)  # (label, value) of the paper's column-less baselines
    paper_table: str | None = None  # e.g. "Table 2"

    def ours(self) -> list[Row]:
        return [r for r in self.rows if r.source == "ours"]

    def seed_counts(self) -> list[int]:
        return [c.n for r in self.ours() for c in r.cells if c is not None]

    def typical_count(self) -> int | None:
        counts = self.seed_counts()
        return max(set(counts), key=counts.count) if counts else None

    def runs(self) -> dict:
        """{(model, column): {seed: converged}} over the cells of ours."""
        runs = {}
        for row in self.ours():
            for col, cell in enumerate(row.cells):
                if cell is not None:
                    runs.setdefault((row.model, col), {}).update(cell.converged.to_dict())
        return runs


def build_table(results: list[dict], rows: list[tuple], paper: PaperTable | None = None,
                domain: bool | None = None) -> Table:
    """Aggregate results over seeds into rows × PRIOR_COLUMNS.

    ``rows``: (model, metric path) pairs. ``domain``: lead with the domain
    rows and a real-data column; by default for the datasets of
    DOMAIN_DATASETS (``shapes``); other datasets keep the paper's
    layout. Each row of ours is followed by its paired differences from
    N(0,I), then by the paper's row for the same model and metric when
    ``paper`` has one.
    """
    datasets = sorted({r["run"]["dataset"] for r in results})
    if len(datasets) > 1:
        raise ReportError(f"results mix datasets {datasets}: one table holds one dataset")
    dataset = datasets[0] if datasets else ""
    domain = dataset in DOMAIN_DATASETS if domain is None else domain
    groups = group_runs(results)
    ours = f"ours ({dataset})" if dataset else "ours"
    table = Table(dataset, [c[2] for c in PRIOR_COLUMNS], [], real_column=domain)
    for model, path in (DOMAIN_ROWS if domain else []) + list(rows):
        if path not in METRICS:
            raise ReportError(f"{path}: unknown metric path (known: {', '.join(METRICS)})")
        runs = [groups.get((model, i), []) for i in range(len(PRIOR_COLUMNS))]
        cells = [make_cell(r, path) for r in runs]
        differences = [None] + [paired_difference(c, cells[0]) for c in cells[1:]]
        real = real_cell([r for rs in runs for r in rs], METRICS[path].real) if METRICS[path].real else None
        label = row_label(model, path, [r for rs in runs for r in rs], domain)
        table.rows.append(Row(label, model, path, "ours", ours, cells, differences, real))
        printed = paper.values.get((model, path)) if paper else None
        if printed:
            cells = [None if v is None else Cell.printed(v) for v in printed]
            table.rows.append(Row(label, model, path, "paper", f"paper ({paper.dataset})", cells))
    if paper:
        table.extra, table.paper_table = list(paper.extra), paper.table
    return table


def row_label(model: str, path: str, runs: list[dict], domain: bool) -> str:
    """e.g. "FD ↓ · VAE", "modes covered ↑ (of 512) · VAE", "Inception FID ↓ (500 vs 400) · VAE"."""
    metric = METRICS[path]
    label = f"{metric.label} {metric.arrow}"
    if path == "domain.modes_covered":
        totals = {lookup(r, "domain.modes_total") for r in runs} - {None}
        label += f" (of {totals.pop()})" if len(totals) == 1 else ""
    elif path == "fid.value" and domain:
        counts = {(lookup(r, "fid.n_samples"), lookup(r, "fid.n_reference")) for r in runs if "fid" in r}
        samples, reference = counts.pop() if len(counts) == 1 else (None, None)
        label = "Inception " + label + (f" ({samples} vs {reference})" if samples and reference else "")
    return f"{label} · {MODEL_LABELS.get(model, model)}"


def summary_metrics(results: list[dict]) -> dict:
    """Flat ``{"fid/vae/trip_learnable": mean, ...}`` over seeds, for ``dvc metrics show``.

    Every metric of METRICS per model and prior variant; ``<metric>/real``:
    the real-data floor (per seed the mean over runs, then the mean over
    seeds); ``converged/<model>/<variant>``: the fraction of runs that
    converged, where they say. Non-finite values are left out: JSON has no
    NaN, and DVC would reject the file.
    """
    values = {}  # {key: [(seed, value)]}
    for result in results:
        run = result["run"]
        found = {}
        for path, metric in METRICS.items():
            found[f"{metric.name}/{run['model']}/{variant_name(run)}"] = metric_value(result, path)
            if metric.real:
                found[f"{metric.name}/real"] = metric_value(result, metric.real)
        converged = convergence(result)
        found[f"converged/{run['model']}/{variant_name(run)}"] = None if converged is None else float(converged)
        for key, value in found.items():
            if value is not None:
                values.setdefault(key, []).append((run["seed"], value))
    means = {key: _seed_mean(pairs) for key, pairs in sorted(values.items())}
    return {key: m for key, m in means.items() if math.isfinite(m)}


def _seed_mean(pairs: list[tuple]) -> float:
    """The mean over seeds of the per-seed means."""
    series = pd.Series([v for _, v in pairs], index=[s for s, _ in pairs], dtype=float)
    return float(series.groupby(level=0).mean().mean(skipna=False))


# -- cells as text ---------------------------------------------------------------------------
def mean_std(values, precision: int) -> str:
    """"m ± s" over seeds (sample std), "m" for one value, "—" for none."""
    values = pd.Series([v for v in values if v is not None], dtype=float)
    if values.empty:
        return EMPTY
    text = f"{values.mean():.{precision}f}"
    return text + (f" ± {values.std(ddof=1):.{precision}f}" if len(values) >= 2 else "")


def format_cell(cell: Cell | None, row: Row, typical: int | None = None) -> str:
    if cell is None:
        return EMPTY
    if row.source == "paper":
        return f"{cell.mean:g}"
    text = mean_std(cell.values, row.info.precision)
    if typical is not None and cell.n != typical:
        text += f" (n={cell.n})"
    return text + cell.mark


def format_difference(diff: Difference | None, precision: int) -> str:
    if diff is None:
        return EMPTY
    def signed(x: float) -> str:
        text = f"{x:+.{precision}f}"
        return text if float(text) != 0 else f"{0.0:+.{precision}f}"  # no "-0.00"

    if diff.low is None:
        return f"{signed(diff.mean)} ({NO_INTERVAL}){diff.mark}"
    return (f"{signed(diff.mean)} [{signed(diff.low)}, {signed(diff.high)}]"
            + (SIGNIFICANT if diff.significant else "") + diff.mark)


# -- notes under Tables 1 and 2 ----------------------------------------------------------------
def difference_sentence(table: Table) -> str:
    """One sentence: which priors differ from N(0,I) beyond their 95% interval, on which rows, which way.

    Written first under Tables 1 and 2; generated from the table, never from
    expected results.
    """
    found: dict = {}  # {prior: {"better"/"worse": {metric: [models]}}}
    compared = with_interval = unconverged = 0
    for row in table.ours():
        metric = ("Inception FID" if table.real_column and row.metric == "fid.value" else row.info.label)
        for col, diff in enumerate(row.differences):
            if diff is None:
                continue
            compared += 1
            with_interval += diff.low is not None
            if diff.significant:
                way = "better" if (diff.mean > 0) == row.info.higher_is_better else "worse"
                models = found.setdefault(table.columns[col], {}).setdefault(way, {}).setdefault(metric, [])
                models.append(MODEL_LABELS.get(row.model, row.model))
                unconverged += diff.mark != ""
    if not with_interval:
        return ("No paired interval is available (one seed and no per-image values), so this table shows "
                "no difference from N(0,I) beyond noise." if compared else "No prior can be compared with N(0,I).")
    if not found:
        return (f"No prior differs from N(0,I) beyond its 95% paired interval: all {with_interval} intervals "
                "include 0" + (f", and {compared - with_interval} differences have none." if compared > with_interval
                               else "."))
    parts = []
    for prior, ways in found.items():
        said = [f"{way} than N(0,I) on " + ", ".join(f"{m} ({', '.join(models)})" for m, models in ways[way].items())
                for way in ("better", "worse") if way in ways]
        parts.append(f"{prior} is " + " and ".join(said))
    significant = sum(len(ms) for ways in found.values() for metrics in ways.values() for ms in metrics.values())
    text = "Beyond the 95% paired interval, " + "; ".join(parts)
    text += f"; the other {with_interval - significant} of {with_interval} intervals include 0"
    if compared > with_interval:
        text += f" and {compared - with_interval} differences have no interval"
    if unconverged:
        text += (f"; {unconverged} of the {significant} differences involve runs not known to have converged "
                 f"({NOT_CONVERGED} or {CONVERGENCE_UNKNOWN})")
    return text + "."


def uncertainty_note(table: Table) -> str:
    typical = table.typical_count()
    if typical is None:
        return f"No runs of ours were found; every cell of ours is {EMPTY}."
    text = ("Ours: one seed per cell, no std." if typical == 1 else
            f"Ours: mean ± std over n={typical} seeds (sample std, ddof=1).")
    if any(c != typical for c in table.seed_counts()):
        text += " Cells marked (n=k) have k seeds instead."
    text += (f" {DELTA_LABEL}: the mean paired difference prior − N(0,I) with its 95% interval, a t-interval "
             "over the per-seed differences (S − 1 degrees of freedom); ELBO and IWAE are also paired over "
             "the same test images (with one seed: mean ± 1.96·SE over the per-image differences). "
             f"{SIGNIFICANT} and bold: the interval excludes 0. {NO_INTERVAL}: one seed and no per-image "
             "values, so no interval is available.")
    return text + f" {EMPTY}: no run. Bold in a row of values: best of the row."


def convergence_note(table: Table) -> str | None:
    runs = table.runs()
    if not runs:
        return None
    failed, unknown = [], []
    for (model, col), seeds in sorted(runs.items()):
        name = f"{MODEL_LABELS.get(model, model)} · {table.columns[col]}"
        bad = [str(s) for s, c in sorted(seeds.items(), key=lambda kv: str(kv[0])) if c is False]
        missing = [str(s) for s, c in sorted(seeds.items(), key=lambda kv: str(kv[0])) if c is None]
        if bad:
            failed.append(f"{name} (seed{'s' if len(bad) > 1 else ''} {', '.join(bad)})")
        if missing:
            unknown.append(name)
    total = sum(len(s) for s in runs.values())
    if not failed and not unknown:
        return f"Convergence: all {total} runs reached their plateau."
    notes = []
    if failed:
        notes.append(f"{NOT_CONVERGED} not converged: " + "; ".join(failed) + ".")
    if unknown:
        n = sum(c is None for s in runs.values() for c in s.values())
        notes.append(f"{CONVERGENCE_UNKNOWN} convergence unknown ({n} of {total} runs have no training section "
                     "in eval.json): " + "; ".join(unknown) + ".")
    return " ".join(notes)


def extra_note(table: Table) -> str | None:
    if not table.extra:
        return None
    listed = "; ".join(f"{label} {value:g}" for label, value in table.extra)
    return f"Other baselines of the paper's {table.paper_table}, which fit no prior column: {listed}."


# -- Tables 1 and 2 as frames ------------------------------------------------------------------
def table_frames(table: Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display strings, bold mask): a row of ours, its differences, then the paper's row."""
    header = ["", "source", *table.columns] + ([REAL_COLUMN] if table.real_column else [])
    typical = table.typical_count()
    records, bold = [], []
    for row in table.rows:
        best = row.best()
        ours = row.source == "ours"
        record = [row.label if ours else "", row.source_label] + [format_cell(c, row, typical) for c in row.cells]
        mask = [False, False] + [j in best for j in range(len(row.cells))]
        if table.real_column:
            record.append(mean_std(row.real.values, row.info.precision) if row.real is not None else "")
            mask.append(False)
        records.append(record)
        bold.append(mask)
        if ours:
            records.append(["", DELTA_LABEL, ""] + [format_difference(d, row.info.precision)
                                                    for d in row.differences[1:]] + [""] * table.real_column)
            bold.append([False] * 3 + [d is not None and d.significant for d in row.differences[1:]]
                        + [False] * table.real_column)
    return pd.DataFrame(records, columns=header), pd.DataFrame(bold, columns=header)


def table_data(table: Table) -> pd.DataFrame:
    """Numbers in long form, one line per non-empty cell: the CSV."""
    lines = []
    for row in table.rows:
        base = {"row": row.label, "model": row.model, "metric": row.metric, "source": row.source}
        for col, cell in enumerate(row.cells):
            if cell is None:
                continue
            line = {**base, "column": table.columns[col], "mean": cell.mean}
            if row.source == "ours":
                line.update(std=cell.std, n=cell.n, converged=cell.status)
                diff = row.differences[col]
                if diff is not None:
                    line.update(delta=diff.mean, ci_low=diff.low, ci_high=diff.high, ci_over=diff.over or None,
                                ci_n=diff.n, significant=diff.significant)
            lines.append(line)
        if row.real is not None:
            lines.append({**base, "source": "real", "column": REAL_COLUMN, "mean": row.real.mean,
                          "std": row.real.std, "n": row.real.n})
    for label, value in table.extra:
        lines.append({"row": label, "metric": "fid.value", "source": "paper", "mean": float(value)})
    columns = ["row", "model", "metric", "column", "source", "mean", "std", "n", "converged", "delta",
               "ci_low", "ci_high", "ci_over", "ci_n", "significant"]
    data = pd.DataFrame(lines, columns=columns)
    return data.astype({"n": "Int64", "ci_n": "Int64", "converged": "boolean", "significant": "boolean"})


def render_table(table: Table, caption: str, notes: list[str], sentence: str | None = None) -> Rendered:
    """Table 1 or 2, with the difference sentence (or ``sentence``) first under it."""
    frame, bold = table_frames(table)
    notes = [sentence or difference_sentence(table), uncertainty_note(table),
             *filter(None, [convergence_note(table), extra_note(table)]), *notes]
    return Rendered(caption, frame, notes, table_data(table), bold, left=2)


# -- Table 3 -----------------------------------------------------------------------------------
METHOD_LABELS = {"vae_trip_cond": "VAE-TRIP (joint ring)", "cvae": "CVAE (unknown-label baseline)"}
TABLE3_COLUMNS = {  # summary key: header
    "violation_any": "violates any ↓",
    "violation_mean": "violation per attribute ↓",
    "diversity_mean": "free-attribute entropy, bits ↑",
    "diversity_joint": "joint free entropy, bits ↑",
}


def table3(results: list[dict], profile: str) -> Rendered:
    """One row per (method, fraction of hidden labels), mean ± std over seeds of each summary number."""
    keys = list(TABLE3_COLUMNS)
    runs = pd.DataFrame([{"method": lookup(r, "run.method"), "missing": lookup(r, "run.missing"),
                          "seed": lookup(r, "run.seed"), "converged": convergence(r), "file": r.get("eval_path"),
                          **{k: metric_value(r, f"summary.{k}") for k in keys}} for r in results],
                        columns=["method", "missing", "seed", "converged", "file", *keys])
    duplicated = runs[runs.duplicated(["method", "missing", "seed"], keep=False)]
    if not duplicated.empty:
        raise ReportError(f"{' and '.join(map(str, duplicated['file']))} are the same conditional run")
    known = runs["converged"].notna().any()
    caption = (f"Table 3 (profile {profile}): generation with missing conditions. Violation (lower is better) "
               "and entropy of the free attributes (higher is more diverse), averaged over the specifications")
    header = ["method", "labels hidden", "seeds", *TABLE3_COLUMNS.values()] + (["converged"] if known else [])
    records, data = [], []
    for (method, missing), group in runs.groupby(["method", "missing"], sort=True):
        record = [METHOD_LABELS.get(method, method), f"{missing:.0%}", str(len(group))]
        record += [mean_std(group[k].dropna(), 3) for k in keys]
        if known:
            record.append(_converged_text(group))
        records.append(record)
        data.append({"method": method, "missing": missing, "seeds": len(group),
                     **{f"{k}_{s}": group[k].agg(s) for k in keys for s in ("mean", "std")},
                     "converged": _status(group["converged"])})
    frame = pd.DataFrame(records, columns=header)
    data = pd.DataFrame(data, columns=["method", "missing", "seeds", *(f"{k}_{s}" for k in keys for s in
                                                                      ("mean", "std")), "converged"])
    notes = table3_notes(results, runs, known)
    return Rendered(caption, frame, notes, data.astype({"converged": "boolean"}), left=1)


def _status(converged: pd.Series) -> bool | None:
    return False if (converged == False).any() else None if converged.isna().any() else True  # noqa: E712


def _converged_text(group: pd.DataFrame) -> str:
    status = _status(group["converged"])
    if status is None:
        return "unknown"
    if status:
        return "yes"
    bad = group.loc[group["converged"] == False, "seed"]  # noqa: E712
    return "no (seed " + ", ".join(map(str, bad)) + ")"


def table3_notes(results: list[dict], runs: pd.DataFrame, known: bool) -> list[str]:
    if not results:
        return ["No conditional run has been evaluated."]
    seeds = runs.groupby(["method", "missing"])["seed"].count()
    if seeds.max() <= 1:
        notes = ["One seed per row: no std, and no interval is available."]
    else:
        notes = [f"Mean ± std over up to {seeds.max()} seeds (sample std, ddof=1); no paired interval is "
                 "computed for this table."]
    if not known:
        notes.append("Convergence: not recorded (the cond_eval.json files have no training section).")
    first = results[0]
    specs = [s.get("label", "?") for s in first.get("specs", [])]
    if specs:
        per_spec = lookup(first, "settings.samples_per_spec")
        notes.append(f"Specifications ({len(specs)}): " + "; ".join(specs) + f". {per_spec} samples each, "
                     "attributes read off the samples by a CNN classifier trained on the real images.")
    accuracy = _classifier_accuracy(first)
    if accuracy:
        notes.append("Classifier held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()) + ".")
    notes.append("The paper shows its Table 3 as image grids only; these numbers have no paper counterpart.")
    return notes


def _classifier_accuracy(result: dict) -> dict:
    where = lookup(result, "classifier.path")
    path = Path(where) / "classifier.json" if where else None
    return json.loads(path.read_text()).get("accuracy", {}) if path is not None and path.is_file() else {}


# -- the induced-prior table -------------------------------------------------------------------
KIND_LABELS = {"original": "own prior (control)", "pgan": "PGAN (secondary GAN)", "trip": "TRIP (max. likelihood)"}
INDUCED_COLUMNS = {  # eval path: (header, CSV column, precision)
    "before.pag": ("PAG before", "pag_before", 2),
    "after.pag": ("PAG after", "pag_after", 2),
    "before.fid.value": ("FID before", "fid_before", 2),
    "after.fid.value": ("FID after", "fid_after", 2),
    "before.prior_to_codes_distance": ("prior→codes distance before", "distance_before", 3),
    "after.prior_to_codes_distance": ("after", "distance_after", 3),
}
HELDOUT = ("normal", "initial", "fitted")


def induced_table(results: list[dict], profile: str) -> Rendered:
    order = {k: i for i, k in enumerate(KIND_LABELS)}
    results = sorted(results, key=lambda r: order.get(r.get("kind"), len(order)))
    source = results[0].get("source", {}) if results else {}
    caption = (f"Data-induced priors (profile {profile}): {source.get('model', '?')} trained with a "
               f"{source.get('prior', '?')} prior, then continued with each prior fitted to reversed codes")
    data = pd.DataFrame([{"kind": r.get("kind"), **{csv: metric_value(r, path)
                                                    for path, (_, csv, _) in INDUCED_COLUMNS.items()},
                          **{f"heldout_{k}": metric_value(r, f"prior.heldout_loglik.{k}") for k in HELDOUT}}
                         for r in results],
                        columns=["kind", *(c for _, c, _ in INDUCED_COLUMNS.values()),
                                 *(f"heldout_{k}" for k in HELDOUT)])
    frame = pd.DataFrame({"continued with": [KIND_LABELS.get(k, k) for k in data["kind"]]})
    for header, csv, precision in INDUCED_COLUMNS.values():
        frame[header] = [mean_std([v] if pd.notna(v) else [], precision) for v in data[csv]]
    heldout = data[[f"heldout_{k}" for k in HELDOUT]]
    frame["codes held-out log-lik (N(0,I) / initial / fitted)"] = [
        EMPTY if row.isna().any() else " / ".join(f"{v:.2f}" for v in row) for _, row in heldout.iterrows()]
    return Rendered(caption, frame, induced_notes(results), data, left=1)


def induced_notes(results: list[dict]) -> list[str]:
    if not results:
        return ["No induced-prior experiment has run."]
    cfg, first = results[0].get("config", {}), results[0]
    return [
        "One run per prior (one seed): no std, and no interval is available.",
        f"Codes: {cfg.get('reversal_examples', '?')} training images reversed with {cfg.get('reversal_steps', '?')} "
        f"steps of Algorithm 1; each prior continues the GAN for {cfg.get('continue_steps', '?')} generator steps "
        "with fresh optimisers and the run's own settings.",
        f"FID: {lookup(first, 'before.fid.text') or '?'} before; the same counts after. PAG: lower means the codes "
        "the generator uses sit closer to N(0, I); the prior→codes distance is the mean distance from a prior "
        "sample to the nearest reversed code (lower: the prior covers what the generator uses).",
        "The control row continues with the run's own prior for as many steps, so differences from it are the "
        "prior's effect rather than longer training.",
    ]


# -- writing -----------------------------------------------------------------------------------
@dataclass
class Rendered:
    """A table ready to write: display strings, bold cells, caption, notes, and its numbers for the CSV."""

    caption: str
    frame: pd.DataFrame  # display strings
    notes: list[str]
    data: pd.DataFrame  # numbers: the CSV
    bold: pd.DataFrame | None = None  # same shape as frame
    left: int = 1  # leading label columns, left-aligned; the rest are right-aligned

    def _bold(self) -> pd.DataFrame:
        return self.bold if self.bold is not None else pd.DataFrame(False, self.frame.index, self.frame.columns)

    def markdown(self) -> str:
        frame = self.frame.map(_md_escape)
        frame = frame.mask(self._bold() & (frame != EMPTY) & (frame != ""), frame.map("**{}**".format))
        frame.columns = [_md_escape(c) for c in frame.columns]
        align = ["left"] * self.left + ["right"] * (len(frame.columns) - self.left)
        body = frame.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)
        notes = [f"- {_md_escape(n)}" for n in self.notes]
        return "\n".join([f"**{_md_escape(self.caption)}**", "", body, "", *notes]) + "\n"

    def latex(self) -> str:
        """A ``table`` float with a booktabs tabular; needs ``\\usepackage{booktabs}``."""
        styler = (self.frame.style.hide(axis="index")
                  .format(_latex_symbols, escape="latex")
                  .format_index(_latex_symbols, axis=1, escape="latex")
                  .apply(lambda _: self._bold().map(lambda b: "textbf: --rwrap;" if b else ""), axis=None))
        align = "l" * self.left + "r" * (len(self.frame.columns) - self.left)
        body = styler.to_latex(column_format=align, hrules=True, environment="table", position="t",
                               position_float="centering", caption=latex_escape(self.caption))
        notes = [r"\par\smallskip", r"{\footnotesize", *(latex_escape(n) + r"\par" for n in self.notes), "}"]
        head, tail = body.rstrip("\n").rsplit("\n", 1)  # tail: \end{table}
        return "\n".join([r"% Requires \usepackage{booktabs}.", head, *notes, tail]) + "\n"

    def csv(self) -> str:
        return self.data.to_csv(index=False, lineterminator="\n")

    def write(self, out_dir: Path, stem: str) -> list[Path]:
        """``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` in ``out_dir``, each written atomically."""
        texts = {f"{stem}.md": self.markdown(), f"{stem}.csv": self.csv(), f"{stem}.tex": self.latex()}
        return [atomic_write_text(Path(out_dir) / name, text) for name, text in texts.items()]


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("*", "\\*")


# Styler escapes LaTeX's special characters in cells and headers; these symbols follow it.
LATEX_SYMBOLS = {
    "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "→": r"$\to$", "—": "---", "–": "--",
    "·": r"$\cdot$", "×": r"$\times$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "≥": r"$\geq$", "≤": r"$\leq$",
    "‖": r"$\|$",
}
LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _latex_symbols(text) -> str:
    return "".join(LATEX_SYMBOLS.get(ch, ch) for ch in str(text))


def latex_escape(text) -> str:
    """Caption and notes, which Styler does not escape: the special characters, then the symbols."""
    return _latex_symbols("".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text)))
