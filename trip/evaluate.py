"""Evaluate a trained run into ``eval.json`` and figures beside it.

    python -m trip.evaluate runs/shapes/vae-trip_learnable-s0 [--set eval.fid_samples=500]

* every run: FID (pytorch-fid's Inception, offline weights; the sample count is
  stored and printed with it), a sample grid, training curves, mode hopping;
  the prior's exact 2-D marginal density for GMM and TRIP priors;
* VAE runs: test-set ELBO and IWAE(k) in nats per image, with standard errors;
* GAN runs: generator reversal (error curve), the PAG score, and a grid of
  prior-data-disagreement samples.

Each part records a digest of its inputs (checkpoint bytes and the evaluation
settings it uses); a part whose digest is unchanged is reused, so running the
command again does only new work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trip import figures
from trip.config import ConfigError, EvalConfig, RunConfig, load_config
from trip.data import Split, to_float
from trip.io import atomic_write_text, read_metrics, read_yaml_mapping
from trip.metrics import fid as fidlib
from trip.metrics.reversal import REVERSAL_VERSION
from trip.models import VAE
from trip.train import is_complete, load_data, load_run, resolve_device

log = logging.getLogger("trip.evaluate")

# Which evaluation settings each part depends on (its digest covers only these).
PART_KEYS = {
    "fid": ("fid_samples", "fid_split", "fid_batch_size", "seed"),
    "likelihood": ("likelihood_examples", "iwae_k", "seed"),
    "reversal": ("reversal_examples", "reversal_steps", "reversal_lr", "disagreement_prior_samples",
                 "disagreement_count", "seed"),
    "figures": ("hop_trajectories", "hop_steps", "hop_dims", "seed"),
    "domain": ("domain_samples", "domain_real", "mode_samples", "kid_subsets", "kid_subset_size", "pr_k",
               "domain_classifier_steps", "domain_batch_size", "seed"),
}


# A part's results are recomputed when its method changes, not only its inputs.
PART_VERSIONS = {"reversal": REVERSAL_VERSION}


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def batched_samples(model, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """n generated images in [-1, 1] on CPU, reproducible for a seed."""
    torch.manual_seed(seed)
    out = [model.sample(min(batch_size, n - i)).float().cpu() for i in range(0, n, batch_size)]
    return torch.cat(out)


# -- parts -----------------------------------------------------------------------------
def reference_statistics(cfg: RunConfig, ev: EvalConfig, train: Split, test: Split, device,
                         model=None, progress: bool = False):
    """Cached Inception statistics of the reference split: (stats, count, feature model)."""
    reference_split = train if ev.fid_split == "train" else test
    count = min(ev.fid_samples, reference_split.images.shape[0])
    inception = model or fidlib.load_inception(device)
    # The cache key names the dataset, its loader options, and a stand-in feature model if any.
    name = f"{cfg.data.name.replace('_', '-')}-{digest(cfg.data.options)[:6]}" + ("-custom" if model else "")
    stats = fidlib.reference_stats(
        name, ev.fid_split, cfg.data.image_size, count, lambda: reference_split.images[:count],
        Path(ev.fid_stats_dir), batch_size=ev.fid_batch_size, device=device, model=inception, progress=progress,
    )
    return stats, count, inception


@dataclass(frozen=True)
class EvalContext:
    """What every evaluation part gets besides the run: where it runs and where its files go.

    ``out_dir`` is needed only by the parts that write figures; FID callers
    outside this module (the tune stage, induced priors) leave it unset.
    """

    device: torch.device
    progress: bool = False
    fid_model: torch.nn.Module | None = None  # a stand-in for Inception (tests)
    out_dir: Path | None = None

    @property
    def figure_dir(self) -> Path:
        if self.out_dir is None:
            raise ValueError("this evaluation part writes figures: give EvalContext an out_dir")
        return self.out_dir / "figures"


def fid_part(cfg: RunConfig, model, train: Split, test: Split, ev: EvalConfig, ctx: EvalContext) -> dict:
    stats, count, inception = reference_statistics(
        cfg, ev, train, test, ctx.device, ctx.fid_model, ctx.progress
    )
    samples = batched_samples(model, count, ev.fid_batch_size, ev.seed)
    result = fidlib.compute_fid(
        fidlib.to_uint8(samples, (-1, 1)), stats, batch_size=ev.fid_batch_size, device=ctx.device,
        model=inception, progress=ctx.progress,
    )
    log.info("%s: %s", cfg.run_dir, result)
    return {"value": result.value, "n_samples": result.n_samples, "n_reference": result.n_reference,
            "reference_split": ev.fid_split, "text": str(result)}


def likelihood_part(cfg: RunConfig, model, train: Split, test: Split, ev: EvalConfig, ctx: EvalContext) -> dict:
    """Test-set ELBO and IWAE(k) in nats per image and in bits per dimension (``*_bpd``, over ``dims``
    = C*H*W values), mean and standard error over images."""
    from trip.models.vae import bits_per_dim

    images = torch.from_numpy(np.ascontiguousarray(test.images[: ev.likelihood_examples]))
    torch.manual_seed(ev.seed)
    elbo, iwae = [], []
    batch = max(1, 4096 // ev.iwae_k)  # B * k codes per IWAE call
    with torch.no_grad():
        for chunk in tqdm(images.split(batch), desc=f"IWAE k={ev.iwae_k}", disable=not ctx.progress):
            x = to_float(chunk).to(ctx.device)
            elbo.append(model.elbo(x).double().cpu())
            iwae.append(model.iwae(x, k=ev.iwae_k).double().cpu())
    dims = images[0].numel()
    out = {"n_examples": images.shape[0], "iwae_k": ev.iwae_k, "dims": dims}
    elbo, iwae = torch.cat(elbo), torch.cat(iwae)
    per_image = {"elbo": elbo, "iwae": iwae, "elbo_bpd": bits_per_dim(elbo, dims), "iwae_bpd": bits_per_dim(iwae, dims)}
    for name, values in per_image.items():
        out[name] = values.mean().item()
        out[name + "_se"] = (values.std() / values.numel() ** 0.5).item() if values.numel() > 1 else float("nan")
    # Per-image values over the same test images in every run of a profile: the report pairs them.
    out["elbo_values"], out["iwae_values"] = elbo.tolist(), iwae.tolist()
    log.info("%s: ELBO %.2f ± %.2f (%.4f bits/dim), IWAE(k=%d) %.2f ± %.2f nats/image (%.4f bits/dim) (n=%d)",
             cfg.run_dir, out["elbo"], out["elbo_se"], out["elbo_bpd"], ev.iwae_k, out["iwae"], out["iwae_se"],
             out["iwae_bpd"], out["n_examples"])
    return out


def reversal_part(cfg: RunConfig, model, train: Split, test: Split, ev: EvalConfig, ctx: EvalContext) -> dict:
    from trip.metrics.reversal import evaluate_reversal

    images = to_float(torch.from_numpy(np.ascontiguousarray(train.images[: ev.reversal_examples])))
    result = evaluate_reversal(
        model, images.to(ctx.device), steps=ev.reversal_steps, n_prior=ev.disagreement_prior_samples,
        count=ev.disagreement_count, seed=ev.seed, lr=ev.reversal_lr,
    )
    fig_dir = ctx.figure_dir
    figures.save_image_grid(result.pop("disagreement_images").cpu(), fig_dir / "disagreement.png")
    figures.plot_reversal_curve(result["reversal_curve"], fig_dir / "reversal_curve.png")
    log.info("%s: PAG %.2f, reversal MSE %.4f", cfg.run_dir, result["pag"], result["reversal_final_mse"])
    return {**result, "n_examples": images.shape[0],
            "figures": ["figures/disagreement.png", "figures/reversal_curve.png"]}


def figures_part(cfg: RunConfig, model, train: Split, test: Split, ev: EvalConfig, ctx: EvalContext) -> dict:
    fig_dir, run_dir = ctx.figure_dir, Path(cfg.run_dir)
    metrics = run_dir / "metrics.jsonl"
    made = [figures.save_image_grid(batched_samples(model, 64, 64, ev.seed), fig_dir / "samples.png")]
    made.append(figures.plot_training_curves(metrics, fig_dir / "training_curves.png"))
    decode = model.decode if isinstance(model, VAE) else model.generator
    prior = model.prior
    if cfg.prior.name in ("gmm", "trip") and prior.dim >= 2:
        made.append(figures.plot_prior_density(prior, fig_dir / "prior_density.png",
                                               title=f"{cfg.model.name}, {cfg.prior.name} prior: p(z1, z2)"))
    hop_dims = min(ev.hop_dims, prior.dim)
    made.append(figures.plot_mode_hopping(prior, lambda z: decode(z).float(), fig_dir / "mode_hopping.png",
                                          ev.hop_trajectories, ev.hop_steps, hop_dims, seed=ev.seed))
    return {"files": [str(Path(p).relative_to(ctx.out_dir)) for p in made]}


def domain_part(cfg: RunConfig, model, train: Split, test: Split, ev: EvalConfig, ctx: EvalContext) -> dict:
    """FD, KID, precision/recall and mode coverage in the attribute classifier's features (trip.metrics.domain)."""
    from trip.metrics.domain import check_test_size, evaluate_domain, load_domain_reference

    check_test_size(cfg.data.name, len(test), ev)  # before the classifier is trained
    reference = load_domain_reference(cfg.data, ev, test, ctx.device, ctx.progress)
    torch.manual_seed(ev.seed)
    return evaluate_domain(reference, lambda n: model.sample(n).float(), ev, test, cfg.data, ctx.progress)


def training_summary(run_dir: Path) -> dict:
    """Steps, wall time and the convergence verdict that training wrote into ``complete.json``."""
    from trip.train import convergence

    done = json.loads((run_dir / "complete.json").read_text())
    verdict = done.get("convergence")
    if not verdict:  # runs trained before convergence tracking existed get it from their metrics (often: unknown)
        verdict = convergence(read_metrics(run_dir / "metrics.jsonl", missing_ok=True), done["steps"])
    return {**verdict, "wall_seconds": done.get("wall_seconds")}


# -- the entry point -------------------------------------------------------------------
def parts_for(model, has_attributes: bool = False) -> list[str]:
    """The parts of a run's evaluation; ``domain`` needs a dataset with attributes for its classifier."""
    parts = ["fid", "likelihood", "figures"] if isinstance(model, VAE) else ["fid", "reversal", "figures"]
    return parts + ["domain"] if has_attributes else parts


PARTS = {"fid": fid_part, "likelihood": likelihood_part, "reversal": reversal_part, "figures": figures_part,
         "domain": domain_part}


def evaluate(run_dir: str | Path, ev: EvalConfig | None = None, device: str = "auto",
             progress: bool | None = None, fid_model=None, out_dir: str | Path | None = None) -> dict:
    """Evaluate one complete run; returns the content of its ``eval.json``.

    Results go to ``out_dir`` (default: the run directory itself); the pipeline
    keeps them apart so that evaluating never modifies a training output.
    ``fid_model`` replaces the Inception network (tests use a small stand-in).
    """
    run_dir = Path(run_dir)
    out_dir = run_dir if out_dir is None else Path(out_dir)
    if not (run_dir / "checkpoint.pt").exists():
        raise FileNotFoundError(f"{run_dir / 'checkpoint.pt'} does not exist: train the run first")
    if not is_complete(run_dir):
        raise RuntimeError(f"{run_dir} is not complete (no complete.json): finish training it first")
    dev = resolve_device(device)
    cfg, model = load_run(run_dir, dev)
    ev = ev or cfg.eval
    train, test = load_data(cfg)
    if train.images.shape[1] != model.image_channels:
        raise ConfigError(f"data: {cfg.data.name} has {train.images.shape[1]}-channel images, "
                          f"but the run was trained on {model.image_channels} channels")
    ctx = EvalContext(dev, sys.stderr.isatty() if progress is None else progress, fid_model, out_dir)
    ctx.figure_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eval.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    checkpoint = file_digest(run_dir / "checkpoint.pt")
    out = {"run": {"model": cfg.model.name, "prior": cfg.prior.name, "learnable": cfg.prior.learnable,
                   "dataset": cfg.data.name, "seed": cfg.seed, "run_dir": str(run_dir)}}
    out["training"] = training_summary(run_dir)
    for name in parts_for(model, train.attributes.shape[1] > 0):
        settings = {k: getattr(ev, k) for k in PART_KEYS[name]}
        inputs = digest(checkpoint, settings, name, fid_model is not None, PART_VERSIONS.get(name))
        if previous.get(name, {}).get("inputs") == inputs:
            out[name] = previous[name]
            log.info("%s: %s unchanged, reused", run_dir, name)
            continue
        out[name] = {**PARTS[name](cfg, model, train, test, ev, ctx), "inputs": inputs}
        _write_json(path, {**previous, **out})  # progress survives a crash in a later part
    _write_json(path, out)
    return out


def _write_json(path: Path, content: dict) -> None:
    atomic_write_text(path, json.dumps(content, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories written by trip.train")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="eval overrides, e.g. eval.fid_samples=500")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for run_dir in args.run_dirs:
        try:
            cfg = _eval_config(run_dir, args.set)
            result = evaluate(run_dir, cfg, args.device)
        except (ConfigError, FileNotFoundError, RuntimeError) as err:
            parser.exit(2, f"{run_dir}: {err}\n")
        print(summary_line(result))


def _eval_config(run_dir: str, overrides: list[str]) -> EvalConfig:
    saved = Path(run_dir) / "config.yaml"
    raw = read_yaml_mapping(saved, "run config") if saved.exists() else {}
    raw.pop("config_hash", None)
    bad = [o for o in overrides if not o.startswith("eval.")]
    if bad:
        raise ConfigError(f"{bad[0].split('=')[0]}: only eval.* settings can be changed when evaluating")
    return load_config(raw, overrides).eval


def summary_line(result: dict) -> str:
    run = result["run"]
    parts = [f"{run['model']}/{run['prior']}{'' if run['learnable'] else ' (fixed)'}"]
    if "fid" in result:
        parts.append(result["fid"]["text"])
    if "likelihood" in result:
        lk = result["likelihood"]
        parts.append(f"ELBO {lk['elbo']:.1f}±{lk['elbo_se']:.1f} IWAE(k={lk['iwae_k']}) {lk['iwae']:.1f}±{lk['iwae_se']:.1f} (n={lk['n_examples']})")
    if "reversal" in result:
        parts.append(f"PAG {result['reversal']['pag']:.1f}")
    if "domain" in result:
        from trip.metrics.domain import summary

        parts.append(f"domain {summary(result['domain'])}")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
