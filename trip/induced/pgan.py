"""The PGAN prior: a secondary GAN on reversed codes (Kilcher et al., Sec. 3), and its fit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from trip.models.gan import gradient_penalty
from trip.priors import Prior
from trip.induced.config import PGANConfig

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
