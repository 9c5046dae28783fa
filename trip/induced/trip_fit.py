"""A TRIP prior fitted to reversed codes by maximum likelihood, with a held-out split."""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor
from tqdm import tqdm

from trip.priors import NormalPrior, Prior, TRIPPrior
from trip.induced.config import TRIPFitConfig, _split_sizes
from trip.induced.pgan import _small_ops

log = logging.getLogger("trip.induced")


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
