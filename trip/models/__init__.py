"""Generative models with plug-in priors: VAE, WGAN and WGAN-GP.

``MODELS`` maps each model name to a builder ``(RunConfig, channels) -> nn.Module``;
the networks come from :mod:`trip.models.architectures` by name, the prior
from :mod:`trip.priors`.
"""

from __future__ import annotations

import torch
from torch import nn

from trip.models.architectures import build_critic, build_decoder, build_encoder, build_generator
from trip.models.gan import WassersteinGAN
from trip.models.likelihoods import LIKELIHOODS
from trip.models.vae import VAE
from trip.priors import Prior, build_prior
from trip.registry import Registry

MODELS: Registry = Registry("model")


def prior_from_config(cfg) -> Prior:
    """The run's prior, initialised reproducibly from the run seed."""
    p = cfg.prior
    options = {}
    if p.name in ("gmm", "trip"):
        options = {"n_components": p.n_components, "mean_range": tuple(p.mean_range), "init_std": p.init_std}
    if p.name == "trip":
        options.update(core_size=p.core_size, core_init_std=p.core_init_std)
    if p.name != "normal":
        options["generator"] = torch.Generator().manual_seed(cfg.seed)
    return build_prior(p.name, cfg.prior_dim, learnable=p.learnable, **options)


@MODELS.register("vae")
def build_vae(cfg, channels: int) -> nn.Module:
    m, size = cfg.model, cfg.data.image_size
    return VAE(
        build_encoder(m.arch, m.latent_dim, channels, size),
        build_decoder(m.arch, m.latent_dim, channels, size),
        prior_from_config(cfg),
        LIKELIHOODS.get(m.likelihood)(channels=channels),
    )


def _build_gan(cfg, channels: int, variant: str) -> nn.Module:
    m, size = cfg.model, cfg.data.image_size
    return WassersteinGAN(
        build_generator(m.arch, m.latent_dim, channels, size),
        build_critic(m.arch, channels, size),
        prior_from_config(cfg),
        variant=variant,
        clip=cfg.train.clip,
        gp_weight=cfg.train.gp_weight,
    )


MODELS.register("wgan")(lambda cfg, channels: _build_gan(cfg, channels, "wgan"))
MODELS.register("wgan_gp")(lambda cfg, channels: _build_gan(cfg, channels, "wgan_gp"))

__all__ = ["MODELS", "VAE", "WassersteinGAN", "prior_from_config"]
