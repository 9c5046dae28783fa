"""Evaluation of trained runs: eval.json contents, figures, idempotence and errors."""

from __future__ import annotations

import json

import pytest

from trip.config import EvalConfig
from trip.evaluate import evaluate, main
from trip.profiles import resolve
from trip.train import run


def _eval_settings(tmp_path) -> EvalConfig:
    return EvalConfig(fid_samples=32, fid_stats_dir=str(tmp_path / "fid_stats"), likelihood_examples=12, iwae_k=10,
                      reversal_examples=32, reversal_steps=5, disagreement_prior_samples=40, disagreement_count=4,
                      hop_trajectories=2, hop_steps=3, hop_dims=2, domain_samples=16, domain_real=16,
                      mode_samples=32, kid_subsets=3, kid_subset_size=8, domain_classifier_steps=5,
                      domain_batch_size=16, domain_cache_dir=str(tmp_path / "domain"))


@pytest.fixture
def trained(tiny_profile, tmp_path):
    def make(model, prior="trip_learnable"):
        cfg = resolve(tiny_profile(tmp_path), model, prior, seed=0, run_root=tmp_path / "runs")
        run(cfg, progress=False)
        return cfg.run_dir
    return make


def test_vae_run_gets_fid_elbo_iwae_and_figures(trained, tmp_path, stub_features):
    run_dir = trained("vae")
    out = evaluate(run_dir, _eval_settings(tmp_path), "cpu", progress=False, fid_model=stub_features)
    assert out["fid"]["n_samples"] == 32 and out["fid"]["value"] >= 0 and "n=32" in out["fid"]["text"]
    lk = out["likelihood"]
    assert lk["n_examples"] == 12 and lk["iwae_k"] == 10
    assert lk["elbo"] <= lk["iwae"] + 3 * lk["iwae_se"] and lk["elbo_se"] > 0
    saved = json.loads((tmp_path / "runs/tiny/vae-trip_learnable-s0/eval.json").read_text())
    assert saved["likelihood"]["elbo"] == lk["elbo"]
    for name in ("samples", "training_curves", "prior_density", "mode_hopping"):
        assert (tmp_path / f"runs/tiny/vae-trip_learnable-s0/figures/{name}.png").stat().st_size > 0
    assert "reversal" not in out


def test_gan_run_gets_pag_reversal_and_disagreement(trained, tmp_path, stub_features):
    run_dir = trained("wgan_gp", "gmm_fixed")
    out = evaluate(run_dir, _eval_settings(tmp_path), "cpu", progress=False, fid_model=stub_features)
    rv = out["reversal"]
    assert rv["pag"] >= 0 and len(rv["reversal_curve"]) == 6 and rv["n_examples"] == 32
    assert rv["reversal_curve"][-1] <= rv["reversal_curve"][0]
    for name in ("disagreement", "reversal_curve", "prior_density", "mode_hopping"):
        assert (tmp_path / f"runs/tiny/wgan_gp-gmm_fixed-s0/figures/{name}.png").exists()
    assert "likelihood" not in out


def test_evaluation_is_idempotent_and_redoes_only_changed_parts(trained, tmp_path, stub_features, monkeypatch):
    run_dir = trained("vae", "normal")
    settings = _eval_settings(tmp_path)
    first = evaluate(run_dir, settings, "cpu", progress=False, fid_model=stub_features)
    calls = []
    import trip.evaluate as ev

    for name in ("fid", "likelihood", "figures"):
        original = ev.PARTS[name]
        monkeypatch.setitem(ev.PARTS, name, lambda *a, _n=name, _f=original: calls.append(_n) or _f(*a))
    again = evaluate(run_dir, settings, "cpu", progress=False, fid_model=stub_features)
    assert calls == [] and again == first
    settings.iwae_k = 5
    evaluate(run_dir, settings, "cpu", progress=False, fid_model=stub_features)
    assert calls == ["likelihood"]


def test_clear_errors_for_missing_or_incomplete_runs(tiny_profile, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.pt does not exist"):
        evaluate(tmp_path / "nothing", device="cpu")
    cfg = resolve(tiny_profile(tmp_path), "vae", "normal", seed=0, run_root=tmp_path / "runs")
    run(cfg, stop_after=2, progress=False)
    with pytest.raises(RuntimeError, match="not complete"):
        evaluate(cfg.run_dir, device="cpu")
    with pytest.raises(SystemExit) as exit_info:
        main([cfg.run_dir, "--set", "train.lr=1"])
    assert exit_info.value.code == 2


def test_results_can_go_to_a_separate_directory(trained, tmp_path, stub_features):
    run_dir = trained("vae", "normal")
    before = sorted(p.name for p in (tmp_path / "runs/tiny/vae-normal-s0").iterdir())
    out = tmp_path / "evals" / "vae-normal-s0"
    evaluate(run_dir, _eval_settings(tmp_path), "cpu", progress=False, fid_model=stub_features, out_dir=out)
    assert (out / "eval.json").exists() and (out / "figures" / "samples.png").exists()
    assert sorted(p.name for p in (tmp_path / "runs/tiny/vae-normal-s0").iterdir()) == before
