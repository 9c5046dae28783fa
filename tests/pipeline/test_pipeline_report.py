"""Tables 1 and 2, Table 3, the induced table and the report index, from synthetic result files.

The grid: 3 models x 5 priors x 3 seeds of ``shapes`` runs with every section
of eval.json (domain with its real floor, FID, likelihood or reversal,
training), less a few runs, with one unconverged run and one prior whose runs
do not say whether they converged.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path
from urllib.parse import unquote

import pytest
from scipy import stats

from pipeline.report import write_reports
from pipeline.tables import (
    DELTA_LABEL, PAPER_TABLE1, PAPER_TABLE2, PRIOR_COLUMNS, REAL_COLUMN, TABLE1_ROWS, TABLE2_ROWS, ReportError,
    Rendered, build_table, collect, latex_escape, read_results, render_table, summary_metrics, table_frames,
)

MODELS = ("vae", "wgan", "wgan_gp")
SEEDS = (0, 1, 2)
FID_BASE = {"vae": 300.0, "wgan": 200.0, "wgan_gp": 100.0}
# Runs left out: a whole cell (all seeds), and one seed of another cell.
MISSING = {("wgan", 3, 0), ("wgan", 3, 1), ("wgan", 3, 2), ("wgan_gp", 1, 2)}
NOT_CONVERGED_RUN = ("wgan", 2, 1)  # training.converged is false
UNKNOWN_COLUMN = ("vae", 1)  # these runs have no training section

# Domain FD: a large effect for TRIP learnable (4), a small one for GMM fixed (1), against per-seed noise.
FD_EFFECT = (0.0, 0.1, 0.0, 0.0, 3.0)
FD_NOISE = {0: (0.0, 0.5, -0.5), 1: (0.4, -0.3, 0.2), 2: (-0.2, 0.1, 0.6), 3: (0.3, 0.3, -0.1), 4: (0.1, -0.4, 0.2)}


# Values chosen so the best column differs by metric: FID is lowest under TRIP learnable (4),
# ELBO/IWAE highest under TRIP learnable (4), PAG lowest under N(0,I) (0).
def fid(model, col, seed):
    return FID_BASE[model] + 5.0 * (4 - col) + 2.0 * seed


def elbo(col, seed):
    return -1000.0 + 3.0 * col + seed


def pag(col, seed):
    return 100.0 + 7.0 * col + 0.5 * seed


def fd(model, col, seed):
    return 20.0 + MODELS.index(model) - FD_EFFECT[col] + FD_NOISE[col][seed]


def real_fd(seed):
    return 1.0 + 0.1 * seed


def write_run(root: Path, model: str, col: int, seed: int, dataset: str = "shapes", domain: bool = True) -> Path:
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
    if domain:
        floor = {"fd": real_fd(seed), "kid": 0.001, "kid_std": 0.0005, "precision": 0.8, "recall": 0.8,
                 "modes_covered": 510, "modes_total": 512, "mode_kl": 0.01, "mode_tv": 0.02, "n_samples": 5000}
        result["domain"] = {"fd": fd(model, col, seed), "kid": 0.01 + 0.001 * col, "kid_std": 0.002,
                            "precision": 0.6, "recall": 0.5 + 0.01 * col, "modes_covered": 400 + col,
                            "modes_total": 512, "mode_kl": 0.3, "mode_tv": 0.2, "n_samples": 5000, "n_real": 6000,
                            "n_modes_samples": 10000, "real": floor}
    if (model, col) != UNKNOWN_COLUMN:
        result["training"] = {"converged": (model, col, seed) != NOT_CONVERGED_RUN, "fd_half": 12.0, "fd_end": 11.5,
                              "steps": 400, "rule": "domain FD improved by less than 10% over the last doubling"}
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
    paths = [write_run(tmp_path / "runs", m, c, s) for m in MODELS for c in range(5) for s in SEEDS
             if (m, c, s) not in MISSING]
    return collect(paths)


def row(table, model, metric, source="ours"):
    return next(r for r in table.rows if (r.model, r.metric, r.source) == (model, metric, source))


def frame_line(frame, label):
    """The display row whose first column is ``label``, and the rows that follow it up to the next label."""
    first = frame.index[frame.iloc[:, 0] == label][0]
    following = [first]
    while following[-1] + 1 < len(frame) and frame.iloc[following[-1] + 1, 0] == "":
        following.append(following[-1] + 1)
    return [frame.iloc[i] for i in following]


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
    with pytest.raises(ReportError, match=re.escape(str(corrupt))):
        read_results([corrupt])


def test_a_value_that_is_not_a_number_names_the_file(tmp_path):
    path = write_run(tmp_path, "vae", 0, 0)
    result = json.loads(path.read_text())
    result["domain"]["fd"] = "many"
    path.write_text(json.dumps(result))
    with pytest.raises(ReportError, match=re.escape(str(path)) + ".*domain.fd"):
        build_table(collect([path]), TABLE1_ROWS)


def test_collect_keeps_where_each_file_was_read(grid):
    assert len(grid) == 45 - len(MISSING)
    assert all(Path(r["eval_path"]).name == "eval.json" and Path(r["eval_path"]).is_file() for r in grid)


# -- aggregation -----------------------------------------------------------------------------
def test_cells_are_mean_and_sample_std_over_seeds(grid):
    table = build_table(grid, TABLE1_ROWS)
    cell = row(table, "vae", "fid.value").cells[2]  # GMM learnable
    values = [fid("vae", 2, s) for s in SEEDS]
    assert cell.n == 3
    assert cell.mean == pytest.approx(statistics.mean(values))
    assert cell.std == pytest.approx(statistics.stdev(values))  # ddof=1
    fd_cell = row(table, "wgan_gp", "domain.fd").cells[4]
    assert fd_cell.mean == pytest.approx(statistics.mean(fd("wgan_gp", 4, s) for s in SEEDS))
    assert fd_cell.std == pytest.approx(statistics.stdev(fd("wgan_gp", 4, s) for s in SEEDS))
    iwae = row(table, "vae", "likelihood.iwae").cells[4]
    assert iwae.mean == pytest.approx(statistics.mean(elbo(4, s) for s in SEEDS) + 10.0)
    assert row(table, "wgan_gp", "reversal.pag").cells[0].mean == pytest.approx(statistics.mean(pag(0, s)
                                                                                               for s in SEEDS))
    real = row(table, "vae", "domain.fd").real
    assert (real.n, real.mean) == (3, pytest.approx(statistics.mean(real_fd(s) for s in SEEDS)))
    frame, _ = table_frames(table)
    [ours, delta] = frame_line(frame, "FD ↓ · VAE")
    assert ours["GMM learnable"] == f"{statistics.mean(fd('vae', 2, s) for s in SEEDS):.2f} ± " \
                                    f"{statistics.stdev(fd('vae', 2, s) for s in SEEDS):.2f}"
    assert ours[REAL_COLUMN] == f"{real.mean:.2f} ± {real.std:.2f}" and delta["source"] == DELTA_LABEL


def test_shapes_lead_with_the_domain_rows_and_keep_inception_fid_secondary(grid):
    table = build_table(grid, TABLE1_ROWS, PAPER_TABLE1)
    ours = [r.label for r in table.ours()]
    assert ours[:3] == ["FD ↓ · VAE", "FD ↓ · WGAN", "FD ↓ · WGAN-GP"]
    assert "modes covered ↑ (of 512) · WGAN" in ours and "mode TV ↓ · WGAN-GP" in ours
    assert ours.index("mode TV ↓ · WGAN-GP") < ours.index("Inception FID ↓ (500 vs 400) · VAE")
    assert len(ours) == 7 * 3 + len(TABLE1_ROWS) and table.real_column
    assert row(table, "vae", "domain.precision").best() == {0, 1, 2, 3, 4}  # a tie: all bold
    assert row(table, "vae", "domain.recall").best() == {4}  # higher is better
    assert row(table, "vae", "domain.kid").best() == {0}  # lower is better


def test_missing_runs_are_empty_cells_or_fewer_seeds(grid):
    table = build_table(grid, TABLE1_ROWS)
    assert row(table, "wgan", "fid.value").cells[3] is None
    assert row(table, "wgan", "fid.value").differences[3] is None
    single = row(table, "wgan_gp", "fid.value").cells[1]
    assert (single.n, single.mean) == (2, statistics.mean(fid("wgan_gp", 1, s) for s in (0, 1)))
    frame, _ = table_frames(table)
    [ours, delta] = frame_line(frame, "Inception FID ↓ (500 vs 400) · WGAN")
    assert ours["TRIP fixed"] == "—" and delta["TRIP fixed"] == "—"
    assert "(n=2)" in frame_line(frame, "Inception FID ↓ (500 vs 400) · WGAN-GP")[0]["GMM fixed"]
    markdown = render_table(table, "cap", []).markdown()
    assert "n=3 seeds" in markdown and "(n=k) have k seeds" in markdown


def test_no_results_at_all_still_render(tmp_path):
    table = build_table([], TABLE1_ROWS, PAPER_TABLE1)
    assert all(c is None for r in table.ours() for c in r.cells)
    rendered = render_table(table, "cap", [])
    assert "—" in rendered.markdown() and "---" in rendered.latex()
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


# -- paired differences on the grid ------------------------------------------------------------
def test_paired_interval_over_seeds_is_the_t_interval_by_hand(grid):
    table = build_table(grid, TABLE1_ROWS)
    for col in (1, 4):
        diffs = [fd("wgan", col, s) - fd("wgan", 0, s) for s in SEEDS]
        mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
        half = stats.t.ppf(0.975, df=2) * sd / math.sqrt(3)
        diff = row(table, "wgan", "domain.fd").differences[col]
        assert (diff.n, diff.over) == (3, "seeds")
        assert (diff.mean, diff.low, diff.high) == pytest.approx((mean, mean - half, mean + half))
    assert row(table, "wgan", "domain.fd").differences[4].significant  # [-5.0, -1.0]: excludes 0
    assert not row(table, "wgan", "domain.fd").differences[1].significant  # about 0 ± 1.6
    # WGAN-GP · GMM fixed has seeds 0 and 1 only: paired over those two, with 1 degree of freedom.
    two = row(table, "wgan_gp", "domain.fd").differences[1]
    diffs = [fd("wgan_gp", 1, s) - fd("wgan_gp", 0, s) for s in (0, 1)]
    half = stats.t.ppf(0.975, df=1) * statistics.stdev(diffs) / math.sqrt(2)
    assert (two.n, two.low) == (2, pytest.approx(statistics.mean(diffs) - half))


def test_significant_differences_are_marked_and_insignificant_ones_are_not(grid):
    table = build_table(grid, TABLE1_ROWS)
    frame, bold = table_frames(table)
    [ours, delta] = frame_line(frame, "FD ↓ · WGAN-GP")
    i = frame.index[frame.iloc[:, 0] == "FD ↓ · WGAN-GP"][0] + 1
    assert delta["TRIP learnable"].endswith("†") and bold.loc[i, "TRIP learnable"]
    assert "†" not in delta["GMM fixed"] and not bold.loc[i, "GMM fixed"]
    assert delta["N(0,I)"] == ""
    markdown = render_table(table, "cap", []).markdown()
    delta_line = markdown.splitlines()[[n for n, line in enumerate(markdown.splitlines())
                                        if line.startswith("| FD ↓ · WGAN-GP ")][0] + 1]
    cells = [c.strip() for c in delta_line.strip("|").split(" | ")]
    assert cells[6].startswith("**") and cells[6].endswith("†**") and not cells[3].startswith("**")
    d = row(table, "wgan_gp", "domain.fd").differences[4]
    assert cells[6] == f"**{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]†**"


def test_the_sentence_under_the_table_comes_from_the_differences(grid):
    table = build_table(grid, TABLE1_ROWS)
    rendered = render_table(table, "cap", [])
    sentence = rendered.notes[0]
    assert sentence.startswith("Beyond the 95% paired interval, ")
    assert "TRIP learnable is better than N(0,I) on FD (VAE, WGAN, WGAN-GP)" in sentence
    assert "GMM fixed is better than N(0,I) on FD" not in sentence
    assert "intervals include 0" in sentence
    assert render_table(table, "cap", [], sentence="Our own sentence.").notes[0] == "Our own sentence."


# -- convergence -----------------------------------------------------------------------------------
def test_cells_with_unconverged_or_unknown_runs_are_marked(grid):
    table = build_table(grid, TABLE1_ROWS)
    frame, _ = table_frames(table)
    [wgan, wgan_delta] = frame_line(frame, "FD ↓ · WGAN")
    assert wgan["GMM learnable"].endswith("*") and wgan_delta["GMM learnable"].endswith("*")
    assert not any(wgan[c].endswith(("*", "?")) for c in ("N(0,I)", "GMM fixed", "TRIP learnable"))
    [vae, vae_delta] = frame_line(frame, "FD ↓ · VAE")
    assert vae["GMM fixed"].endswith("?") and vae_delta["GMM fixed"].endswith("?")
    assert not vae["TRIP learnable"].endswith(("*", "?"))
    notes = render_table(table, "cap", []).notes
    assert "* not converged: WGAN · GMM learnable (seed 1)." in notes[2]
    assert "? convergence unknown (3 of 41 runs have no training section in eval.json): VAE · GMM fixed." in notes[2]
    csv_rows = list(csv.DictReader(io.StringIO(render_table(table, "cap", []).csv())))
    status = {(r["row"], r["column"]): r["converged"] for r in csv_rows if r["source"] == "ours"}
    assert status[("FD ↓ · WGAN", "GMM learnable")] == "False"
    assert status[("FD ↓ · VAE", "GMM fixed")] == "" and status[("FD ↓ · VAE", "N(0,I)")] == "True"


def test_all_converged_says_so(tmp_path):
    results = collect([write_run(tmp_path, "wgan", c, s) for c in (0, 4) for s in SEEDS])
    notes = render_table(build_table(results, TABLE2_ROWS), "cap", []).notes
    assert "Convergence: all 6 runs reached their plateau." in notes


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
            ours = table.rows[i - 1]
            assert (ours.source, ours.model, ours.metric) == ("ours", r.model, r.metric)
            assert r.source_label == "paper (CelebA)"
    assert [(r.model, r.metric) for r in table.rows if r.source == "paper"] == TABLE1_ROWS[:5]
    frame, bold = table_frames(table)
    [_, _, paper] = frame_line(frame, "Inception FID ↓ (500 vs 400) · VAE")
    assert list(paper)[1:7] == ["paper (CelebA)", "86.72", "85.64", "84.48", "85.31", "83.54"]
    assert paper[REAL_COLUMN] == ""
    assert all(len(frame_line(frame, f"PAG vs N(0,I) ↓ · {m}")) == 2 for m in ("WGAN", "WGAN-GP"))  # no paper row


# -- best per row ---------------------------------------------------------------------------------
def test_bold_marks_the_best_value_in_each_metrics_direction(grid):
    table = build_table(grid, TABLE1_ROWS, PAPER_TABLE1)
    assert row(table, "vae", "fid.value").best() == {4}
    assert row(table, "vae", "likelihood.elbo").best() == {4}
    assert row(table, "wgan", "reversal.pag").best() == set()  # measured against N(0, I): never a best prior
    assert row(table, "vae", "likelihood.elbo", "paper").best() == {4}  # -193.32 beats -193.88
    assert row(table, "wgan_gp", "fid.value", "paper").best() == {4}
    latex = render_table(table, "cap", []).latex().splitlines()
    fid_vae = next(line for line in latex if line.startswith(r"Inception FID $\downarrow$ (500 vs 400) $\cdot$ VAE"))
    assert _cells(fid_vae)[6].startswith(r"\textbf{") and fid_vae.count(r"\textbf") == 1
    pag_wgan = next(line for line in latex if line.startswith(r"PAG vs N(0,I) $\downarrow$ $\cdot$ WGAN &"))
    assert r"\textbf" not in pag_wgan


def _cells(latex_line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)&", latex_line.removesuffix(r"\\").rstrip().removesuffix(r"\\"))]


# -- writers ----------------------------------------------------------------------------------------
def test_latex_is_structurally_sound(grid):
    table = build_table(grid, TABLE1_ROWS, PAPER_TABLE1)
    latex = render_table(table, "Table 1: shapes_grid 100% & more", ["a note with snake_case & ± 1"]).latex()
    unescaped = re.sub(r"\\[{}]", "", latex)
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 1
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert latex.index(r"\bottomrule") < latex.index("a note with snake") < latex.index(r"\end{table}")
    for symbol in "±—Δ†↓↑·":
        assert symbol not in latex, symbol
    assert r"$\pm$" in latex and r"$^\dagger$" in latex and r"$\Delta$ vs N(0,I), 95\% CI" in latex
    assert r"shapes\_grid 100\% \& more" in latex and r"snake\_case \& $\pm$ 1" in latex
    body = latex[latex.index(r"\midrule") + len(r"\midrule"):latex.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.strip()]
    assert len(rows) == len(table.rows) + len(table.ours())  # each row of ours has its difference row
    assert all(line.endswith(r"\\") and len(_cells(line)) == 3 + len(PRIOR_COLUMNS) for line in rows)


def test_latex_escapes_cells_headers_caption_and_notes():
    data = {"a_b": ["x & y", "50%"], "#": ["$5", "{z}"]}
    import pandas as pd

    frame = pd.DataFrame(data)
    latex = Rendered("cap_1 & 2", frame, ["note # 1 ~"], frame).latex()
    assert r"a\_b & \# \\" in latex
    assert r"x \& y & \$5 \\" in latex and r"50\% & \{z\} \\" in latex
    assert r"\caption{cap\_1 \& 2}" in latex and r"note \# 1 \textasciitilde{}\par" in latex


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 $x {y} ~^\\ ±") == (
        r"a\_b \& 50\% \#1 \$x \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{} $\pm$")


def test_markdown_escapes_pipes_and_marks():
    import pandas as pd

    frame = pd.DataFrame({"a|b": ["x|y", "3*"]})
    markdown = Rendered("cap", frame, ["n|1"], frame).markdown()
    assert r"a\|b" in markdown and r"x\|y" in markdown and r"3\*" in markdown and r"- n\|1" in markdown


def test_csv_parses_back_to_the_same_numbers(grid):
    table = build_table(grid, TABLE2_ROWS, PAPER_TABLE2)
    parsed = list(csv.DictReader(io.StringIO(render_table(table, "cap", []).csv())))
    index = {c[2]: i for i, c in enumerate(PRIOR_COLUMNS)}
    labels = {r.label: r for r in table.ours()}
    ours = [p for p in parsed if p["source"] == "ours"]
    assert len(ours) == sum(c is not None for r in table.ours() for c in r.cells)
    for p in ours:
        r = labels[p["row"]]
        cell, diff = r.cells[index[p["column"]]], r.differences[index[p["column"]]]
        assert float(p["mean"]) == cell.mean and int(p["n"]) == cell.n
        assert float(p["std"]) == pytest.approx(cell.std)
        if diff is None:
            assert p["delta"] == p["ci_low"] == ""
        else:
            assert (float(p["delta"]), float(p["ci_low"]), float(p["ci_high"])) == (diff.mean, diff.low, diff.high)
            assert p["significant"] == str(diff.significant) and p["ci_over"] == "seeds"
    real = [p for p in parsed if p["source"] == "real"]
    assert len(real) == 7 * 3 and {p["column"] for p in real} == {REAL_COLUMN}
    paper = {(p["row"], p["column"]): float(p["mean"]) for p in parsed if p["source"] == "paper"}
    fid_label = "Inception FID ↓ (500 vs 400) · WGAN-GP"
    assert paper == {(fid_label, "N(0,I)"): 29.3, (fid_label, "TRIP learnable"): 16.72,
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
    assert re.search(r"\| paper \(CIFAR-10\)\s*\|\s*29\.3 \|", (out / "table2.md").read_text())
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(images) == len(grid) * 2 + sum(r["run"]["model"] != "vae" for r in grid)
    for link in images + re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", readme):
        assert not Path(unquote(link)).is_absolute() and (out / unquote(link)).is_file(), link
    assert "missing: figures/never_written.png" in readme

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid/vae/trip_learnable"] == pytest.approx(statistics.mean(fid("vae", 4, s) for s in SEEDS))
    assert metrics["elbo/vae/normal"] == pytest.approx(statistics.mean(elbo(0, s) for s in SEEDS))
    assert metrics["pag/wgan_gp/gmm_fixed"] == pytest.approx(statistics.mean(pag(1, s) for s in (0, 1)))
    assert metrics["fd/wgan/trip_learnable"] == pytest.approx(statistics.mean(fd("wgan", 4, s) for s in SEEDS))
    assert metrics["modes_covered/vae/normal"] == 400 and metrics["mode_tv/vae/normal"] == pytest.approx(0.2)
    assert metrics["fd/real"] == pytest.approx(statistics.mean(real_fd(s) for s in SEEDS))
    assert metrics["converged/wgan/gmm_learnable"] == pytest.approx(2 / 3)
    assert "converged/vae/gmm_fixed" not in metrics and "fid/wgan/trip_fixed" not in metrics
    # 14 cells (WGAN · TRIP fixed is missing): FID + 7 domain metrics + ELBO and IWAE (VAE) or PAG (GANs);
    # 7 real floors; a converged fraction for 13 cells (VAE · GMM fixed does not say).
    assert len(metrics) == 5 * 10 + 4 * 9 + 5 * 9 + 7 + 13
    assert metrics == summary_metrics(grid)


def test_the_index_links_the_mlflow_runs_table_and_the_metrics_file_diffs_well(grid, tmp_path):
    link = "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    write_reports(grid, tmp_path / "with", "shapes", PROTOCOL, mlflow_link=link)
    assert f"[{link}]({link})" in (tmp_path / "with" / "README.md").read_text()
    write_reports(grid, tmp_path / "without", "shapes", PROTOCOL)
    assert "MLflow" not in (tmp_path / "without" / "README.md").read_text()
    text = (tmp_path / "with" / "metrics.json").read_text()  # tracked by git: stable order, one key a line
    assert text.endswith("}\n") and list(json.loads(text)) == sorted(json.loads(text))


def test_protocol_is_stated_under_the_table(grid, tmp_path):
    write_reports(grid, tmp_path, "shapes", PROTOCOL)
    markdown = (tmp_path / "table1.md").read_text()
    for text in ("dataset shapes at 32×32", "VAE 3000, WGAN 1500, WGAN-GP 1500", "seeds 0, 1, 2",
                 "Inception FID: 500 generated samples against 400 reference images of the train split",
                 "IWAE ELBO (k=100)", "1000 test images", "Table 1 of Kuznetsov et al., NeurIPS 2019",
                 "Native rows: 5000 generated samples against 6000 held-out real images",
                 "the 512 attribute combinations read off 10000 samples",
                 "Convergence rule: domain FD improved by less than 10% over the last doubling."):
        assert text in markdown, text
    assert markdown.index("| FD ↓ · VAE") < markdown.index("Our protocol")
    assert markdown.index("Beyond the 95% paired interval") < markdown.index("Our protocol")
    assert "Our protocol" in (tmp_path / "table1.tex").read_text()


def test_cifar10_runs_make_table2_in_the_papers_layout(tmp_path):
    results = collect([write_run(tmp_path, m, c, 0, dataset="cifar10", domain=False)
                       for m in MODELS for c in (0, 4)])
    written = write_reports(results, tmp_path / "reports", "cifar10", {"image_size": 32})
    assert {p.name for p in written} >= {"table2.md", "table2.csv", "table2.tex"}
    markdown = (tmp_path / "reports" / "table2.md").read_text()
    paper = next(line for line in markdown.splitlines() if "paper (CIFAR-10)" in line)
    assert [c.strip() for c in paper.strip("|").split("|")][1:] == ["paper (CIFAR-10)", "29.3", "—", "—", "—",
                                                                     "**16.72**"]
    assert "SN-GANs [33] 21.7" in markdown and "Gulrajani" in markdown
    assert "ELBO" not in markdown.split("\n\n")[1]  # Table 2 is FID (and PAG) only
    assert REAL_COLUMN not in markdown and "FD ↓" not in markdown and "| FID ↓ · WGAN-GP" in markdown
    # One seed and no per-image values: every difference says it has no interval, and the sentence says so.
    assert "(no CI)" in markdown
    assert "No paired interval is available (one seed and no per-image values)" in markdown


def test_paper_rows_can_be_left_out(grid, tmp_path):
    write_reports(grid, tmp_path, "shapes", PROTOCOL, paper=None, table="table1")
    markdown = (tmp_path / "table1.md").read_text()
    assert "paper (" not in markdown
    with pytest.raises(ReportError, match="table3"):
        write_reports(grid, tmp_path, "shapes", PROTOCOL, table="table3")


# -- Table 3 and the induced table ---------------------------------------------------------------
def cond_result(root: Path, method: str, missing: float, seed: int, violation: float, training=None) -> Path:
    path = root / f"cond-{method}-miss{missing * 100:g}-s{seed}" / "cond_eval.json"
    path.parent.mkdir(parents=True)
    (path.parent / "cond_samples.png").write_bytes(b"\x89PNG")
    result = {"run": {"method": method, "missing": missing, "seed": seed},
              "summary": {"violation_any": violation, "violation_mean": violation / 2, "diversity_mean": 0.8,
                          "diversity_joint": 2.5},
              "specs": [{"label": "square & red"}], "settings": {"samples_per_spec": 64},
              "classifier": {"path": str(root / "no-classifier")}}
    if training is not None:
        result["training"] = training
    path.write_text(json.dumps(result))
    return path


def induced_result(root: Path, kind: str) -> Path:
    path = root / f"induced_{kind}.json"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"samples_{kind}.png").write_bytes(b"\x89PNG")
    side = {"pag": 10.0, "fid": {"value": 50.0, "text": "FID 50.0 (n=100 vs 100)"}, "prior_to_codes_distance": 1.5}
    path.write_text(json.dumps({
        "kind": kind, "source": {"model": "wgan_gp", "prior": "normal"}, "before": side,
        "after": {**side, "pag": 8.0 if kind == "trip" else 9.0},
        "prior": {"heldout_loglik": {"normal": -10.0, "initial": -9.0, "fitted": -8.0}},
        "config": {"reversal_examples": 64, "reversal_steps": 20, "continue_steps": 50},
        "files": {"samples": f"samples_{kind}.png"}}))
    return path


def test_table3_and_induced_with_one_seed_say_no_interval_is_available(grid, tmp_path):
    cond = read_results([cond_result(tmp_path / "cond", m, 0.5, 0, v) for m, v in (("cvae", 0.8), ("vae_trip_cond", 0.6))])
    induced = read_results([induced_result(tmp_path / "induced", k) for k in ("trip", "original", "pgan")])
    out = tmp_path / "reports"
    written = write_reports(grid, out, "shapes", PROTOCOL, conditional=cond, induced=induced,
                            metrics_path=tmp_path / "metrics_shapes.json")
    assert {"table3.md", "table3.csv", "table3.tex", "induced.md", "induced.csv", "induced.tex",
            "metrics_shapes.json"} <= {p.name for p in written}
    table3 = (out / "table3.md").read_text()
    assert re.search(r"\| VAE-TRIP \(joint ring\)\s*\|\s*50% \|\s*1 \|\s*0\.600 \|", table3)
    assert "One seed per row: no std, and no interval is available." in table3
    assert "Convergence: not recorded" in table3 and "square & red" in table3
    induced_md = (out / "induced.md").read_text()
    assert induced_md.index("own prior (control)") < induced_md.index("PGAN") < induced_md.index("TRIP (max.")
    assert "no interval is available" in induced_md and "-10.00 / -9.00 / -8.00" in induced_md
    assert r"square \& red" in (out / "table3.tex").read_text()
    data = list(csv.DictReader(io.StringIO((out / "induced.csv").read_text())))
    assert [d["kind"] for d in data] == ["original", "pgan", "trip"] and float(data[2]["pag_after"]) == 8.0
    readme = (out / "README.md").read_text()
    assert "## Table 3" in readme and "## Data-induced priors" in readme and "cond_samples.png" in readme
    assert "samples_trip.png" in readme and "[metrics_shapes.json](../metrics_shapes.json)" in readme
    metrics = json.loads((tmp_path / "metrics_shapes.json").read_text())
    assert metrics["violation_any/cvae/miss50/s0"] == 0.8 and metrics["induced_pag_after/trip"] == 8.0
    assert "fd/vae/normal" in metrics and not (out / "metrics.json").exists()


def test_table3_over_seeds_with_convergence(tmp_path):
    from pipeline.tables import table3

    runs = [cond_result(tmp_path, "cvae", 0.5, s, v, {"converged": s != 1}) for s, v in ((0, 0.7), (1, 0.8), (2, 0.9))]
    rendered = table3(read_results(runs), "shapes")
    [line] = rendered.frame.to_dict("records")
    assert line["violates any ↓"] == f"0.800 ± {statistics.stdev([0.7, 0.8, 0.9]):.3f}"
    assert line["seeds"] == "3" and line["converged"] == "no (seed 1)"
    assert "Mean ± std over up to 3 seeds" in rendered.notes[0]
    data = rendered.data.iloc[0]
    assert data["violation_any_mean"] == pytest.approx(0.8) and data["converged"] == False  # noqa: E712
    with pytest.raises(ReportError, match="same conditional run"):
        table3(read_results(runs + [cond_result(tmp_path / "again", "cvae", 0.5, 0, 0.1)]), "shapes")


def test_table3_and_induced_survive_missing_sections(tmp_path):
    from pipeline.tables import induced_table, table3

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"run": {"method": "cvae", "missing": 0.25, "seed": 0}}))
    assert "—" in table3(read_results([bare]), "x").markdown()
    odd = tmp_path / "induced_odd.json"
    odd.write_text(json.dumps({"kind": "odd"}))
    rendered = induced_table(read_results([odd]), "x")
    assert "odd" in rendered.markdown() and rendered.latex() and rendered.csv().startswith("kind,")
    assert "No conditional run" in table3([], "x").markdown() and "No induced" in induced_table([], "x").markdown()
