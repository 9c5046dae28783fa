"""Time per training step of each model with N(0, I) and with a TRIP prior: the cost of TRIP, and
steps/s, peak memory and the wall time of a whole run, on the CPU or a GPU.

    python benchmarks/bench_step.py                                      # WGAN-GP, configs/shapes.yaml, CPU
    python benchmarks/bench_step.py --set data.image_size=16             # profile overrides
    python benchmarks/bench_step.py --models vae wgan wgan_gp --blocks 7 --steps 10
    python benchmarks/bench_step.py --device cuda --profile configs/celeba64.yaml --models vae wgan wgan_gp
    python benchmarks/bench_step.py --device cuda --profile configs/celeba64.yaml --trace 3   # + torch.profiler

Both variants of a model are built by ``trip.train.start_state`` from the same
profile and seed (the prior variant is the only difference), so the profile's
speed switches (``train.amp``, ``channels_last``, ``resident_data``, ...) apply,
and are timed through the real training step, ``trip.train.train_step``, on a
random uint8 dataset of the configured size. Blocks of ``--steps`` steps
alternate between the two variants (the order flips every block) after warm-up
steps; each figure is the median over ``--blocks`` blocks of the mean step time
in the block, and the block-paired ratio (median over blocks of TRIP/normal) is
reported too, since shared CPUs drift from minute to minute. On CUDA every
block ends with a synchronisation, and the peak memory of each variant is
measured over its warm-up steps. ``--trace K`` then profiles K steps of the TRIP
variant (torch.profiler), with the prior's sampling and log-density as their
own rows, to show where its overhead goes.

Not a test: numbers depend on the machine. Records go in the README's
benchmark section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from trip.profiles import read_profile, resolve
from trip.train import configure_backends, read_means, resolve_device, start_state, train_step

DEFAULT_PROFILE = Path(__file__).resolve().parents[1] / "configs" / "shapes.yaml"


def make_setup(profile: dict, model: str, prior: str, overrides: list[str], seed: int, channels: int,
               n_images: int, device):
    cfg = resolve(profile, model, prior, seed=seed, run_root="/nonexistent-bench-runs", overrides=overrides)
    configure_backends(cfg.train)
    size = cfg.data.image_size
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, channels, size, size), generator=g, dtype=torch.uint8)
    state = start_state(cfg, images, None, device)
    state.model.train()
    return cfg, state


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(setup, steps: int, device) -> float:
    cfg, state = setup
    sums: dict = {}
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(cfg, state, sums)
    means = read_means(sums, steps)  # the loop's one read per logged line
    _sync(device)
    assert all(v == v for v in means.values()), f"NaN in {means}"
    return (time.perf_counter() - start) / steps


def peak_memory(setup, steps: int, device) -> float | None:
    """GiB allocated at the peak of ``steps`` steps (CUDA only)."""
    if device.type != "cuda":
        time_steps(setup, steps, device)
        return None
    torch.cuda.reset_peak_memory_stats(device)
    time_steps(setup, steps, device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def trace(setup, steps: int, device, rows: int = 18) -> None:
    """torch.profiler tables of ``steps`` steps: self time per op, and the prior's calls as ranges."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cfg, state = setup
    prior, n = state.model.prior, cfg.train.batch_size
    draws = n * (cfg.train.n_critic + 1) if cfg.model.name != "vae" else n
    z = prior.sample(n).detach()

    def density_and_gradient():
        prior.zero_grad(set_to_none=True)
        prior.log_prob(z).mean().backward()

    for label, fn in ((f"sample({draws})", lambda: prior.sample(draws)),
                      (f"log_prob({n}) forward+backward", density_and_gradient)):
        fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(10):
            fn()
        _sync(device)
        print(f"  prior.{label} alone: {(time.perf_counter() - start) / 10 * 1e3:.2f} ms")
    for name in ("sample", "log_prob"):
        method = getattr(prior, name)

        def ranged(*a, _method=method, _name=name, **k):
            with record_function(f"## prior.{_name}"):
                return _method(*a, **k)

        setattr(prior, name, ranged)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        time_steps(setup, steps, device)
    for name in ("sample", "log_prob"):
        delattr(prior, name)
    events = prof.key_averages()
    ranges = [e for e in events if e.key.startswith("## prior.")]
    for e in ranges:
        gpu = f", {e.device_time_total / 1e3 / steps:.2f} ms GPU" if cuda else ""
        print(f"  {e.key[3:]}: {e.count / steps:.0f} calls/step, {e.cpu_time_total / 1e3 / steps:.2f} ms CPU{gpu} per step")
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=rows, max_name_column_width=40))


def bench_model(profile: dict, model: str, args, device) -> dict:
    variants = ["normal", args.prior]
    setups = {v: make_setup(profile, model, v, args.set, args.seed, args.channels, args.images, device)
              for v in variants}
    cfg = setups[args.prior][0]
    p, m, t = cfg.prior, cfg.model, cfg.train
    print(f"{model} {cfg.data.name} {cfg.data.image_size}px arch={m.arch} d={m.latent_dim} batch={t.batch_size}"
          + (f" n_critic={t.n_critic}" if model != "vae" else "")
          + f" amp={t.amp} channels_last={t.channels_last} | {args.prior}: N={p.n_components} m={p.core_size}")
    memory = {v: peak_memory(setups[v], args.warmup, device) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for block in range(args.blocks):
        for v in variants if block % 2 == 0 else variants[::-1]:
            times[v].append(time_steps(setups[v], args.steps, device))
    med = {v: statistics.median(ts) for v, ts in times.items()}
    paired = statistics.median(a / b for a, b in zip(times[args.prior], times["normal"]))
    overhead = med[args.prior] / med["normal"] - 1
    for v in variants:
        mem = f", peak {memory[v]:.2f} GiB" if memory[v] is not None else ""
        print(f"  {v:>16}: {med[v] * 1e3:8.2f} ms/step, {1 / med[v]:7.1f} steps/s{mem}, "
              f"{t.steps} steps = {t.steps * med[v] / 3600:.2f} h (blocks: {', '.join(f'{x * 1e3:.1f}' for x in times[v])})")
    print(f"  {args.prior} overhead: {overhead * 100:+.1f}% (medians), {(paired - 1) * 100:+.1f}% (block-paired median)")
    if args.trace:
        trace(setups[args.prior], args.trace, device)
    return {"model": model, "steps": t.steps, "ms_per_step": {v: med[v] * 1e3 for v in variants},
            "peak_gib": memory, "overhead": overhead, "paired_overhead": paired - 1,
            "run_hours": {v: t.steps * med[v] / 3600 for v in variants},
            "blocks_ms": {v: [x * 1e3 for x in ts] for v, ts in times.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=str(DEFAULT_PROFILE))
    parser.add_argument("--models", nargs="+", default=["wgan_gp"], choices=["vae", "wgan", "wgan_gp"])
    parser.add_argument("--prior", default="trip_learnable", help="the prior variant timed against 'normal'")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--images", type=int, default=2048, help="size of the random uint8 dataset")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", type=int, default=0, metavar="K",
                        help="also profile K steps of the TRIP variant with torch.profiler")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    profile = read_profile(args.profile)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {device} ({name}), load {os.getloadavg()[0]:.2f}, "
          f"profile {Path(args.profile).name}, overrides {args.set or 'none'}")
    result = {"device": str(device), "device_name": name, "profile": args.profile, "overrides": args.set,
              "threads": args.threads, "models": [bench_model(profile, m, args, device) for m in args.models]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
