"""Throughput of the TRIP prior: codes/s for log_prob forward, forward+backward and sampling.

    python benchmarks/bench_priors.py                 # CPU, and CUDA when present
    python benchmarks/bench_priors.py --device cpu --batch 512 --repeats 5

Not a test: numbers depend on the machine. The README's benchmark section
records what was measured, with the machine named.

Shared CPUs drift by tens of percent from minute to minute, so each shape is
also timed with a *baseline* in the same run: the algorithm of the paper's
public code as the issue describes it (a sequential chain over dimensions that
materialises the (B, N, m, m) weighted cores and adds 1e-10 to densities),
written here from that description. Its ratio is the stable figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trip.priors import TRIPPrior

SHAPES = [(100, 10, 20), (128, 10, 40), (64, 10, 4)]  # (d, N, m)
# Public reference implementation, batch 512, on the project's 2-core CPU (issue #2).
REFERENCE_SECONDS = {(128, 10, 40): {"forward": 0.5, "forward+backward": 1.5}, (100, 10, 20): {"forward": 0.04}}


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def baseline_log_prob(prior: TRIPPrior, z: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Sequential ring contraction with per-dimension (B, N, m, m) weighted cores."""
    cores = prior.cores
    density = prior.component_log_densities(z).exp() + eps  # (B, d, N)
    batch, m = z.shape[0], prior.core_size
    chain = torch.eye(m, dtype=z.dtype, device=z.device).expand(batch, m, m)
    norm = torch.eye(m, dtype=z.dtype, device=z.device)
    log_p = torch.zeros(batch, dtype=z.dtype, device=z.device)
    for k in range(prior.dim):
        weighted = (cores[k][None] * density[:, k, :, None, None]).sum(1)  # (B, m, m)
        chain = torch.bmm(chain, weighted)
        norm = norm @ cores[k].sum(0)
        scale = norm.sum()
        chain, norm = chain / scale, norm / scale
        mass = chain.sum((-2, -1))
        log_p = log_p + torch.log(mass)
        chain = chain / mass[:, None, None]
    trace = torch.diagonal(chain, dim1=-2, dim2=-1).sum(-1)
    return log_p + torch.log(trace / torch.trace(norm))


def bench_shape(shape, device, dtype, batch: int, repeats: int) -> dict:
    d, n, m = shape
    g = torch.Generator().manual_seed(0)
    prior = TRIPPrior(d, n, m, generator=g).to(device=device, dtype=dtype)
    z = torch.randn(batch, d, generator=g).to(device=device, dtype=dtype)

    def forward():
        with torch.no_grad():
            prior.log_prob(z)

    def forward_backward(log_prob=prior.log_prob):
        prior.zero_grad(set_to_none=True)
        zz = z.clone().requires_grad_()
        log_prob(zz).sum().backward()

    def baseline_forward():
        with torch.no_grad():
            baseline_log_prob(prior, z)

    seconds = {
        "forward": _timed(forward, device, repeats),
        "forward+backward": _timed(forward_backward, device, repeats),
        "sample": _timed(lambda: prior.sample(batch), device, repeats),
    }
    baseline = {
        "forward": _timed(baseline_forward, device, repeats),
        "forward+backward": _timed(lambda: forward_backward(lambda zz: baseline_log_prob(prior, zz)), device, repeats),
    }
    return {
        "shape": shape,
        "seconds": seconds,
        "baseline_seconds": baseline,
        "codes_per_s": {k: batch / v for k, v in seconds.items()},
    }


def _print_row(device: str, row: dict, batch: int) -> None:
    d, n, m = row["shape"]
    cells = []
    for op, sec in row["seconds"].items():
        notes = []
        if op in row["baseline_seconds"]:
            notes.append(f"{row['baseline_seconds'][op] / sec:.1f}x baseline")
        ref = REFERENCE_SECONDS.get(tuple(row["shape"]), {}).get(op) if device == "cpu" else None
        if ref:
            notes.append(f"{ref / sec:.1f}x issue's ref")
        note = f" ({', '.join(notes)})" if notes else ""
        cells.append(f"{op}: {batch / sec:,.0f} codes/s, {sec * 1e3:.1f} ms{note}")
    print(f"{device} (d={d}, N={n}, m={m}) | " + " | ".join(cells))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, {args.dtype}")
    results = []
    for name in devices:
        device = torch.device(name)
        for shape in SHAPES:
            row = bench_shape(shape, device, dtype, args.batch, args.repeats)
            _print_row(name, row, args.batch)
            results.append({"device": name, **row})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
