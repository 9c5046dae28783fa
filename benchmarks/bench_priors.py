"""Throughput of the TRIP prior: codes/s for log_prob forward, forward+backward and sampling.

    python benchmarks/bench_priors.py                 # CPU, and CUDA when present
    python benchmarks/bench_priors.py --device cpu --batch 512 --repeats 7
    python benchmarks/bench_priors.py --device cuda   # the same ratios on a GPU
    python benchmarks/bench_priors.py --profile       # torch.profiler breakdown of log_prob

Not a test: numbers depend on the machine. The README's benchmark section
records what was measured, with the machine named.

Shared CPUs drift by tens of percent from minute to minute, so each shape is
also timed with a *baseline* in the same run: the algorithm of the paper's
public code as the issue describes it (a sequential chain over dimensions that
materialises the (B, N, m, m) weighted cores and adds 1e-10 to densities),
written here from that description. Its ratio is the stable figure: each
repeat times ours and the baseline back to back (alternating which goes
first), and the medians are compared. The summary line gives the four ratios
of the (100, 10, 20) and (128, 10, 40) log_prob cases and their geometric mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch

from trip.priors import TRIPPrior

SHAPES = [(100, 10, 20), (128, 10, 40), (64, 10, 4)]  # (d, N, m)
# Public reference implementation, batch 512, on the project's 2-core CPU (issue #2).
REFERENCE_SECONDS = {(128, 10, 40): {"forward": 0.5, "forward+backward": 1.5}, (100, 10, 20): {"forward": 0.04}}


def _once(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    return statistics.median(_once(fn, device) for _ in range(repeats))


def _timed_pair(ours, baseline, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall times of two functions timed back to back, alternating which goes first."""
    ours(), baseline()
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            times[i].append(_once((ours, baseline)[i], device))
    return statistics.median(times[0]), statistics.median(times[1])


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


def _workload(shape, device, dtype, batch: int):
    """A seeded prior and codes, with its log_prob forward and forward+backward as callables."""
    d, n, m = shape
    g = torch.Generator().manual_seed(0)
    prior = TRIPPrior(d, n, m, generator=g).to(device=device, dtype=dtype)
    z = torch.randn(batch, d, generator=g).to(device=device, dtype=dtype)

    def forward():
        with torch.no_grad():
            prior.log_prob(z)

    def forward_backward(log_prob=prior.log_prob):
        prior.zero_grad(set_to_none=True)
        log_prob(z.clone().requires_grad_()).sum().backward()

    return prior, z, forward, forward_backward


def bench_shape(shape, device, dtype, batch: int, repeats: int) -> dict:
    prior, z, forward, forward_backward = _workload(shape, device, dtype, batch)

    def baseline_forward():
        with torch.no_grad():
            baseline_log_prob(prior, z)

    seconds, baseline = {}, {}
    seconds["forward"], baseline["forward"] = _timed_pair(forward, baseline_forward, device, repeats)
    seconds["forward+backward"], baseline["forward+backward"] = _timed_pair(
        forward_backward, lambda: forward_backward(lambda zz: baseline_log_prob(prior, zz)), device, repeats
    )
    seconds["sample"] = _timed(lambda: prior.sample(batch), device, repeats)
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


RATIO_SHAPES = [(100, 10, 20), (128, 10, 40)]  # the four cases: forward and forward+backward at each


def _summary(device: str, rows: list[dict]) -> dict:
    ratios = {}
    for row in rows:
        if tuple(row["shape"]) in RATIO_SHAPES:
            for op in ("forward", "forward+backward"):
                ratios[f"{tuple(row['shape'])} {op}"] = row["baseline_seconds"][op] / row["seconds"][op]
    if ratios:
        geomean = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
        cells = ", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items())
        low = min(ratios.values())
        print(f"{device} log_prob vs baseline | {cells} | geometric mean {geomean:.2f}x, min {low:.2f}x")
        return {"ratios": ratios, "geometric_mean": geomean}
    return {}


def profile_log_prob(device: torch.device, dtype, batch: int, shapes=RATIO_SHAPES, rows: int = 14) -> None:
    """torch.profiler tables (self time) of log_prob forward and forward+backward, 3 calls each."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for d, n, m in shapes:
        _, _, forward, forward_backward = _workload((d, n, m), device, dtype, batch)
        for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
            fn(), fn()
            with profile(activities=activities) as prof:
                for _ in range(3):
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            print(f"\n== {device.type} log_prob {name} (d={d}, N={n}, m={m}), batch {batch}, 3 calls")
            print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=44))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, 2 on the project machine)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler breakdowns instead")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    dtype = getattr(torch, args.dtype)
    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices and torch.cuda.is_available() else ""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}, batch {args.batch}, {args.dtype}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    if args.profile:
        for name in devices:
            profile_log_prob(torch.device(name), dtype, args.batch)
        return
    results, summaries = [], {}
    for name in devices:
        device = torch.device(name)
        rows = []
        for shape in SHAPES:
            row = bench_shape(shape, device, dtype, args.batch, args.repeats)
            _print_row(name, row, args.batch)
            rows.append(row)
            results.append({"device": name, **row})
        summaries[name] = _summary(name, rows)
    print(f"load after {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": results, "summary": summaries}, f, indent=2)


if __name__ == "__main__":
    main()
