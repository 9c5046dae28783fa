"""Write one profile's report: table files, the metrics file and an index page, ``README.md``.

    from pipeline.tables import collect, read_results
    from pipeline.report import write_reports
    results = collect(sorted(Path("runs/shapes").glob("*/eval.json")))
    write_reports(results, Path("reports/shapes"), "shapes",
                  protocol={"image_size": 32, "steps": {"vae": 3000, "wgan": 1500, "wgan_gp": 1500}},
                  conditional=read_results(cond_paths), induced=read_results(induced_paths))

Files written into ``out_dir``. Each is written to a temporary file and then
moved into place with ``os.replace``, so a reader never sees half a file:

* ``table1.md``, ``table1.csv`` and ``table1.tex`` (the paper's CelebA
  comparison), and ``table2.*`` (its CIFAR-10 FID comparison, same form), each
  with our profile's numbers, their paired differences from N(0,I) and the
  paper's numbers labelled as such; for ``shapes`` the shapes-native metrics
  lead (see ``pipeline.tables``);
* ``table3.*`` and ``induced.*`` when ``conditional`` / ``induced`` results
  are given;
* the metrics file (``metrics_path``, by default ``metrics.json``): flat means
  over seeds, e.g. ``{"fid/vae/normal": 86.7}``, for ``dvc metrics show``;
* ``README.md``: the link to the profile's runs in the MLflow UI (when given),
  every table's Markdown, then each run's figures.

Figures are not copied. The page links them where evaluation wrote them,
``<run dir>/figures/*.png``, by paths relative to ``out_dir``. The page
therefore renders on GitHub as long as the run directories sit in the same
checkout.

One ``out_dir`` holds one profile's report. Give a second profile its own
directory (e.g. ``reports/cifar10``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from urllib.parse import quote

from pipeline.tables import (
    REAL_COLUMN, MODEL_LABELS, PAPER_TABLE1, PAPER_TABLE2, PRIOR_COLUMNS, TABLE1_ROWS, TABLE2_ROWS, ReportError, Rendered,
    build_table, column_of, induced_table, lookup, render_table, summary_metrics, table3,
)
from trip.io import atomic_write_text

PAPER_CITATION = "Kuznetsov et al., NeurIPS 2019"

TABLES = {
    "table1": {"title": "Table 1", "rows": TABLE1_ROWS, "paper": PAPER_TABLE1},
    "table2": {"title": "Table 2", "rows": TABLE2_ROWS, "paper": PAPER_TABLE2},
}
EXTRA_TITLES = {"table3": "Table 3: generation with missing conditions", "induced": "Data-induced priors"}

CIFAR10_DATASETS = ("cifar10", "cifar-10")


def write_reports(results: list[dict], out_dir: Path, profile_name: str, protocol: dict,
                  paper: str | None = PAPER_CITATION, table: str | None = None,
                  conditional: list[dict] | None = None, induced: list[dict] | None = None,
                  metrics_path: Path | None = None, sentences: dict[str, str] | None = None,
                  mlflow_link: str | None = None) -> list[Path]:
    """Write the tables, the metrics file and ``README.md`` into ``out_dir``; returns the paths written.

    ``results``: from ``pipeline.tables.collect``. ``protocol``: how our runs
    were made, stated under the table (see ``protocol_notes``). ``paper``: the
    citation that labels the paper's numbers; with None, the paper's rows are
    left out. ``table``: "table1" or "table2" alone; with None, both, the one
    matching the dataset first (Table 2 for CIFAR-10 runs). ``conditional``
    and ``induced``: results of those stages (``pipeline.tables.read_results``);
    their tables are written when there are any. ``metrics_path``: where the
    flat metrics go (default ``out_dir/metrics.json``). ``sentences``: the
    sentence written first under a table ({"table1": ...}), instead of the one
    generated from its paired differences. ``mlflow_link``: the MLflow UI address
    of the profile's runs (``pipeline.tracking.ui_link``), linked from the page.
    """
    out_dir = Path(out_dir)
    if table is not None and table not in TABLES:
        raise ReportError(f"table: {table!r} is not one of {', '.join(TABLES)}")
    names = [table] if table else sorted(TABLES, key=lambda t: t != infer_table(results, protocol))
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered: dict[str, Rendered] = {}
    for name in names:
        spec = TABLES[name]
        built = build_table(results, spec["rows"], spec["paper"] if paper else None)
        caption = table_caption(name, _dataset(results, protocol), profile_name, built.real_column)
        notes = protocol_notes(protocol, results, name, paper, built.real_column)
        rendered[name] = render_table(built, caption, notes, (sentences or {}).get(name))
    if conditional:
        rendered["table3"] = table3(conditional, profile_name)
    if induced:
        rendered["induced"] = induced_table(induced, profile_name)
    written = [path for name, r in rendered.items() for path in r.write(out_dir, name)]
    metrics_path = Path(metrics_path) if metrics_path else out_dir / "metrics.json"
    written.append(write_metrics(metrics_path, results, conditional or [], induced or []))
    page = index_page(results, out_dir, profile_name, rendered, metrics_path,
                      {"table3": conditional or [], "induced": induced or []}, mlflow_link)
    return written + [atomic_write_text(out_dir / "README.md", page)]


def write_metrics(path: Path, results: list[dict], conditional: list[dict] = (), induced: list[dict] = ()) -> Path:
    """The flat metrics file (``summary_metrics`` and ``extra_metrics``) at ``path``, written atomically.

    The pipeline's is ``<report_root>/metrics_<profile>.json``, a DVC metrics file tracked by
    git (see dvc.yaml), so keys are sorted and the file ends with a newline: its diffs stay small.
    """
    metrics = {**summary_metrics(results), **extra_metrics(list(conditional), list(induced))}
    return atomic_write_text(Path(path), json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def infer_table(results: list[dict], protocol: dict) -> str:
    return "table2" if _dataset(results, protocol).lower() in CIFAR10_DATASETS else "table1"


def _dataset(results: list[dict], protocol: dict) -> str:
    if protocol.get("dataset"):
        return str(protocol["dataset"])
    names = sorted({r["run"]["dataset"] for r in results})
    return ", ".join(names) if names else "unknown"


# -- caption and protocol --------------------------------------------------------------
def table_caption(table: str, dataset: str, profile_name: str, domain: bool = False) -> str:
    if table == "table1":
        what = ("FID (lower is better) of VAE, WGAN and WGAN-GP; test ELBO and IWAE ELBO "
                "(higher is better, nats per image) of the VAE")
    else:
        what = f"FID (lower is better) of GAN- and VAE-based models on {dataset}"
    if domain:
        what = (f"{dataset}-native metrics first (FD, KID, precision, recall in the attribute classifier's "
                "features; coverage of the attribute combinations), with a disjoint real set as the floor; "
                "then Inception " + what)
    return (f"{TABLES[table]['title']} (profile {profile_name}): {what}; PAG (lower is better) of WGAN "
            f"and WGAN-GP, rows of ours only (the paper reports no PAG). Columns: the prior of the latent codes.")


def protocol_notes(protocol: dict, results: list[dict], table: str, paper: str | None,
                   domain: bool = False) -> list[str]:
    """Sentences stating our protocol, and how the paper's rows compare.

    Known ``protocol`` keys: dataset, image_size, steps ({model: steps} or one
    number), batch_size, seeds, fid_samples, fid_reference, fid_split,
    iwae_k, test_examples, reversal_examples, domain_samples, domain_real,
    mode_samples, modes_total, convergence_rule. Facts that evaluation
    recorded (sample counts, split, k, seeds, the convergence rule) are taken
    from the results when the caller does not give them. Other keys are
    listed as they are.
    """
    facts = {**_observed(results), **{k: v for k, v in protocol.items() if v is not None}}
    get = facts.get
    notes = [_training_note(facts)]
    if domain:
        notes.append(f"Native rows: {_fmt(get('domain_samples'))} generated samples against "
                     f"{_fmt(get('domain_real'))} held-out real images, in the feature space of the attribute "
                     "classifier (FD: Fréchet distance; KID: kernel inception distance, unbiased; precision and "
                     "recall: k-NN manifolds, Kynkäänniemi et al. 2019). Modes: the "
                     f"{_fmt(get('modes_total'))} attribute combinations read off {_fmt(get('mode_samples'))} "
                     "samples by the same classifier: how many receive a sample, KL(p_data ‖ p_model) and total "
                     f"variation against the exact data distribution. Column '{REAL_COLUMN}': the same metrics of a "
                     "disjoint real set, the floor.")
    if get("convergence_rule") is not None:
        notes.append(f"Convergence rule: {_fmt(get('convergence_rule'))}.")
    if get("fid_samples") is not None:
        notes.append(f"{'Inception ' if domain else ''}FID: {_fmt(get('fid_samples'))} generated samples against "
                     f"{_fmt(get('fid_reference'))} reference images of the {_fmt(get('fid_split'))} split "
                     "(pytorch-fid's Inception).")
    if table == "table1" and get("iwae_k") is not None:
        notes.append(f"ELBO and IWAE ELBO (k={_fmt(get('iwae_k'))}): nats per image of a discretised-Gaussian "
                     f"likelihood, mean over {_fmt(get('test_examples'))} test images (bits per dimension in "
                     "eval.json). The paper's ELBO rows are its code's unnormalised −Σ(x̂ − x)² averaged over "
                     "channels: another scale, so only their order compares with ours.")
    if get("reversal_examples") is not None:
        notes.append(f"PAG: from generator reversal of {_fmt(get('reversal_examples'))} training images; "
                     f"lower means the reversed codes sit closer to N(0, I). It is measured against N(0, I) "
                     "whatever the run's prior, so it is compared within a prior column only and never bold.")
    notes += [f"{key}: {_fmt(value)}." for key, value in protocol.items() if key not in KNOWN_PROTOCOL]
    if paper:
        notes.append(_paper_note(TABLES[table]["paper"], paper, _fmt(get("dataset"))))
    return notes


def _paper_note(spec, paper: str, ours: str) -> str:
    text = f"Rows 'paper ({spec.dataset})': the numbers printed in {spec.table} of {paper}. "
    if _canonical(spec.dataset) in _canonical(ours):
        text += "Its networks, budgets and sample counts may differ from ours."
    else:
        text += ("Its dataset, networks and budgets differ from ours: compare the order of the priors "
                 "within a row, not the absolute values.")
    return text + (f" {spec.remark}" if spec.remark else "")


def _canonical(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _training_note(facts: dict) -> str:
    size = facts.get("image_size")
    text = f"Our protocol: dataset {_fmt(facts.get('dataset'))}" + (f" at {size}×{size}" if size else "")
    steps = facts.get("steps")
    if steps is not None:
        text += f"; training steps {_fmt(steps)}"
    if facts.get("batch_size") is not None:
        text += f", batch size {_fmt(facts['batch_size'])}"
    return text + (f"; seeds {_fmt(facts['seeds'])}." if facts.get("seeds") is not None else ".")


# Where each protocol fact sits in eval.json, when evaluation recorded it.
OBSERVED = {
    "fid_samples": "fid.n_samples",
    "fid_reference": "fid.n_reference",
    "fid_split": "fid.reference_split",
    "iwae_k": "likelihood.iwae_k",
    "test_examples": "likelihood.n_examples",
    "reversal_examples": "reversal.n_examples",
    "domain_samples": "domain.n_samples",
    "domain_real": "domain.n_real",
    "mode_samples": "domain.n_modes_samples",
    "modes_total": "domain.modes_total",
    "convergence_rule": "training.rule",
    "seeds": "run.seed",
    "dataset": "run.dataset",
}
KNOWN_PROTOCOL = {"image_size", "steps", "batch_size", *OBSERVED}


def _observed(results: list[dict]) -> dict:
    """{protocol key: sorted distinct values found in the results}."""
    seen = {}
    for key, path in OBSERVED.items():
        values = {v for v in (lookup(r, path) for r in results) if isinstance(v, (str, int, float))}
        if values:
            seen[key] = sorted(values, key=str)
    return seen


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{MODEL_LABELS.get(k, k)} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_fmt, value)) if len(value) != 1 else _fmt(value[0])
    return "?" if value is None else str(value)


# -- Table 3 and induced priors: metrics and figures -------------------------------------------
def extra_metrics(conditional: list[dict], induced: list[dict]) -> dict:
    """Flat numbers for ``dvc metrics``: Table 3 per method, hidden fraction and seed; induced per kind."""
    out = {}
    for r in conditional:
        key = f"{lookup(r, 'run.method')}/miss{(lookup(r, 'run.missing') or 0) * 100:g}/s{lookup(r, 'run.seed')}"
        out[f"violation_any/{key}"] = lookup(r, "summary.violation_any")
        out[f"free_entropy/{key}"] = lookup(r, "summary.diversity_mean")
    for r in induced:
        out[f"induced_pag_after/{r.get('kind')}"] = lookup(r, "after.pag")
        out[f"induced_fid_after/{r.get('kind')}"] = lookup(r, "after.fid.value")
    return {k: v for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def extra_figures(name: str, results: list[dict], out_dir: Path) -> list[str]:
    """One linked image per result: the conditional sample grid, or the induced prior's samples."""
    lines = []
    for r in results:
        if name == "table3":
            figure = "cond_samples.png"
            title = (f"{lookup(r, 'run.method')}, {(lookup(r, 'run.missing') or 0):.0%} hidden, "
                     f"seed {lookup(r, 'run.seed')}")
        else:
            figure, title = lookup(r, "files.samples"), f"continued with {r.get('kind')}"
        target = Path(r["eval_path"]).parent / figure if figure else None
        if target is not None and target.is_file():
            lines.append(f"![{title}]({quote(Path(os.path.relpath(target, out_dir)).as_posix())})")
    return lines


# -- the index page --------------------------------------------------------------------
def index_page(results: list[dict], out_dir: Path, profile_name: str, rendered: dict[str, Rendered],
               metrics_path: Path | None = None, extra: dict[str, list[dict]] | None = None,
               mlflow_link: str | None = None) -> str:
    """The page: the MLflow link, each table's Markdown, Tables 1 and 2's run figures, then Table 3's
    and induced figures."""
    metrics_path = Path(metrics_path) if metrics_path else Path(out_dir) / "metrics.json"
    links = [(f"{t}.{ext}", f"{t}.{ext}") for t in rendered for ext in ("md", "csv", "tex")]
    links.append((metrics_path.name, Path(os.path.relpath(metrics_path, out_dir)).as_posix()))
    files = ", ".join(f"[{name}]({quote(target)})" for name, target in links)
    lines = [f"# Reports: profile {profile_name}", "", f"From {len(results)} evaluated runs. Files: {files}.", ""]
    if mlflow_link:
        lines += [f"Every run, with its parameters, curves and artifacts, in MLflow: [{mlflow_link}]({mlflow_link}) "
                  "(with `mlflow ui` or the tracking server running).", ""]
    for name in (n for n in rendered if n in TABLES):
        lines += [f"## {TABLES[name]['title']}", "", rendered[name].markdown().rstrip(), ""]
    lines += ["## Figures", "", "Written by `trip.evaluate` beside each run's eval.json; linked, not copied.", ""]
    for model in _models_in_order(results):
        lines += [f"### {MODEL_LABELS.get(model, model)}", "", *figure_table(results, model, out_dir), ""]
    if not results:
        lines += ["No evaluated runs.", ""]
    for name in (n for n in rendered if n not in TABLES):
        lines += [f"## {EXTRA_TITLES.get(name, name)}", "", rendered[name].markdown().rstrip(), "",
                  *extra_figures(name, (extra or {}).get(name, []), out_dir), ""]
    return "\n".join(lines)


def _models_in_order(results: list[dict]) -> list[str]:
    present = {r["run"]["model"] for r in results}
    return [m for m in MODEL_LABELS if m in present] + sorted(present - set(MODEL_LABELS))


def figure_table(results: list[dict], model: str, out_dir: Path) -> list[str]:
    """A Markdown table of one model's runs (rows) by figure (columns), images linked relative to out_dir."""
    runs = sorted((r for r in results if r["run"]["model"] == model), key=_run_order)
    kinds = []
    for result in runs:
        kinds += [k for k in (Path(f).stem for f in run_figures(result)) if k not in kinds]
    if not kinds:
        return ["No figures were recorded for these runs."]
    lines = ["| run | " + " | ".join(k.replace("_", " ") for k in kinds) + " |",
             "|:--|" + ":-:|" * len(kinds)]
    for result in runs:
        by_kind = {Path(f).stem: f for f in run_figures(result)}
        cells = [_image(result, by_kind[k], out_dir) if k in by_kind else "—" for k in kinds]
        lines.append(f"| {run_title(result)} | " + " | ".join(cells) + " |")
    return lines


def run_figures(result: dict) -> list[str]:
    """Figure paths relative to the run directory, as evaluation recorded them."""
    files = list((result.get("figures") or {}).get("files", []))
    files += [f for f in (result.get("reversal") or {}).get("figures", []) if f not in files]
    return files


def run_title(result: dict) -> str:
    run = result["run"]
    col = column_of(run)
    prior = PRIOR_COLUMNS[col][2] if col is not None else f"{run['prior']}"
    return f"{prior}, seed {run['seed']}"


def _run_order(result: dict):
    col = column_of(result["run"])
    return (len(PRIOR_COLUMNS) if col is None else col, str(result["run"]["prior"]), result["run"]["seed"])


def _image(result: dict, figure: str, out_dir: Path) -> str:
    run_dir = Path(result["eval_path"]).parent if "eval_path" in result else Path(result["run"]["run_dir"])
    target = run_dir / figure
    if not target.is_file():
        return f"missing: {figure}"
    rel = Path(os.path.relpath(target.resolve(), Path(out_dir).resolve())).as_posix()
    return f"![{run_title(result)}: {Path(figure).stem.replace('_', ' ')}]({quote(rel)})"

