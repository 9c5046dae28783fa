"""Data-induced priors: TRIP and PGAN fits, the end-to-end experiment, errors and config checks."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import trip.induced as induced
from trip.config import ConfigError
from trip.induced import (
    InducedConfig,
    PGANConfig,
    PGANPrior,
    TRIPFitConfig,
    fit_pgan,
    fit_trip,
    load_induced,
    load_induced_config,
    main,
    run_induced,
)
from trip.models import MODELS
from trip.profiles import resolve
from trip.train import run


def _tiny_induced(**changes) -> InducedConfig:
    raw = {"reversal_examples": 24, "reversal_steps": 4, "continue_steps": 2, "fid_samples": 16,
           "pgan": {"hidden": 16, "steps": 5, "n_critic": 2, "batch_size": 16},
           "trip": {"n_components": 2, "core_size": 2, "steps": 5, "batch_size": 16}}
    return load_induced_config({**raw, **changes})


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks run fastest on one thread, and the CPU is shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gan_run(tiny_profile, tmp_path):
    profile = tiny_profile(tmp_path)
    profile["base"]["eval"] = {"fid_stats_dir": str(tmp_path / "fid_stats"), "fid_batch_size": 16}
    cfg = resolve(profile, "wgan_gp", "normal", seed=0, run_root=tmp_path / "runs")
    run(cfg, progress=False)
    return cfg.run_dir


def test_fit_trip_raises_heldout_likelihood_of_multimodal_codes():
    # Two modes at (-1.5, ..) and (1.5, ..): every dimension bimodal and all perfectly
    # correlated, which the initial product of 1-D fits cannot express.
    g = torch.Generator().manual_seed(0)
    state = torch.randint(0, 2, (600, 1), generator=g).float()
    codes = (3 * state - 1.5).expand(600, 4) + 0.3 * torch.randn(600, 4, generator=g)
    cfg = TRIPFitConfig(n_components=2, core_size=2, steps=120, lr=0.05, batch_size=256, holdout=0.25)
    prior, report = fit_trip(codes, cfg, seed=0)
    heldout = report["heldout_loglik"]
    assert (report["n_fit"], report["n_validation"], report["n_heldout"]) == (360, 90, 150)
    assert len(report["curve"]) == 120 and 0 < report["kept_step"] <= 120
    assert heldout["fitted"] > heldout["initial"] + 0.5 > heldout["normal"]
    assert report["curve"][-1] > report["curve"][0]
    assert not prior.learnable and prior.dim == 4
    _, last = fit_trip(codes, TRIPFitConfig(n_components=2, core_size=2, steps=8, holdout=0.25, validation=0.0),
                       seed=0)
    assert last["kept_step"] == 8 and last["validation_loglik"] is None and last["n_fit"] == 450


def test_pgan_moves_toward_a_2d_mixture():
    g = torch.Generator().manual_seed(0)
    modes = torch.tensor([[2.0, 1.0], [-2.0, -1.0]])
    data = modes[torch.randint(0, 2, (1000,), generator=g)] + 0.3 * torch.randn(1000, 2, generator=g)

    def stats(prior):
        z = prior.sample(2000, generator=torch.Generator().manual_seed(1))
        near = ((z[:, None] - modes).norm(dim=-1).min(1).values < 0.9).float().mean().item()
        return near, (z[:, 0] > 0).float().mean().item(), (torch.cov(z.T) - torch.cov(data.T)).norm().item()

    cfg = PGANConfig(hidden=64, steps=300, n_critic=5, lr=1e-3, batch_size=128)
    untrained, _ = fit_pgan(data, PGANConfig(hidden=64, steps=0), torch.Generator().manual_seed(0))
    trained, report = fit_pgan(data, cfg, torch.Generator().manual_seed(0))
    near0, _, cov0 = stats(untrained)
    near, right, cov = stats(trained)
    assert near0 < 0.1 and near > 0.6  # the data: 0.99
    assert 0.25 < right < 0.75  # both modes, not one
    assert cov < 0.5 * cov0
    assert len(report["wasserstein_curve"]) == 20 and not trained.learnable


def test_pgan_prior_samples_but_has_no_density():
    prior = PGANPrior(3, noise_dim=5, hidden=8)
    assert prior.sample(7).shape == (7, 3)
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        prior.log_prob(torch.zeros(2, 3))
    with pytest.raises(NotImplementedError, match="no conditionals"):
        prior.sample_conditional(torch.zeros(2, 3), torch.tensor([True, False, False]))


def test_a_fixed_pgan_prior_trains_a_gan_without_asking_for_a_density(tiny_profile, tmp_path):
    cfg = resolve(tiny_profile(tmp_path), "wgan_gp", "normal", seed=0, run_root=tmp_path / "runs")
    gan = MODELS.get("wgan_gp")(cfg, 3)
    gan.prior = PGANPrior(cfg.model.latent_dim, hidden=8).set_learnable(False)
    loss, stats = gan.generator_and_prior_loss(4)
    loss.backward()
    assert "prior_surrogate" not in stats and all(p.grad is None for p in gan.prior.parameters())


def test_run_induced_all_kinds(gan_run, tmp_path, stub_features, monkeypatch):
    checkpoint = gan_run + "/checkpoint.pt"
    source_bytes, source_files = open(checkpoint, "rb").read(), sorted(os.listdir(gan_run))
    calls = []
    original_reverse = induced.experiment.reverse_generator
    monkeypatch.setattr(induced.experiment, "reverse_generator", lambda *a, **k: calls.append(1) or original_reverse(*a, **k))
    cfg, out_dir = _tiny_induced(), tmp_path / "induced"
    results = {}
    for kind in ("trip", "pgan", "original"):
        calls.clear()
        results[kind] = run_induced(gan_run, kind, cfg, out_dir, progress=False, fid_model=stub_features)
        assert len(calls) == (2 if kind == "trip" else 1)  # later kinds reuse the cached reversal
        assert results[kind]["reversal_cache"]["reused"] is (kind != "trip")
    for kind, out in results.items():
        assert json.loads((out_dir / f"induced_{kind}.json").read_text()) == out
        assert out["source"]["model"] == "wgan_gp" and out["continued"]["steps"] == 2
        assert out["continued"]["fresh_optimizers"] and "wasserstein" in out["continued"]["final_metrics"]
        for when in ("before", "after"):
            scores = out[when]
            assert scores["n_codes"] == 24 and scores["pag"] >= 0 and scores["prior_to_codes_distance"] > 0
            assert scores["fid"]["n_samples"] == 16 and "n=16" in scores["fid"]["text"]
        assert out["before"] == results["trip"]["before"]
        assert set(out["wall_seconds"]) >= {"before", "fit_prior", "continue_training", "after", "total"}
        assert (out_dir / out["files"]["samples"]).stat().st_size > 0
        _, model = load_induced(out_dir / out["files"]["checkpoint"])
        assert model.sample(3).shape == (3, 3, 16, 16) and not model.prior.learnable
    heldout = results["trip"]["prior"]["heldout_loglik"]
    assert set(heldout) == {"normal", "initial", "fitted"}
    assert results["pgan"]["after"]["codes_loglik_prior"] is None
    assert isinstance(results["trip"]["after"]["codes_loglik_prior"], float)
    before = results["trip"]["before"]
    assert before["codes_loglik_prior"] == pytest.approx(before["codes_loglik_normal"])  # the source's N(0, I)
    assert results["pgan"]["prior"]["kind"] == "pgan" and results["original"]["prior"]["kind"] == "original"
    assert open(checkpoint, "rb").read() == source_bytes and sorted(os.listdir(gan_run)) == source_files


def test_missing_or_corrupt_source_run_names_the_path(gan_run, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        run_induced(tmp_path / "nowhere", "trip", _tiny_induced(), tmp_path / "out")
    broken = tmp_path / "broken"
    shutil.copytree(gan_run, broken)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=f"{broken}: cannot load"):
        run_induced(broken, "trip", _tiny_induced(), tmp_path / "out")
    (broken / "complete.json").unlink()
    with pytest.raises(RuntimeError, match="not complete"):
        run_induced(broken, "trip", _tiny_induced(), tmp_path / "out")
    with pytest.raises(ConfigError, match="reversal_examples: 500 exceeds the 96"):
        run_induced(gan_run, "trip", _tiny_induced(reversal_examples=500), tmp_path / "out")
    with pytest.raises(ValueError, match="out_dir: .* is the source run directory"):
        run_induced(gan_run, "trip", _tiny_induced(), gan_run)
    with pytest.raises(ValueError, match="kind must be one of"):
        run_induced(gan_run, "gmm", _tiny_induced(), tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("raw, key", [
    ({"reversal_examples": 0}, "reversal_examples"),
    ({"continue_steps": -1}, "continue_steps"),
    ({"fid_samples": 1}, "fid_samples"),
    ({"source_model": "vae"}, "source_model"),
    ({"reversal_lr": 0}, "reversal_lr"),
    ({"pgan": {"hidden": 0}}, "pgan.hidden"),
    ({"pgan": {"noise_dim": 0}}, "pgan.noise_dim"),
    ({"pgan": {"width": 3}}, "pgan.width"),
    ({"trip": {"holdout": 1.0}}, "trip.holdout"),
    ({"trip": {"n_components": 500}}, "trip.holdout"),
    ({"trip": {"lr": "fast"}}, "trip.lr"),
])
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        load_induced_config(raw)


def test_config_overrides_and_cli_help(capsys):
    cfg = load_induced_config({}, ["pgan.steps=7", "trip.core_size=3"])
    assert cfg.pgan.steps == 7 and cfg.trip.core_size == 3 and cfg.reversal_examples == 512
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--kind" in capsys.readouterr().out
