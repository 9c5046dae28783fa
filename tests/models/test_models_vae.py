"""The VAE's bounds against exact log-likelihoods of linear-Gaussian models.

With a linear decoder p(x | z) = N(Wz + b, s^2 I) and a prior that is a
mixture of diagonal Gaussians (N(0, I), a GMM, or TRIP with its 9 lattice
nodes enumerated), log p(x) = log sum_c pi_c N(x | W mu_c + b, W S_c W^T + s^2 I)
in closed form, so ELBO <= IWAE(k) <= log p(x) can be checked exactly.
"""

from __future__ import annotations

import itertools
import math
from functools import reduce

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from torch import nn

from trip.models.likelihoods import Bernoulli, DiscretizedGaussian, Gaussian
from trip.models.vae import VAE, bits_per_dim, kl_to_standard_normal, log_q_from_noise
from trip.priors import GMMPrior, NormalPrior, Prior, TRIPPrior

OBS, LATENT, NOISE = 4, 2, 0.5  # observed size, latent size, decoder std


# -- the linear-Gaussian model -----------------------------------------------------------
class AffineEncoder(nn.Module):
    """q(z | x) = N(A x + c, diag(exp(logvar))), a Gaussian encoder with known parameters."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, logvar: torch.Tensor):
        super().__init__()
        self.A, self.c, self.logvar = (nn.Parameter(t.clone()) for t in (A, c, logvar))

    def forward(self, x):
        mean = x @ self.A.T + self.c
        return mean, self.logvar.expand_as(mean)


class LinearGaussian:
    """W with orthogonal columns, so the N(0, I)-prior posterior is a diagonal Gaussian."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(OBS, LATENT, generator=g, dtype=torch.float64))
        self.W = basis * torch.tensor([1.5, 0.7], dtype=torch.float64)
        self.b = torch.randn(OBS, generator=g, dtype=torch.float64)
        self.generator = g

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, c, logvar) of the exact posterior under N(0, I): a diagonal Gaussian here."""
        var = 1 / (1 + (self.W**2).sum(0) / NOISE**2)
        A = var[:, None] * self.W.T / NOISE**2
        return A, -A @ self.b, var.log()

    def vae(self, prior: Prior, A, c, logvar) -> VAE:
        decoder = nn.Linear(LATENT, OBS).double()
        with torch.no_grad():
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
        likelihood = Gaussian(std=NOISE).double()
        with torch.no_grad():
            likelihood.log_scale.fill_(math.log(NOISE))  # NOISE to float64 precision
        return VAE(AffineEncoder(A, c, logvar), decoder, prior, likelihood)

    def sample(self, prior: Prior, n: int) -> torch.Tensor:
        z = prior.sample(n, generator=self.generator)
        noise = torch.randn(n, OBS, generator=self.generator, dtype=torch.float64)
        return z @ self.W.T + self.b + NOISE * noise

    def log_px(self, x, log_weights, means, stds) -> np.ndarray:
        """log p(x) for a prior sum_c w_c N(means_c, diag(stds_c^2)), by scipy."""
        W, b, x = self.W.numpy(), self.b.numpy(), x.numpy()
        per_component = [
            lw + multivariate_normal(W @ mu + b, W @ np.diag(sd**2) @ W.T + NOISE**2 * np.eye(OBS)).logpdf(x)
            for lw, mu, sd in zip(log_weights, means, stds)
        ]
        return logsumexp(np.stack(per_component), axis=0)


def mixture_of(prior: Prior):
    """The prior as an explicit list of diagonal components (log-weights, means, stds)."""
    if isinstance(prior, NormalPrior):
        return np.zeros(1), np.zeros((1, LATENT)), np.ones((1, LATENT))
    if isinstance(prior, GMMPrior):
        return (
            torch.log_softmax(prior.logits, -1).detach().numpy(),
            prior.means.detach().numpy(),
            prior.stds.detach().numpy(),
        )
    cores, means, stds = (t.detach().numpy() for t in (prior.cores, prior.means, prior.stds))
    nodes = list(itertools.product(range(prior.n_components), repeat=prior.dim))
    # p(s) = Tr(Q_1[s_1] ... Q_d[s_d]) / (the sum over all N^d nodes)
    weights = np.array([np.trace(reduce(np.matmul, [cores[k, j] for k, j in enumerate(s)])) for s in nodes])
    columns = np.arange(prior.dim)
    return (
        np.log(weights / weights.sum()),
        np.stack([means[columns, s] for s in nodes]),
        np.stack([stds[columns, s] for s in nodes]),
    )


def tiny_trip() -> TRIPPrior:
    g = torch.Generator().manual_seed(5)
    cores = torch.rand(LATENT, 3, 2, 2, generator=g, dtype=torch.float64) + 0.05
    means = torch.randn(LATENT, 3, generator=g, dtype=torch.float64) * 1.5
    stds = 0.2 + 0.6 * torch.rand(LATENT, 3, generator=g, dtype=torch.float64)
    return TRIPPrior.from_parameters(cores, means, stds, learnable=False)


def tiny_gmm() -> GMMPrior:
    g = torch.Generator().manual_seed(6)
    prior = GMMPrior(LATENT, n_components=4, learnable=False, generator=g).double()
    with torch.no_grad():
        prior.loc.mul_(2.0)
        prior.log_scale.fill_(math.log(0.5))
        prior.logits.copy_(torch.tensor([0.0, 1.0, -0.5, 0.3]))
    return prior


def standard_normal_as_gmm() -> GMMPrior:
    """N(0, I) in a class that is not NormalPrior, so the VAE takes the Monte Carlo KL."""
    prior = GMMPrior(LATENT, n_components=1, learnable=False).double()
    with torch.no_grad():
        prior.loc.zero_()
        prior.log_scale.zero_()
    return prior


PRIORS = {
    "normal": lambda: NormalPrior(LATENT).double(),
    "gmm": tiny_gmm,
    "trip": tiny_trip,
}


def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    """Mean over replicates (rows) of the mean over examples, and its standard error."""
    per_replicate = values.mean(1)
    return per_replicate.mean().item(), per_replicate.std().item() / math.sqrt(len(per_replicate))


# -- bounds against the exact log-likelihood --------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRIORS))
def test_elbo_below_iwae_below_exact_log_likelihood(name):
    model = LinearGaussian()
    prior = PRIORS[name]()
    A, c, logvar = model.posterior()
    vae = model.vae(prior, A + 0.15, c - 0.3, logvar + 0.8)  # a deliberately imperfect q
    examples, replicates = 8, 200
    x = model.sample(prior, examples)
    log_px = torch.from_numpy(model.log_px(x, *mixture_of(prior)))
    x_rep = x.repeat(replicates, 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bounds = {"elbo": vae.elbo(x_rep, generator=g).view(replicates, examples)}
        for k in (5, 50):
            bounds[k] = vae.iwae(x_rep, k=k, generator=g).view(replicates, examples)
        converged = vae.iwae(x.repeat(20, 1), k=2000, chunk=8192, generator=g).view(20, examples)

    # Each step up the chain gains with a margin of many standard errors...
    for low, high in (("elbo", 5), (5, 50)):
        gain, error = mean_and_error(bounds[high] - bounds[low])
        assert gain > 5 * error, (name, low, high, gain, error)
    slack, error = mean_and_error(log_px - bounds[5])
    assert slack > 5 * error, (name, slack, error)
    slack, error = mean_and_error(log_px - bounds[50])
    assert slack > -3 * error, (name, slack, error)
    # ...and the bound closes on the exact value: no constant is missing anywhere.
    gap, error = mean_and_error(log_px - converged)
    assert abs(gap) < max(4 * error, 1e-3), (name, gap, error)
    assert gap < 0.02


def test_exact_posterior_makes_every_bound_tight():
    model = LinearGaussian(seed=3)
    x = model.sample(NormalPrior(LATENT).double(), 6)
    log_px = torch.from_numpy(model.log_px(x, *mixture_of(NormalPrior(LATENT))))
    vae = model.vae(NormalPrior(LATENT).double(), *model.posterior())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        # Every importance weight equals p(x): IWAE is exact for any k, even k = 1.
        for k in (1, 7):
            torch.testing.assert_close(vae.iwae(x, k=k, generator=g), log_px, rtol=0, atol=1e-10)
        # The Monte Carlo KL form has zero variance too.
        mc = model.vae(standard_normal_as_gmm(), *model.posterior())
        torch.testing.assert_close(mc.elbo(x, generator=g), log_px, rtol=0, atol=1e-10)
        # The closed-form KL form is unbiased: its mean over many samples is log p(x).
        elbo = vae.elbo(x.repeat(4000, 1), generator=g).view(4000, -1)
    gap, error = mean_and_error(log_px - elbo)
    assert abs(gap) < 4 * error and error < 0.01


# -- KL estimators ------------------------------------------------------------------------
def test_closed_form_kl_is_the_mean_of_the_monte_carlo_kl():
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(3, LATENT, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, LATENT, generator=g, dtype=torch.float64)
    noise = torch.randn(100_000, 3, LATENT, generator=g, dtype=torch.float64)
    z = mean + torch.exp(0.5 * logvar) * noise
    log_p = NormalPrior(LATENT).double().log_prob(z.reshape(-1, LATENT)).view(-1, 3)
    mc = log_q_from_noise(noise, logvar) - log_p
    error = mc.std(0) / math.sqrt(len(mc))
    assert ((mc.mean(0) - kl_to_standard_normal(mean, logvar)).abs() < 4 * error).all()
    # log_q_from_noise is log N(z | mean, exp(logvar)) evaluated at z.
    reference = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z[:5]).sum(-1)
    torch.testing.assert_close(log_q_from_noise(noise[:5], logvar), reference)


def test_normal_prior_uses_closed_form_kl_with_the_same_expectation():
    model = LinearGaussian(seed=7)
    A, c, logvar = model.posterior()
    closed = model.vae(NormalPrior(LATENT).double(), A - 0.2, c, logvar - 0.5)
    sampled = model.vae(standard_normal_as_gmm(), A - 0.2, c, logvar - 0.5)
    assert closed.analytic_kl and not sampled.analytic_kl
    x = model.sample(NormalPrior(LATENT).double(), 4).repeat(5000, 1)
    with torch.no_grad():
        recon_c, kl_c = closed.elbo_terms(x, generator=torch.Generator().manual_seed(0))
        recon_s, kl_s = sampled.elbo_terms(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(recon_c, recon_s)  # same noise, same codes
    diff = (kl_s - kl_c).view(5000, 4)
    gap, error = mean_and_error(diff)
    assert abs(gap) < 4 * error
    assert kl_c.view(5000, 4).std(0).max() < 1e-12 < diff.std(0).min()  # closed form: no variance


# -- IWAE implementation --------------------------------------------------------------------
def slow_iwae(vae: VAE, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """One example and one sample at a time, with the same noise as ``VAE.iwae``."""
    mean, logvar = vae.encode(x)
    noise = torch.randn((len(x), k, LATENT), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    out = []
    for i in range(len(x)):
        q = torch.distributions.Normal(mean[i], torch.exp(0.5 * logvar[i]))
        log_w = []
        for j in range(k):
            z = (mean[i] + torch.exp(0.5 * logvar[i]) * noise[i, j])[None]
            log_px_z = vae.likelihood.log_prob(x[i : i + 1], vae.decoder(z))
            log_w.append(log_px_z + vae.prior.log_prob(z) - q.log_prob(z[0]).sum())
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return torch.stack(out)


def test_iwae_matches_a_per_example_loop_and_ignores_chunking():
    model = LinearGaussian(seed=8)
    A, c, logvar = model.posterior()
    vae = model.vae(tiny_trip(), A, c + 0.4, logvar + 0.5)
    x = model.sample(tiny_trip(), 3)
    with torch.no_grad():
        full = vae.iwae(x, k=5, chunk=None, generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(full, slow_iwae(vae, x, 5, seed=9), rtol=0, atol=1e-12)
        for chunk in (1, 4, 7, 15, 100):
            chunked = vae.iwae(x, k=5, chunk=chunk, generator=torch.Generator().manual_seed(9))
            torch.testing.assert_close(chunked, full, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        vae.iwae(x, k=0)


# -- training on images --------------------------------------------------------------------
class ImageEncoder(nn.Module):
    def __init__(self, channels: int, latent: int):
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(channels * 16, 16), nn.ReLU(), nn.Linear(16, 2 * latent)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


def image_vae(prior: Prior, likelihood=None, channels: int = 2) -> VAE:
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(prior.dim, channels * 16), nn.Tanh(), nn.Unflatten(1, (channels, 4, 4)))
    likelihood = DiscretizedGaussian(channels=channels) if likelihood is None else likelihood
    return VAE(ImageEncoder(channels, prior.dim), decoder, prior, likelihood)


def images(n: int = 6, channels: int = 2) -> torch.Tensor:
    levels = torch.randint(0, 256, (n, channels, 4, 4), generator=torch.Generator().manual_seed(0))
    return levels / 127.5 - 1


@pytest.mark.parametrize(
    "prior",
    [NormalPrior(3), GMMPrior(3, 4), TRIPPrior(3, 4, 2), TRIPPrior(3, 4, 2, learnable=False)],
    ids=["normal", "gmm", "trip", "trip-fixed"],
)
def test_loss_is_finite_and_trains_every_part(prior):
    vae = image_vae(prior)
    loss, stats = vae.loss(images())
    assert torch.isfinite(loss) and loss.dim() == 0
    # detached 0-d tensors, not floats: the training step reads nothing back from the device
    assert set(stats) >= {"elbo", "recon", "kl"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    stats = {k: v.item() for k, v in stats.items()}
    assert stats["elbo"] == pytest.approx(stats["recon"] - stats["kl"], abs=1e-3)
    assert loss.item() == pytest.approx(-stats["elbo"])
    loss.backward()
    for part in (vae.encoder, vae.decoder, vae.likelihood):
        for name, p in part.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for name, p in vae.prior.named_parameters():
        if prior.learnable:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_discrete_elbo_is_a_log_probability_in_nats():
    vae = image_vae(TRIPPrior(3, 4, 2))
    with torch.no_grad():
        recon, kl = vae.elbo_terms(images())
        bound = vae.iwae(images(), k=10)
    assert (recon <= 0).all()  # a log-mass of discrete pixels, never a density above 1
    assert bound.shape == (6,) and torch.isfinite(bound).all()


# -- sampling and encoder means ----------------------------------------------------------------
def test_sample_decodes_prior_samples_to_expected_images():
    vae = image_vae(TRIPPrior(3, 4, 2))
    out = vae.sample(5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 2, 4, 4) and not out.requires_grad
    assert out.abs().max() <= 1
    again = vae.sample(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)
    bernoulli = image_vae(NormalPrior(3), likelihood=Bernoulli())
    assert ((bernoulli.sample(4) > 0) & (bernoulli.sample(4) < 1)).all()  # sigmoid of Tanh logits


def test_encode_means_accepts_tensors_datasets_and_loaders_and_restores_mode():
    vae = image_vae(TRIPPrior(3, 4, 2))
    vae.encoder.net.insert(2, nn.BatchNorm1d(16))
    vae.train()
    x = images(10)
    running = vae.encoder.net[2].running_mean.clone()
    with torch.no_grad():
        vae.encoder.eval()
        want = vae.encode(x)[0]
        vae.encoder.train()
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(10))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    for data in (x, dataset, loader, [x[:7], x[7:]]):
        torch.testing.assert_close(vae.encode_means(data, batch_size=3), want)
    assert vae.encoder.training
    torch.testing.assert_close(vae.encoder.net[2].running_mean, running)
    vae.prior.fit_marginals(vae.encode_means(x, batch_size=4))  # the paper's VAE-TRIP initialisation
    with pytest.raises(ValueError, match="no images"):
        vae.encode_means([])


# -- latent size checks ----------------------------------------------------------------------
def test_latent_size_mismatch_raises_at_construction():
    encoder = ImageEncoder(2, 3)
    decoder = nn.Sequential(nn.Linear(3, 32), nn.Unflatten(1, (2, 4, 4)))
    with pytest.raises(ValueError, match=r"decoder fails.*\(TRIPPrior\) has dim=4, and model.latent_dim"):
        VAE(encoder, decoder, TRIPPrior(4, 3, 2), DiscretizedGaussian(channels=2))
    with pytest.raises(ValueError, match=r"model.latent_dim=5; the prior \(NormalPrior\) has dim=3"):
        VAE(encoder, decoder, NormalPrior(3), DiscretizedGaussian(channels=2), latent_dim=5)
    encoder.latent_dim = 2
    with pytest.raises(ValueError, match=r"model.latent_dim=2.*prior"):
        VAE(encoder, decoder, NormalPrior(3), DiscretizedGaussian(channels=2))


def test_encoder_output_of_the_wrong_size_raises():
    # The decoder accepts any size, so only the encoder's output shows the mismatch.
    vae = VAE(ImageEncoder(2, 4), nn.Identity(), NormalPrior(3), Gaussian())
    with pytest.raises(ValueError, match=r"encoder gives codes of shape \(6, 4\).*model.latent_dim"):
        vae.loss(images())


def test_bits_per_dim_of_a_uniform_8_bit_model_is_8():
    dims = 3 * 4 * 4
    uniform = torch.full((5,), -dims * math.log(256.0))  # log-mass of 1/256 per value
    torch.testing.assert_close(bits_per_dim(uniform, dims), torch.full((5,), 8.0))
    assert bits_per_dim(-dims * math.log(2.0), dims) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dims must be an integer >= 1"):
        bits_per_dim(uniform, 0)


def test_bits_per_dim_of_the_discretised_likelihood_is_a_bit_count():
    """A decoder sharp on the data puts nearly all mass in the right bins: close to 0 bits, never below."""
    likelihood = DiscretizedGaussian(channels=2, init_std=1e-3, learnable=False)
    x = images()
    bpd = bits_per_dim(likelihood.log_prob(x, x), x[0].numel())
    assert ((bpd >= 0) & (bpd < 1e-3)).all()
