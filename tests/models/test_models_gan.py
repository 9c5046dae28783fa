"""WGAN / WGAN-GP losses and the REINFORCE estimator for learnable priors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from trip.models.gan import WassersteinGAN, gradient_penalty, reinforce_surrogate
from trip.priors import NormalPrior, TRIPPrior


def _enumerate(probs: torch.Tensor, count: int):
    """Every ordered tuple of ``count`` i.i.d. categorical draws, with its probability."""
    for tup in itertools.product(range(len(probs)), repeat=count):
        idx = torch.tensor(tup)
        yield idx, probs[idx].prod()


def _exact_gradient(rewards: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """d/d logits of E_{k ~ softmax(logits)}[r_k] = p * (r - E[r]) (written out, no autograd)."""
    p = torch.softmax(logits, 0)
    return p * (rewards - (p * rewards).sum())


def _paper_raw_estimate(rewards: torch.Tensor, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The paper's estimator (Eq. 10) from its own formula: (1/l) sum_i grad log p(z_i) (d_i - mean_j d_j).

    The batch mean is the baseline and nothing is rescaled. For a categorical,
    grad_logits log p(k) = onehot(k) - softmax(logits): no surrogate, no autograd.
    """
    p = torch.softmax(logits, 0)
    d = rewards[idx]
    score = torch.nn.functional.one_hot(idx, len(logits)).to(p) - p  # (l, K)
    return (score * (d - d.mean())[:, None]).mean(0)


def _surrogate_estimate(rewards: torch.Tensor, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """What training uses: the gradient of ``reinforce_surrogate`` for one batch of draws."""
    logits = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(reinforce_surrogate(torch.log_softmax(logits, 0)[idx], rewards[idx]), logits)
    return g


@pytest.mark.parametrize("count", [2, 3, 4])
def test_reinforce_expectation_equals_exact_gradient(count):
    rewards = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    logits = torch.tensor([0.3, -0.2, 0.9], dtype=torch.float64)
    probs = torch.softmax(logits, 0)
    exact = _exact_gradient(rewards, logits)
    # The closed form agrees with autograd of E[r].
    leaf = logits.clone().requires_grad_()
    torch.testing.assert_close(torch.autograd.grad((torch.softmax(leaf, 0) * rewards).sum(), leaf)[0], exact)
    assert exact.abs().min() > 0.05  # a bias of a factor (l-1)/l is visible in every coordinate

    ours = sum(w * _surrogate_estimate(rewards, logits, idx) for idx, w in _enumerate(probs, count))
    raw = sum(w * _paper_raw_estimate(rewards, logits, idx) for idx, w in _enumerate(probs, count))
    # Ours (batch-mean baseline rescaled by l/(l-1), i.e. leave-one-out) is exactly unbiased.
    torch.testing.assert_close(ours, exact, rtol=1e-10, atol=1e-12)
    # The paper's raw estimator, computed from its own formula, is biased by exactly (l - 1) / l.
    torch.testing.assert_close(raw, exact * (count - 1) / count, rtol=1e-10, atol=1e-12)
    assert (raw - exact).abs().max() > 0.01 / count


def test_reinforce_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        reinforce_surrogate(torch.zeros(1), torch.zeros(1))


def test_gradient_penalty_of_a_linear_critic():
    w = torch.randn(3 * 4 * 4)
    critic = lambda x: x.flatten(1) @ w  # noqa: E731  gradient is w everywhere
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(gradient_penalty(critic, real, fake), (w.norm() - 1) ** 2)


class _Tiny(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.net = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.net(x.flatten(1)).squeeze(-1)


def test_wgan_clips_and_prior_gets_reinforce_gradient_only_when_learnable():
    gen = nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)))
    for learnable in (True, False):
        prior = TRIPPrior(4, 3, 2, learnable=learnable)
        gan = WassersteinGAN(gen, _Tiny(12, 1), prior, variant="wgan", clip=0.01)
        loss, stats = gan.critic_loss(torch.randn(8, 3, 2, 2))
        assert "gp" not in stats and torch.isfinite(loss)
        gan.clip_critic()
        assert all(p.abs().max() <= 0.01 for p in gan.critic.parameters())
        loss, stats = gan.generator_and_prior_loss(8)
        loss.backward()
        assert ("prior_surrogate" in stats) == learnable
        grads = [p.grad for p in prior.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads) if learnable else all(g is None for g in grads)


def test_wgan_gp_critic_loss_includes_penalty():
    gen = nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)))
    gan = WassersteinGAN(gen, _Tiny(12, 1), NormalPrior(4), variant="wgan_gp", gp_weight=10.0)
    loss, stats = gan.critic_loss(torch.randn(8, 3, 2, 2))
    assert stats["gp"] >= 0 and abs(loss.item() - (-stats["wasserstein"] + 10 * stats["gp"])) < 1e-4
    with pytest.raises(ValueError, match="variant"):
        WassersteinGAN(gen, _Tiny(12, 1), NormalPrior(4), variant="gan")


# -- the codes of a training step are drawn at once (issue 13) ---------------------------
class _CountingPrior(TRIPPrior):
    """A TRIP prior that counts its sample calls and the codes they drew."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def _sample(self, n, generator):
        self.calls.append(n)
        return super()._sample(n, generator)


def _gan_with_counting_prior(n_critic=3, learnable=True):
    gen = nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)))
    prior = _CountingPrior(4, 3, 2, learnable=learnable, generator=torch.Generator().manual_seed(0))
    return WassersteinGAN(gen, _Tiny(12, 1), prior, variant="wgan_gp", n_critic=n_critic), prior


@pytest.mark.parametrize("learnable", [True, False])
def test_one_prior_draw_serves_every_batch_of_a_training_step(learnable):
    gan, prior = _gan_with_counting_prior(n_critic=3, learnable=learnable)
    used = []
    original = gan.step_codes
    gan.step_codes = lambda n, last=False: used.append(original(n, last)) or used[-1]
    for _ in range(2):  # two training steps: critic x3, then the generator
        for _ in range(3):
            gan.critic_loss(torch.randn(8, 3, 2, 2))
        gan.generator_and_prior_loss(8)
        assert gan._pool is None  # emptied by the generator batch: nothing crosses a step
    assert prior.calls == [32, 32]  # (n_critic + 1) * batch, once per step
    step = torch.cat(used[:4])
    assert len(torch.unique(step, dim=0)) == 32  # distinct draws, none handed out twice


def test_codes_are_redrawn_when_the_prior_changes_mid_step():
    gan, prior = _gan_with_counting_prior(n_critic=3)
    gan.critic_loss(torch.randn(8, 3, 2, 2))
    with torch.no_grad():
        prior.loc.add_(0.5)  # any in-place update of the prior
    gan.critic_loss(torch.randn(8, 3, 2, 2))
    assert prior.calls == [32, 32]
    gan.generator_and_prior_loss(8)  # the fresh pool still serves the generator batch
    assert prior.calls == [32, 32]


def test_sample_and_codes_draw_fresh_codes_outside_the_pool():
    gan, prior = _gan_with_counting_prior(n_critic=3)
    gan.critic_loss(torch.randn(8, 3, 2, 2))
    pool = gan._pool
    assert gan.sample(5).shape == (5, 3, 2, 2) and gan.codes(6).shape == (6, 4)
    assert gan._pool is pool and prior.calls == [32, 5, 6]


def test_n_critic_is_validated():
    gen = nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)))
    with pytest.raises(ValueError, match="n_critic"):
        WassersteinGAN(gen, _Tiny(12, 1), NormalPrior(4), n_critic=-1)
