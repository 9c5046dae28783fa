"""The DAG's stages end to end on a tiny grid: prepare -> train -> evaluate -> report, with MLflow;
a stage on its own leaves no MLflow run RUNNING, also when it fails."""

from __future__ import annotations

import json
import logging
import re
import tempfile

import pytest
import yaml

from pipeline.params import load_params
from trip.config import ConfigError

TINY = [
    "train.steps=6", "train.log_every=3", "data.options.n_train=256", "data.options.n_test=64",
    "eval.fid_samples=8", "eval.likelihood_examples=8", "eval.iwae_k=3", "eval.reversal_examples=16",
    "eval.reversal_steps=2", "eval.disagreement_prior_samples=16", "eval.disagreement_count=2",
    "prior.reinit_codes=32", "train.fd_every=3", "train.fd_samples=16", "eval.domain_samples=16",
    "eval.domain_real=16", "eval.mode_samples=32", "eval.kid_subsets=3", "eval.kid_subset_size=8",
    "eval.domain_classifier_steps=5", "eval.domain_batch_size=16",
]


def _params(tmp_path, **changes) -> str:
    params = {
        "profile": "shapes", "seeds": [0], "models": ["vae", "wgan_gp"], "priors": ["trip_learnable"],
        "overrides": [*TINY, f"eval.domain_cache_dir={tmp_path / 'domain'}"], "run_root": str(tmp_path / "runs"), "eval_root": str(tmp_path / "evals"),
        "report_root": str(tmp_path / "reports"), "plots_root": str(tmp_path / "plots"),
        "compute": {"cpus_per_run": 1.0, "max_parallel": 2, "temp_dir": tempfile.mkdtemp(prefix="r", dir="/tmp")},
        "tracking": {"experiment": "stages-test", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    params.update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


TINY_CONDITIONAL = ["missing=[0.5]", "samples_per_spec=4", "classifier.steps=3",
                    "specs=[{square: 1}, {warm: 1, large: 0}]"]
TINY_INDUCED = ["source_prior=trip_learnable", "reversal_examples=16", "reversal_steps=2", "pgan.steps=2",
                "trip.steps=2", "continue_steps=1", "fid_samples=8"]


def _running(uri: str) -> list[str]:
    """Names of the runs of the store that are RUNNING."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_name for r in client.search_runs(ids) if r.info.status == "RUNNING"]


def test_whole_dag_on_a_tiny_grid(tmp_path, monkeypatch, caplog):
    import mlflow

    from stages import conditional, evaluate, induced, prepare, report, train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # offline Inception weights, converted here
    caplog.set_level(logging.INFO, logger="stages.report")
    params = _params(tmp_path, conditional_overrides=TINY_CONDITIONAL, induced_overrides=TINY_INDUCED)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for stage in (prepare, train, evaluate, conditional, induced, report):
        stage.main(["--params", params])
        assert _running(uri) == [], stage.__name__  # every stage closes the parent it opened
    for label in ("vae-trip_learnable-s0", "wgan_gp-trip_learnable-s0"):
        assert (tmp_path / "runs/shapes" / label / "complete.json").exists()
        assert (tmp_path / "evals/shapes" / label / "eval.json").exists()
        assert (tmp_path / "plots/shapes" / f"{label}.csv").read_text().startswith("step,")
    metrics = json.loads((tmp_path / "reports/metrics_shapes.json").read_text())
    assert {"fid/vae/trip_learnable", "elbo/vae/trip_learnable", "pag/wgan_gp/trip_learnable"} <= set(metrics)
    table = (tmp_path / "reports/shapes/table1.md").read_text()
    assert "TRIP learnable" in table and "paper (CelebA)" in table
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stages-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    grid_runs = [r for r in children if r.data.tags["stage"] == "evaluate"]
    assert sorted(r.info.run_name for r in grid_runs) == ["vae-trip_learnable-s0", "wgan_gp-trip_learnable-s0"]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all("eval.fid" in r.data.metrics and "model.name" in r.data.params for r in grid_runs)
    assert not any(k.startswith("system/") for r in runs for k in r.data.metrics)  # tracking.system_metrics off
    link = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert link in (tmp_path / "reports/shapes/README.md").read_text()
    assert link in caplog.text

    reports = tmp_path / "reports/shapes"
    table3 = (reports / "table3.md").read_text()
    assert re.search(r"\| VAE-TRIP \(joint ring\)\s*\|\s*50% \|", table3)
    assert re.search(r"\| CVAE \(unknown-label baseline\)\s*\|\s*50% \|", table3)
    assert "Classifier held-out accuracy: square" in table3
    induced_md = (reports / "induced.md").read_text()
    assert all(label in induced_md for label in ("own prior (control)", "PGAN", "TRIP (max. likelihood)"))
    index = (reports / "README.md").read_text()
    assert "## Table 3" in index and "## Data-induced priors" in index and "cond_samples.png" in index
    metrics = json.loads((tmp_path / "reports/metrics_shapes.json").read_text())
    assert {"violation_any/cvae/miss50/s0", "induced_pag_after/trip"} <= set(metrics)
    by_stage = {}
    for r in children:
        by_stage.setdefault(r.data.tags["stage"], []).append(r)
    assert sorted(r.info.run_name for r in by_stage["conditional"]) == ["cond-cvae-miss50-s0",
                                                                      "cond-vae_trip_cond-miss50-s0"]
    assert all("eval.summary.violation_any" in r.data.metrics for r in by_stage["conditional"])
    assert len(by_stage["induced"]) == 3 and all("eval.after.pag" in r.data.metrics for r in by_stage["induced"])


def test_bad_params_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="compute.cpus_per_run"):
        load_params(_params(tmp_path, compute={"cpus_per_run": -1}))
    with pytest.raises(ConfigError, match="priors: 'trip' is not in profile 'shapes'"):
        load_params(_params(tmp_path, priors=["trip"]))
    with pytest.raises(ConfigError, match="seedz: unknown key"):
        load_params(_params(tmp_path, seedz=[1]))
    with pytest.raises(ConfigError, match="train.steps: must be > 0"):
        load_params(_params(tmp_path, overrides=["train.steps=0"]))
    with pytest.raises(ConfigError, match="tracking.system_metrics_interval: must be > 0"):
        load_params(_params(tmp_path, tracking={"system_metrics": True, "system_metrics_interval": 0}))
    with pytest.raises(ConfigError, match="tracking.system_metrics: expected bool"):
        load_params(_params(tmp_path, tracking={"system_metrics": "yes"}))


def test_a_stage_with_bad_params_exits_naming_the_key(tmp_path, capsys):
    from stages import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--params", _params(tmp_path, compute={"max_paralel": 2})])
    assert exit_info.value.code == 2
    assert "compute.max_paralel: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_failing_run_is_named_after_the_others_finish(tmp_path, monkeypatch):
    """Also: the train stage on its own, failing, leaves no run RUNNING; with tracking.system_metrics
    on, the run that trained has MLflow's system metrics."""
    import mlflow

    from stages import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = _params(tmp_path, priors=["normal", "trip_learnable"], models=["vae"],
                     tracking={"experiment": "stages-test", "uri": uri, "system_metrics": True,
                               "system_metrics_interval": 0.05})
    # A learning rate that is valid for the config but breaks this one run at its first step.
    original = train.train_one

    def flaky(job):
        if job.cfg.prior.name == "trip":
            raise FloatingPointError("diverged on purpose")
        return original(job)

    monkeypatch.setattr(train, "train_one", flaky)
    with pytest.raises(SystemExit, match="train stage: 1 of 2 runs failed:\n.*vae-trip_learnable-s0: FloatingPointError: diverged on purpose"):
        train.main(["--params", params])
    assert (tmp_path / "runs/shapes/vae-normal-s0/complete.json").exists()

    assert _running(uri) == []
    client = mlflow.MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("stages-test").experiment_id])}
    (parent,) = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    assert runs["vae-normal-s0"].info.status == "FINISHED"
    assert runs["vae-trip_learnable-s0"].info.status == "FAILED"  # opened for its system metrics, never trained
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        runs["vae-normal-s0"].data.metrics)


def test_parent_markers_are_per_store_and_tolerate_unknown_runs(tmp_path):
    from pipeline.repro import _marker, close_parent, open_parent
    from pipeline.tracking import Tracker

    first = Tracker(tmp_path, uri=f"sqlite:///{tmp_path / 'a.db'}")
    parent = open_parent(first, "exp")
    assert open_parent(first, "exp") == parent  # reused while running
    other = Tracker(tmp_path, uri=f"sqlite:///{tmp_path / 'b.db'}")
    assert open_parent(other, "exp") != parent  # another store never sees a's marker
    _marker(first, "exp").write_text(json.dumps({"run_id": "0" * 32}))  # a run the store does not know
    replacement = open_parent(first, "exp")
    assert replacement not in (parent, "0" * 32)
    close_parent(first, "exp")
    close_parent(other, "exp")
    assert [t.logger.run_state(p)["status"] for t, p in ((first, replacement), (other, open_parent(other, "exp")))] \
        == ["FINISHED", "RUNNING"]  # the marker stays for the next stage of the repro, which reopens the parent
    close_parent(other, "exp")
