"""Generator reversal, the Prior Agreement (PAG) score and prior-data-disagreement samples.

All three follow "Flexible Prior Distributions for Deep Generative Models"
(Kilcher, Lucchi, Hofmann; ICLR 2018 submission):

* :func:`reverse_generator` is Algorithm 1 (Sec. 2.1): plain gradient descent
  on z for the l2 loss of Eq. 4, l(z, x) = 1/2 ||G(z) - x||^2, summed over
  pixels, with the step size 0.05 and the N(0, 1e-4^2) initialisation of
  Appendix E;
* :func:`pag_score` is Eq. 2 (Sec. 2.2): KL(N(0, diag(nu^2)) || N(0, sigma^2 I))
  with the nu_i the singular values of the matrix of reversed codes;
* :func:`disagreement_indices` ranks prior samples by how far they lie from
  the reversed data codes (Sec. 4.2, Fig. 3).

:func:`evaluate_reversal` applies all three to a trained GAN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

# Fig. 7 of the paper shows reconstructions after 5, 20 and 400 steps; 400 is its longest run.
DEFAULT_STEPS = 400
DEFAULT_CHUNK = 1024


@dataclass(frozen=True)
class ReversalResult:
    """Codes found by Algorithm 1 and how well they reconstruct.

    Errors are per-pixel mean squared errors (MSE), so they compare across
    image sizes; the objective that was descended is P/2 times the MSE for
    P values per image.

    codes:       (N, d) on the images' device.
    curve:       (steps + 1,) mean over images of the MSE, before the first step and after each.
    final_error: (N,) each image's MSE at the returned codes.
    """

    codes: Tensor
    curve: np.ndarray
    final_error: np.ndarray


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration, then every submodule's own flag back (not one flag for all)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _initial_codes(
    n: int, latent_dim: int, init_std: float, rng: torch.Generator | None, like: Tensor
) -> Tensor:
    """All N starting codes in one draw, so the batch size cannot change them.

    Drawn on the rng's device (a torch.Generator is tied to one) and then moved.
    """
    device = rng.device if rng is not None else torch.device("cpu")
    noise = torch.randn(n, latent_dim, generator=rng, device=device, dtype=like.dtype)
    return (init_std * noise).to(like.device)


def _squared_errors(generator: nn.Module, codes: Tensor, images: Tensor) -> Tensor:
    """(B,) ||G(z) - x||^2 per example, summed over all pixels and channels."""
    recon = generator(codes)
    if recon.shape != images.shape:
        raise ValueError(
            f"generator output {tuple(recon.shape)} does not match the images {tuple(images.shape)}"
        )
    return (recon - images).pow(2).flatten(1).sum(1)


def _descend(
    generator: nn.Module, codes: Tensor, images: Tensor, lr: float
) -> tuple[Tensor, Tensor]:
    """One step of Algorithm 1 on a batch: returns (new codes, squared errors before the step).

    The objective is the sum over the batch of the per-example losses of Eq. 4,
    so each code's gradient is J_G(z)^T (G(z) - x) for its own x alone and the
    step does not depend on who else is in the batch. Differentiating only with
    respect to the codes leaves every parameter's .grad untouched.
    """
    codes = codes.detach().requires_grad_(True)
    errors = _squared_errors(generator, codes, images)
    (grad,) = torch.autograd.grad(0.5 * errors.sum(), codes)
    return (codes - lr * grad).detach(), errors.detach()


def reverse_generator(
    generator: nn.Module,
    images: Tensor,
    latent_dim: int,
    steps: int = DEFAULT_STEPS,
    lr: float = 0.05,
    init_std: float = 1e-4,
    batch_size: int = 256,
    generator_rng: torch.Generator | None = None,
    progress: bool = False,
) -> ReversalResult:
    """Algorithm 1 (Generator Reversal): z <- z - lr * grad_z 1/2 ||G(z) - x||^2, for all x at once.

    Reading of the paper:

    * plain gradient descent, as Algorithm 1 writes it (line 4), not RMSProp:
      Appendix E's RMSProp (step 0.0003) trains the networks, while the
      reversal gets its own "learning rate of 0.05";
    * the loss is Eq. 4's l(z, x) = 1/2 ||G(z) - x||^2, a squared norm summed
      over pixels, not averaged: with a per-pixel mean, a step of 0.05 moves
      the codes of a 64x64 RGB image about 12288 times less and the reversal
      barely leaves its initialisation, whereas the paper shows recognisable
      reconstructions after 5 steps (Appendix C, Fig. 7);
    * codes start from N(0, init_std^2) with init_std = 1e-4 (Appendix E);
    * the paper runs "until converged"; a fixed number of ``steps`` makes the
      cost and the result reproducible, and the returned curve shows whether
      it had converged.

    The generator runs in eval mode (its own modes are restored afterwards);
    its parameters receive no gradients and are not modified. Examples are
    processed ``batch_size`` at a time, each batch vectorised; the starting
    codes are drawn for all images at once from ``generator_rng``, so the
    result does not depend on ``batch_size``.

    ``latent_dim`` is the generator's input size d (an nn.Module does not
    expose it). Codes are returned on ``images.device`` in ``images.dtype``.
    """
    steps = _positive_int("steps", steps)
    batch_size = _positive_int("batch_size", batch_size)
    latent_dim = _positive_int("latent_dim", latent_dim)
    if not (lr > 0 and math.isfinite(lr)) or not (init_std >= 0 and math.isfinite(init_std)):
        raise ValueError(f"need finite lr > 0 and init_std >= 0, got {lr!r} and {init_std!r}")
    if not images.is_floating_point() or images.dim() < 2 or images.shape[0] < 1:
        raise ValueError(f"images must be a float tensor (N, ...) with N >= 1, got {images.dtype} "
                         f"{tuple(images.shape)}")
    start = _initial_codes(len(images), latent_dim, init_std, generator_rng, images)
    codes = list(start.split(batch_size))
    batches = images.split(batch_size)
    pixels = images[0].numel()
    curve = np.zeros(steps + 1)
    with _eval_mode(generator), torch.enable_grad():
        for step in tqdm(range(steps), desc="generator reversal", disable=not progress):
            total = 0.0
            for i, x in enumerate(batches):
                codes[i], errors = _descend(generator, codes[i], x, lr)
                total += float(errors.sum())
            curve[step] = total / (len(images) * pixels)
        with torch.no_grad():
            final = torch.cat([_squared_errors(generator, z, x) for z, x in zip(codes, batches)])
    final = final / pixels
    curve[steps] = float(final.mean())
    return ReversalResult(torch.cat(codes), curve, final.cpu().double().numpy())


def pag_score(codes: Tensor | np.ndarray, sigma: float = 1.0, normalise: bool = True) -> float:
    """Eq. 2, the Prior Agreement score: KL(N(0, Sigma) || N(0, sigma^2 I)), Sigma = diag(nu_i^2).

        PAG = 1/2 * sum_i (nu_i^2 / sigma^2 - 1 - ln(nu_i^2 / sigma^2)),  i = 1..d,

    where the nu_i are the singular values of the (N, d) matrix Z of reversed
    codes (Sec. 2.2). Lower is better: 0 means the data-induced Gaussian is
    the prior itself.

    Normalisation (``normalise=True``, the default): the nu_i are the singular
    values of Z / sqrt(N), not centred. Then nu_i^2 are the eigenvalues of
    Z^T Z / N, the maximum-likelihood covariance of the zero-mean Gaussian
    N(0, Sigma) that Eq. 2 fits to the codes, expressed on its principal axes
    (where it is diagonal, as Eq. 2 requires; the KL to an isotropic Gaussian
    is rotation-invariant, so nothing is lost). Without the 1/sqrt(N), nu_i^2
    grows like N: codes drawn from the prior itself would score about
    d/2 * (N - 1 - ln N) instead of 0, and scores from different numbers of
    codes would not compare. Z is not centred because both Gaussians of Eq. 2
    have mean 0: codes whose mean is off zero disagree with the prior, and
    the uncentred second moment counts that.

    ``normalise=False`` takes the singular values of Z itself, which is what
    the paper's numbers imply: with d = 20 and about 1000 reversed codes
    (Sec. 4.1 reverses 1024), prior-like codes give nu_i^2 ~ N and a PAG of
    about 10 * (1024 - 1 - ln 1024) ~ 1.0e4, the magnitude of the reported
    "PAG: 11390 / 39144" (CelebA) and 1547-13309 (LSUN); with normalised
    values, scores of that size would need code variances near 1000 or a
    product of variances near e^-1100. Use it only to compare with those
    numbers: PAG_raw(N) = PAG on nu_i^2 * N.

    With N < d, or codes confined to a subspace, some nu_i are 0 and the KL
    is +inf (N(0, Sigma) is singular). Computed in float64.
    """
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    if isinstance(codes, Tensor):
        codes = codes.detach().cpu().double().numpy()
    z = np.asarray(codes, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"codes must be a non-empty (N, d) matrix, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("codes contain NaN or inf")
    n, d = z.shape
    if normalise:
        z = z / math.sqrt(n)
    nu = np.zeros(d)
    nu[: min(n, d)] = np.linalg.svd(z, compute_uv=False)
    ratio = nu**2 / sigma**2
    if (ratio == 0).any():
        return math.inf
    return float(0.5 * np.sum(ratio - 1.0 - np.log(ratio)))


def nearest_distances(
    queries: Tensor, references: Tensor, chunk_size: int = DEFAULT_CHUNK
) -> Tensor:
    """(N,) Euclidean distance from each query to its nearest reference.

    Both sets are walked in chunks, keeping a running minimum, so memory is
    O(chunk_size^2) whatever N and M are (10k x 10k needs no 400 MB matrix).
    Computed on the queries' device and dtype.
    """
    chunk_size = _positive_int("chunk_size", chunk_size)
    if queries.dim() != 2 or references.dim() != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(
            f"need (N, d) queries and (M, d) references, got {tuple(queries.shape)} "
            f"and {tuple(references.shape)}"
        )
    if references.shape[0] < 1:
        raise ValueError("need at least one reference code")
    references = references.to(device=queries.device, dtype=queries.dtype)
    out = []
    for q in queries.split(chunk_size):
        best = torch.full((q.shape[0],), math.inf, device=q.device, dtype=q.dtype)
        for r in references.split(chunk_size):
            best = torch.minimum(best, torch.cdist(q, r).amin(dim=1))
        out.append(best)
    return torch.cat(out)


def disagreement_indices(
    prior_codes: Tensor, reversed_codes: Tensor, count: int, chunk_size: int = DEFAULT_CHUNK
) -> Tensor:
    """Indices of the ``count`` prior codes farthest from every reversed data code, farthest first.

    Sec. 4.2's prior-data-disagreement samples: likely under the prior but
    unlikely under the data-induced prior. The paper orders prior samples by
    their "mean squared distance" to the reversed codes; that mean equals
    ||z - mean||^2 + const and only ranks codes by their distance to the
    codes' centre, so a code sitting in a gap between two data modes would
    look typical. The distance to the nearest reversed code instead measures
    how empty the data-induced prior is around z, which is what Fig. 3 is
    meant to show.
    """
    return _farthest(nearest_distances(prior_codes, reversed_codes, chunk_size), count)


def _farthest(distances: Tensor, count: int) -> Tensor:
    count = _positive_int("count", count)
    if count > distances.shape[0]:
        raise ValueError(f"count {count} exceeds the {distances.shape[0]} prior codes")
    return distances.topk(count).indices


def evaluate_reversal(
    gan: nn.Module,
    images: Tensor,
    steps: int,
    n_prior: int,
    count: int,
    seed: int,
    batch_size: int = 256,
    lr: float = 0.05,
    init_std: float = 1e-4,
    progress: bool = False,
) -> dict:
    """Reversal, PAG and disagreement samples for a trained GAN (``.generator``, ``.prior``).

    ``images`` (N, C, H, W) in [-1, 1] on the generator's device are reversed
    into codes of size ``gan.prior.dim``; ``seed`` fixes the starting codes and
    the ``n_prior`` prior draws. The PAG uses sigma = 1 for every prior: Eq. 2
    measures the agreement with the isotropic N(0, sigma^2 I) that the paper
    assumes, so for a GMM or TRIP prior it says how far the data-induced codes
    are from a standard Normal, not from that learned prior. Reverse many more
    images than the latent size (the paper: 1024 for d = 20); with fewer
    images than dimensions the code matrix is rank-deficient and the PAG is
    +inf (a warning says so).

    Returns ``pag`` (normalised, see :func:`pag_score`), ``pag_unnormalised``
    (on the paper's scale), ``reversal_curve`` (per-pixel MSE per step),
    ``reversal_final_mse``, ``disagreement_images`` (count, C, H, W) on the
    CPU in [-1, 1], farthest first, and ``disagreement_distances`` (their
    distances to the nearest reversed code).
    """
    prior = gan.prior
    if len(images) < prior.dim:
        warnings.warn(
            f"{len(images)} images for {prior.dim} latent dimensions: the PAG will be inf",
            stacklevel=2,
        )
    result = reverse_generator(
        gan.generator, images, prior.dim, steps=steps, lr=lr, init_std=init_std,
        batch_size=batch_size, generator_rng=torch.Generator().manual_seed(seed),
        progress=progress,
    )
    prior_rng = torch.Generator(device=prior.device).manual_seed(seed + 1)
    prior_codes = prior.sample(_positive_int("n_prior", n_prior), generator=prior_rng)
    distances = nearest_distances(prior_codes, result.codes)
    chosen = _farthest(distances, count)  # disagreement_indices, without computing distances twice
    with torch.no_grad(), _eval_mode(gan.generator):
        samples = gan.generator(prior_codes[chosen].to(device=images.device, dtype=images.dtype))
    return {
        "pag": pag_score(result.codes, sigma=1.0),
        "pag_unnormalised": pag_score(result.codes, sigma=1.0, normalise=False),
        "reversal_curve": result.curve.tolist(),
        "reversal_final_mse": float(result.final_error.mean()),
        "disagreement_images": samples.clamp(-1, 1).cpu(),
        "disagreement_distances": distances[chosen].tolist(),
    }
