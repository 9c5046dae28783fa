"""Dataset-native metrics: FD, KID, precision/recall and modes on constructed cases; the cached reference."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from trip.config import ConfigError, DataConfig, EvalConfig, RunConfig
from trip.data import to_float
from trip.data.shapes import attribute_probabilities
from trip.metrics import domain
from trip.metrics.domain import (
    evaluate_domain,
    frechet_distance,
    kid,
    knn_radii,
    load_domain_reference,
    mode_statistics,
    polynomial_mmd2,
    precision_recall,
    real_floor,
)
from trip.metrics.fid import feature_stats
from trip.train import load_data

RNG = np.random.default_rng


# -- Fréchet distance and KID ----------------------------------------------------------------
def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_shifted_copy():
    x = RNG(0).normal(size=(2000, 8))
    assert frechet_distance(x, feature_stats(x)) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0] + [0.0] * 6)
    assert frechet_distance(x + shift, feature_stats(x)) == pytest.approx(5.0, rel=1e-6)  # same covariance
    y = RNG(1).normal(size=(2000, 8))  # same distribution, other draw: small but positive
    assert 0 < frechet_distance(y, feature_stats(x)) < 0.1


def test_polynomial_mmd2_is_the_unbiased_estimator():
    x, y = RNG(0).normal(size=(5, 3)), RNG(1).normal(size=(4, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a, b) for a in x for b in y) / 20
    assert polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_a_shifted_one():
    # 400 independent pairs of small samples from one distribution: the estimates average to 0,
    # where the biased estimator (diagonals kept) averages clearly above 0.
    rng = RNG(0)
    unbiased, biased = [], []
    for _ in range(400):
        x, y = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
        unbiased.append(polynomial_mmd2(x, y))
        biased.append(((x @ x.T / 4 + 1) ** 3).mean() + ((y @ y.T / 4 + 1) ** 3).mean()
                      - 2 * ((x @ y.T / 4 + 1) ** 3).mean())
    se = np.std(unbiased) / math.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se
    a, b = rng.normal(size=(1500, 4)), rng.normal(size=(1500, 4))
    same, same_std, size = kid(a, b, subsets=20, subset_size=500, seed=0)
    shifted, _, _ = kid(a + 0.5, b, subsets=20, subset_size=500, seed=0)
    assert size == 500 and same_std > 0 and abs(same) < 3 * same_std
    assert shifted > 0.05 and shifted > 20 * same_std
    assert kid(a, b, subsets=3, subset_size=10_000)[2] == 1500  # subsets never exceed a set
    assert kid(a, b, subsets=5, subset_size=100, seed=3) == kid(a, b, subsets=5, subset_size=100, seed=3)


# -- precision and recall ----------------------------------------------------------------
def test_knn_radii_match_a_sort():
    x = torch.from_numpy(RNG(0).random((300, 2))).float()
    expected = torch.cdist(x, x).sort(dim=1).values[:, 3]  # column 0 is the point itself
    torch.testing.assert_close(knn_radii(x, 3, chunk=7), expected)
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(x[:3], 3)


def test_precision_recall_match_the_definition():
    rng = RNG(2)
    real, fake = rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) * 0.8 + [2.5, 0, 0]
    dist = np.linalg.norm(fake[:, None] - real[None], axis=2)  # (fake, real)
    real_radii = np.sort(np.linalg.norm(real[:, None] - real[None], axis=2), axis=1)[:, 3]
    fake_radii = np.sort(np.linalg.norm(fake[:, None] - fake[None], axis=2), axis=1)[:, 3]
    precision = np.mean([(dist[i] <= real_radii).any() for i in range(150)])
    recall = np.mean([(dist[:, j] <= fake_radii).any() for j in range(200)])
    assert 0.1 < recall < 0.95 and 0.1 < precision < 0.95  # a case where both matter
    assert precision_recall(fake, real, k=3, chunk=16) == pytest.approx((precision, recall), abs=1e-12)
    radii = knn_radii(torch.as_tensor(real, dtype=torch.float32), 3)
    assert precision_recall(fake, real, k=3, reference_radii=radii) == pytest.approx((precision, recall), abs=1e-12)


def test_precision_recall_on_half_of_the_real_manifold():
    real = RNG(0).random((3000, 2))
    half = RNG(1).random((1500, 2)) * [0.5, 1.0]  # covers x < 0.5 only, at the same density
    precision, recall = precision_recall(half, real, k=3, chunk=500)
    assert precision > 0.95 and 0.47 < recall < 0.56  # a few points near the square's edges fall outside
    # The other way round: every real point is covered, half of the generated ones are not real.
    precision, recall = precision_recall(real, half, k=3)
    assert 0.47 < precision < 0.56 and recall > 0.95
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    assert precision_recall(real + 5, real, k=3) == (0.0, 0.0)
    assert precision_recall(half, real, k=3, chunk=97) == precision_recall(half, real, k=3, chunk=5000)


# -- modes ----------------------------------------------------------------------------------
def test_mode_statistics_on_constructed_counts():
    p = np.array([0.5, 0.25, 0.25, 0.0])
    out = mode_statistics(np.array([0, 0, 1, 3]), p)  # counts 2, 1, 0, 1 of n = 4
    q = (np.array([2, 1, 0, 1]) + 0.5) / (4 + 0.5 * 4)  # Jeffreys pseudo-counts
    assert out["mode_kl"] == pytest.approx(0.5 * math.log(0.5 / q[0]) + 0.25 * math.log(0.25 / q[1])
                                           + 0.25 * math.log(0.25 / q[2]), rel=1e-12)
    assert out["mode_tv"] == pytest.approx(0.25)  # |0.25 - 0| + |0 - 0.25|, halved
    # Cells with data mass count: cell 3 (impossible) does not, cell 2 is missed.
    assert out["modes_covered"] == 2 and out["modes_total"] == 3 and out["n_modes_samples"] == 4
    exact = mode_statistics(np.repeat(np.arange(4), [50, 25, 25, 0]), p)
    assert exact["mode_tv"] == pytest.approx(0.0, abs=1e-15) and exact["modes_covered"] == 3
    assert 0 < exact["mode_kl"] < 0.01  # only the smoothing remains
    with pytest.raises(ValueError, match="cells"):
        mode_statistics(np.array([5]), p)


def test_mode_statistics_of_exact_shapes_samples_and_a_collapsed_model():
    p = attribute_probabilities()
    cells = RNG(0).choice(512, size=10_000, p=p)
    good = mode_statistics(cells, p)
    assert good["modes_total"] == 512 and good["modes_covered"] > 490
    assert good["mode_kl"] < 0.03 and good["mode_tv"] < 0.15
    collapsed = mode_statistics(cells[np.isin(cells, np.argsort(p)[-50:])], p)  # only the 50 likeliest cells
    assert collapsed["modes_covered"] == 50
    assert collapsed["mode_kl"] > 10 * good["mode_kl"] and collapsed["mode_tv"] > 0.5


# -- the cached reference on a tiny shapes config ---------------------------------------------
def _data(tmp_path, n_test=200) -> DataConfig:
    return DataConfig(name="shapes", image_size=16, options={"n_train": 400, "n_test": n_test, "seed": 0},
                      prepared_root=str(tmp_path / "prepared"))


def _settings(tmp_path, **changes) -> EvalConfig:
    values = dict(domain_samples=60, domain_real=60, mode_samples=120, kid_subsets=5, kid_subset_size=30,
                  domain_classifier_steps=20, domain_batch_size=32, domain_cache_dir=str(tmp_path / "domain"))
    return EvalConfig(**{**values, **changes})


def test_reference_is_cached_and_reused_not_retrained(tmp_path, monkeypatch, caplog):
    data, ev = _data(tmp_path), _settings(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trip.metrics.domain"):
        first = load_domain_reference(data, ev)
    # 20 steps cannot read every attribute: the shortfall is reported, not hidden.
    assert not first.accuracy_ok and "accuracy below 0.95" in caplog.text
    files = {p.name: p.stat().st_mtime_ns for p in first.directory.iterdir()}
    assert {"classifier.pt", "classifier.json", "reference-n60.npz"} <= set(files)
    assert first.directory.name.startswith("shapes-16px-") and first.features.shape == (60, 64)
    # The reference features are scaled to root mean square 1, and samples are measured in the same units.
    assert np.sqrt(np.mean(first.features.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-5)
    test = load_data(RunConfig(data=data))[1]
    np.testing.assert_allclose(first.measure(test.images[:60])[0], first.features, rtol=1e-5, atol=1e-6)

    def fail(*args, **kwargs):
        raise AssertionError("retrained or recomputed")

    monkeypatch.setattr("trip.conditional.train_classifier", fail)
    monkeypatch.setattr(domain, "classifier_features", fail)
    again = load_domain_reference(data, ev)
    np.testing.assert_array_equal(again.features, first.features)
    assert {p.name: p.stat().st_mtime_ns for p in again.directory.iterdir()} == files
    # The key is the data config, not where the prepared arrays are cached; other options give another key.
    moved = DataConfig(**{**vars(data), "prepared_root": str(tmp_path / "elsewhere")})
    assert load_domain_reference(moved, ev).directory == first.directory
    assert domain.domain_directory(_data(tmp_path, n_test=300), ev) != first.directory


def test_cached_features_name_a_gpu_but_cpu_names_stay_as_they_were():
    """GPU features round differently: their reference file and floor digest name the device type.
    (Load-bearing on a GPU only; here the rule itself, while the test above pins the CPU names.)"""
    assert domain._device_suffix("cpu") == domain._device_suffix(torch.device("cpu")) == ""
    assert domain._device_suffix("cuda:1") == domain._device_suffix("cuda") == "-cuda"


def test_a_too_small_test_split_names_the_key(tmp_path, monkeypatch):
    data, ev = _data(tmp_path, n_test=100), _settings(tmp_path)  # 2 x 60 floor images do not fit
    reference = load_domain_reference(data, ev)
    with pytest.raises(ConfigError, match=r"data\.options\.n_test: the shapes test split has 100 images.*120"):
        real_floor(reference, ev, data=data)
    # The error comes before minutes of classifier training, not after.
    monkeypatch.setattr("trip.conditional.train_classifier", lambda *a, **k: pytest.fail("trained in vain"))
    with pytest.raises(ConfigError, match=r"data\.options\.n_test.*eval\.domain_real"):
        load_domain_reference(data, _settings(tmp_path, domain_real=150))
    with pytest.raises(ConfigError, match=r"needs 300 .*eval\.mode_samples"):
        domain.check_test_size("shapes", 100, _settings(tmp_path, mode_samples=300))
    domain.check_test_size("cifar10", 120, _settings(tmp_path, mode_samples=300))  # no modes there


def test_evaluate_domain_scores_samples_and_the_real_floor(tmp_path, monkeypatch):
    data, ev = _data(tmp_path), _settings(tmp_path)
    test = load_data(RunConfig(data=data))[1]
    reference = load_domain_reference(data, ev, test)
    # Float images in [-1, 1] and their uint8 originals give the same features.
    images = torch.from_numpy(test.images[:40])
    np.testing.assert_array_equal(reference.measure(images)[0], reference.measure(to_float(images))[0])

    calls = []

    def noise(n):  # a "model" that draws uniform noise images
        calls.append(n)
        return torch.rand(n, 3, 16, 16) * 2 - 1

    torch.manual_seed(0)
    out = evaluate_domain(reference, noise, ev, test)
    assert calls == [32, 32, 32, 24]  # mode_samples = 120 images in batches of domain_batch_size
    for key in ("fd", "kid", "kid_std", "precision", "recall", "modes_covered", "modes_total", "mode_kl",
                "mode_tv", "n_samples", "n_real", "n_modes_samples"):
        assert key in out and key in out["real"], key
    assert out["n_samples"] == 60 and out["n_real"] == 60 and out["n_modes_samples"] == 120
    assert out["modes_total"] == 512 and out["real"]["n_modes_samples"] == 120
    floor = out["real"]
    assert out["fd"] > 5 * floor["fd"] and out["kid"] > floor["kid"] and out["precision"] < floor["precision"]
    assert floor["precision"] > 0.5 and floor["recall"] > 0.5 and floor["test_rows"] == [60, 120]
    assert json.loads(json.dumps(out)) == out  # goes into eval.json as is
    # Real held-out images as the "samples" score like the floor; the floor itself is cached.
    monkeypatch.setattr(domain, "_test_split", lambda data: pytest.fail("the floor was recomputed"))
    as_real = evaluate_domain(reference, to_float(torch.from_numpy(test.images[80:200])), ev)
    assert as_real["fd"] < out["fd"] / 5 and as_real["real"] == floor
    with pytest.raises(ValueError, match="needs 120"):
        evaluate_domain(reference, to_float(images), ev)


def test_evaluate_gets_a_domain_part_with_its_own_digest(tiny_profile, tmp_path, stub_features, monkeypatch):
    from trip.evaluate import PARTS, evaluate
    from trip.profiles import resolve
    from trip.train import run

    cfg = resolve(tiny_profile(tmp_path), "vae", "normal", seed=0, run_root=tmp_path / "runs")
    run(cfg, progress=False)
    ev = EvalConfig(fid_samples=16, fid_stats_dir=str(tmp_path / "fid_stats"), likelihood_examples=4, iwae_k=2,
                    hop_trajectories=1, hop_steps=2, hop_dims=2, domain_samples=10, domain_real=10,
                    mode_samples=32, kid_subsets=3, kid_subset_size=8, domain_classifier_steps=5,
                    domain_batch_size=16, domain_cache_dir=str(tmp_path / "domain"))
    out = evaluate(cfg.run_dir, ev, "cpu", progress=False, fid_model=stub_features)
    result = out["domain"]
    assert result["n_samples"] == 10 and result["n_modes_samples"] == 32 and result["modes_total"] == 512
    assert result["fd"] > 0 and result["real"]["n_samples"] == 10 and "inputs" in result
    calls = []
    for name in PARTS:
        monkeypatch.setitem(PARTS, name, lambda *a, _n=name, _f=PARTS[name]: calls.append(_n) or _f(*a))
    assert evaluate(cfg.run_dir, ev, "cpu", progress=False, fid_model=stub_features) == out and calls == []
    ev.kid_subsets = 4
    evaluate(cfg.run_dir, ev, "cpu", progress=False, fid_model=stub_features)
    assert calls == ["domain"]


def test_inference_copy_fuses_batch_norm_and_keeps_the_outputs():
    from trip.metrics.conditional import AttributeClassifier

    torch.manual_seed(0)
    model = AttributeClassifier(3, 16, 9)
    for layer in model.net:
        if isinstance(layer, torch.nn.BatchNorm2d):  # non-trivial statistics, as after training
            layer.running_mean.uniform_(-1, 1), layer.running_var.uniform_(0.5, 2), layer.weight.data.uniform_(0.5, 2)
    model.eval()
    fused = domain.inference_copy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    ours, theirs = domain.classifier_features(fused, images), domain.classifier_features(model, images)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_array_equal(ours[1], (model(to_float(images)) > 0).numpy())


def test_prepare_domain_fills_the_cache_that_evaluation_then_only_reads(tmp_path, monkeypatch):
    data, ev = _data(tmp_path), _settings(tmp_path)
    with monkeypatch.context() as patch:  # a too small test split fails before any training
        patch.setattr("trip.conditional.train_classifier", lambda *a, **k: pytest.fail("trained in vain"))
        with pytest.raises(ConfigError, match="data.options.n_test"):
            domain.prepare_domain(RunConfig(data=_data(tmp_path, n_test=100), eval=ev))
    reference = domain.prepare_domain(RunConfig(data=data, eval=ev))
    names = sorted(p.name for p in reference.directory.iterdir())
    assert names[:3] == ["classifier.json", "classifier.pt", names[2]] and names[2].startswith("floor-")
    monkeypatch.setattr(domain, "_test_split", lambda data: pytest.fail("the test split was loaded"))
    monkeypatch.setattr("trip.conditional.train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = load_domain_reference(data, ev)
    out = evaluate_domain(again, lambda n: torch.rand(n, 3, 16, 16) * 2 - 1, ev)
    assert out["real"] == json.loads((reference.directory / names[2]).read_text())
