"""The paper's encoder/decoder and generator/critic, chosen by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trip.models.architectures import (
    ARCHITECTURES,
    GAN_LATENT_DIM,
    VAE_LATENT_DIM,
    ArchSpec,
    build_critic,
    build_decoder,
    build_encoder,
    build_generator,
    check_image_size,
)

VARIANTS = [("paper", 32), ("paper", 64), ("small", 32), ("small", 16), ("medium", 16)]
BUILDERS = {
    "encoder": lambda a, c, s: build_encoder(a, 7, c, s),
    "decoder": lambda a, c, s: build_decoder(a, 7, c, s),
    "generator": lambda a, c, s: build_generator(a, 7, c, s),
    "critic": lambda a, c, s: build_critic(a, c, s),
}


def _of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def _conv_signature(model: nn.Module, kind: type) -> list[tuple]:
    return [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.output_padding[0])
        for m in _of(model, kind)
    ]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- shapes and ranges -------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("arch,size", VARIANTS)
def test_shapes_and_ranges(arch, size, channels):
    torch.manual_seed(0)
    b, d = 3, 7
    x = torch.rand(b, channels, size, size) * 2 - 1
    z = torch.randn(b, d) * 3  # wide codes push the Tanh towards its bounds

    mean, logvar = build_encoder(arch, d, channels, size)(x)
    assert mean.shape == logvar.shape == (b, d)
    assert torch.isfinite(mean).all() and torch.isfinite(logvar).all()

    for build in (build_decoder, build_generator):
        image = build(arch, d, channels, size)(z)
        assert image.shape == (b, channels, size, size)
        assert image.min() >= -1 and image.max() <= 1

    critic = build_critic(arch, channels, size)
    assert critic(x).shape == (b,)
    assert critic(x[:1]).shape == (1,)  # a batch of one stays a vector


def test_registry_has_paper_and_small():
    assert {"paper", "small"} <= set(ARCHITECTURES.names())
    assert ARCHITECTURES.get("paper").widths(64) == [64, 128, 256, 512]
    assert ARCHITECTURES.get("paper").widths(32) == [64, 128, 256]
    assert (VAE_LATENT_DIM, GAN_LATENT_DIM) == (100, 128)


# -- the published layers ----------------------------------------------------------
def test_paper_64_encoder_layers():
    enc = build_encoder("paper", VAE_LATENT_DIM, 3, 64)
    assert _conv_signature(enc, nn.Conv2d) == [
        (3, 64, 4, 2, 1, 0), (64, 128, 4, 2, 1, 0), (128, 256, 4, 2, 1, 0), (256, 512, 4, 2, 1, 0)
    ]
    acts = _of(enc, nn.LeakyReLU)
    assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)
    (head,) = _of(enc, nn.Linear)
    assert (head.in_features, head.out_features) == (512 * 4 * 4, 2 * VAE_LATENT_DIM)
    assert not _of(enc, nn.BatchNorm2d) and not _of(enc, nn.LayerNorm)


def test_paper_64_decoder_layers():
    dec = build_decoder("paper", VAE_LATENT_DIM, 3, 64)
    (fc,) = _of(dec, nn.Linear)
    assert (fc.in_features, fc.out_features) == (VAE_LATENT_DIM, 512)
    assert _conv_signature(dec, nn.ConvTranspose2d) == [
        (512, 512, 4, 1, 0, 0),  # the 1x1 code to 4x4
        (512, 256, 4, 2, 1, 0), (256, 128, 4, 2, 1, 0), (128, 64, 4, 2, 1, 0), (64, 3, 4, 2, 1, 0),
    ]
    assert isinstance(dec[-1], nn.Tanh) and isinstance(dec[-2], nn.ConvTranspose2d)

    # feature maps: the reshape is to 1x1, then every transposed conv doubles the side
    h, sides = torch.randn(2, VAE_LATENT_DIM), []
    for layer in dec:
        h = layer(h)
        if isinstance(layer, (nn.Unflatten, nn.ConvTranspose2d)):
            sides.append(tuple(h.shape[1:]))
    assert sides == [(512, 1, 1), (512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), (3, 64, 64)]


def test_paper_64_generator_layers():
    gen = build_generator("paper", GAN_LATENT_DIM, 3, 64)
    (fc,) = _of(gen, nn.Linear)
    assert (fc.in_features, fc.out_features) == (GAN_LATENT_DIM, 512 * 4 * 4)
    unflatten = _of(gen, nn.Unflatten)[0]
    assert tuple(unflatten.unflattened_size) == (512, 4, 4)
    assert _conv_signature(gen, nn.ConvTranspose2d) == [
        (512, 256, 5, 2, 2, 1), (256, 128, 5, 2, 2, 1), (128, 64, 5, 2, 2, 1), (64, 3, 5, 2, 2, 1)
    ]
    assert len(_of(gen, nn.ReLU)) == 4 and isinstance(gen[-1], nn.Tanh)
    assert not _of(gen, nn.BatchNorm2d)  # as the reference code


def test_paper_64_critic_layers():
    critic = build_critic("paper", 3, 64)
    assert _conv_signature(critic, nn.Conv2d) == [
        (3, 64, 5, 2, 2, 0), (64, 128, 5, 2, 2, 0), (128, 256, 5, 2, 2, 0), (256, 512, 5, 2, 2, 0),
        (512, 1, 4, 1, 0, 0),  # 4x4 -> one score
    ]
    # layer norm after every stride-2 conv but the first, then LeakyReLU
    assert [tuple(m.normalized_shape) for m in _of(critic, nn.LayerNorm)] == [(128,), (256,), (512,)]
    acts = _of(critic, nn.LeakyReLU)
    assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)
    kinds = [type(m).__name__ for m in critic]
    assert kinds[:5] == ["Conv2d", "LeakyReLU", "Conv2d", "ChannelLayerNorm", "LeakyReLU"]
    assert not _of(critic, nn.Sigmoid)


def test_32_drops_the_widest_stage():
    def counts(size):
        return (
            _conv_signature(build_encoder("paper", VAE_LATENT_DIM, 3, size), nn.Conv2d),
            _conv_signature(build_decoder("paper", VAE_LATENT_DIM, 3, size), nn.ConvTranspose2d),
            _conv_signature(build_generator("paper", GAN_LATENT_DIM, 3, size), nn.ConvTranspose2d),
            _conv_signature(build_critic("paper", 3, size), nn.Conv2d),
        )

    big, small = counts(64), counts(32)
    assert [len(s) for s in small] == [len(s) - 1 for s in big]
    enc, dec, gen, critic = small
    assert enc == big[0][:3]  # 3 -> 64 -> 128 -> 256
    assert dec[0] == (512, 256, 4, 1, 0, 0) and dec[1:] == big[1][2:]
    assert gen == big[2][1:]  # starts at 256x4x4
    assert critic[:3] == big[3][:3] and critic[-1] == (256, 1, 4, 1, 0, 0)
    fc = _of(build_generator("paper", GAN_LATENT_DIM, 3, 32), nn.Linear)[0]
    assert fc.out_features == 256 * 4 * 4
    assert len(_of(build_critic("paper", 3, 32), nn.LayerNorm)) == 2


# Recorded from this implementation; they also match the reference code's
# layers (with the decoder's final LeakyReLU, which has no parameters).
PAPER_PARAMS = {
    64: {"encoder": 4_394_184, "decoder": 7_001_600, "generator": 5_354_179, "critic": 4_316_545},
    32: {"encoder": 1_477_832, "decoder": 2_807_296, "generator": 1_553_091, "critic": 1_034_113},
}


@pytest.mark.parametrize("size", [64, 32])
def test_paper_parameter_counts(size):
    counts = {
        "encoder": _n_params(build_encoder("paper", VAE_LATENT_DIM, 3, size)),
        "decoder": _n_params(build_decoder("paper", VAE_LATENT_DIM, 3, size)),
        "generator": _n_params(build_generator("paper", GAN_LATENT_DIM, 3, size)),
        "critic": _n_params(build_critic("paper", 3, size)),
    }
    print(f"paper {size}x{size} parameters: {counts}")
    assert counts == PAPER_PARAMS[size]


# -- the critic is per-sample ------------------------------------------------------
@pytest.mark.parametrize("arch,size", VARIANTS)
def test_critic_is_per_sample(arch, size):
    torch.manual_seed(0)
    critic = build_critic(arch, 3, size).train()
    assert not _of(critic, nn.modules.batchnorm._BatchNorm)
    x = torch.rand(4, 3, size, size) * 2 - 1
    before = critic(x)
    x2 = x.clone()
    x2[0] = torch.rand(3, size, size) * 2 - 1
    after = critic(x2)
    assert not torch.isclose(before[0], after[0])
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=1e-6)

    # the gradient of one score reaches its own input only (what the gradient penalty needs)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x)[1], x)
    assert grad[1].abs().sum() > 0
    assert grad[[0, 2, 3]].abs().max() == 0


# -- errors --------------------------------------------------------------------------
@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_unknown_arch(build):
    with pytest.raises(ValueError, match=r"model\.arch.*'huge'.*paper.*small"):
        build("huge", 3, 32)
    with pytest.raises(ValueError, match=r"model\.arch"):
        check_image_size("huge", 32)


@pytest.mark.parametrize(
    "arch,size", [("paper", 16), ("paper", 128), ("paper", 48), ("small", 24), ("small", 4), ("small", 128), ("small", True)]
)
def test_image_size_not_allowed(arch, size):
    with pytest.raises(ValueError, match=r"data\.image_size") as err:
        check_image_size(arch, size)
    assert ", ".join(map(str, ARCHITECTURES.get(arch).image_sizes)) in str(err.value)
    for build in BUILDERS.values():
        with pytest.raises(ValueError, match=r"data\.image_size"):
            build(arch, 3, size)


def test_allowed_sizes():
    assert ARCHITECTURES.get("paper").image_sizes == (32, 64)
    for arch in ARCHITECTURES.names():
        for size in ARCHITECTURES.get(arch).image_sizes:
            assert check_image_size(arch, size) is None


@pytest.mark.parametrize("latent_dim", [0, -3, 2.5, True])
def test_bad_latent_dim(latent_dim):
    for build in (build_encoder, build_decoder, build_generator):
        with pytest.raises(ValueError, match=r"model\.latent_dim"):
            build("small", latent_dim, 3, 32)


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_bad_channels(channels):
    for build in BUILDERS.values():
        with pytest.raises(ValueError, match=r"data\.channels"):
            build("small", channels, 32)


def test_bad_spec():
    with pytest.raises(ValueError, match="powers of two"):
        ArchSpec(base_width=8, max_width=64, image_sizes=(24,))
    with pytest.raises(ValueError, match="base_width"):
        ArchSpec(base_width=128, max_width=64, image_sizes=(32,))
