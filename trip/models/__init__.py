"""Generative models with plug-in priors: VAE, WGAN and WGAN-GP, and the conditional VAEs.

``MODELS`` maps each model name to a builder ``(RunConfig, channels) -> nn.Module``;
the conditional models' builders (``vae_trip_cond``, ``cvae``; see
:mod:`trip.models.conditional`) take the number of binary attributes as a third
argument. The networks come from :mod:`trip.models.architectures` by name, the
prior from :mod:`trip.priors`.
"""

from __future__ import annotations

import torch
from torch import nn

from trip.config import ConfigError, static_attributes
from trip.models.architectures import build_critic, build_decoder, build_encoder, build_generator
from trip.models.conditional import ConditionalVAE, ConditionalVAETRIP, label_width
from trip.models.gan import WassersteinGAN
from trip.models.likelihoods import LIKELIHOODS
from trip.models.vae import VAE
from trip.priors import Prior, build_prior
from trip.priors.joint import JointTRIPPrior
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


def joint_prior_from_config(cfg, n_attributes: int) -> JointTRIPPrior:
    """TRIP over the latents and ``n_attributes`` binary attributes, from ``cfg.prior``; the ring order
    is drawn from the run seed."""
    p = cfg.prior
    return JointTRIPPrior(
        cfg.prior_dim, [2] * n_attributes, p.n_components, p.core_size, permutation_seed=cfg.seed,
        learnable=p.learnable, mean_range=tuple(p.mean_range), init_std=p.init_std,
        core_init_std=p.core_init_std, generator=torch.Generator().manual_seed(cfg.seed),
    )


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
        n_critic=cfg.train.n_critic,  # sizes the per-step draw of codes (critic batches + generator batch)
    )


MODELS.register("wgan")(lambda cfg, channels: _build_gan(cfg, channels, "wgan"))
MODELS.register("wgan_gp")(lambda cfg, channels: _build_gan(cfg, channels, "wgan_gp"))


def attribute_count(cfg, n_attributes: int | None = None) -> int:
    """The number of attributes a conditional run conditions on, when not given: from the config."""
    if n_attributes is not None:
        return n_attributes
    if cfg.labels.attributes is not None:
        return len(cfg.labels.attributes)
    known = static_attributes(cfg.data.name)
    if known is None:
        raise ConfigError(f"labels.attributes: {cfg.data.name}'s attributes come from its files; "
                          "list them or pass their count")
    return len(known)


@MODELS.register("vae_trip_cond")
def build_vae_trip_cond(cfg, channels: int, n_attributes: int | None = None) -> nn.Module:
    m, size = cfg.model, cfg.data.image_size
    return ConditionalVAETRIP(
        build_encoder(m.arch, m.latent_dim, channels, size),
        build_decoder(m.arch, m.latent_dim, channels, size),
        joint_prior_from_config(cfg, attribute_count(cfg, n_attributes)),
        LIKELIHOODS.get(m.likelihood)(channels=channels),
    )


@MODELS.register("cvae")
def build_cvae(cfg, channels: int, n_attributes: int | None = None) -> nn.Module:
    m, size = cfg.model, cfg.data.image_size
    sizes = [2] * attribute_count(cfg, n_attributes)
    return ConditionalVAE(
        build_encoder(m.arch, m.latent_dim, channels, size, extra_inputs=label_width(sizes)),
        build_decoder(m.arch, m.latent_dim, channels, size, extra_inputs=label_width(sizes)),
        LIKELIHOODS.get(m.likelihood)(channels=channels),
        m.latent_dim,
        sizes,
    )


__all__ = [
    "MODELS", "VAE", "ConditionalVAE", "ConditionalVAETRIP", "WassersteinGAN",
    "attribute_count", "joint_prior_from_config", "prior_from_config",
]
