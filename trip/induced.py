"""Data-induced priors for a trained GAN (Kilcher et al., "Flexible Prior Distributions
for Deep Generative Models", Sec. 3 and 4.4), and TRIP as the flexible prior.

    python -m trip.induced runs/shapes/wgan_gp-normal-s0 --kind trip pgan original --out induced/

For one trained GAN run and one ``kind``:

1. reverse ``reversal_examples`` training images into codes (Algorithm 1); the
   codes are cached in the output directory keyed by the checkpoint's digest,
   so every kind reuses one reversal;
2. score the trained GAN BEFORE: PAG (Eq. 2) of the codes, their log-likelihood
   under the prior, FID (with its sample count), and the mean distance from
   prior samples to the nearest code;
3. fit the induced prior to the codes: ``pgan``, the paper's secondary GAN, or
   ``trip``, a TRIP fitted by maximum likelihood; ``original`` keeps the run's
   own prior, the control that separates "trained longer" from "new prior";
4. swap it into the GAN as a fixed prior (``original``: the run's prior, learnable
   if it was) and continue training for ``continue_steps`` (fresh optimisers
   for every kind, the run's own training settings);
5. score AFTER the same way, reversing the same images with the continued
   generator; write ``induced_<kind>.json``, the continued checkpoint
   ``induced_<kind>.pt`` and a sample grid ``induced_<kind>_samples.png``.

The source run directory is only read.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from trip.config import ConfigError, RunConfig, build_with_overrides, load_config, to_dict
from trip.data import to_float
from trip.evaluate import batched_samples, digest, file_digest, fid_part
from trip.figures import save_image_grid
from trip.io import atomic_write, atomic_write_text
from trip.metrics.reversal import REVERSAL_VERSION, nearest_distances, pag_score, reverse_generator
from trip.models import MODELS, WassersteinGAN
from trip.models.gan import gradient_penalty
from trip.priors import NormalPrior, Prior, TRIPPrior
from trip.train import Batches, gan_step, is_complete, load_data, load_run, make_optimizers, resolve_device

log = logging.getLogger("trip.induced")

KINDS = ("pgan", "trip", "original")
GAN_MODELS = ("wgan", "wgan_gp")


# -- configuration ---------------------------------------------------------------------
@dataclass
class PGANConfig:
    """The secondary GAN of Sec. 3: noise z' -> code through 4 FC layers; critic of 4 FC layers.

    Appendix E makes the PGAN "analogous to the original GAN"; the GANs here
    are Wasserstein GANs, so the PGAN is a WGAN-GP with Adam(lr, 0.5, 0.9).
    """

    hidden: int = 128  # units of the 3 hidden layers of both networks
    noise_dim: int | None = None  # size of z'; default the code size d (the paper: d' >= d)
    steps: int = 1000  # mapping (generator) updates
    n_critic: int = 5  # critic updates per mapping update
    lr: float = 3e-4  # Appendix E's step size
    batch_size: int = 100  # Appendix E: mini-batches of 100
    gp_weight: float = 10.0


@dataclass
class TRIPFitConfig:
    """A TRIP fitted to the codes by maximum likelihood, after the 1-D GMM initialisation.

    A few hundred codes overfit the GAN prior's size (N=10, m=8 in the shapes
    profile): on 256 codes of a shapes WGAN-GP, N=5, m=4 held out best.
    """

    n_components: int = 5  # N per dimension
    core_size: int = 4  # tensor-ring core size m
    steps: int = 500  # Adam steps on -mean log p(z)
    lr: float = 1e-2
    batch_size: int = 256  # codes per step (capped at the number of training codes)
    holdout: float = 0.2  # fraction of codes held out to score the fit, never trained on
    validation: float = 0.2  # fraction of the rest that picks the step to keep (early stopping); 0: the last


@dataclass
class InducedConfig:
    """Settings of one induced-prior experiment; sized for the shapes profile on a CPU."""

    source_model: str = "wgan_gp"  # the GAN run to start from: RUN_ROOT/PROFILE/<model>-<prior>-s<seed>
    source_prior: str = "normal"  # a prior variant of the profile
    reversal_examples: int = 512  # training images reversed into codes (the paper: 1024)
    reversal_steps: int = 100  # Algorithm 1 steps (the shapes profile's eval.reversal_steps)
    reversal_lr: float = 0.1  # Adam on the codes (trip.metrics.reversal: the paper's plain descent diverges)
    pgan: PGANConfig = field(default_factory=PGANConfig)
    trip: TRIPFitConfig = field(default_factory=TRIPFitConfig)
    continue_steps: int = 100  # GAN steps continued with each prior (0: swap the prior only)
    fid_samples: int = 200  # generated images for FID, and reference images (the shapes profile's count)
    seed: int = 0  # the source run's seed, and the seed of everything done here


def load_induced_config(raw: dict | None = None, overrides: list[str] | None = None) -> InducedConfig:
    """Build and validate an InducedConfig from a dict and ``key.path=value`` overrides."""
    cfg = build_with_overrides(InducedConfig, raw, overrides)
    validate(cfg)
    return cfg


def validate(cfg: InducedConfig) -> None:
    """Impossible values raise ConfigError naming the dotted key."""
    if cfg.source_model not in GAN_MODELS:
        raise ConfigError(f"source_model: induced priors need a GAN run ({', '.join(GAN_MODELS)}), "
                          f"got {cfg.source_model!r}")
    _at_least(cfg, 1, "reversal_examples", "reversal_steps", "pgan.hidden", "pgan.steps", "pgan.n_critic",
              "pgan.batch_size", "trip.n_components", "trip.core_size", "trip.steps", "trip.batch_size")
    _at_least(cfg, 0, "continue_steps")
    _at_least(cfg, 2, "fid_samples")
    for key in ("reversal_lr", "pgan.lr", "pgan.gp_weight", "trip.lr"):
        if not (_get(cfg, key) > 0 and math.isfinite(_get(cfg, key))):
            raise ConfigError(f"{key}: must be a finite number > 0, got {_get(cfg, key)}")
    if cfg.pgan.noise_dim is not None and cfg.pgan.noise_dim < 1:
        raise ConfigError(f"pgan.noise_dim: must be >= 1 or null, got {cfg.pgan.noise_dim}")
    if not 0 < cfg.trip.holdout < 1:
        raise ConfigError(f"trip.holdout: must be in (0, 1), got {cfg.trip.holdout}")
    if not 0 <= cfg.trip.validation < 1:
        raise ConfigError(f"trip.validation: must be in [0, 1), got {cfg.trip.validation}")
    rest, held = _split_sizes(cfg.reversal_examples, cfg.trip.holdout)
    fit_codes, checked = _split_sizes(rest, cfg.trip.validation)
    if held < 1 or (cfg.trip.validation > 0 and checked < 1) or fit_codes < cfg.trip.n_components:
        raise ConfigError(f"trip.holdout: {cfg.reversal_examples} codes split into {fit_codes} to fit "
                          f"{cfg.trip.n_components} components, {checked} to validate and {held} held out")


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _at_least(cfg, low: int, *keys: str) -> None:
    for key in keys:
        if _get(cfg, key) < low:
            raise ConfigError(f"{key}: must be >= {low}, got {_get(cfg, key)}")


def _split_sizes(n: int, holdout: float) -> tuple[int, int]:
    held = int(round(n * holdout))
    return n - held, held


def source_run_dir(run_root: str | Path, profile: str, cfg: InducedConfig) -> Path:
    """Where the training pipeline puts the source run of ``cfg``."""
    return Path(run_root) / profile / f"{cfg.source_model}-{cfg.source_prior}-s{cfg.seed}"


# -- the PGAN prior --------------------------------------------------------------------
def _mlp(n_in: int, hidden: int, n_out: int, activation: nn.Module) -> nn.Sequential:
    """Four fully connected layers (Appendix E), ``activation`` between them."""
    sizes = [n_in, hidden, hidden, hidden, n_out]
    layers: list[nn.Module] = []
    for i in range(4):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < 3:
            layers.append(activation)
    return nn.Sequential(*layers)


class PGANPrior(Prior):
    """The data-induced prior as a sampler: z = shift + scale * h(z'), z' ~ N(0, I_d').

    ``h`` is the PGAN's mapping (4 FC layers, ReLU, linear output, as codes are
    unbounded). ``shift``/``scale`` standardise the codes so that the networks
    work at unit scale whatever the spread of the reversed codes.

    A PGAN has no density: it can be a GAN's prior only while fixed, because
    a fixed prior is only ever sampled (``WassersteinGAN.generator_and_prior_loss``
    calls ``log_prob`` for learnable priors alone).
    """

    def __init__(self, dim: int, noise_dim: int | None = None, hidden: int = 128):
        super().__init__(dim)
        self.noise_dim = noise_dim or dim
        self.hidden = hidden
        self.mapping = _mlp(self.noise_dim, hidden, dim, nn.ReLU())
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def standardised(self, noise: Tensor) -> Tensor:
        """h(z') in standardised code units (what the PGAN's critic sees)."""
        return self.mapping(noise)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.noise_dim, dtype=self.dtype, device=self.device, generator=generator)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.shift + self.scale * self.mapping(self.noise(n, generator))

    def _log_prob(self, z: Tensor, observed: Tensor | None) -> Tensor:
        raise NotImplementedError(
            "a PGAN prior is an implicit sampler z = h(z'), z' ~ N(0, I): it has no closed-form "
            "density, so log_prob is undefined; use it only as a fixed (sampled) prior"
        )

    def _sample_conditional(self, z: Tensor, resample: Tensor, generator) -> Tensor:
        raise NotImplementedError("a PGAN prior has no density, so it has no conditionals to sample from")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, noise_dim={self.noise_dim}, hidden={self.hidden}, learnable={self.learnable}"


@contextmanager
def _small_ops(device: torch.device) -> Iterator[None]:
    """One CPU thread for the duration: on ops this small, intra-op threads cost more than they
    save, and on a busy CPU far more (a PGAN fit ran ~40x slower on two shared cores)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_pgan(codes: Tensor, cfg: PGANConfig, generator: torch.Generator | None = None,
             progress: bool = False) -> tuple[PGANPrior, dict]:
    """Train a PGAN (WGAN-GP) on ``codes`` (n, d); returns the fixed prior and its training curve.

    All randomness runs under a forked global RNG seeded from ``generator``, so a
    fit is reproducible and leaves the caller's RNG as it was.
    """
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    devices = [codes.device] if codes.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _small_ops(codes.device):
        torch.manual_seed(seed)
        prior = PGANPrior(codes.shape[1], cfg.noise_dim, cfg.hidden).to(codes)
        critic = nn.Sequential(_mlp(codes.shape[1], cfg.hidden, 1, nn.LeakyReLU(0.2)), nn.Flatten(0)).to(codes)
        with torch.no_grad():
            prior.shift.copy_(codes.mean(0))
            prior.scale.copy_(codes.std(0).clamp_min(1e-6))
        data = (codes - prior.shift) / prior.scale
        curve = _train_pgan(prior, critic, data, cfg, progress)
    prior.set_learnable(False)
    return prior.eval(), {"wasserstein_curve": curve, "steps": cfg.steps, "seed": seed}


def _train_pgan(prior: PGANPrior, critic: nn.Module, data: Tensor, cfg: PGANConfig, progress: bool) -> list:
    """WGAN-GP on standardised codes; the curve is the critic's gap, averaged over 20 windows."""
    betas = (0.5, 0.9)
    opt_h = torch.optim.Adam(prior.mapping.parameters(), lr=cfg.lr, betas=betas)
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr, betas=betas)
    window, gaps, curve = max(1, cfg.steps // 20), [], []
    for step in tqdm(range(cfg.steps), desc="PGAN", disable=not progress):
        for _ in range(cfg.n_critic):
            real = data[torch.randint(len(data), (cfg.batch_size,), device=data.device)]
            with torch.no_grad():
                fake = prior.standardised(prior.noise(cfg.batch_size))
            gap = critic(real).mean() - critic(fake).mean()
            loss = -gap + cfg.gp_weight * gradient_penalty(critic, real, fake)
            opt_c.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
        gaps.append(gap.item())
        critic.requires_grad_(False)
        loss = -critic(prior.standardised(prior.noise(cfg.batch_size))).mean()
        opt_h.zero_grad(set_to_none=True)
        loss.backward()
        opt_h.step()
        critic.requires_grad_(True)
        if (step + 1) % window == 0 or step + 1 == cfg.steps:
            curve.append(float(np.mean(gaps)))
            gaps = []
    return curve


# -- the TRIP prior --------------------------------------------------------------------
def split_codes(codes: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(rest, ``fraction`` of the codes) by a seeded permutation."""
    keep, _ = _split_sizes(len(codes), fraction)
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed)).to(codes.device)
    return codes[order[:keep]], codes[order[keep:]]


@torch.no_grad()
def mean_log_likelihood(prior: Prior, codes: Tensor) -> float:
    """Mean log p(z) over codes, in nats per code."""
    return float(prior.log_prob(codes.to(device=prior.device, dtype=prior.dtype)).double().mean())


def fit_trip(codes: Tensor, cfg: TRIPFitConfig, seed: int = 0, progress: bool = False) -> tuple[TRIPPrior, dict]:
    """A fixed TRIP fitted to ``codes`` (n, d) by maximum likelihood; returns (prior, report).

    The codes split three ways: ``holdout`` of them score the fit and are
    never used otherwise; of the rest, ``validation`` picks the step whose
    parameters are kept (a few hundred codes overfit a TRIP within a few
    hundred steps), and the remainder is fitted. The fit starts from
    ``fit_marginals`` (a 1-D GMM per dimension, the paper's VAE-TRIP
    initialisation), then runs Adam on -mean log p(z) over mini-batches.

    The report holds the training curve (mean log-likelihood per step), the
    kept step, and the held-out log-likelihood under N(0, I), the initial TRIP
    and the fitted TRIP (also every ``steps // 10`` steps, for diagnosis only).
    """
    rest, held = split_codes(codes, cfg.holdout, seed)
    fit_codes, checked = split_codes(rest, cfg.validation, seed + 1)
    prior = TRIPPrior(codes.shape[1], cfg.n_components, cfg.core_size,
                      generator=torch.Generator().manual_seed(seed)).to(codes)
    prior.fit_marginals(fit_codes, seed=seed)
    heldout = {"normal": mean_log_likelihood(NormalPrior(codes.shape[1]).to(codes), held),
               "initial": mean_log_likelihood(prior, held)}
    with _small_ops(codes.device):
        report = _maximise_likelihood(prior, fit_codes, checked, held, cfg, seed, progress)
    heldout["fitted"] = mean_log_likelihood(prior, held)
    prior.set_learnable(False)
    log.info("TRIP fit: held-out log-likelihood %.3f (N(0,I)) %.3f (initial) -> %.3f (fitted, step %d) "
             "nats/code, n=%d", heldout["normal"], heldout["initial"], heldout["fitted"], report["kept_step"],
             len(held))
    return prior, {**report, "heldout_loglik": heldout, "n_fit": len(fit_codes), "n_validation": len(checked),
                   "n_heldout": len(held)}


def _maximise_likelihood(prior: TRIPPrior, codes: Tensor, checked: Tensor, held: Tensor, cfg: TRIPFitConfig,
                         seed: int, progress: bool) -> dict:
    """Adam on -mean log p; keeps the parameters of the best validation log-likelihood (step 0 included)."""
    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed + 2)
    batch, every, check_every = min(cfg.batch_size, len(codes)), max(1, cfg.steps // 10), max(1, cfg.steps // 50)
    curve, heldout_curve = [], []
    best = (mean_log_likelihood(prior, checked), 0, copy.deepcopy(prior.state_dict())) if len(checked) else None
    for step in tqdm(range(1, cfg.steps + 1), desc="TRIP fit", disable=not progress):
        rows = torch.randperm(len(codes), generator=g)[:batch].to(codes.device)
        loss = -prior.log_prob(codes[rows]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(-loss.item())
        if step % every == 0 or step == cfg.steps:
            heldout_curve.append([step, mean_log_likelihood(prior, held)])
        if best is not None and (step % check_every == 0 or step == cfg.steps):
            score = mean_log_likelihood(prior, checked)
            if score > best[0]:
                best = (score, step, copy.deepcopy(prior.state_dict()))
    if best is not None:
        prior.load_state_dict(best[2])
    return {"curve": curve, "heldout_curve": heldout_curve, "kept_step": cfg.steps if best is None else best[1],
            "validation_loglik": None if best is None else best[0]}


# -- loading the source run ------------------------------------------------------------
def load_source(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RunConfig, WassersteinGAN]:
    """(config, GAN) of a finished training run; errors name the missing or unreadable path."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} does not exist: {run_dir} is not a trained run")
    if not is_complete(run_dir):
        raise RuntimeError(f"{run_dir} is not complete (no complete.json): finish training it first")
    try:
        run_cfg, model = load_run(run_dir, device)
    except Exception as err:  # a truncated checkpoint, a foreign file, a bad config.yaml
        raise RuntimeError(f"{run_dir}: cannot load the trained run ({type(err).__name__}: {err})") from err
    if not isinstance(model, WassersteinGAN) or getattr(run_cfg, "conditional", False):
        raise ConfigError(f"source_model: {run_dir} holds a {run_cfg.model.name}; induced priors need an "
                          f"unconditional GAN ({', '.join(GAN_MODELS)})")
    return run_cfg, model


# -- scores ----------------------------------------------------------------------------
def _reverse(model: WassersteinGAN, images: Tensor, cfg: InducedConfig, progress: bool) -> dict:
    result = reverse_generator(
        model.generator, images, model.prior.dim, steps=cfg.reversal_steps, lr=cfg.reversal_lr,
        generator_rng=torch.Generator().manual_seed(cfg.seed), progress=progress,
    )
    return {"codes": result.codes.detach().cpu(), "curve": result.curve.tolist(),
            "final_mse": float(result.final_error.mean())}


def cached_reversal(model: WassersteinGAN, images: Tensor, cfg: InducedConfig, out_dir: Path,
                    checkpoint: str, progress: bool) -> tuple[dict, Path, bool]:
    """Reversal of ``images`` by the source generator, cached by checkpoint digest and settings.

    Returns (reversal, cache path, whether the cache was reused).
    """
    key = digest(checkpoint, len(images), cfg.reversal_steps, cfg.reversal_lr, cfg.seed, REVERSAL_VERSION)
    path = out_dir / f"reversal-{key}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path, True
        except Exception as err:  # a foreign or damaged file: atomic writes never leave half a one
            log.warning("%s is unreadable (%s); reversing again", path, err)
    reversal = _reverse(model, images, cfg, progress)
    atomic_write(path, lambda f: torch.save(reversal, f))
    return reversal, path, False


def code_scores(codes: Tensor, prior: Prior, reversal: dict, seed: int) -> dict:
    """PAG (Eq. 2), log-likelihoods, and how far prior samples lie from the data's codes.

    ``codes_loglik_prior`` is the codes' mean log-density under the prior in
    use (None for a PGAN, which has none): Eq. 2 measures agreement with
    N(0, I) only, which an induced prior is not. ``prior_to_codes_distance`` is the mean, over as many prior samples as
    codes, of the distance to the nearest reversed code (Sec. 4.2's
    disagreement measure, averaged): it needs no density, so it compares every
    prior, the PGAN included, with the codes the generator actually uses.
    """
    codes = codes.double()
    g = torch.Generator(device=prior.device).manual_seed(seed + 1)
    samples = prior.sample(len(codes), generator=g).detach().cpu().double()
    return {
        "pag": pag_score(codes), "pag_unnormalised": pag_score(codes, normalise=False),
        "reversal_final_mse": reversal["final_mse"], "reversal_curve": reversal["curve"],
        "codes_loglik_normal": mean_log_likelihood(NormalPrior(codes.shape[1]).double(), codes),
        "codes_loglik_prior": None if isinstance(prior, PGANPrior) else mean_log_likelihood(prior, codes),
        "prior_to_codes_distance": float(nearest_distances(samples, codes).mean()),
        "n_codes": len(codes),
    }


def fid_score(run_cfg: RunConfig, model, train, test, cfg: InducedConfig, device, fid_model, progress) -> dict:
    """FID via trip.evaluate (cached reference statistics), with its sample counts."""
    ev = dataclasses.replace(run_cfg.eval, fid_samples=cfg.fid_samples, seed=cfg.seed)
    ctx = {"device": device, "fid_model": fid_model, "progress": progress}
    return fid_part(run_cfg, model, train, test, ev, ctx)


# -- continued training ----------------------------------------------------------------
def continue_training(model: WassersteinGAN, run_cfg: RunConfig, images: Tensor, steps: int, seed: int,
                      device, progress: bool = False) -> dict:
    """``steps`` more GAN steps with train.py's step, fresh optimisers and the run's settings.

    Returns the mean of each training metric over the last tenth of the steps.
    """
    if steps == 0:
        return {}
    opts = make_optimizers(model, run_cfg)
    batches, cursor = Batches(images, run_cfg.train.batch_size, seed), iter(range(sys.maxsize))

    def next_batch() -> tuple[Tensor]:
        return (to_float(batches[next(cursor)]).to(device),)  # gan_step unpacks the model's inputs

    torch.manual_seed(seed)
    history = []
    model.train()
    for _ in tqdm(range(steps), desc="continued GAN training", disable=not progress):
        history.append(gan_step(model, opts, next_batch, run_cfg))
    model.eval()
    tail = history[-max(1, steps // 10):]
    return {k: float(np.mean([h[k] for h in tail])) for k in tail[-1]}


def induced_prior(kind: str, model: WassersteinGAN, codes: Tensor, cfg: InducedConfig,
                  progress: bool) -> tuple[Prior, dict]:
    """The prior the GAN continues with, fixed, and what its fit reports."""
    codes = codes.to(model.prior.device)
    if kind == "original":
        return model.prior, {"kind": "original", "learnable": model.prior.learnable}
    if kind == "pgan":
        prior, report = fit_pgan(codes, cfg.pgan, torch.Generator().manual_seed(cfg.seed), progress)
        return prior, {"kind": "pgan", **report}
    prior, report = fit_trip(codes, cfg.trip, cfg.seed, progress)
    return prior, {"kind": "trip", **report}


# -- the experiment --------------------------------------------------------------------
def run_induced(source_run_dir: str | Path, kind: str, cfg: InducedConfig, out_dir: str | Path,
                device: str = "cpu", progress: bool = False, fid_model: nn.Module | None = None) -> dict:
    """One induced-prior experiment (see the module docstring); returns ``induced_<kind>.json``'s content.

    ``fid_model`` replaces the Inception network (tests use a small stand-in).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    start, times = time.perf_counter(), {}
    dev = resolve_device(device)
    source, out_dir = Path(source_run_dir), Path(out_dir)
    if out_dir.resolve() == source.resolve():
        raise ValueError(f"out_dir: {out_dir} is the source run directory, which is only read; choose another")
    run_cfg, model = load_source(source, dev)
    _check_fits_run(cfg, run_cfg, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = file_digest(source / "checkpoint.pt")
    train, test = load_data(run_cfg)
    if train.images.shape[0] < cfg.reversal_examples:
        raise ConfigError(f"reversal_examples: {cfg.reversal_examples} exceeds the {train.images.shape[0]} "
                          f"training images of {source}")
    uint8 = torch.from_numpy(np.ascontiguousarray(train.images))
    images = to_float(uint8[: cfg.reversal_examples]).to(dev)

    tick = time.perf_counter()
    reversal, cache_path, reused = cached_reversal(model, images, cfg, out_dir, checkpoint, progress)
    before = _before_scores(model, reversal, run_cfg, train, test, cfg, out_dir, checkpoint, dev, fid_model,
                            progress)
    times["before"] = time.perf_counter() - tick

    tick = time.perf_counter()
    prior, prior_report = induced_prior(kind, model, reversal["codes"], cfg, progress)
    model.prior = prior.to(dev)
    times["fit_prior"] = time.perf_counter() - tick

    tick = time.perf_counter()
    final = continue_training(model, run_cfg, uint8, cfg.continue_steps, cfg.seed, dev, progress)
    times["continue_training"] = time.perf_counter() - tick

    tick = time.perf_counter()
    after_reversal = _reverse(model, images, cfg, progress)
    after = code_scores(after_reversal["codes"], model.prior, after_reversal, cfg.seed)
    after["fid"] = fid_score(run_cfg, model, train, test, cfg, dev, fid_model, progress)
    times["after"] = time.perf_counter() - tick

    files = {"checkpoint": f"induced_{kind}.pt", "samples": f"induced_{kind}_samples.png"}
    _save_checkpoint(out_dir / files["checkpoint"], model, run_cfg, kind, cfg, source, checkpoint)
    save_image_grid(batched_samples(model, 64, 64, cfg.seed), out_dir / files["samples"])
    times["total"] = time.perf_counter() - start
    out = {
        "kind": kind,
        "source": {"run_dir": str(source), "checkpoint_digest": checkpoint, "model": run_cfg.model.name,
                   "prior": run_cfg.prior.name, "learnable": run_cfg.prior.learnable,
                   "dataset": run_cfg.data.name, "seed": run_cfg.seed},
        "config": dataclasses.asdict(cfg),
        "reversal_cache": {"path": cache_path.name, "reused": reused},
        "prior": prior_report,
        "continued": {"steps": cfg.continue_steps, "fresh_optimizers": True, "final_metrics": final},
        "before": before,
        "after": after,
        "files": files,
        "wall_seconds": times,
    }
    atomic_write_text(out_dir / f"induced_{kind}.json", json.dumps(out, indent=2))
    log.info("%s", summary_line(out))
    return out


def _check_fits_run(cfg: InducedConfig, run_cfg: RunConfig, source: Path) -> None:
    if cfg.reversal_examples < run_cfg.model.latent_dim:
        raise ConfigError(f"reversal_examples: {cfg.reversal_examples} codes in {run_cfg.model.latent_dim} "
                          f"dimensions give a singular code matrix (PAG = inf)")
    if run_cfg.model.name != cfg.source_model:
        log.warning("%s is a %s run, the config names source_model=%s", source, run_cfg.model.name,
                    cfg.source_model)


def _before_scores(model, reversal, run_cfg, train, test, cfg, out_dir, checkpoint, dev, fid_model,
                   progress) -> dict:
    """The source GAN's scores, cached beside the reversal (every kind shares them)."""
    key = digest(checkpoint, cfg.reversal_examples, cfg.reversal_steps, cfg.reversal_lr, cfg.seed, REVERSAL_VERSION,
                  cfg.fid_samples, dataclasses.asdict(run_cfg.eval), fid_model is not None)
    path = out_dir / f"before-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    before = code_scores(reversal["codes"], model.prior, reversal, cfg.seed)
    before["fid"] = fid_score(run_cfg, model, train, test, cfg, dev, fid_model, progress)
    atomic_write_text(path, json.dumps(before, indent=2))
    return before


def _prior_spec(prior: Prior) -> dict:
    if isinstance(prior, PGANPrior):
        return {"kind": "pgan", "noise_dim": prior.noise_dim, "hidden": prior.hidden}
    if isinstance(prior, TRIPPrior):
        return {"kind": "trip", "n_components": prior.n_components, "core_size": prior.core_size}
    return {"kind": "original"}


def _save_checkpoint(path: Path, model, run_cfg: RunConfig, kind: str, cfg: InducedConfig, source: Path,
                     source_digest: str) -> None:
    state = {"model": model.state_dict(), "channels": model.image_channels, "run_config": to_dict(run_cfg),
             "prior_spec": _prior_spec(model.prior), "kind": kind, "induced_config": dataclasses.asdict(cfg),
             "source_run_dir": str(source), "source_checkpoint": source_digest}
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_induced(path: str | Path, device: str = "cpu") -> tuple[RunConfig, WassersteinGAN]:
    """(source run config, continued GAN with its induced prior) from ``induced_<kind>.pt``, in eval mode."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise RuntimeError(f"{path} is unreadable ({type(err).__name__}: {err})") from None
    run_cfg = load_config(state["run_config"])
    model = MODELS.get(run_cfg.model.name)(run_cfg, state["channels"])
    spec, dim = state["prior_spec"], run_cfg.prior_dim
    if spec["kind"] == "pgan":
        model.prior = PGANPrior(dim, spec["noise_dim"], spec["hidden"])
    elif spec["kind"] == "trip":
        model.prior = TRIPPrior(dim, spec["n_components"], spec["core_size"])
    model.load_state_dict(state["model"])
    model.prior.set_learnable(spec["kind"] == "original" and run_cfg.prior.learnable)
    model.image_channels = state["channels"]
    return run_cfg, model.to(device).eval()


def summary_line(out: dict) -> str:
    b, a = out["before"], out["after"]
    return (f"{out['source']['model']}/{out['source']['prior']} -> {out['kind']} "
            f"(+{out['continued']['steps']} steps): PAG {b['pag']:.2f} -> {a['pag']:.2f}, "
            f"{b['fid']['text']} -> {a['fid']['text']}")


# -- command line ----------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished GAN run directory written by trip.train")
    parser.add_argument("--kind", nargs="+", choices=KINDS, default=["trip"],
                        help="induced prior(s): pgan, trip, and original (the control)")
    parser.add_argument("--out", required=True, help="output directory (the run directory is only read)")
    parser.add_argument("--config", help="a YAML file of induced-prior settings (InducedConfig)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. continue_steps=100 pgan.steps=500 trip.core_size=4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        raw = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
        cfg = load_induced_config(raw, args.set)
        for kind in args.kind:
            out = run_induced(args.run_dir, kind, cfg, args.out, args.device, progress=not args.no_progress)
            print(summary_line(out))
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
