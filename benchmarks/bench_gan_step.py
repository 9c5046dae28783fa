"""Cost of a learnable TRIP prior in a GAN training step, against N(0, I): time per step, not per run.

    python benchmarks/bench_gan_step.py                                  # WGAN-GP, configs/shapes.yaml
    python benchmarks/bench_gan_step.py --set data.image_size=16         # profile overrides
    python benchmarks/bench_gan_step.py --model wgan --blocks 7 --steps 10

Both models are built by ``trip.train.build_model`` from the same profile and
seed (the prior variant is the only difference), get their optimisers from
``trip.train.make_optimizers`` and are timed through the real training step,
``trip.train.gan_step``, on random images of the configured size: data loading
is the same for both and is left out. One thread; blocks of ``--steps`` steps
alternate between the two models (the order flips every block) after warm-up
steps, and each model's figure is the median over ``--blocks`` blocks of the
mean step time in the block. Shared CPUs drift from minute to minute, so the
block-paired ratio (median over blocks of TRIP/normal) is reported too.

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
from trip.train import build_model, gan_step, make_optimizers

DEFAULT_PROFILE = Path(__file__).resolve().parents[1] / "configs" / "shapes.yaml"


def make_setup(profile: dict, model: str, prior: str, overrides: list[str], seed: int, channels: int, device):
    cfg = resolve(profile, model, prior, seed=seed, run_root="/nonexistent-bench-runs", overrides=overrides)
    torch.manual_seed(seed)
    net = build_model(cfg, channels).to(device)
    net.train()
    opts = make_optimizers(net, cfg)
    g = torch.Generator().manual_seed(seed)
    size, batch = cfg.data.image_size, cfg.train.batch_size
    images = (torch.rand(8 * cfg.train.n_critic, channels, size, size, generator=g) * 2 - 1).to(device)
    state = {"i": 0}

    def next_batch():
        rows = torch.arange(state["i"], state["i"] + batch) % images.shape[0]
        state["i"] += batch
        return (images[rows],)

    return cfg, net, opts, next_batch


def time_steps(setup, steps: int, device) -> float:
    cfg, net, opts, next_batch = setup
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        gan_step(net, opts, next_batch, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=str(DEFAULT_PROFILE))
    parser.add_argument("--model", default="wgan_gp", choices=["wgan", "wgan_gp"])
    parser.add_argument("--prior", default="trip_learnable", help="the prior variant timed against 'normal'")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    profile = read_profile(args.profile)
    variants = ["normal", args.prior]
    setups = {v: make_setup(profile, args.model, v, args.set, args.seed, args.channels, device) for v in variants}
    cfg = setups[args.prior][0]
    p, m, t = cfg.prior, cfg.model, cfg.train
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {device}, load {os.getloadavg()[0]:.2f} | "
        f"{args.model} {cfg.data.name} {cfg.data.image_size}px arch={m.arch} d={m.latent_dim} "
        f"batch={t.batch_size} n_critic={t.n_critic} | {args.prior}: N={p.n_components} m={p.core_size}"
    )
    for v in variants:
        time_steps(setups[v], args.warmup, device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for block in range(args.blocks):
        for v in variants if block % 2 == 0 else variants[::-1]:
            times[v].append(time_steps(setups[v], args.steps, device))
    med = {v: statistics.median(ts) for v, ts in times.items()}
    paired = statistics.median(a / b for a, b in zip(times[args.prior], times["normal"]))
    overhead = med[args.prior] / med["normal"] - 1
    for v in variants:
        print(f"{v:>16}: {med[v] * 1e3:8.1f} ms/step (blocks: {', '.join(f'{x * 1e3:.0f}' for x in times[v])})")
    print(
        f"{args.prior} overhead: {overhead * 100:+.1f}% (medians), {(paired - 1) * 100:+.1f}% (block-paired median); "
        f"load after {os.getloadavg()[0]:.2f}"
    )
    result = {
        "model": args.model, "prior": args.prior, "overrides": args.set, "threads": args.threads,
        "ms_per_step": {v: med[v] * 1e3 for v in variants}, "overhead": overhead, "paired_overhead": paired - 1,
        "blocks_ms": {v: [x * 1e3 for x in ts] for v, ts in times.items()},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
