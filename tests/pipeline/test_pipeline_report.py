"""Tables 1 and 2 and the report index, from synthetic eval.json files of a 3 x 5 grid with 2 seeds."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from pipeline.report import write_reports
from pipeline.tables import (
    PAPER_TABLE1, PAPER_TABLE2, PRIOR_COLUMNS, TABLE1_ROWS, TABLE2_ROWS, ReportError, build_table,
    collect, latex_escape, summary_metrics, to_csv, to_latex, to_markdown,
)

MODELS = ("vae", "wgan", "wgan_gp")
FID_BASE = {"vae": 300.0, "wgan": 200.0, "wgan_gp": 100.0}
# Runs left out: a whole cell (both seeds), and one seed of another cell.
MISSING = {("wgan", 3, 0), ("wgan", 3, 1), ("wgan_gp", 1, 1)}


# Values chosen so the best column differs by metric: FID is lowest under TRIP learnable (4),
# ELBO/IWAE highest under TRIP learnable (4), PAG lowest under N(0,I) (0).
def fid(model, col, seed):
    return FID_BASE[model] + 5.0 * (4 - col) + 2.0 * seed


def elbo(col, seed):
    return -1000.0 + 3.0 * col + seed


def pag(col, seed):
    return 100.0 + 7.0 * col + 0.5 * seed


def write_run(root: Path, model: str, col: int, seed: int, dataset: str = "shapes") -> Path:
    prior, learnable, _ = PRIOR_COLUMNS[col]
    variant = "normal" if prior == "normal" else f"{prior}_{'learnable' if learnable else 'fixed'}"
    run_dir = root / dataset / f"{model}-{variant}-s{seed}"
    (run_dir / "figures").mkdir(parents=True)
    files = ["figures/samples.png", "figures/training_curves.png"]
    for name in files:
        (run_dir / name).write_bytes(b"\x89PNG")
    result = {
        # Evaluation records N(0, I) runs as learnable (the config default): both must land in one column.
        "run": {"model": model, "prior": prior, "learnable": True if learnable is None else learnable,
                "dataset": dataset, "seed": seed, "run_dir": f"runs/{dataset}/{run_dir.name}"},
        "fid": {"value": fid(model, col, seed), "n_samples": 500, "n_reference": 400, "reference_split": "train",
                "text": "FID"},
        "figures": {"files": files},
    }
    if model == "vae":
        result["likelihood"] = {"elbo": elbo(col, seed), "elbo_se": 1.0, "iwae": elbo(col, seed) + 10.0,
                                "iwae_se": 1.0, "n_examples": 1000, "iwae_k": 100}
    else:
        (run_dir / "figures" / "reversal_curve.png").write_bytes(b"\x89PNG")
        result["reversal"] = {"pag": pag(col, seed), "reversal_final_mse": 0.1, "n_examples": 256,
                              "figures": ["figures/disagreement.png", "figures/reversal_curve.png"]}
    (run_dir / "eval.json").write_text(json.dumps(result))
    return run_dir / "eval.json"


@pytest.fixture
def grid(tmp_path):
    paths = [write_run(tmp_path / "runs", m, c, s) for m in MODELS for c in range(5) for s in (0, 1)
             if (m, c, s) not in MISSING]
    return collect(paths)


def row(table, label, source="ours"):
    return next(r for r in table.rows if r.label == label and r.source == source)


PROTOCOL = {"image_size": 32, "steps": {"vae": 3000, "wgan": 1500, "wgan_gp": 1500}}


# -- reading -------------------------------------------------------------------------------
def test_collect_names_a_missing_or_corrupt_file(tmp_path):
    missing = tmp_path / "nope" / "eval.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        collect([missing])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"run": {')
    with pytest.raises(ReportError, match=re.escape(str(corrupt))):
        collect([corrupt])
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"run": {"model": "vae", "prior": "trip", "learnable": True, "seed": 0}}))
    with pytest.raises(ReportError, match="run.dataset"):
        collect([partial])


def test_collect_keeps_where_each_file_was_read(grid):
    assert len(grid) == 30 - len(MISSING)
    assert all(Path(r["eval_path"]).name == "eval.json" and Path(r["eval_path"]).is_file() for r in grid)


# -- aggregation -----------------------------------------------------------------------------
def test_cells_are_mean_and_sample_std_over_seeds(grid):
    table = build_table(grid, TABLE1_ROWS)
    cell = row(table, "FID ↓ · VAE").cells[2]  # GMM learnable
    a, b = fid("vae", 2, 0), fid("vae", 2, 1)
    assert cell.n == 2
    assert cell.mean == pytest.approx((a + b) / 2)
    assert cell.std == pytest.approx(math.sqrt(((a - b) / 2) ** 2 * 2))  # ddof=1
    iwae = row(table, "IWAE ELBO ↑ · VAE").cells[4]
    assert iwae.mean == pytest.approx((elbo(4, 0) + elbo(4, 1)) / 2 + 10.0)
    assert row(table, "PAG ↓ · WGAN-GP").cells[0].mean == pytest.approx((pag(0, 0) + pag(0, 1)) / 2)


def test_missing_runs_are_empty_cells_or_fewer_seeds(grid):
    table = build_table(grid, TABLE1_ROWS)
    assert row(table, "FID ↓ · WGAN").cells[3] is None
    single = row(table, "FID ↓ · WGAN-GP").cells[1]
    assert (single.n, single.std, single.mean) == (1, None, fid("wgan_gp", 1, 0))
    markdown = to_markdown(table, "cap", [])
    wgan_line = next(line for line in markdown.splitlines() if line.startswith("| FID ↓ · WGAN |"))
    assert wgan_line.split(" | ")[5] == "—"
    assert "(n=1)" in next(line for line in markdown.splitlines() if line.startswith("| FID ↓ · WGAN-GP |"))
    assert "n=2 seeds" in markdown


def test_no_results_at_all_still_render(tmp_path):
    table = build_table([], TABLE1_ROWS, PAPER_TABLE1)
    assert all(c is None for r in table.rows if r.source == "ours" for c in r.cells)
    assert "—" in to_markdown(table, "cap", []) and "---" in to_latex(table, "cap", [])
    written = write_reports([], tmp_path / "reports", "empty", {})
    assert all(p.is_file() for p in written)
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == {}


def test_the_same_run_twice_or_two_datasets_are_refused(grid, tmp_path):
    again = collect([write_run(tmp_path / "copy", "vae", 0, 0)])
    with pytest.raises(ReportError, match="same run"):
        build_table(grid + again, TABLE1_ROWS)
    other = collect([write_run(tmp_path / "other", "vae", 0, 0, dataset="cifar10")])
    with pytest.raises(ReportError, match="mix datasets"):
        build_table(grid[:1] + other, TABLE1_ROWS)


# -- the paper's numbers -----------------------------------------------------------------------
def test_paper_constants_match_the_paper():
    # Table 1 of the paper, read column by column (N(0,I), GMM F, GMM L, TRIP F, TRIP L).
    assert PAPER_TABLE1.values == {
        ("vae", "fid.value"): (86.72, 85.64, 84.48, 85.31, 83.54),
        ("wgan", "fid.value"): (63.46, 67.10, 61.82, 62.48, 57.6),
        ("wgan_gp", "fid.value"): (54.71, 57.82, 62.10, 63.06, 52.86),
        ("vae", "likelihood.elbo"): (-194.16, -201.60, -193.88, -202.04, -193.32),
        ("vae", "likelihood.iwae"): (-185.09, -191.99, -184.73, -190.09, -184.43),
    }
    assert PAPER_TABLE2.values == {("wgan_gp", "fid.value"): (29.3, None, None, None, 16.72)}
    assert dict(PAPER_TABLE2.extra) == {"FID · SN-GANs [33]": 21.7, "FID · WGAN-GP + Two Time-Scale [34]": 24.8}
    assert "NeurIPS 2019" in PAPER_TABLE1.source and "Table 2" in PAPER_TABLE2.source


def test_paper_rows_follow_ours_and_are_labelled(grid):
    table = build_table(grid, TABLE1_ROWS, PAPER_TABLE1)
    for i, r in enumerate(table.rows):
        if r.source == "paper":
            assert table.rows[i - 1].source == "ours" and table.rows[i - 1].label == r.label
            assert r.source_label == "paper (CelebA)"
    assert [r.label for r in table.rows if r.source == "paper"] == [label for label, _, _ in TABLE1_ROWS[:5]]
    lines = to_markdown(table, "cap", []).splitlines()
    vae = lines.index(next(line for line in lines if line.startswith("| FID ↓ · VAE |")))
    assert lines[vae + 1] == "|  | paper (CelebA) | 86.72 | 85.64 | 84.48 | 85.31 | **83.54** |"
    pag_lines = [line for line in lines if "PAG" in line and line.startswith("|")]
    assert len(pag_lines) == 2 and all("ours (shapes)" in line for line in pag_lines)


# -- best per row ---------------------------------------------------------------------------------
def test_bold_marks_the_best_value_in_each_metrics_direction(grid):
    table = build_table(grid, TABLE1_ROWS, PAPER_TABLE1)
    assert row(table, "FID ↓ · VAE").best() == {4}
    assert row(table, "ELBO ↑ · VAE").best() == {4}
    assert row(table, "PAG ↓ · WGAN").best() == {0}
    assert row(table, "ELBO ↑ · VAE", "paper").best() == {4}  # -193.32 beats -193.88
    assert row(table, "FID ↓ · WGAN-GP", "paper").best() == {4}
    latex = to_latex(table, "cap", []).splitlines()
    fid_vae = next(line for line in latex if line.startswith(r"FID $\downarrow$ $\cdot$ VAE"))
    assert _cells(fid_vae)[6].startswith(r"\textbf{") and fid_vae.count(r"\textbf") == 1
    pag_wgan = next(line for line in latex if line.startswith(r"PAG $\downarrow$ $\cdot$ WGAN &"))
    assert _cells(pag_wgan)[2].startswith(r"\textbf{") and pag_wgan.count(r"\textbf") == 1


def _cells(latex_line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)&", latex_line.removesuffix(r"\\"))]


# -- writers ----------------------------------------------------------------------------------------
def test_latex_is_structurally_sound(grid):
    table = build_table(grid, TABLE1_ROWS, PAPER_TABLE1)
    latex = to_latex(table, "Table 1: shapes_grid 100% & more", ["a note with snake_case & ± 1"])
    unescaped = re.sub(r"\\[{}]", "", latex)
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 1
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert "±" not in latex and "—" not in latex and r"$\pm$" in latex
    assert re.search(r"(?<!\\)[_%]", latex.replace("% Requires", "")) is None
    body = latex[latex.index(r"\midrule") + len(r"\midrule"):latex.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.strip() and line != r"\addlinespace"]
    assert len(rows) == len(table.rows)
    assert all(line.endswith(r" \\") and len(_cells(line)) == 2 + len(PRIOR_COLUMNS) for line in rows)


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 $x {y} ~^\\") == (
        r"a\_b \& 50\% \#1 \$x \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}")


def test_csv_parses_back_to_the_same_numbers(grid):
    table = build_table(grid, TABLE2_ROWS, PAPER_TABLE2)
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    index = {c[2]: i for i, c in enumerate(PRIOR_COLUMNS)}
    ours = [p for p in parsed if p["source"] == "ours"]
    assert len(ours) == sum(c is not None for r in table.rows if r.source == "ours" for c in r.cells)
    for p in ours:
        cell = row(table, p["row"]).cells[index[p["column"]]]
        assert float(p["mean"]) == cell.mean and int(p["n"]) == cell.n
        assert (p["std"] == "") if cell.std is None else float(p["std"]) == cell.std
    paper = {(p["row"], p["column"]): float(p["mean"]) for p in parsed if p["source"] == "paper"}
    assert paper == {("FID ↓ · WGAN-GP", "N(0,I)"): 29.3, ("FID ↓ · WGAN-GP", "TRIP learnable"): 16.72,
                     ("FID · SN-GANs [33]", ""): 21.7, ("FID · WGAN-GP + Two Time-Scale [34]", ""): 24.8}


# -- the report ------------------------------------------------------------------------------------
def test_write_reports_files_links_and_metrics(grid, tmp_path):
    out = tmp_path / "reports"
    grid[0]["figures"]["files"].append("figures/never_written.png")
    written = write_reports(grid, out, "shapes", PROTOCOL)
    names = sorted(p.name for p in written)
    assert names == ["README.md", "metrics.json", "table1.csv", "table1.md", "table1.tex",
                     "table2.csv", "table2.md", "table2.tex"]
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left behind

    readme = (out / "README.md").read_text()
    assert (out / "table1.md").read_text().strip() in readme and (out / "table2.md").read_text().strip() in readme
    assert readme.index("## Table 1") < readme.index("## Table 2")  # shapes: Table 1's dataset comes first
    assert "paper (CIFAR-10) | 29.3" in (out / "table2.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(images) == len(grid) * 2 + sum(r["run"]["model"] != "vae" for r in grid)
    for link in images + re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", readme):
        assert not Path(unquote(link)).is_absolute() and (out / unquote(link)).is_file(), link
    assert "missing: figures/never_written.png" in readme

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid/vae/trip_learnable"] == pytest.approx((fid("vae", 4, 0) + fid("vae", 4, 1)) / 2)
    assert metrics["elbo/vae/normal"] == pytest.approx((elbo(0, 0) + elbo(0, 1)) / 2)
    assert metrics["pag/wgan_gp/gmm_fixed"] == pag(1, 0)
    assert "fid/wgan/trip_fixed" not in metrics
    assert len(metrics) == 3 * 5 + 2 * 5 + 2 * 5 - 2  # FID, ELBO+IWAE (VAE), PAG (GANs), minus the missing cell
    assert metrics == summary_metrics(grid)


def test_protocol_is_stated_under_the_table(grid, tmp_path):
    write_reports(grid, tmp_path, "shapes", PROTOCOL)
    markdown = (tmp_path / "table1.md").read_text()
    for text in ("dataset shapes at 32×32", "VAE 3000, WGAN 1500, WGAN-GP 1500", "seeds 0, 1",
                 "500 generated samples against 400 reference images of the train split",
                 "IWAE ELBO (k=100)", "1000 test images", "Table 1 of Kuznetsov et al., NeurIPS 2019"):
        assert text in markdown, text
    assert markdown.index("| FID ↓ · VAE |") < markdown.index("Our protocol")
    assert "Our protocol" in (tmp_path / "table1.tex").read_text()


def test_cifar10_runs_make_table2(tmp_path):
    results = collect([write_run(tmp_path, m, c, 0, dataset="cifar10") for m in MODELS for c in (0, 4)])
    written = write_reports(results, tmp_path / "reports", "cifar10", {"image_size": 32})
    assert {p.name for p in written} >= {"table2.md", "table2.csv", "table2.tex"}
    markdown = (tmp_path / "reports" / "table2.md").read_text()
    assert "|  | paper (CIFAR-10) | 29.3 | — | — | — | **16.72** |" in markdown
    assert "SN-GANs [33] 21.7" in markdown and "Gulrajani" in markdown
    assert "ELBO" not in markdown.split("\n\n")[1]  # Table 2 is FID (and PAG) only


def test_paper_rows_can_be_left_out(grid, tmp_path):
    write_reports(grid, tmp_path, "shapes", PROTOCOL, paper=None, table="table1")
    markdown = (tmp_path / "table1.md").read_text()
    assert "paper (" not in markdown
    with pytest.raises(ReportError, match="table3"):
        write_reports(grid, tmp_path, "shapes", PROTOCOL, table="table3")
