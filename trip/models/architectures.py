"""The paper's convolutional networks, one parametric implementation chosen by name.

Every network is a stack of stride-2 stages between 4x4 and the image size, so
the number of stages is ``log2(image_size / 4)``: 4 at 64x64 (CelebA), 3 at
32x32 (CIFAR-10), 2 at 16x16. Stage ``i`` (0 = the finest, next to the pixels)
has ``min(base_width * 2**i, max_width)`` channels, so the 32x32 variant drops
the widest stage. A named architecture (:data:`ARCHITECTURES`) is only a width
setting, :class:`ArchSpec`.

``paper`` at 64x64 (B = batch, d = latent size, C = image channels)::

    encoder    C -> 64 -> 128 -> 256 -> 512: Conv 4x4 s2 p1 (no bias) + LeakyReLU(0.2)
               flatten 512*4*4 -> Linear -> 2d, split into (mean, log-variance)
    decoder    Linear d -> 512 + LeakyReLU, reshape to 512x1x1
               ConvT 4x4 s1 p0 512 -> 512 (4x4) + LeakyReLU
               ConvT 4x4 s2 p1 512 -> 256 -> 128 -> 64 (+ LeakyReLU), 64 -> C, Tanh
    generator  Linear d -> 512*4*4 (no bias) + ReLU, reshape to 512x4x4
               ConvT 5x5 s2 p2 op1 512 -> 256 -> 128 -> 64 (no bias, + ReLU), 64 -> C, Tanh
    critic     Conv 5x5 s2 p2 C -> 64 + LeakyReLU(0.2)
               Conv 5x5 s2 p2 64 -> 128 -> 256 -> 512 + LayerNorm + LeakyReLU(0.2)
               Conv 4x4 (valid) 512 -> 1, flattened to (B,) scores

At 32x32 the 512 stage goes (encoder ends at 256*4*4, the generator starts at
256x4x4, the critic ends at 256); the decoder keeps its 512x1x1 code and its
first transposed conv maps 512 -> 256. The paper's latent sizes are
:data:`VAE_LATENT_DIM` (100) and :data:`GAN_LATENT_DIM` (128).

Compared with the authors' reference code (insilicomedicine/TRIP,
``core/networks``), which this follows in widths, kernels, paddings, biases and
normalisation:

* the reference decoder applies LeakyReLU to its last transposed conv before
  Tanh; the issue says "transposed convs -> Tanh", which we follow, so dark
  pixels do not need five times larger pre-activations than bright ones;
* the reference hard-codes 3 channels and only 32/64 pixels; here ``channels``
  is 1 or 3 and the stage count follows the image size (``paper`` still only
  allows its published sizes, 32 and 64);
* not a deviation: the reference generator has no BatchNorm (its helper is
  named ``dconv_bn_relu`` but holds only ConvT + ReLU), and its critic's layer
  norm normalises the channels at each pixel; both are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trip.registry import Registry

VAE_LATENT_DIM = 100
GAN_LATENT_DIM = 128


@dataclass(frozen=True)
class ArchSpec:
    """Widths of one named architecture; the layer pattern is shared by all."""

    base_width: int  # channels of the finest stage; each coarser stage doubles it
    max_width: int  # cap on stage widths, and the width of the decoder's 1x1 code
    image_sizes: tuple[int, ...]  # square sizes it is meant for (powers of two >= 8)

    def __post_init__(self):
        if not 1 <= self.base_width <= self.max_width:
            raise ValueError(f"need 1 <= base_width <= max_width, got {self}")
        for size in self.image_sizes:
            if size < 8 or size & (size - 1):
                raise ValueError(f"image sizes must be powers of two >= 8, got {size}")

    def widths(self, image_size: int) -> list[int]:
        """Channels of each stride-2 stage, finest first."""
        stages = image_size.bit_length() - 3  # log2(image_size / 4)
        return [min(self.base_width * 2**i, self.max_width) for i in range(stages)]


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")
ARCHITECTURES.register("paper")(ArchSpec(base_width=64, max_width=512, image_sizes=(32, 64)))
# Narrow enough for the embedded default (20k 32x32 images) to train on a 2-core
# CPU in seconds per epoch: ~14 ms per VAE step of 64 images, ~4 s per epoch.
ARCHITECTURES.register("small")(ArchSpec(base_width=16, max_width=64, image_sizes=(8, 16, 32, 64)))
# Half and twice as wide: candidates of the default's recipe search (benchmarks/recipe_sweep.py).
ARCHITECTURES.register("tiny")(ArchSpec(base_width=8, max_width=32, image_sizes=(8, 16, 32, 64)))
ARCHITECTURES.register("medium")(ArchSpec(base_width=32, max_width=128, image_sizes=(8, 16, 32, 64)))


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES.get(arch)
    except ValueError as err:
        raise ValueError(f"model.arch: {err}") from None


def check_image_size(arch: str, image_size: int) -> None:
    """Raise ValueError unless architecture ``arch`` supports ``image_size``."""
    allowed = _spec(arch).image_sizes
    if isinstance(image_size, bool) or image_size not in allowed:
        raise ValueError(
            f"data.image_size must be one of {', '.join(map(str, allowed))} for model.arch "
            f"{arch!r} (square images; one stride-2 stage per doubling above 4x4), "
            f"got {image_size!r}"
        )


def _widths(arch: str, channels: int, image_size: int, latent_dim: int | None = None) -> list[int]:
    check_image_size(arch, image_size)
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels!r}")
    if latent_dim is not None and (
        isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1
    ):
        raise ValueError(f"model.latent_dim must be an integer >= 1, got {latent_dim!r}")
    return _spec(arch).widths(image_size)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels at each pixel of a (B, C, H, W) map.

    Per sample, unlike BatchNorm, so the critic's gradient penalty on one
    sample does not see the rest of the batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class Encoder(nn.Module):
    """x (B, C, H, W) in [-1, 1] -> (mean, log-variance), each (B, latent_dim).

    ``extra`` (B, extra_inputs), e.g. a conditional VAE's labels, joins the
    flattened features before the last linear layer.
    """

    def __init__(self, features: nn.Sequential, head: nn.Linear):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        if extra is not None:
            h = torch.cat([h, extra.to(h)], dim=1)
        mean, logvar = self.head(h).chunk(2, dim=1)
        return mean, logvar


def build_encoder(arch: str, latent_dim: int, channels: int, image_size: int, extra_inputs: int = 0) -> Encoder:
    widths = _widths(arch, channels, image_size, latent_dim)
    layers: list[nn.Module] = []
    for c_in, c_out in zip([channels, *widths], widths):
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    layers.append(nn.Flatten())
    return Encoder(nn.Sequential(*layers), nn.Linear(widths[-1] * 4 * 4 + extra_inputs, 2 * latent_dim))


def build_decoder(arch: str, latent_dim: int, channels: int, image_size: int, extra_inputs: int = 0) -> nn.Sequential:
    """z (B, latent_dim + extra_inputs) -> the mean image (B, C, H, W) in [-1, 1].

    With ``extra_inputs`` the input is a code with extra values appended (a conditional VAE's labels).
    """
    widths = _widths(arch, channels, image_size, latent_dim)
    code = _spec(arch).max_width
    layers: list[nn.Module] = [
        nn.Linear(latent_dim + extra_inputs, code),
        nn.LeakyReLU(0.2),
        nn.Unflatten(1, (code, 1, 1)),
        nn.ConvTranspose2d(code, widths[-1], 4, 1, 0, bias=False),  # 1x1 -> 4x4
        nn.LeakyReLU(0.2),
    ]
    for c_in, c_out in zip(widths[::-1], widths[-2::-1]):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    layers += [nn.ConvTranspose2d(widths[0], channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def build_generator(arch: str, latent_dim: int, channels: int, image_size: int) -> nn.Sequential:
    """z (B, latent_dim) -> images (B, C, H, W) in [-1, 1]."""
    widths = _widths(arch, channels, image_size, latent_dim)
    layers: list[nn.Module] = [
        nn.Linear(latent_dim, widths[-1] * 4 * 4, bias=False),
        nn.ReLU(),
        nn.Unflatten(1, (widths[-1], 4, 4)),
    ]
    # output_padding=1 makes a 5x5 stride-2 transposed conv exactly double the size.
    for c_in, c_out in zip(widths[::-1], widths[-2::-1]):
        layers += [nn.ConvTranspose2d(c_in, c_out, 5, 2, 2, output_padding=1, bias=False), nn.ReLU()]
    layers += [nn.ConvTranspose2d(widths[0], channels, 5, 2, 2, output_padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


def build_critic(arch: str, channels: int, image_size: int) -> nn.Sequential:
    """x (B, C, H, W) -> (B,) unbounded Wasserstein scores (no sigmoid, no BatchNorm)."""
    widths = _widths(arch, channels, image_size)
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 5, 2, 2), nn.LeakyReLU(0.2)]
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [nn.Conv2d(c_in, c_out, 5, 2, 2), ChannelLayerNorm(c_out), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(widths[-1], 1, 4), nn.Flatten(0)]  # 4x4 -> 1x1 -> (B,)
    return nn.Sequential(*layers)


__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "ChannelLayerNorm",
    "Encoder",
    "GAN_LATENT_DIM",
    "VAE_LATENT_DIM",
    "build_critic",
    "build_decoder",
    "build_encoder",
    "build_generator",
    "check_image_size",
]
