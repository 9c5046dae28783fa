"""One induced-prior experiment on one GAN run: reverse, score, fit, continue, score again."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from trip.config import ConfigError, RunConfig, load_config, to_dict
from trip.data import to_float
from trip.evaluate import EvalContext, batched_samples, digest, file_digest, fid_part
from trip.figures import save_image_grid
from trip.induced.config import GAN_MODELS, KINDS, InducedConfig
from trip.induced.pgan import PGANPrior, fit_pgan
from trip.induced.trip_fit import fit_trip, mean_log_likelihood
from trip.io import atomic_write, atomic_write_text
from trip.metrics.reversal import REVERSAL_VERSION, nearest_distances, pag_score, reverse_generator
from trip.models import MODELS, WassersteinGAN
from trip.priors import NormalPrior, Prior, TRIPPrior
from trip.train import Batches, gan_step, is_complete, load_data, load_run, make_optimizers, resolve_device

log = logging.getLogger("trip.induced")


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
    return fid_part(run_cfg, model, train, test, ev, EvalContext(device, progress, fid_model))


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
    return {k: torch.stack([h[k] for h in tail]).double().mean().item() for k in tail[-1]}  # one read


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
