"""Throughput of the TRIP prior: codes/s for log_prob forward, forward+backward and sampling.

    python benchmarks/bench_priors.py                 # CPU, and CUDA when present
    python benchmarks/bench_priors.py --device cpu --batch 512 --repeats 5

Not a test: numbers depend on the machine. The README's benchmark section
records what was measured, with the machine named.
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


def bench_shape(shape, device, dtype, batch: int, repeats: int) -> dict:
    d, n, m = shape
    g = torch.Generator().manual_seed(0)
    prior = TRIPPrior(d, n, m, generator=g).to(device=device, dtype=dtype)
    z = torch.randn(batch, d, generator=g).to(device=device, dtype=dtype)

    def forward():
        with torch.no_grad():
            prior.log_prob(z)

    def forward_backward():
        prior.zero_grad(set_to_none=True)
        zz = z.clone().requires_grad_()
        prior.log_prob(zz).sum().backward()

    seconds = {
        "forward": _timed(forward, device, repeats),
        "forward+backward": _timed(forward_backward, device, repeats),
        "sample": _timed(lambda: prior.sample(batch), device, repeats),
    }
    return {"shape": shape, "seconds": seconds, "codes_per_s": {k: batch / v for k, v in seconds.items()}}


def _print_row(device: str, row: dict, batch: int) -> None:
    d, n, m = row["shape"]
    cells = []
    for op, sec in row["seconds"].items():
        ref = REFERENCE_SECONDS.get(tuple(row["shape"]), {}).get(op) if device == "cpu" else None
        speedup = f" ({ref / sec:.1f}x ref)" if ref else ""
        cells.append(f"{op}: {batch / sec:>10,.0f} codes/s {sec * 1e3:8.1f} ms{speedup}")
    print(f"{device:5s} d={d:<4d} N={n:<3d} m={m:<3d} | " + " | ".join(cells))


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
