"""Generator reversal, the Prior Agreement (PAG) score and prior-data-disagreement samples.

All three follow "Flexible Prior Distributions for Deep Generative Models"
(Kilcher, Lucchi, Hofmann; ICLR 2018 submission):

* :func:`reverse_generator` is Algorithm 1 (Sec. 2.1): descent on z of the l2
  loss of Eq. 4, l(z, x) = 1/2 ||G(z) - x||^2, from the N(0, 1e-4^2)
  initialisation of Appendix E, but with Adam steps by default (see below);
* :func:`pag_score` is Eq. 2 (Sec. 2.2): KL(N(0, diag(nu^2)) || N(0, sigma^2 I))
  with the nu_i the singular values of the matrix of reversed codes;
  :func:`expected_prior_pag` is what codes drawn from N(0, I) score, the floor
  that a finite number of codes puts under it;
* :func:`disagreement_indices` ranks prior samples by how far they lie from
  the reversed data codes (Sec. 4.2, Fig. 3).

:func:`evaluate_reversal` applies all three to a trained GAN.

Departure from the paper: Adam instead of plain gradient descent
------------------------------------------------------------------
Algorithm 1 writes plain gradient descent, z <- z - 0.05 grad_z l(z, x), with
the loss summed over pixels. That step is not scale-free: it moves z by 0.05
times a gradient that grows with the pixel count P and with the generator's
Jacobian, and gradient descent with a fixed step only converges while the step
is below 2 / L, L the curvature of l along z. On the embedded default (32x32
RGB, P = 3072, d = 16) the very first step overshoots: reversing 128 images
through a WGAN-GP trained 150 steps, the per-pixel error jumps from 0.423 to
0.95 and ends at 0.80 after 100 steps (codes of norm ~7; a N(0, I_16) code
has norm ~4); through a WGAN trained 300 steps, from 0.423 to 1.26, ending at
1.23 (norm ~25). Dividing the step by P only moves the problem, since L
depends on the trained generator, and no fixed step suits every network.
Adam (Kingma & Ba) on z, the usual choice for GAN inversion, makes each
coordinate's step about ``lr`` whatever the gradient's scale, so one setting
works for any image size and generator; its step size decays to 0 on a cosine
schedule over ``steps``, so the last steps settle into the minimum instead of
rattling around it, and each image keeps the best code it visited (with the
decay that is almost always the last one). On the same two generators the
error falls monotonically after the first step, to 0.285 after 100 steps and
0.283 after 200, within 1-2 % of the best found by 400 steps at 3x the step
size (0.280 and 0.282). Every code's Adam state is its own (Adam is
element-wise and the batch loss a sum over images), so an image's reversal
still does not depend on its batch. ``optimizer="gd"`` runs the paper's plain
gradient descent unchanged (lr 0.05 by default) for comparison.

The initialisation stays the paper's N(0, 1e-4^2). Codes near 0 are not a
saddle for these generators: the generator is a positively homogeneous map h
(bias-free linear and transposed-conv layers, ReLU) under ``tanh(. + b)``, so
G(eps u) = tanh(eps h(u) + b) and the gradient at eps u does not vanish as
eps -> 0. Starting from prior samples, from the nearest of 256 prior samples,
or the best of 8 restarts changed the final error by at most 2 % (0.2852 ->
0.2810, 0.2800; 0.2945 -> 0.2888 on 32 images), at up to 8 times the cost,
while moving the PAG a lot (1.9 -> 4.1 and 12.9): on a briefly trained
generator that is flat along many directions of z, where the codes end up,
and so the PAG, depends on where they start.

What the first point of the curve measures: the error at the starting codes,
before any step. For these generators G(~0) = tanh(b), b the last layer's
bias: a uniform mid-grey image (b = (-0.10, -0.11, 0.04) per channel after
WGAN and WGAN-GP training alike, both started from the same seed), so
that error is about the images' mean square E[x^2] and is the same, to three
digits, for every generator that reverses the same images: 0.423 on the
first 128 shapes images, whose E[x^2] is 0.421. It says nothing about the
generator; the later points do.

Reversal ends where the generator's range ends: a GAN that cannot draw an
image cannot be reversed onto it. The embedded default's briefly trained GANs
draw dim, nearly uniform images, so their error stops near 0.28 however long
the descent runs (0.10 would already be reached by the best single colour per
image and channel), about 2/3 of the starting error, not 1/2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import digamma
from torch import Tensor, nn
from tqdm import tqdm

# Adam reaches its floor within about 100 steps on the embedded default; 200 leaves room for larger models.
DEFAULT_STEPS = 200
DEFAULT_LR = {"adam": 0.1, "gd": 0.05}  # gd: Appendix E's 0.05 for Algorithm 1
OPTIMIZERS = tuple(DEFAULT_LR)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
DEFAULT_CHUNK = 1024
# Names the reversal algorithm: include it in cache keys, so results of an older algorithm are not reused.
REVERSAL_VERSION = "adam-cosine-best-v2"
# The PAG needs N >= 8 d codes: with fewer the singular values of the code
# matrix spread (Marchenko-Pastur) and bias the score upwards even for codes
# drawn from the prior itself, by about d (d + 1) / (4 N) (expected_prior_pag):
# (d + 1) / 32 at N = 8 d, against ~0.55 d at N = d.
PAG_CODES_PER_DIM = 8


@dataclass(frozen=True)
class ReversalResult:
    """Codes found by Algorithm 1 and how well they reconstruct.

    Errors are per-pixel mean squared errors (MSE), so they compare across
    image sizes; the objective that was descended is P/2 times the MSE for
    P values per image.

    codes:       (N, d) on the images' device: each image's best code over the run.
    curve:       (steps + 1,) mean over images of the MSE of the current codes,
                 before the first step (the starting codes) and after each step.
    final_error: (N,) each image's MSE at the returned codes (its lowest seen,
                 so final_error.mean() <= curve[-1]).
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


def _gradient(generator: nn.Module, codes: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
    """(grad_z of Eq. 4 for each code, squared errors at the codes) for one batch.

    The objective is the sum over the batch of the per-example losses of Eq. 4,
    so each code's gradient is J_G(z)^T (G(z) - x) for its own x alone and does
    not depend on who else is in the batch. Differentiating only with respect
    to the codes leaves every parameter's .grad untouched.
    """
    codes = codes.detach().requires_grad_(True)
    errors = _squared_errors(generator, codes, images)
    (grad,) = torch.autograd.grad(0.5 * errors.sum(), codes)
    return grad, errors.detach()


class _Adam:
    """Element-wise Adam on one batch of codes (its own moments, so batches never interact)."""

    def __init__(self, codes: Tensor):
        self.m, self.v, self.t = torch.zeros_like(codes), torch.zeros_like(codes), 0

    def step(self, codes: Tensor, grad: Tensor, lr: float) -> Tensor:
        b1, b2 = ADAM_BETAS
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return codes - lr * m_hat / (v_hat.sqrt() + ADAM_EPS)


def _cosine(lr: float, step: int, steps: int) -> float:
    """Step size of step ``step`` (0-based): lr at the first, decaying to ~0 at the last."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def reverse_generator(
    generator: nn.Module,
    images: Tensor,
    latent_dim: int,
    steps: int = DEFAULT_STEPS,
    lr: float | None = None,
    init_std: float = 1e-4,
    batch_size: int = 256,
    generator_rng: torch.Generator | None = None,
    progress: bool = False,
    optimizer: str = "adam",
) -> ReversalResult:
    """Algorithm 1 (Generator Reversal): descend 1/2 ||G(z) - x||^2 over z, for all x at once.

    ``optimizer``:

    * ``"adam"`` (default): Adam on z with step size ``lr`` (default 0.1)
      decaying to 0 on a cosine schedule over ``steps``. Converges on any
      generator and image size (the module docstring says why the paper's
      plain step does not);
    * ``"gd"``: the paper's Algorithm 1 as written, z <- z - lr grad_z l(z, x)
      with a fixed ``lr`` (default 0.05, Appendix E) and the loss summed over
      pixels. It diverges on the trained convolutional generators here; kept
      to compare with the paper.

    Common to both:

    * the loss is Eq. 4's l(z, x) = 1/2 ||G(z) - x||^2, summed over pixels
      (Adam's steps do not depend on the loss's scale, up to its eps, so
      summing or averaging gives the same Adam trajectory);
    * each image's returned code is the best one it visited (for Adam, with
      its decaying step, almost always the last); ``curve`` follows the
      current codes, so it shows the descent itself, rises included;
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
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
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
    states = [_Adam(z) for z in codes] if optimizer == "adam" else None
    best_codes = [z.clone() for z in codes]
    best_errors = [torch.full((len(z),), math.inf, device=z.device, dtype=z.dtype) for z in codes]
    pixels = images[0].numel()
    curve = np.zeros(steps + 1)

    def keep_best(i: int, errors: Tensor) -> None:
        # NaN never compares lower, so a code that blew up is never kept.
        better = errors < best_errors[i]
        best_errors[i] = torch.where(better, errors, best_errors[i])
        best_codes[i] = torch.where(better[:, None], codes[i], best_codes[i])

    with _eval_mode(generator), torch.enable_grad():
        for step in tqdm(range(steps), desc="generator reversal", disable=not progress):
            total = 0.0
            step_lr = _cosine(lr, step, steps) if optimizer == "adam" else lr
            for i, x in enumerate(batches):
                grad, errors = _gradient(generator, codes[i], x)
                keep_best(i, errors)
                total += float(errors.sum())
                if states is not None:
                    codes[i] = states[i].step(codes[i].detach(), grad, step_lr)
                else:
                    codes[i] = codes[i].detach() - step_lr * grad
            curve[step] = total / (len(images) * pixels)
        with torch.no_grad():
            total = 0.0
            for i, x in enumerate(batches):
                errors = _squared_errors(generator, codes[i], x)
                keep_best(i, errors)
                total += float(errors.sum())
    curve[steps] = total / (len(images) * pixels)
    final = torch.cat(best_errors) / pixels
    return ReversalResult(torch.cat(best_codes), curve, final.cpu().double().numpy())


def expected_prior_pag(n: int, d: int) -> float:
    """E[PAG] of ``n`` codes drawn from N(0, I_d) itself (normalised PAG, sigma = 1): the score's floor.

    With S = Z^T Z / n ~ Wishart(n, I) / n, E[tr S] = d and
    E[ln det S] = sum_{i=1..d} psi((n - i + 1) / 2) + d ln 2 - d ln n, so

        E[PAG] = 1/2 (d ln(n / 2) - sum_{i=1..d} psi((n - i + 1) / 2)) ~ d (d + 1) / (4 n).

    It is +inf for n < d, about 0.55 d for n = d (8.8 for d = 16) and about
    (d + 1) / 32 for n = 8 d (0.56 for d = 16): a PAG is only informative
    well above this value. The digamma formula is exact (it matches Monte Carlo);
    d (d + 1) / (4 n) is its large-n limit.
    """
    n, d = _positive_int("n", n), _positive_int("d", d)
    if n < d:
        return math.inf
    i = np.arange(1, d + 1)
    return float(0.5 * (d * math.log(n / 2) - digamma((n - i + 1) / 2).sum()))


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


def _check_code_count(n: int, d: int, per_dim: int) -> None:
    """Warn when n codes are too few for the PAG of d-dimensional codes (see PAG_CODES_PER_DIM)."""
    if n < d:
        warnings.warn(
            f"{n} images for {d} latent dimensions: the PAG will be inf (the code matrix is singular); "
            f"reverse at least {per_dim * d} images ({per_dim} per latent dimension)",
            stacklevel=3,
        )
    elif n < per_dim * d:
        warnings.warn(
            f"{n} images for {d} latent dimensions: the PAG is biased upwards (codes drawn from the "
            f"prior itself would score {expected_prior_pag(n, d):.2f} on average, "
            f"{expected_prior_pag(per_dim * d, d):.2f} with {per_dim * d}); reverse at least "
            f"{per_dim * d} images ({per_dim} per latent dimension)",
            stacklevel=3,
        )


def evaluate_reversal(
    gan: nn.Module,
    images: Tensor,
    steps: int,
    n_prior: int,
    count: int,
    seed: int,
    batch_size: int = 256,
    lr: float | None = None,
    init_std: float = 1e-4,
    progress: bool = False,
    optimizer: str = "adam",
    min_codes_per_dim: int = PAG_CODES_PER_DIM,
) -> dict:
    """Reversal, PAG and disagreement samples for a trained GAN (``.generator``, ``.prior``).

    ``images`` (N, C, H, W) in [-1, 1] on the generator's device are reversed
    into codes of size d = ``gan.prior.dim`` by :func:`reverse_generator`
    (``optimizer``, ``lr``, ``init_std``, ``steps``); ``seed`` fixes the
    starting codes and the ``n_prior`` prior draws. The PAG uses sigma = 1 for
    every prior: Eq. 2 measures the agreement with the isotropic N(0, sigma^2 I)
    that the paper assumes, so for a GMM or TRIP prior it says how far the
    data-induced codes are from a standard Normal, not from that learned prior.

    Code count: the PAG of N codes is biased upwards by about d (d + 1) / (4 N)
    (:func:`expected_prior_pag`, returned as ``pag_prior_baseline``), and is
    +inf for N < d. A warning says so when N < ``min_codes_per_dim`` * d
    (default 8 * d, bias about (d + 1) / 32, 0.56 for d = 16; the paper reverses
    1024 codes for d = 20); pass ``min_codes_per_dim=1`` to accept fewer
    codes knowingly. The images are the caller's, so this cannot top them up.

    Returns ``pag`` (normalised, see :func:`pag_score`), ``pag_unnormalised``
    (on the paper's scale), ``pag_prior_baseline`` (the PAG that N codes
    drawn from N(0, I) score on average), ``reversal_curve`` (per-pixel MSE
    of the current codes, before the first step and after each),
    ``reversal_final_mse`` (at the returned codes, each image's best),
    ``disagreement_images`` (count, C, H, W) on the CPU in [-1, 1], farthest
    first, and ``disagreement_distances`` (their distances to the nearest
    reversed code).
    """
    prior = gan.prior
    _check_code_count(len(images), prior.dim, _positive_int("min_codes_per_dim", min_codes_per_dim))
    result = reverse_generator(
        gan.generator, images, prior.dim, steps=steps, lr=lr, init_std=init_std,
        batch_size=batch_size, generator_rng=torch.Generator().manual_seed(seed),
        progress=progress, optimizer=optimizer,
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
        "pag_prior_baseline": expected_prior_pag(len(images), prior.dim),
        "reversal_curve": result.curve.tolist(),
        "reversal_final_mse": float(result.final_error.mean()),
        "disagreement_images": samples.clamp(-1, 1).cpu(),
        "disagreement_distances": distances[chosen].tolist(),
    }
