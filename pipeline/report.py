"""Write one profile's report: table files, ``metrics.json`` and an index page, ``README.md``.

    from pipeline.tables import collect
    from pipeline.report import write_reports
    results = collect(sorted(Path("runs/shapes").glob("*/eval.json")))
    write_reports(results, Path("reports"), "shapes",
                  protocol={"image_size": 32, "steps": {"vae": 3000, "wgan": 1500, "wgan_gp": 1500}})

Files written into ``out_dir``. Each is written to a temporary file and then
moved into place with ``os.replace``, so a reader never sees half a file:

* ``table1.md``, ``table1.csv`` and ``table1.tex`` (the paper's CelebA
  comparison), and ``table2.*`` (its CIFAR-10 FID comparison, same form), each
  with our profile's numbers and the paper's labelled as such;
* ``metrics.json``: flat means over seeds, e.g. ``{"fid/vae/normal": 86.7}``,
  for ``dvc metrics show``;
* ``README.md``: the Markdown table, then each run's figures.

Figures are not copied. The page links them where evaluation wrote them,
``<run dir>/figures/*.png``, by paths relative to ``out_dir``. The page
therefore renders on GitHub as long as the run directories sit in the same
checkout.

One ``out_dir`` holds one profile's report. Give a second profile its own
directory (e.g. ``reports/cifar10``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from pipeline.tables import (
    MODEL_LABELS, PAPER_TABLE1, PAPER_TABLE2, PRIOR_COLUMNS, TABLE1_ROWS, TABLE2_ROWS, ReportError,
    build_table, column_of, summary_metrics, to_csv, to_latex, to_markdown,
)
from trip.io import atomic_write_text

PAPER_CITATION = "Kuznetsov et al., NeurIPS 2019"

TABLES = {
    "table1": {"title": "Table 1", "rows": TABLE1_ROWS, "paper": PAPER_TABLE1},
    "table2": {"title": "Table 2", "rows": TABLE2_ROWS, "paper": PAPER_TABLE2},
}

CIFAR10_DATASETS = ("cifar10", "cifar-10")


def write_reports(results: list[dict], out_dir: Path, profile_name: str, protocol: dict,
                  paper: str | None = PAPER_CITATION, table: str | None = None) -> list[Path]:
    """Write the tables, ``metrics.json`` and ``README.md`` into ``out_dir``; returns the paths written.

    ``results``: from ``pipeline.tables.collect``. ``protocol``: how our runs
    were made, stated under the table (see ``protocol_notes``). ``paper``: the
    citation that labels the paper's numbers; with None, the paper's rows are
    left out. ``table``: "table1" or "table2" alone; with None, both, the one
    matching the dataset first (Table 2 for CIFAR-10 runs).
    """
    out_dir = Path(out_dir)
    if table is not None and table not in TABLES:
        raise ReportError(f"table: {table!r} is not one of {', '.join(TABLES)}")
    names = [table] if table else sorted(TABLES, key=lambda t: t != infer_table(results, protocol))
    out_dir.mkdir(parents=True, exist_ok=True)
    contents, markdowns = {}, {}
    for name in names:
        spec = TABLES[name]
        built = build_table(results, spec["rows"], spec["paper"] if paper else None)
        caption = table_caption(name, _dataset(results, protocol), profile_name)
        notes = protocol_notes(protocol, results, name, paper)
        markdowns[name] = to_markdown(built, caption, notes)
        contents.update({f"{name}.md": markdowns[name], f"{name}.csv": to_csv(built),
                         f"{name}.tex": to_latex(built, caption, notes)})
    contents["metrics.json"] = json.dumps(summary_metrics(results), indent=2) + "\n"
    contents["README.md"] = index_page(results, out_dir, profile_name, markdowns)
    return [atomic_write_text(out_dir / name, text) for name, text in contents.items()]


def infer_table(results: list[dict], protocol: dict) -> str:
    return "table2" if _dataset(results, protocol).lower() in CIFAR10_DATASETS else "table1"


def _dataset(results: list[dict], protocol: dict) -> str:
    if protocol.get("dataset"):
        return str(protocol["dataset"])
    names = sorted({r["run"]["dataset"] for r in results})
    return ", ".join(names) if names else "unknown"


# -- caption and protocol --------------------------------------------------------------
def table_caption(table: str, dataset: str, profile_name: str) -> str:
    if table == "table1":
        what = ("FID (lower is better) of VAE, WGAN and WGAN-GP; test ELBO and IWAE ELBO "
                "(higher is better, nats per image) of the VAE")
    else:
        what = f"FID (lower is better) of GAN- and VAE-based models on {dataset}"
    return (f"{TABLES[table]['title']} (profile {profile_name}): {what}; PAG (lower is better) of WGAN "
            f"and WGAN-GP, rows of ours only (the paper reports no PAG). Columns: the prior of the latent codes.")


def protocol_notes(protocol: dict, results: list[dict], table: str, paper: str | None) -> list[str]:
    """Sentences stating our protocol, and how the paper's rows compare.

    Known ``protocol`` keys: dataset, image_size, steps ({model: steps} or one
    number), batch_size, seeds, fid_samples, fid_reference, fid_split,
    iwae_k, test_examples, reversal_examples. Facts that evaluation recorded
    (sample counts, split, k, seeds) are taken from the results when the
    caller does not give them. Other keys are listed as they are.
    """
    facts = {**_observed(results), **{k: v for k, v in protocol.items() if v is not None}}
    get = facts.get
    notes = [_training_note(facts)]
    if get("fid_samples") is not None:
        notes.append(f"FID: {_fmt(get('fid_samples'))} generated samples against {_fmt(get('fid_reference'))} "
                     f"reference images of the {_fmt(get('fid_split'))} split (pytorch-fid's Inception).")
    if table == "table1" and get("iwae_k") is not None:
        notes.append(f"ELBO and IWAE ELBO (k={_fmt(get('iwae_k'))}): nats per image, mean over "
                     f"{_fmt(get('test_examples'))} test images.")
    if get("reversal_examples") is not None:
        notes.append(f"PAG: from generator reversal of {_fmt(get('reversal_examples'))} training images; "
                     f"lower means the reversed codes sit closer to N(0, I).")
    known = {"dataset", "image_size", "steps", "batch_size", "seeds", "fid_samples", "fid_reference",
             "fid_split", "iwae_k", "test_examples", "reversal_examples"}
    notes += [f"{key}: {_fmt(value)}." for key, value in protocol.items() if key not in known]
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
    "seeds": "run.seed",
    "dataset": "run.dataset",
}


def _observed(results: list[dict]) -> dict:
    """{protocol key: sorted distinct values found in the results}."""
    seen = {}
    for key, path in OBSERVED.items():
        values = {_lookup(r, path) for r in results} - {None}
        if values:
            seen[key] = sorted(values, key=str)
    return seen


def _lookup(result: dict, path: str):
    section, key = path.split(".")
    part = result.get(section)
    value = part.get(key) if isinstance(part, dict) else None
    return value if isinstance(value, (str, int, float)) else None


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{MODEL_LABELS.get(k, k)} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_fmt, value)) if len(value) != 1 else _fmt(value[0])
    return "?" if value is None else str(value)


# -- the index page --------------------------------------------------------------------
def index_page(results: list[dict], out_dir: Path, profile_name: str, markdowns: dict[str, str]) -> str:
    """The page: each table's Markdown (keyed "table1", "table2"), then every run's figures."""
    names = [f"{t}.{ext}" for t in markdowns for ext in ("md", "csv", "tex")] + ["metrics.json"]
    files = ", ".join(f"[{name}]({name})" for name in names)
    lines = [f"# Reports: profile {profile_name}", "", f"From {len(results)} evaluated runs. Files: {files}.", ""]
    for table, markdown in markdowns.items():
        lines += [f"## {TABLES[table]['title']}", "", markdown.rstrip(), ""]
    lines += ["## Figures", "", "Written by `trip.evaluate` beside each run's eval.json; linked, not copied.", ""]
    for model in _models_in_order(results):
        lines += [f"### {MODEL_LABELS.get(model, model)}", "", *figure_table(results, model, out_dir), ""]
    if not results:
        lines += ["No evaluated runs.", ""]
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

