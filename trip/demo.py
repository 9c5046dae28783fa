"""A small, self-contained demo of the priors (the README's first command runs it).

Codes are drawn from a "teacher" TRIP with a strongly coupled ring: N^d modes
with non-uniform, dependent weights. A K-component GMM and a TRIP are fitted
to them by maximum likelihood, with N(0, I) as the parameter-free baseline.
The demo prints held-out log-likelihoods (the teacher's own is the ceiling)
and saves the exact 2-D marginal densities of the first two dimensions.

    python -m trip.demo --help
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from trip.figures import plot_prior_density
from trip.priors import GMMPrior, NormalPrior, Prior, TRIPPrior


def make_teacher(dim: int, n_components: int, generator: torch.Generator) -> TRIPPrior:
    """A TRIP with well-separated lattice means and sparse (strongly coupled) cores."""
    cores = torch.rand(dim, n_components, 3, 3, generator=generator) ** 8 + 1e-3
    means = torch.linspace(-3, 3, n_components).expand(dim, n_components)
    stds = torch.full((dim, n_components), 0.35)
    return TRIPPrior.from_parameters(cores, means, stds, learnable=False)


def fit(prior: Prior, codes: torch.Tensor, steps: int, lr: float, name: str) -> list[float]:
    """Maximise the mean log-likelihood of ``codes`` with Adam; return the loss curve."""
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    curve = []
    for _ in tqdm(range(steps), desc=f"fit {name}", leave=False, disable=None):
        batch = codes[torch.randint(0, codes.shape[0], (256,))]
        loss = -prior.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=8, help="latent dimension d")
    parser.add_argument("--components", type=int, default=4, help="components per dimension N")
    parser.add_argument("--core-size", type=int, default=4, help="TRIP core size m of the fitted prior")
    parser.add_argument("--gmm-components", type=int, default=16, help="components of the full-space GMM")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per prior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/demo"), help="where the figure goes")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    teacher = make_teacher(args.dim, args.components, g)
    train, test = teacher.sample(20000, generator=g), teacher.sample(5000, generator=g)
    print(f"teacher: TRIP with {args.components}^{args.dim} = {args.components ** args.dim:,} modes")

    students: dict[str, Prior] = {
        "N(0, I)": NormalPrior(args.dim),
        f"GMM (K={args.gmm_components})": GMMPrior(args.dim, args.gmm_components, mean_range=(-3, 3), init_std=1.0, generator=g),
        f"TRIP (N={args.components}, m={args.core_size})": TRIPPrior(
            args.dim, args.components, args.core_size, mean_range=(-3, 3), init_std=0.5, generator=g
        ),
    }
    trip = students[f"TRIP (N={args.components}, m={args.core_size})"]
    trip.fit_marginals(train[:5000], seed=args.seed)  # the paper's VAE-TRIP initialisation
    print(f"{'prior':28s} {'params':>8s} {'test log-lik / dim':>20s} {'fit time':>9s}")
    for name, prior in students.items():
        start = time.perf_counter()
        if any(True for _ in prior.parameters()):
            fit(prior, train, args.steps, lr=0.05, name=name)
        with torch.no_grad():
            ll = prior.log_prob(test).mean().item() / args.dim
        n_params = sum(p.numel() for p in prior.parameters())
        print(f"{name:28s} {n_params:8d} {ll:20.4f} {time.perf_counter() - start:8.1f}s")
    with torch.no_grad():
        print(f"{'teacher (ceiling)':28s} {'':8s} {teacher.log_prob(test).mean().item() / args.dim:20.4f}")
    figure = args.out / "prior_densities.png"
    plot_prior_density({"teacher": teacher, **students}, figure, lim=4.5, title="exact marginals p(z_1, z_2)")
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
