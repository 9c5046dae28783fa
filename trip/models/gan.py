"""WGAN (weight clipping) and WGAN-GP (gradient penalty) with a plug-in prior.

Learnable priors are trained with REINFORCE (paper Eq. 10): the generator's
codes are drawn from p_psi and detached, and psi follows
mean_i grad log p_psi(z_i) * (d_i - baseline), d_i the critic's score of G(z_i).

The codes of one training step -- its ``n_critic`` critic batches and its
generator batch -- are drawn from the prior in one call (a TRIP sample call
costs about the same for 32 codes as for 192) and handed out batch by batch.
They are i.i.d. draws from the prior as it is when they are used: the pool is
emptied after the generator batch and whenever the prior's parameters change,
so nothing crosses an update of the prior and REINFORCE stays unbiased.

The losses' statistics are detached 0-d tensors, never read back here: a read
would make the host wait for the device at every step (trip.train reads them
at log time). Under bf16 autocast the gradient penalty runs in float32.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from trip.priors import Prior
from trip.priors.base import StateStamp, no_autocast


def reinforce_surrogate(log_prob: Tensor, reward: Tensor) -> Tensor:
    """A scalar whose gradient is the REINFORCE estimate of grad E_p[reward] (to maximise).

    The paper's baseline is the batch mean of the rewards. That estimate's
    expectation is (l-1)/l times the true gradient for l samples, because each
    reward also enters its own baseline; rescaling by l/(l-1) gives the
    leave-one-out baseline, which is exactly unbiased.
    """
    count = reward.shape[0]
    if count < 2:
        raise ValueError("REINFORCE with a batch-mean baseline needs at least 2 samples")
    advantage = (reward - reward.mean()).detach() * (count / (count - 1))
    return (log_prob * advantage).mean()


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Gulrajani et al.: E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates, per-sample norms.

    In float32 and eagerly whatever the caller's autocast and torch.compile: the penalty is a
    gradient of a gradient, which bf16 would round coarsely and compiled graphs cannot differentiate.
    """
    real, fake = real.float(), fake.float()
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    with no_autocast(real.device), _eager(critic):
        (grad,) = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def _eager(module: nn.Module):
    """Run a module compiled in place (``nn.Module.compile``) eagerly; nothing for any other module."""
    if getattr(module, "_compiled_call_impl", None) is None:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


class WassersteinGAN(nn.Module):
    """Generator, critic and prior, with the losses of one training step each.

    ``variant`` is ``"wgan"`` (clip the critic's weights to [-clip, clip]) or
    ``"wgan_gp"`` (gradient penalty with weight ``gp_weight``). ``n_critic``,
    the critic steps per generator step, sizes the per-step draw of codes
    (n_critic + 1 batches); any value is correct, the right one wastes none.
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        prior: Prior,
        variant: str = "wgan_gp",
        clip: float = 0.01,
        gp_weight: float = 10.0,
        n_critic: int = 5,
    ):
        super().__init__()
        if variant not in ("wgan", "wgan_gp"):
            raise ValueError(f"variant must be 'wgan' or 'wgan_gp', got {variant!r}")
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 0:
            raise ValueError(f"n_critic must be an integer >= 0, got {n_critic!r}")
        self.generator, self.critic, self.prior = generator, critic, prior
        self.variant, self.clip, self.gp_weight, self.n_critic = variant, clip, gp_weight, n_critic
        self._pool: Tensor | None = None  # codes drawn for the current training step
        self._pool_stamp: StateStamp | None = None

    def codes(self, n: int) -> Tensor:
        """Prior samples, detached from psi: the generator never differentiates through them."""
        return self.prior.sample(n).detach()

    def step_codes(self, n: int, last: bool = False) -> Tensor:
        """``n`` codes for a loss of the current training step, from the step's pool.

        The pool is (re)drawn with ``(n_critic + 1) * n`` codes when it holds
        fewer than ``n`` or the prior has changed since it was drawn; ``last``
        (the generator batch) empties it after taking its codes.
        """
        pool = self._pool
        if pool is None or pool.shape[0] < n or not self._pool_stamp.current(self.prior):
            pool = self.codes((self.n_critic + 1) * n)
            self._pool_stamp = StateStamp(self.prior)
        taken, rest = pool[:n], pool[n:]
        self._pool = None if last or rest.shape[0] == 0 else rest
        return taken

    def critic_loss(self, real: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """E[D(fake)] - E[D(real)] (+ gamma * GP): minimising it widens the critic's gap."""
        with torch.no_grad():
            fake = self.generator(self.step_codes(real.shape[0]))
        real_score, fake_score = self.critic(real).mean(), self.critic(fake).mean()
        loss = fake_score - real_score
        stats = {"wasserstein": (real_score - fake_score).detach()}
        if self.variant == "wgan_gp":
            penalty = gradient_penalty(self.critic, real, fake)
            loss = loss + self.gp_weight * penalty
            stats["gp"] = penalty.detach()
        return loss, stats

    @torch.no_grad()
    def clip_critic(self) -> None:
        if self.variant == "wgan":
            for p in self.critic.parameters():
                p.clamp_(-self.clip, self.clip)

    def generator_and_prior_loss(self, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        """-E[D(G(z))] for the generator plus, for a learnable prior, -REINFORCE surrogate.

        One batch of codes serves both: the generator's gradient flows through
        G(z) only, the prior's through log p(z) only (the scores are detached).
        """
        z = self.step_codes(n, last=True)
        scores = self.critic(self.generator(z))
        loss = -scores.mean()
        stats = {"g_loss": loss.detach()}
        if self.prior.learnable:
            surrogate = reinforce_surrogate(self.prior.log_prob(z), scores.detach())
            loss = loss - surrogate
            stats["prior_surrogate"] = surrogate.detach()
        return loss, stats

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.generator(self.codes(n))
