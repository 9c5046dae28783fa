"""The conditional VAEs: Eq. 14 and its reduction without labels, the CVAE's label code, generation."""

from __future__ import annotations

import copy

import pytest
import torch

from trip.config import load_config
from trip.models import MODELS, VAE, attribute_count
from trip.models.conditional import ConditionalVAE, ConditionalVAETRIP, label_code, unknown_code
from trip.models.vae import log_q_from_noise

N_ATTRIBUTES = 3


def _cfg(model: str, **sections):
    prior = {"name": "trip" if model == "vae_trip_cond" else "normal", "n_components": 3, "core_size": 2}
    raw = {"data": {"image_size": 16}, "model": {"name": model, "latent_dim": 4}, "prior": prior, **sections}
    return load_config(raw)


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODELS.get(name)(_cfg(name), 3, N_ATTRIBUTES)


def _batch(n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 16, 16), generator=g).float() / 127.5 - 1
    y = torch.randint(0, 2, (n, N_ATTRIBUTES), generator=g)
    observed = torch.rand(n, N_ATTRIBUTES, generator=g) < 0.5
    return x, y, observed


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_labels_hidden_gives_the_unconditional_vae_trip_objective():
    model = _model("vae_trip_cond")
    x, y, _ = _batch()
    hidden = torch.zeros_like(y, dtype=torch.bool)
    loss, stats = model.loss(x, y, hidden, generator=_gen())
    plain, plain_stats = VAE.loss(model, x, generator=_gen())  # VAE-TRIP with the latent marginal p(z)
    torch.testing.assert_close(loss, plain)
    assert stats["label"] == 0.0
    assert stats["kl"].item() == pytest.approx(plain_stats["kl"].item(), rel=1e-6)


def test_loss_is_minus_eq14_with_the_priors_attribute_term():
    model = _model("vae_trip_cond")
    x, y, observed = _batch()
    loss, stats = model.loss(x, y, observed, generator=_gen())
    mean, logvar = model.encode(x)
    noise = torch.randn(mean.shape, generator=_gen())
    z = mean + torch.exp(0.5 * logvar) * noise
    recon = model.likelihood.log_prob(x, model.decode(z))
    label = model.prior.attribute_log_prob(z, y, observed)  # log p(y_ob | z), computed the prior's own way
    kl = log_q_from_noise(noise, logvar) - model.prior.log_prob(z)
    torch.testing.assert_close(loss, -(recon + label - kl).mean())
    assert stats["label"].item() == pytest.approx(label.mean().item(), abs=1e-4) and stats["label"] < 0


def test_observed_labels_train_the_attribute_cores():
    model = _model("vae_trip_cond")
    x, y, observed = _batch()
    model.loss(x, y, observed, generator=_gen())[0].backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in model.prior.attribute_log_cores)


def test_vae_trip_cond_generation_follows_the_prior_given_the_labels():
    model = _model("vae_trip_cond").eval()
    y = torch.tensor([[1, 0, 1]] * 4)
    observed = torch.tensor([True, False, True]).expand(4, -1)
    images = model.sample_given(y, observed, _gen())
    z = model.prior.sample_given_attributes(y, observed, _gen())
    torch.testing.assert_close(images, model.likelihood.mean(model.decode(z)))
    assert images.shape == (4, 3, 16, 16) and images.abs().max() <= 1


def test_label_code_one_hot_with_an_unknown_slot():
    y = torch.tensor([[1, 0], [0, 1]])
    observed = torch.tensor([[True, False], [False, True]])
    expected = torch.tensor([[0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 1, 0]], dtype=torch.float)
    torch.testing.assert_close(label_code(y, observed, [2, 2]), expected)
    torch.testing.assert_close(unknown_code(1, [2, 2]), torch.tensor([[0.0, 0, 1, 0, 0, 1]]))
    # hidden values are never read: garbage there changes nothing
    torch.testing.assert_close(label_code(torch.tensor([[1, 5], [9, 1]]), observed, [2, 2]), expected)


def test_cvae_conditions_encoder_and_decoder_on_the_labels():
    model = _model("cvae").eval()
    x, y, observed = _batch()
    code = label_code(y, observed, model.attribute_sizes)
    other = label_code(1 - y, torch.ones_like(observed), model.attribute_sizes)
    z = torch.randn(5, 4, generator=_gen())
    assert not torch.allclose(model.decode(z, code), model.decode(z, other))
    assert not torch.allclose(model.encode(x, code)[0], model.encode(x, other)[0])


def test_cvae_without_labels_means_every_label_unknown():
    model = _model("cvae")
    x, y, _ = _batch()
    hidden = torch.zeros_like(y, dtype=torch.bool)
    a, stats = model.loss(x, y, hidden, generator=_gen())
    b, _ = model.loss(x, generator=_gen())
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(VAE.loss(model, x, generator=_gen())[0], b)  # the inherited ELBO agrees
    assert set(stats) == {"elbo", "recon", "kl"}
    model.eval()
    torch.testing.assert_close(model.sample_given(y, hidden, _gen()), model.sample(5, _gen()))


def test_builders_take_the_attribute_count_from_data_or_config():
    assert attribute_count(_cfg("cvae")) == 9  # shapes has nine
    assert attribute_count(_cfg("cvae", labels={"attributes": ["square", "warm"]})) == 2
    torch.manual_seed(0)
    built = MODELS.get("cvae")(_cfg("cvae"), 3)
    assert isinstance(built, ConditionalVAE) and len(built.attribute_sizes) == 9
    trip = _model("vae_trip_cond")
    assert isinstance(trip, ConditionalVAETRIP) and trip.prior.attribute_sizes == (2,) * N_ATTRIBUTES
    cifar = load_config({"data": {"name": "cifar10"}, "model": {"name": "cvae"}})
    with pytest.raises(ValueError, match="labels.attributes"):
        attribute_count(cifar)


def test_vae_trip_cond_needs_the_joint_prior():
    from trip.models import prior_from_config

    cfg = _cfg("vae_trip_cond")
    model = _model("vae_trip_cond")
    with pytest.raises(ValueError, match="JointTRIPPrior"):
        ConditionalVAETRIP(model.encoder, model.decoder, prior_from_config(cfg), model.likelihood)


@pytest.mark.parametrize("name", ["vae_trip_cond", "cvae"])
def test_reconstruct_decodes_the_posterior_mean(name):
    model = _model(name).eval()
    x, y, observed = _batch()
    out = model.reconstruct(x, y, observed)
    code = label_code(y, observed, model.attribute_sizes) if name == "cvae" else None
    args = () if code is None else (code,)
    torch.testing.assert_close(out, model.likelihood.mean(model.decode(model.encode(x, *args)[0], *args)))


def test_label_term_is_the_rings_own_ratio_exact_in_float32_for_far_codes():
    """log p(y_ob | z) is one ratio inside the ring. As a difference of two float32 log-densities of about
    -28,000 nats each (codes at +-40), it would be off by about 1e-3 nats."""
    model = _model("vae_trip_cond")
    x, y, observed = _batch()
    far = torch.tensor([40.0, -40.0, 40.0, -40.0]).expand(x.shape[0], -1)
    model.encode = lambda images: (far, torch.full_like(far, -60.0))  # z = mean + 1e-13 noise = far in float32
    _, label, _ = model.conditional_terms(x, y, observed, _gen())
    exact = copy.deepcopy(model.prior).double().attribute_log_prob(far.double(), y, observed)
    torch.testing.assert_close(label.double(), exact, rtol=0, atol=1e-5)
    difference = model.prior.joint_log_prob(far, y, observed) - model.prior.log_prob(far)
    assert (difference.double() - exact).abs().max() > 1e-4  # what the test tells apart
