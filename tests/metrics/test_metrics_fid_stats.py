"""Known answers for the distance, and the reference-statistics cache. No Inception network needed."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trip.metrics.fid import (
    FeatureStats,
    FIDResult,
    StatsCacheError,
    compute_fid,
    feature_stats,
    fid_from_stats,
    inception_features,
    load_stats,
    reference_stats,
    save_stats,
    stats_key,
    to_uint8,
)


def _stats(mu: np.ndarray, sigma: np.ndarray, n: int = 100) -> FeatureStats:
    return FeatureStats(mu=np.asarray(mu, float), sigma=np.asarray(sigma, float), n=n)


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def _closed_form(mu1, s1, mu2, s2) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), via the symmetric form Tr((S1^1/2 S2 S1^1/2)^1/2).

    Computed with eigendecompositions, independently of pytorch-fid's sqrtm of the non-symmetric S1 S2.
    """
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(w)) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s1_half @ s2 @ s1_half), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross)


def _boom():
    raise AssertionError("images_fn must not be called")


# --- Known answers ---


@pytest.mark.parametrize(("n", "dim"), [(500, 16), (10, 32)])
def test_fid_of_a_set_against_itself_is_zero(n: int, dim: int) -> None:
    # (10, 32) is rank deficient like real 2048-d features at small n; pytorch-fid then adds eps to the diagonal.
    stats = feature_stats(np.random.default_rng(0).standard_normal((n, dim)))
    assert abs(fid_from_stats(stats, stats).value) < 1e-5 * np.trace(stats.sigma)


@settings(max_examples=40, deadline=None)
@given(
    # D >= 2: with scipy 1.17 sqrtm returns a bare array for 1x1 input, which pytorch-fid cannot unpack.
    mus=st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=2, max_size=8),
    variances=st.lists(st.tuples(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3)), min_size=8, max_size=8),
)
def test_fid_of_diagonal_gaussians_matches_closed_form(mus, variances) -> None:
    mu1, mu2 = np.array(mus).T
    v1, v2 = np.array(variances[: len(mus)]).T
    # Diagonal covariances commute, so (S1 S2)^1/2 is the elementwise sqrt(v1 v2).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = fid_from_stats(_stats(mu1, np.diag(v1)), _stats(mu2, np.diag(v2))).value
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_fid_of_full_covariance_gaussians_matches_closed_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 6
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
    got = fid_from_stats(_stats(mu1, s1), _stats(mu2, s2)).value
    assert got == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=1e-8)


@pytest.mark.parametrize("n_a,n_b", [(400, 300), (60, 40)])
def test_fid_matches_pytorch_fid_including_rank_deficient_covariances(n_a: int, n_b: int) -> None:
    """Same distance as pytorch-fid's sqrtm route, also when there are fewer samples than features."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(n_a)
    mix = rng.standard_normal((64, 64)) * 0.3
    a = feature_stats(rng.standard_normal((n_a, 64)) @ mix)
    b = feature_stats(rng.standard_normal((n_b, 64)) @ mix + 0.2)
    with warnings.catch_warnings():  # pytorch-fid passes sqrtm's deprecated `disp`
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert fid_from_stats(a, b).value == pytest.approx(expected, rel=1e-6)
    assert fid_from_stats(b, a).value == pytest.approx(expected, rel=1e-6)


def test_fid_is_invariant_to_image_order() -> None:
    rng = np.random.default_rng(1)
    features, other = rng.standard_normal((300, 12)), rng.standard_normal((200, 12)) + 0.3
    permuted = features[rng.permutation(len(features))]
    a, b = feature_stats(features), feature_stats(permuted)
    np.testing.assert_allclose(b.mu, a.mu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-12, atol=1e-14)
    ref = feature_stats(other)
    assert fid_from_stats(b, ref).value == pytest.approx(fid_from_stats(a, ref).value, rel=1e-10)


def test_result_always_shows_the_counts() -> None:
    assert str(FIDResult(value=41.2, n_samples=2000, n_reference=2000)) == "FID 41.20 (n=2000 vs 2000 ref)"
    stats = feature_stats(np.random.default_rng(2).standard_normal((50, 3)))
    ref = feature_stats(np.random.default_rng(3).standard_normal((70, 3)))
    result = fid_from_stats(stats, ref)
    assert (result.n_samples, result.n_reference) == (50, 70)
    assert "(n=50 vs 70 ref)" in str(result)


def test_shape_errors_are_reported() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_stats(_stats(np.zeros(2), np.eye(2)), _stats(np.zeros(3), np.eye(3)))


def test_to_uint8_quantises_like_saving_a_png() -> None:
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x, (-1, 1)).flatten().tolist() == [0, 0, 128, 255, 255]


def test_compute_fid_runs_the_whole_path(tiny_model) -> None:
    images = np.random.default_rng(4).integers(0, 256, (20, 3, 6, 6), dtype=np.uint8)
    reference = feature_stats(inception_features(images, model=tiny_model, progress=False))
    result = compute_fid(images[::-1].copy(), reference, batch_size=7, model=tiny_model, progress=False)
    assert abs(result.value) < 1e-6
    assert (result.n_samples, result.n_reference) == (20, 20)


# --- Reference statistics cache ---


def _images(n: int, size: int = 6, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_stats_key_names_every_field_and_rejects_ambiguous_parts() -> None:
    assert stats_key("cifar10", "train", 32, 50000) == "cifar10_train_32px_n50000"
    for bad in ("celeb_a", "../x", "a/b", ""):
        with pytest.raises(ValueError):
            stats_key(bad, "train", 32, 100)
    with pytest.raises(ValueError):
        stats_key("cifar10", "train", 32, 1)


def test_reference_stats_are_computed_once_then_read_back(tmp_path: Path, tiny_model) -> None:
    calls = []

    def images_fn():
        calls.append(1)
        return _images(12)

    kwargs = dict(name="shapes", split="test", image_size=6, n_samples=12, cache_dir=tmp_path, model=tiny_model)
    first = reference_stats(images_fn=images_fn, progress=False, **kwargs)
    path = tmp_path / "shapes_test_6px_n12.npz"
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
    with np.load(path) as data:
        assert str(data["key"]) == "shapes_test_6px_n12" and int(data["n"]) == 12
    second = reference_stats(images_fn=_boom, progress=False, **kwargs)
    assert calls == [1]
    assert second.n == first.n == 12
    np.testing.assert_array_equal(second.mu, first.mu)
    np.testing.assert_array_equal(second.sigma, first.sigma)


def test_reference_stats_check_what_the_key_claims(tmp_path: Path, tiny_model) -> None:
    with pytest.raises(ValueError, match="12 images"):
        reference_stats("shapes", "test", 6, 13, lambda: _images(12), tmp_path, model=tiny_model, progress=False)
    with pytest.raises(ValueError, match="8x8"):
        reference_stats("shapes", "test", 8, 12, lambda: _images(12), tmp_path, model=tiny_model, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_save_load_round_trip(tmp_path: Path) -> None:
    stats = feature_stats(np.random.default_rng(6).standard_normal((30, 5)))
    path = tmp_path / "x.npz"
    save_stats(path, "k", stats)
    loaded = load_stats(path, "k")
    assert loaded.n == 30
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)


def test_a_file_under_the_wrong_name_is_detected(tmp_path: Path) -> None:
    stats = feature_stats(np.random.default_rng(7).standard_normal((30, 5)))
    save_stats(tmp_path / "tmp.npz", stats_key("cifar10", "train", 32, 30), stats)
    renamed = tmp_path / f"{stats_key('cifar10', 'test', 32, 30)}.npz"
    (tmp_path / "tmp.npz").rename(renamed)
    with pytest.raises(StatsCacheError, match="cifar10_train_32px_n30") as err:
        reference_stats("cifar10", "test", 32, 30, _boom, tmp_path, progress=False)
    assert str(renamed) in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing sigma", "bad shape", "nan", "wrong count"])
def test_a_corrupt_file_is_an_error_naming_it(tmp_path: Path, damage: str) -> None:
    key = stats_key("cifar10", "train", 32, 30)
    path = tmp_path / f"{key}.npz"
    mu, sigma = np.zeros(5), np.eye(5)
    if damage == "truncated":
        save_stats(path, key, _stats(mu, sigma, 30))
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "missing sigma":
        np.savez(path, key=np.array(key), mu=mu, n=np.array(30))
    elif damage == "wrong count":
        save_stats(path, key, _stats(mu, sigma, 29))
    elif damage == "bad shape":
        np.savez(path, key=np.array(key), mu=mu, sigma=np.eye(4), n=np.array(30))
    else:
        np.savez(path, key=np.array(key), mu=mu * np.nan, sigma=sigma, n=np.array(30))
    with pytest.raises(StatsCacheError) as err:
        reference_stats("cifar10", "train", 32, 30, _boom, tmp_path, progress=False)
    assert str(path) in str(err.value)


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(handle, **arrays):
        handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_stats(tmp_path / "x.npz", "k", _stats(np.zeros(2), np.eye(2)))
    assert list(tmp_path.iterdir()) == []


# --- The device: full float32 on a GPU, and a cache key per device type ---


def _precision() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_features_are_computed_without_tf32_and_the_settings_come_back(tiny_model) -> None:
    seen = []
    forward = tiny_model.forward
    tiny_model.forward = lambda x: seen.append(_precision()) or forward(x)
    before = _precision()
    inception_features(_images(4), model=tiny_model, progress=False)
    assert seen == [("ieee", "ieee")] and _precision() == before
    tiny_model.forward = lambda x: 1 / 0
    with pytest.raises(ZeroDivisionError):
        inception_features(_images(4), model=tiny_model, progress=False)
    assert _precision() == before
    # Restored through the new API, the legacy flags stay readable (torch raises on a mix it cannot read).
    assert isinstance(torch.backends.cudnn.allow_tf32, bool) and isinstance(torch.backends.cuda.matmul.allow_tf32, bool)


def test_the_cache_key_names_a_gpu_but_cpu_keys_stay_as_they_were() -> None:
    assert stats_key("cifar10", "train", 32, 50000, "cpu") == "cifar10_train_32px_n50000"
    assert stats_key("cifar10", "train", 32, 50000, "cuda") == "cifar10_train_32px_n50000_cuda"
    with pytest.raises(ValueError, match="device type"):
        stats_key("cifar10", "train", 32, 50000, "cuda_0")


def test_gpu_and_cpu_reference_statistics_are_cached_apart(tmp_path: Path, tiny_model, monkeypatch) -> None:
    """A GPU's statistics never stand in for the CPU's, nor the reverse (the GPU pass is faked: no card here)."""
    from trip.metrics import fid

    cpu = reference_stats("shapes", "test", 6, 12, lambda: _images(12), tmp_path, model=tiny_model, progress=False)
    devices = []

    def on_the_gpu(images, batch_size, device, progress, **kwargs):
        devices.append(str(device))
        return np.random.default_rng(8).standard_normal((len(np.concatenate(list(images))), 4)).astype(np.float32)

    monkeypatch.setattr(fid, "inception_features", on_the_gpu)
    gpu = reference_stats("shapes", "test", 6, 12, lambda: _images(12), tmp_path, device="cuda", progress=False)
    assert devices == ["cuda"]  # not read from the CPU's file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_test_6px_n12.npz", "shapes_test_6px_n12_cuda.npz"]
    assert not np.array_equal(gpu.mu, cpu.mu)
    again = reference_stats("shapes", "test", 6, 12, _boom, tmp_path, device="cuda:1", progress=False)
    np.testing.assert_array_equal(again.mu, gpu.mu)
