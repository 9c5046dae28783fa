"""Figures for a trained run: the prior's 2-D density, mode hopping, sample grids, curves.

* :func:`plot_prior_density`: the exact marginal p(z_a, z_b) with every other
  dimension summed out (the paper's Figure 4); a 1-D curve when d = 1.
* :func:`plot_mode_hopping`: from a prior sample, repeatedly redraw a few
  random dimensions from p(z_those | z_rest) and decode (Figure 5).
* :func:`save_image_grid`: images in [-1, 1] as one PNG grid.
* :func:`plot_training_curves`: one panel per metric of ``metrics.jsonl``.

Every writer saves a PNG atomically (a temporary file beside the target, then
``os.replace``), so a killed evaluation never leaves a truncated figure. The
matplotlib backend is set to Agg inside the plotting functions only, so
importing this module changes no global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trip.config import is_number
from trip.io import atomic_write, read_metrics
from trip.priors import GMMPrior, Prior, TRIPPrior

#: Component means +- this many standard deviations bound the automatic window.
RANGE_STDS = 3.0
#: Rows per ``log_prob`` call when evaluating a density on a grid.
CHUNK = 4096
#: Pixels between images (and around the border) of a sample grid.
GRID_PADDING = 2
#: Metrics that are bookkeeping, not curves, unless asked for by name.
NOT_CURVES = ("step", "epoch", "steps_per_s")

Lim = float | tuple[float, float] | None


# -- densities -----------------------------------------------------------------------
def axis_range(prior: Prior, k: int) -> tuple[float, float]:
    """A window holding nearly all of dimension ``k``'s marginal mass.

    For mixtures: the union of every component's mean +- 3 std along ``k``
    (each component keeps at least 99.7% of its mass inside). Priors without
    components, N(0, I) included, get (-3, 3).
    """
    if isinstance(prior, TRIPPrior):  # means, stds: (d, N)
        means, stds = prior.means[k], prior.stds[k]
    elif isinstance(prior, GMMPrior):  # means, stds: (K, d)
        means, stds = prior.means[:, k], prior.stds[:, k]
    else:
        return -RANGE_STDS, RANGE_STDS
    with torch.no_grad():
        low = (means - RANGE_STDS * stds).min().item()
        high = (means + RANGE_STDS * stds).max().item()
    return low, high


def _window(prior: Prior, k: int, lim: Lim) -> tuple[float, float]:
    if lim is None:
        return axis_range(prior, k)
    low, high = (-float(lim), float(lim)) if np.isscalar(lim) else (float(v) for v in lim)
    if not low < high:
        raise ValueError(f"lim must be a positive number or (low, high) with low < high, got {lim!r}")
    return low, high


def _check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    return resolution


def _check_dims(prior: Prior, dims) -> tuple[int, ...]:
    dims = tuple(int(k) for k in dims)
    if len(set(dims)) != len(dims) or any(not 0 <= k < prior.dim for k in dims):
        raise ValueError(f"dims must be distinct indices in [0, {prior.dim}), got {dims}")
    return dims


@torch.no_grad()
def marginal_density(prior: Prior, dims, points: np.ndarray) -> np.ndarray:
    """Exact p(z_dims = points), the other dimensions summed out: (n,) for points (n, len(dims))."""
    dims = list(_check_dims(prior, dims))
    mask = torch.zeros(prior.dim, dtype=torch.bool, device=prior.device)
    mask[dims] = True
    points = torch.as_tensor(np.asarray(points, dtype=np.float64))
    out = []
    for chunk in points.split(CHUNK):
        # The unobserved coordinates are summed out, so their value (0) is irrelevant.
        z = torch.zeros(chunk.shape[0], prior.dim, dtype=prior.dtype, device=prior.device)
        z[:, dims] = chunk.to(z)
        out.append(prior.log_prob(z, observed=mask).exp().double().cpu())
    return torch.cat(out).numpy()


def density_grid(
    prior: Prior, dims=(0, 1), lim: Lim = None, resolution: int = 150
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact marginal p(z_a, z_b) on a grid, for ``dims = (a, b)``.

    Returns ``xs`` (res,), ``ys`` (res,) and ``density`` (res, res) with
    ``density[i, j] = p(z_a = xs[j], z_b = ys[i])`` (matplotlib's image layout).
    ``lim``: None picks each axis from :func:`axis_range`; a number x means
    [-x, x] on both axes; a pair (low, high) is used for both axes.
    A 1-D prior has no 2-D marginal: use :func:`density_curve` for it.
    """
    if prior.dim < 2:
        raise ValueError(f"density_grid needs a prior with at least 2 dimensions, got dim={prior.dim}; "
                         "use density_curve for a 1-D prior")
    if len(dims) != 2:
        raise ValueError(f"density_grid takes two dims, got {tuple(dims)}")
    a, b = _check_dims(prior, dims)
    resolution = _check_resolution(resolution)
    xs = np.linspace(*_window(prior, a, lim), resolution)
    ys = np.linspace(*_window(prior, b, lim), resolution)
    gx, gy = np.meshgrid(xs, ys)  # (res, res), row i at ys[i]
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return xs, ys, marginal_density(prior, (a, b), points).reshape(resolution, resolution)


def density_curve(prior: Prior, dim: int = 0, lim: Lim = None, resolution: int = 400):
    """The exact 1-D marginal p(z_dim) on a grid: ``xs`` (res,), ``density`` (res,)."""
    (k,) = _check_dims(prior, (dim,))
    xs = np.linspace(*_window(prior, k, lim), _check_resolution(resolution))
    return xs, marginal_density(prior, (k,), xs[:, None])


def plot_prior_density(
    prior: Prior | Mapping[str, Prior],
    path,
    dims=(0, 1),
    lim: Lim = None,
    resolution: int = 150,
    title: str | None = None,
) -> Path:
    """Save the exact marginal density over ``dims`` as a heat map (Figure 4).

    ``prior`` may be one prior or a {name: prior} mapping, one panel each.
    A 1-D prior is drawn as a curve of p(z_1) instead.
    """
    plt = _pyplot()
    priors = dict(prior) if isinstance(prior, Mapping) else {title or _default_title(prior, dims): prior}
    if not priors:
        raise ValueError("plot_prior_density needs at least one prior")
    fig, axes = plt.subplots(1, len(priors), figsize=(4.6 * len(priors), 4), squeeze=False)
    for ax, (name, p) in zip(axes[0], priors.items()):
        if p.dim == 1:
            xs, density = density_curve(p, 0, lim, resolution)
            ax.plot(xs, density)
            ax.set(xlabel="$z_1$", ylabel="density")
        else:
            xs, ys, density = density_grid(p, dims, lim, resolution)
            mesh = ax.pcolormesh(xs, ys, density, cmap="viridis", shading="nearest")
            fig.colorbar(mesh, ax=ax, label="density")
            ax.set(xlabel=f"$z_{{{dims[0] + 1}}}$", ylabel=f"$z_{{{dims[1] + 1}}}$")
        ax.set_title(name)
    if isinstance(prior, Mapping) and title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def _default_title(prior: Prior, dims) -> str:
    if prior.dim == 1:
        return f"{type(prior).__name__}: $p(z_1)$"
    return f"{type(prior).__name__}: $p(z_{{{dims[0] + 1}}}, z_{{{dims[1] + 1}}})$"


# -- mode hopping --------------------------------------------------------------------
@torch.no_grad()
def hop_codes(
    prior: Prior,
    n_trajectories: int = 6,
    n_hops: int = 8,
    n_dims: int = 5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mode-hopping trajectories (paper Section 6.3): (n_trajectories, n_hops + 1, d).

    Step 0 is ``prior.sample(n_trajectories, generator)``; each hop redraws
    ``n_dims`` dimensions, chosen at random per trajectory and per hop, from
    p(z_chosen | z_rest) and keeps the rest. ``n_dims`` above d is clamped to
    d (every hop is then a fresh prior sample), so the paper's default of 5
    also works for small latents.
    """
    if isinstance(n_hops, bool) or not isinstance(n_hops, int) or n_hops < 0:
        raise ValueError(f"n_hops must be an integer >= 0, got {n_hops!r}")
    if isinstance(n_dims, bool) or not isinstance(n_dims, int) or n_dims < 1:
        raise ValueError(f"n_dims must be an integer >= 1, got {n_dims!r}")
    n_dims = min(n_dims, prior.dim)
    z = prior.sample(n_trajectories, generator=generator)
    steps = [z]
    for _ in range(n_hops):
        # The first n_dims of a uniformly random permutation: a uniform n_dims-subset per row.
        order = torch.rand(z.shape, device=prior.device, generator=generator).argsort(dim=1)
        mask = torch.zeros(z.shape, dtype=torch.bool, device=prior.device)
        mask.scatter_(1, order[:, :n_dims], True)
        z = prior.sample_conditional(z, resample=mask, generator=generator)
        steps.append(z)
    return torch.stack(steps, dim=1)


def plot_mode_hopping(
    prior: Prior,
    decode: Callable[[Tensor], Tensor],
    path,
    n_trajectories: int = 6,
    n_hops: int = 8,
    n_dims: int = 5,
    seed: int = 0,
) -> Path:
    """Decode :func:`hop_codes` into a grid: one row per trajectory, left to right in hops.

    ``decode`` maps codes (B, d) to images (B, C, H, W) in [-1, 1].
    """
    generator = torch.Generator(device=prior.device).manual_seed(seed)
    codes = hop_codes(prior, n_trajectories, n_hops, n_dims, generator)
    with torch.no_grad():
        images = decode(codes.flatten(0, 1))
    return save_image_grid(images, path, nrow=n_hops + 1)


# -- image grids ---------------------------------------------------------------------
def save_image_grid(images: Tensor, path, nrow: int | None = None, padding: int = GRID_PADDING) -> Path:
    """Save images (B, C, H, W) in [-1, 1] as one PNG grid (atomically), ``nrow`` images per row.

    ``nrow`` defaults to ceil(sqrt(B)), a near-square grid.
    """
    from torchvision.utils import save_image

    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty (B, C, H, W) tensor, got {shape}")
    nrow = math.ceil(math.sqrt(images.shape[0])) if nrow is None else int(nrow)
    pixels = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return atomic_write(path, lambda f: save_image(pixels, f, nrow=nrow, padding=padding, format="png"))


# -- training curves -----------------------------------------------------------------
def plot_training_curves(metrics_path, path, keys=None) -> Path:
    """One panel per metric against the step: ELBO, recon and KL for a VAE; Wasserstein
    distance, gradient penalty, generator loss and prior surrogate for a GAN.

    ``keys`` picks metrics by name (any of them, step/epoch/steps_per_s too);
    by default every numeric metric except those three, in file order.
    """
    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"metrics file {metrics_path} is empty")
    present = list(dict.fromkeys(k for r in records for k, v in r.items() if is_number(v)))
    if keys is None:
        keys = [k for k in present if k not in NOT_CURVES]
        if not keys:
            raise ValueError(f"metrics file {metrics_path} has no metric to plot besides {NOT_CURVES}")
    else:
        keys = list(keys)
        missing = [k for k in keys if k not in present]
        if missing or not keys:
            raise ValueError(f"metrics file {metrics_path} has no numeric {missing or 'keys'}; it has {present}")
    plt = _pyplot()
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pairs = [(r["step"], r[key]) for r in records if is_number(r.get(key))]
        ax.plot(*zip(*pairs), marker="." if len(pairs) < 30 else None)
        ax.set(title=key, xlabel="step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.remove()
    fig.suptitle(Path(metrics_path).parent.name)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


def plot_reversal_curve(curve, path, title: str = "generator reversal") -> Path:
    """Mean squared reconstruction error of reversed codes against the gradient step (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.semilogy(range(len(curve)), curve)
    ax.set(title=title, xlabel="gradient step", ylabel="mean ||G(z) - x||^2")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(plt, fig, path)


# -- writing -------------------------------------------------------------------------
def _pyplot():
    """pyplot on the non-interactive Agg backend (evaluation runs headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path) -> Path:
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
