"""Figures: exact prior densities on grids, mode-hopping codes, and the PNG writers."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from trip.figures import (
    GRID_PADDING,
    axis_range,
    density_curve,
    density_grid,
    hop_codes,
    plot_mode_hopping,
    plot_prior_density,
    plot_training_curves,
    save_image_grid,
)
from trip.io import atomic_write as _atomic_write
from trip.priors import GMMPrior, NormalPrior, TRIPPrior

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_trip(dim=4) -> TRIPPrior:
    return TRIPPrior(dim, 3, 2, generator=torch.Generator().manual_seed(0)).double()


def small_gmm(dim=4) -> GMMPrior:
    return GMMPrior(dim, 3, generator=torch.Generator().manual_seed(1)).double()


def integral(xs, ys, density) -> float:
    """Trapezoid rule over the grid (density[i, j] at (xs[j], ys[i]))."""
    return float(np.trapezoid(np.trapezoid(density, xs, axis=1), ys))


def normal_pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def brute_trip_marginal(prior: TRIPPrior, a: int, b: int, x: float, y: float) -> float:
    """p(z_a = x, z_b = y) by enumerating every lattice node and its ring weight."""
    cores = prior.cores.detach().numpy()
    means, stds = prior.means.detach().numpy(), prior.stds.detach().numpy()
    d, n = means.shape
    total = value = 0.0
    for s in itertools.product(range(n), repeat=d):
        weight = np.trace(np.linalg.multi_dot([cores[k, s[k]] for k in range(d)]))
        total += weight
        density = normal_pdf(x, means[a, s[a]], stds[a, s[a]]) * normal_pdf(y, means[b, s[b]], stds[b, s[b]])
        value += weight * density
    return value / total


def brute_gmm_marginal(prior: GMMPrior, a: int, b: int, x: float, y: float) -> float:
    w = prior.weights.detach().numpy()
    means, stds = prior.means.detach().numpy(), prior.stds.detach().numpy()
    return float(sum(w[k] * normal_pdf(x, means[k, a], stds[k, a]) * normal_pdf(y, means[k, b], stds[k, b])
                     for k in range(len(w))))


def png_files(folder):
    """Everything in ``folder``: a leftover temporary file would show up here."""
    return sorted(p.name for p in folder.iterdir())


def assert_png(path, size=None):
    data = path.read_bytes()
    assert len(data) > 100 and data[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    if size is not None:
        with Image.open(path) as image:
            assert image.size == size


# -- density_grid --------------------------------------------------------------------
# TRIP and GMM: component stds are 1/N = 1/3 and means lie in [-1, 1], so the
# window [-4, 4] is at least 9 stds from every mean; N(0, I) gets [-9, 9]. The mass
# outside is < 1e-18. For smooth, fast-decaying integrands the trapezoid rule
# converges geometrically in 1/h: its error ~exp(-2 pi^2 std^2 / h^2) is below
# 1e-200 at h <= std/5, so only float64 round-off is left (measured ~1e-16) and
# 1e-6 is a loose bound.
@pytest.mark.parametrize("make", [small_trip, small_gmm, lambda: NormalPrior(4).double()])
def test_density_integrates_to_one_over_a_wide_window(make):
    prior = make()
    lim = 4.0 if not isinstance(prior, NormalPrior) else 9.0
    xs, ys, density = density_grid(prior, lim=lim, resolution=121)
    assert density.shape == (121, 121) and (density >= 0).all()
    assert integral(xs, ys, density) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("make", [small_trip, small_gmm])
def test_default_window_holds_nearly_all_the_mass(make):
    # Each component keeps >= 99.7% of its mass in its own mean +- 3 std per axis,
    # so the union window holds >= 0.9973^2 of every component's 2-D mass.
    xs, ys, density = density_grid(make(), resolution=101)
    assert 0.9973**2 - 1e-6 < integral(xs, ys, density) < 1 + 1e-6


@pytest.mark.parametrize("dims", [(0, 1), (3, 1)])
def test_trip_grid_matches_brute_force_and_masked_log_prob(dims):
    prior = small_trip()
    xs, ys, density = density_grid(prior, dims=dims, lim=(-2.0, 1.5), resolution=31)
    mask = torch.zeros(4, dtype=torch.bool)
    mask[list(dims)] = True
    for i, j in [(0, 0), (5, 20), (17, 3), (30, 30), (12, 12)]:
        z = torch.zeros(1, 4, dtype=torch.float64)
        z[0, dims[0]], z[0, dims[1]] = xs[j], ys[i]
        z[0, [k for k in range(4) if k not in dims]] = 7.0  # summed out: value must not matter
        assert density[i, j] == pytest.approx(prior.log_prob(z, observed=mask).exp().item(), rel=1e-10)
        assert density[i, j] == pytest.approx(brute_trip_marginal(prior, *dims, xs[j], ys[i]), rel=1e-9)


def test_gmm_grid_matches_closed_form():
    prior = small_gmm()
    xs, ys, density = density_grid(prior, dims=(2, 0), resolution=25)
    for i, j in [(0, 3), (10, 14), (24, 24)]:
        assert density[i, j] == pytest.approx(brute_gmm_marginal(prior, 2, 0, xs[j], ys[i]), rel=1e-10)


def test_normal_grid_matches_closed_form_and_default_window():
    xs, ys, density = density_grid(NormalPrior(6).double(), dims=(4, 1), resolution=41)
    assert (xs[0], xs[-1], ys[0], ys[-1]) == (-3, 3, -3, 3)
    gx, gy = np.meshgrid(xs, ys)
    np.testing.assert_allclose(density, np.exp(-(gx**2 + gy**2) / 2) / (2 * np.pi), rtol=1e-12)


def test_axis_range_covers_every_component():
    prior = small_trip()
    low, high = axis_range(prior, 2)
    means, stds = prior.means[2].detach(), prior.stds[2].detach()
    assert low == pytest.approx((means - 3 * stds).min().item())
    assert high == pytest.approx((means + 3 * stds).max().item())


def test_density_grid_evaluates_in_chunks_without_grad(monkeypatch):
    import trip.figures as figures

    monkeypatch.setattr(figures, "CHUNK", 100)
    prior = TRIPPrior(3, 3, 2, generator=torch.Generator().manual_seed(0))  # learnable, float32
    calls = []
    original = prior.log_prob

    def spy(z, observed=None):
        out = original(z, observed)
        calls.append((z.shape[0], out.requires_grad))
        return out

    monkeypatch.setattr(prior, "log_prob", spy)
    density_grid(prior, resolution=25)
    assert sum(n for n, _ in calls) == 625 and max(n for n, _ in calls) == 100
    assert not any(grad for _, grad in calls)


def test_one_dimensional_prior_has_a_curve_not_a_grid(tmp_path):
    prior = GMMPrior(1, 3, generator=torch.Generator().manual_seed(0)).double()
    with pytest.raises(ValueError, match="density_curve"):
        density_grid(prior)
    xs, density = density_curve(prior, lim=5.0, resolution=801)
    assert float(np.trapezoid(density, xs)) == pytest.approx(1.0, abs=1e-6)
    out = plot_prior_density(prior, tmp_path / "density.png")
    assert_png(out)
    assert png_files(tmp_path) == ["density.png"]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"dims": (0, 0)}, "distinct"), ({"dims": (0, 4)}, "distinct"), ({"dims": (0, 1, 2)}, "two dims"),
     ({"lim": -1.0}, "lim"), ({"lim": (2.0, 1.0)}, "lim"), ({"resolution": 1}, "resolution")],
)
def test_density_grid_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        density_grid(small_trip(), **kwargs)


# -- hop_codes -----------------------------------------------------------------------
PRIORS = {
    "trip": lambda: TRIPPrior(8, 3, 2, generator=torch.Generator().manual_seed(0)),
    "gmm": lambda: GMMPrior(8, 4, generator=torch.Generator().manual_seed(0)),
    "normal": lambda: NormalPrior(8),
}


@pytest.mark.parametrize("name", PRIORS)
def test_each_hop_resamples_exactly_n_dims(name):
    prior = PRIORS[name]()
    codes = hop_codes(prior, n_trajectories=5, n_hops=12, n_dims=5, generator=torch.Generator().manual_seed(3))
    assert codes.shape == (5, 13, 8)
    changed = codes[:, 1:] != codes[:, :-1]  # (traj, hop, d)
    # Continuous conditionals: a redrawn coordinate equals its old value with probability 0.
    assert (changed.sum(-1) == 5).all()
    # The chosen dimensions differ between hops and trajectories.
    assert len({tuple(row.tolist()) for row in changed.flatten(0, 1)}) > 10


def test_step_zero_is_a_prior_sample_and_runs_are_reproducible():
    prior = PRIORS["trip"]()
    codes = hop_codes(prior, 4, 6, 5, generator=torch.Generator().manual_seed(11))
    again = hop_codes(prior, 4, 6, 5, generator=torch.Generator().manual_seed(11))
    other = hop_codes(prior, 4, 6, 5, generator=torch.Generator().manual_seed(12))
    first = prior.sample(4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(codes[:, 0], first)
    assert torch.equal(codes, again) and not torch.equal(codes, other)


def test_n_dims_above_d_is_clamped_to_d():
    prior = small_trip(dim=4)
    codes = hop_codes(prior, 3, 4, n_dims=5, generator=torch.Generator().manual_seed(0))
    assert ((codes[:, 1:] != codes[:, :-1]).sum(-1) == 4).all()


def test_no_hops_and_bad_counts():
    prior = small_trip()
    assert hop_codes(prior, 2, 0, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 4)
    for kwargs in ({"n_hops": -1}, {"n_dims": 0}, {"n_trajectories": 0}):
        with pytest.raises(ValueError):
            hop_codes(prior, **kwargs)


# -- PNG writers ---------------------------------------------------------------------
def toy_decoder(dim: int, size: int = 8):
    """Codes -> RGB images in [-1, 1] (tanh of a fixed random linear map)."""
    weight = torch.randn(dim, 3 * size * size, generator=torch.Generator().manual_seed(0))
    return lambda z: torch.tanh(z.float() @ weight).view(-1, 3, size, size)


def grid_size(n_images: int, nrow: int, size: int) -> tuple[int, int]:
    cols, rows = min(nrow, n_images), math.ceil(n_images / nrow)
    return cols * (size + GRID_PADDING) + GRID_PADDING, rows * (size + GRID_PADDING) + GRID_PADDING


def test_plot_prior_density_single_and_several(tmp_path):
    assert_png(plot_prior_density(small_trip(), tmp_path / "trip.png", resolution=40))
    several = {"N(0, I)": NormalPrior(4), "GMM": small_gmm(), "TRIP": small_trip()}
    assert_png(plot_prior_density(several, tmp_path / "all.png", lim=3.0, resolution=40, title="priors"))
    assert png_files(tmp_path) == ["all.png", "trip.png"]


def test_plot_mode_hopping_has_one_row_per_trajectory(tmp_path):
    prior = PRIORS["trip"]()
    path = tmp_path / "hops" / "mode_hopping.png"
    out = plot_mode_hopping(prior, toy_decoder(8), path, n_trajectories=4, n_hops=5)
    assert_png(out, size=grid_size(4 * 6, nrow=6, size=8))
    assert png_files(out.parent) == ["mode_hopping.png"]


def test_save_image_grid_is_near_square_and_maps_minus_one_to_one(tmp_path):
    images = torch.linspace(-1, 1, 10)[:, None, None, None].expand(10, 1, 5, 5)
    out = save_image_grid(images, tmp_path / "grid.png")
    assert_png(out, size=grid_size(10, nrow=4, size=5))
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("L"))
    first = pixels[GRID_PADDING, GRID_PADDING]  # top-left pixel of image 0 (value -1)
    last = pixels[GRID_PADDING + 2 * (5 + GRID_PADDING), GRID_PADDING + (5 + GRID_PADDING)]  # image 9 (value 1)
    assert (first, last) == (0, 255)
    assert png_files(tmp_path) == ["grid.png"]
    with pytest.raises(ValueError, match="B, C, H, W"):
        save_image_grid(images[0], tmp_path / "bad.png")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _atomic_write(target, broken)
    assert target.read_bytes() == b"old" and png_files(tmp_path) == ["figure.png"]


# -- training curves -----------------------------------------------------------------
def write_metrics(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_training_curves_for_vae_and_gan_runs(tmp_path):
    vae = write_metrics(tmp_path / "vae-trip-s0" / "metrics.jsonl", [
        {"step": s, "epoch": s // 100, "elbo": -1e3 / s, "recon": -9e2 / s, "kl": 1e2 / s, "steps_per_s": 20.0}
        for s in range(50, 501, 50)
    ])
    gan = write_metrics(tmp_path / "gan-trip-s0" / "metrics.jsonl", [
        {"step": s, "epoch": 0, "wasserstein": 1.0 / s, "gp": 0.1, "g_loss": -s / 10, "prior_surrogate": 0.5,
         "steps_per_s": 9.5}
        for s in (10, 20, 30)
    ])
    assert_png(plot_training_curves(vae, tmp_path / "vae.png"))
    assert_png(plot_training_curves(gan, tmp_path / "gan.png"))
    assert_png(plot_training_curves(gan, tmp_path / "speed.png", keys=["steps_per_s"]))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["gan.png", "speed.png", "vae.png"]
    assert not list(tmp_path.glob(".*"))


def test_training_curves_explain_unusable_files(tmp_path):
    missing = tmp_path / "nope" / "metrics.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        plot_training_curves(missing, tmp_path / "a.png")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"{empty}.*empty"):
        plot_training_curves(empty, tmp_path / "a.png")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"step": 1, "elbo": -3.0}\n{"step": 2, "el')
    with pytest.raises(ValueError, match=f"{corrupt}, line 2"):
        plot_training_curves(corrupt, tmp_path / "a.png")
    only_bookkeeping = write_metrics(tmp_path / "steps.jsonl", [{"step": 1, "epoch": 0, "steps_per_s": 3.0}])
    with pytest.raises(ValueError, match="no metric"):
        plot_training_curves(only_bookkeeping, tmp_path / "a.png")
    with pytest.raises(ValueError, match="fid"):
        plot_training_curves(corrupt.with_name("steps.jsonl"), tmp_path / "a.png", keys=["fid"])
    assert png_files(tmp_path) == ["corrupt.jsonl", "empty.jsonl", "steps.jsonl"]


def test_reversal_curve_plot_is_a_png(tmp_path):
    from trip.figures import plot_reversal_curve

    out = plot_reversal_curve([4.0, 2.0, 1.0, 0.5], tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
