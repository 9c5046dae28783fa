"""Paired differences against N(0,I) on constructed numbers, per-image pairing, missing sections, the tune report."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from pipeline.tables import (
    PRIOR_COLUMNS, TABLE1_ROWS, Cell, build_table, collect, difference_sentence, paired_difference, render_table,
    t_interval, table_frames,
)


def cell(values: dict, images: dict | None = None, converged: dict | None = None) -> Cell:
    return Cell(pd.Series(values, dtype=float), pd.Series(converged or {s: True for s in values}, dtype=object),
                {s: np.asarray(v, dtype=float) for s, v in (images or {}).items()})


# -- intervals over seeds ----------------------------------------------------------------------
def test_t_interval_matches_scipy_by_hand():
    diffs = [1.3, 0.2, 2.9, 1.1]
    mean, low, high = t_interval(diffs)
    half = stats.t.ppf(0.975, df=3) * statistics.stdev(diffs) / math.sqrt(4)
    assert (mean, low, high) == pytest.approx((statistics.mean(diffs), statistics.mean(diffs) - half,
                                               statistics.mean(diffs) + half))
    # The same through scipy's own interval.
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(diffs)))


def test_paired_over_seeds_uses_the_same_seeds_differences():
    base = cell({0: 10.0, 1: 20.0, 2: 30.0, 3: 99.0})  # seed 3 has no partner: left out
    other = cell({0: 11.0, 1: 21.2, 2: 31.1, 5: 0.0})
    diff = paired_difference(other, base)
    diffs = [1.0, 1.2, 1.1]
    half = stats.t.ppf(0.975, df=2) * statistics.stdev(diffs) / math.sqrt(3)
    assert (diff.n, diff.over) == (3, "seeds")
    assert (diff.mean, diff.low, diff.high) == pytest.approx((statistics.mean(diffs), statistics.mean(diffs) - half,
                                                              statistics.mean(diffs) + half))
    assert diff.significant  # [0.85, 1.35]
    # The same means unpaired would overlap completely: the seeds' spread (10 per seed) cancels only when paired.
    noisy = cell({0: 11.0, 1: 18.9, 2: 33.4})
    assert not paired_difference(noisy, base).significant


def test_a_difference_without_a_shared_seed_or_with_one_seed_only():
    assert paired_difference(cell({0: 1.0}), cell({1: 2.0})) is None
    assert paired_difference(None, cell({0: 1.0})) is None
    lone = paired_difference(cell({0: 3.0}), cell({0: 1.0}))
    assert (lone.mean, lone.low, lone.high, lone.over, lone.significant) == (2.0, None, None, "", False)


# -- pairing over test images ---------------------------------------------------------------------
def test_one_seed_pairs_over_the_same_test_images():
    rng = np.random.default_rng(0)
    base_images = -100.0 + 20.0 * rng.standard_normal(400)  # images differ a lot from each other
    other_images = base_images + 0.5 + 0.3 * rng.standard_normal(400)  # the same images, 0.5 nats better
    base = cell({0: base_images.mean()}, {0: base_images})
    other = cell({0: other_images.mean()}, {0: other_images})
    diff = paired_difference(other, base)
    d = other_images - base_images
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert (diff.n, diff.over) == (400, "images")
    assert (diff.mean, diff.low, diff.high) == pytest.approx((d.mean(), d.mean() - 1.96 * se, d.mean() + 1.96 * se))
    assert diff.significant
    # Unpaired, the same numbers would be noise: the standard error of a difference of two means.
    unpaired = math.sqrt(base_images.var(ddof=1) / 400 + other_images.var(ddof=1) / 400)
    assert abs(d.mean()) < 1.96 * unpaired


def test_several_seeds_use_each_seeds_mean_image_difference():
    rng = np.random.default_rng(1)
    images = {s: rng.standard_normal(50) for s in range(3)}
    shifts = {0: 1.0, 1: 1.4, 2: 0.9}
    base = cell({s: 0.0 for s in range(3)}, images)  # scalar means deliberately not the images' means
    other = cell({s: 5.0 for s in range(3)}, {s: images[s] + shifts[s] for s in range(3)})
    diff = paired_difference(other, base)
    mean, low, high = t_interval(list(shifts.values()))
    assert (diff.n, diff.over) == (3, "seeds")
    assert (diff.mean, diff.low, diff.high) == pytest.approx((mean, low, high))


def test_per_image_lists_of_different_lengths_are_not_paired():
    base = cell({0: 1.0}, {0: [1.0, 2.0, 3.0]})
    other = cell({0: 2.0}, {0: [1.0, 2.0]})
    assert paired_difference(other, base).low is None


def test_per_image_values_from_eval_json_with_one_seed(tmp_path):
    rng = np.random.default_rng(2)
    images = -90.0 + 10.0 * rng.standard_normal(200)
    paths = []
    for col, shift in ((0, 0.0), (4, 0.8), (1, 0.01)):
        prior, learnable, _ = PRIOR_COLUMNS[col]
        values = images + shift + 0.2 * rng.standard_normal(200)
        result = {"run": {"model": "vae", "prior": prior, "learnable": bool(learnable), "dataset": "mnist",
                          "seed": 0},
                  "likelihood": {"elbo": float(values.mean()), "iwae": float(values.mean()) + 1,
                                 "elbo_values": values.tolist(), "iwae_values": (values + 1).tolist()}}
        paths.append(tmp_path / f"{col}.json")
        paths[-1].write_text(json.dumps(result))
    table = build_table(collect(paths), [("vae", "likelihood.elbo"), ("vae", "likelihood.iwae")])
    elbo = table.rows[0]
    assert elbo.differences[4].over == "images" and elbo.differences[4].significant
    assert not elbo.differences[1].significant
    frame, bold = table_frames(table)
    assert frame.loc[1, "TRIP learnable"].endswith("†?") and bold.loc[1, "TRIP learnable"]  # ?: no training
    assert "†" not in frame.loc[1, "GMM fixed"] and not bold.loc[1, "GMM fixed"]
    assert frame.loc[1, "GMM learnable"] == "—"  # no run
    sentence = difference_sentence(table)
    assert sentence == ("Beyond the 95% paired interval, TRIP learnable is better than N(0,I) on ELBO (VAE), "
                        "IWAE ELBO (VAE); the other 2 of 4 intervals include 0; 2 of the 2 differences involve "
                        "runs not known to have converged (* or ?).")


# -- marks, sentence and missing sections --------------------------------------------------------
def test_difference_cells_carry_the_convergence_of_either_side():
    base = cell({0: 1.0, 1: 2.0}, converged={0: True, 1: None})
    other = cell({0: 5.0, 1: 6.0}, converged={0: False, 1: True})
    assert (base.mark, other.mark) == ("?", "*")
    assert paired_difference(other, base).mark == "*"
    assert paired_difference(cell({0: 1.0, 1: 2.0}), base).mark == "?"
    assert cell({0: 1.0}).mark == "" and Cell.printed(3.0).mark == ""


def test_no_significant_difference_says_so(tmp_path):
    paths = []
    for col in range(5):
        for seed, noise in enumerate((0.3, -0.2, 0.1)):
            prior, learnable, _ = PRIOR_COLUMNS[col]
            result = {"run": {"model": "wgan", "prior": prior, "learnable": bool(learnable), "dataset": "mnist",
                              "seed": seed},
                      "fid": {"value": 50.0 + noise * (col + 1)}, "training": {"converged": True}}
            paths.append(tmp_path / f"{col}-{seed}.json")
            paths[-1].write_text(json.dumps(result))
    table = build_table(collect(paths), [("wgan", "fid.value")])
    assert difference_sentence(table) == ("No prior differs from N(0,I) beyond its 95% paired interval: "
                                          "all 4 intervals include 0.")
    frame, bold = table_frames(table)
    assert not bold.loc[1].any() and "†" not in "".join(frame.loc[1])


def test_missing_sections_do_not_crash(tmp_path):
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"run": {"model": "vae", "prior": "normal", "learnable": True, "dataset": "shapes",
                                        "seed": 0}}))
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"run": {"model": "wgan", "prior": "trip", "learnable": True, "dataset": "shapes",
                                       "seed": 0},
                               "domain": {"fd": 3.0}, "training": {"converged": "maybe"}, "likelihood": None}))
    results = collect([bare, odd])
    table = build_table(results, TABLE1_ROWS)
    rendered = render_table(table, "cap", [])
    assert rendered.markdown() and rendered.latex() and rendered.csv()
    frame, _ = table_frames(table)
    fd_wgan = frame.index[frame.iloc[:, 0] == "FD ↓ · WGAN"][0]
    assert frame.loc[fd_wgan, "TRIP learnable"] == "3.00?"  # convergence neither true nor false: unknown
    assert frame.loc[fd_wgan, "real data"] == "" and frame.loc[fd_wgan + 1, "TRIP learnable"] == "—"
    assert "No paired interval" in rendered.notes[0] or "No prior can be compared" in rendered.notes[0]


# -- the tune report ------------------------------------------------------------------------------
def test_tune_report_comes_from_the_trials_dataframe(tmp_path):
    from pipeline.tune import OBJECTIVES, trials_frame, write_tuning_report

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", study_name="frame")

    def objective(trial):
        n = trial.suggest_int("n_components", 2, 20)
        trial.suggest_int("core_size", 1, 8)
        trial.report(float(n), 3)
        if trial.number == 1:
            raise optuna.TrialPruned()
        return float(n) + 0.25

    for n in (2, 5, 7):
        study.enqueue_trial({"n_components": n, "core_size": 1})
    study.optimize(objective, n_trials=3)
    frame = trials_frame(study)
    assert list(frame.columns) == ["number", "state", "n_components", "core_size", "latent_dim", "value",
                                   "pruned_at_step"]
    write_tuning_report(study, tmp_path, OBJECTIVES["vae"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "trials.csv").read_text())))
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert [r["pruned_at_step"] for r in rows] == ["", "3", ""] and rows[0]["value"] == "2.25"
    assert rows[0]["n_components"] == "2" and rows[0]["latent_dim"] == ""
    markdown = (tmp_path / "trials.md").read_text()
    assert "| COMPLETE |" in markdown.replace("  ", " ").replace("  ", " ") and "7.250" in markdown
    assert "Best validation ELBO" in markdown
    empty = optuna.create_study(study_name="empty")
    write_tuning_report(empty, tmp_path / "empty", OBJECTIVES["vae"])
    assert (tmp_path / "empty" / "trials.csv").read_text().startswith("number,state,n_components")
