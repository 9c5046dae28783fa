"""The tune stage on tiny data: a study that completes, resumes, prunes, and is tracked in MLflow."""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile

import optuna
import pytest
import yaml

from pipeline.tune import TuneParams, tune_params
from trip.config import ConfigError

TINY = ["data.options.n_train=128", "data.options.n_test=32", "train.log_every=2", "train.batch_size=32",
        "prior.reinit_codes=32", "train.fd_every=0"]  # the FD probe needs thousands of reference images


def _files(tmp_path, inline=False, **tune_changes) -> list[str]:
    """argv for the stage: the tune settings in tune.yaml, or (``inline``) as params.yaml's ``tune:``."""
    params = {
        "profile": "shapes", "seeds": [0], "models": ["vae"], "priors": ["trip_learnable"],
        "overrides": TINY, "run_root": str(tmp_path / "runs"), "eval_root": str(tmp_path / "evals"),
        "report_root": str(tmp_path / "reports"), "plots_root": str(tmp_path / "plots"),
        "compute": {"cpus_per_run": 1.0, "max_parallel": 2, "temp_dir": tempfile.mkdtemp(prefix="r", dir="/tmp")},
        "tracking": {"experiment": "tune-test", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    tune = {"n_trials": 2, "parallel": 2, "n_max": 8, "m_max": 8, "steps": 4, "report_every": 2,
            "validation_examples": 16, "storage": str(tmp_path / "optuna.db"), "study_name": "tiny"}
    tune.update(tune_changes)
    if inline:
        params["tune"] = tune
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tune))
    argv = ["--params", str(tmp_path / "params.yaml")]
    return argv if inline else argv + ["--tune-config", str(tmp_path / "tune.yaml")]


def _study(tmp_path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def _checkpoint_mtimes(tmp_path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "runs/tune/tiny").glob("trial-*/checkpoint.pt")}


def test_study_completes_resumes_and_is_tracked(tmp_path):
    import mlflow

    from stages import tune

    tune.main(_files(tmp_path))
    trials = _study(tmp_path).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == [2, 4] and math.isfinite(t.value) for t in trials)
    assert all(t.value == t.intermediate_values[4] for t in trials)
    report = tmp_path / "reports/tuning"
    best = json.loads((report / "best.json").read_text())
    assert set(best["best_params"]) == {"n_components", "core_size"} and best["n_complete"] == 2
    rows = list(csv.DictReader((report / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1"] and rows[0]["state"] == "COMPLETE"
    assert re.search(r"\|\s*number \|\s*state\s*\|\s*n_components \|", (report / "trials.md").read_text())
    assert (report / "optimization_history.png").stat().st_size > 0
    assert (report / "contour_n_m.png").stat().st_size > 0

    before = _checkpoint_mtimes(tmp_path)
    assert len(before) == 2
    tune.main(_files(tmp_path, n_trials=3))
    trials = _study(tmp_path).get_trials()
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    after = _checkpoint_mtimes(tmp_path)
    assert {k: after[k] for k in before} == before and len(after) == 3  # the first two not retrained
    assert len(list(csv.DictReader((report / "trials.csv").open()))) == 3

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tune-test-tune")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "trial" in r.data.tags]
    assert sorted(r.data.tags["trial"] for r in children) == ["0", "1", "2"]
    assert all({"N", "m", "mlflow.parentRunId"} <= set(r.data.tags) for r in children)
    assert all("tune.value" in r.data.metrics and "prior.core_size" in r.data.params for r in children)
    assert sum("trial" not in r.data.tags for r in runs) == 2  # one parent per invocation


def test_a_gan_study_minimises_fid(tmp_path, monkeypatch):
    import mlflow

    from stages import tune

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # offline Inception weights, converted here
    argv = _files(tmp_path, n_trials=1, parallel=1, model="wgan_gp", steps=2, report_every=1, fid_samples=6)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["models"] = ["wgan_gp"]
    params["overrides"] += ["train.n_critic=1"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    tune.main(argv)
    study = _study(tmp_path)
    [trial] = study.get_trials()
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert trial.state == optuna.trial.TrialState.COMPLETE and sorted(trial.intermediate_values) == [1, 2]
    assert trial.value == trial.intermediate_values[2] and trial.value > 0
    best = json.loads((tmp_path / "reports/tuning/best.json").read_text())
    assert best["objective"] == "FID" and best["direction"] == "minimize"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [child] = [r for r in client.search_runs([client.get_experiment_by_name("tune-test-tune").experiment_id])
               if "trial" in r.data.tags]
    assert "tune.fid" in child.data.metrics


def test_a_vae_objective_needs_a_trip_prior(tmp_path):
    from stages import tune

    with pytest.raises(ConfigError, match="tune.prior"):
        tune.main(_files(tmp_path, prior="normal"))


def test_a_pruned_trial_ends_pruned(tmp_path):
    from stages import tune

    # The settings as params.yaml's own ``tune:`` section this time.
    tune.main(_files(tmp_path, inline=True, n_trials=1, parallel=1), pruner=optuna.pruners.ThresholdPruner(lower=math.inf))
    [trial] = _study(tmp_path).get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [2]
    rows = list(csv.DictReader((tmp_path / "reports/tuning/trials.csv").open()))
    assert rows[0]["state"] == "PRUNED" and rows[0]["pruned_at_step"] == "2"
    assert "not plotted" in (tmp_path / "reports/tuning/trials.md").read_text()


def test_an_interrupted_trial_is_asked_again_with_its_run_dir(tmp_path):
    from pipeline.tune import open_study

    settings = TuneParams(n_trials=1, storage=str(tmp_path / "optuna.db"))
    study = open_study(settings, tmp_path / "optuna.db", "tiny")
    dead = study.ask({"n_components": optuna.distributions.IntDistribution(2, 20)})
    dead.set_user_attr("run_dir", "trial-0000")
    study = open_study(settings, tmp_path / "optuna.db", "tiny")  # a new driver
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    retry = study.ask()
    assert retry.params == {} and retry.user_attrs["run_dir"] == "trial-0000"
    assert retry.suggest_int("n_components", 2, 20) == dead.params["n_components"]


@pytest.mark.parametrize("raw, key", [
    ({"n_trials": 0}, "tune.n_trials"),
    ({"n_min": 1}, "tune.n_min"),
    ({"m_max": 0}, "tune.m_max"),
    ({"latent_choices": []}, "tune.latent_choices"),
    ({"steps": "many"}, "tune.steps"),
    ({"budget": 3}, "tune.budget: unknown key"),
    ({"fid_samples": 1}, "tune.fid_samples"),
])
def test_bad_tune_params_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        tune_params(raw)


def test_report_steps_end_at_the_budget():
    assert TuneParams(steps=5, report_every=2).report_steps() == [2, 4, 5]
    assert TuneParams(steps=4, report_every=2).report_steps() == [2, 4]


def test_report_of_a_study_with_varied_trials(tmp_path):
    from pipeline.tune import OBJECTIVES, write_tuning_report

    study = optuna.create_study(direction="maximize", study_name="synthetic")
    for n, m in ((2, 1), (5, 8), (9, 3), (4, 40)):
        study.enqueue_trial({"n_components": n, "core_size": m})

    def objective(trial):
        return -abs(trial.suggest_int("n_components", 2, 20) - 5) - trial.suggest_int("core_size", 1, 64, log=True)

    study.optimize(objective, n_trials=4)
    written = write_tuning_report(study, tmp_path / "tuning", OBJECTIVES["vae"])
    assert {p.name for p in written} >= {"param_importances.png", "contour_n_m.png", "optimization_history.png"}
    best = json.loads((tmp_path / "tuning/best.json").read_text())
    assert best["best_params"] == {"n_components": 2, "core_size": 1} and best["best_value"] == -4
    assert "Note:" not in (tmp_path / "tuning/trials.md").read_text()
