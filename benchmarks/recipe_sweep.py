"""How the embedded default's training recipe was chosen: convergence curves of candidate recipes.

    python benchmarks/recipe_sweep.py --out /tmp/sweep --device cuda --workers 12
    python benchmarks/recipe_sweep.py --out /tmp/sweep --device cpu --only wgan_gp-16-lr1e-3 --max-steps 400

Each candidate is a (model, prior, image size, architecture, optimiser) recipe
on ``shapes``. It is trained with the library's own steps (``trip.train``'s
``build_model``, ``make_optimizers``, ``vae_step``/``gan_step``) and, at
doubling step counts, its samples from a fixed seed are scored by the
Frechet distance in the feature space of an attribute classifier trained on
the same data (the "domain FD" of the evaluation). A recipe is at its plateau
at step T when FD(T) >= 0.9 FD(T/2), i.e. the last doubling of steps improved
the FD by less than 10%.

Writes one ``<name>.json`` per candidate (curve, seconds per step) and
``summary.json``. It needs only torch, numpy, scipy and ``trip`` (no pipeline
packages), so it also runs on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = (50, 100, 200, 400, 800, 1600)  # the default --max-steps; longer sweeps keep doubling
FD_SAMPLES = 2000


def candidates() -> dict[str, list[str]]:
    """name -> overrides of configs/shapes.yaml's resolved run config (32x32: the classifier needs it)."""
    out: dict[str, list[str]] = {}
    for arch in ("tiny", "small"):
        base = ["data.image_size=32", f"model.arch={arch}", "train.batch_size=32"]
        for lr in (3e-4, 1e-3):
            for beta1 in (0.0, 0.5):
                out[f"wgan_gp-{arch}-lr{lr:.0e}-b{beta1}"] = base + [
                    "model.name=wgan_gp", "train.optimizer=adam", f"train.lr={lr:.1e}", f"train.betas=[{beta1},0.9]"]
            for clip in (0.01, 0.05):
                out[f"wgan-{arch}-lr{lr:.0e}-c{clip}"] = base + [
                    "model.name=wgan", "train.optimizer=rmsprop", f"train.lr={lr:.1e}", f"train.clip={clip}"]
    return out


def make_data(size: int, n_train: int, n_test: int):
    from trip.data.shapes import generate_shapes

    return generate_shapes(n_train, size, 0, "train"), generate_shapes(n_test, size, 0, "test")


def feature_net(train, device, steps: int):
    from trip.metrics.conditional import train_classifier

    net = train_classifier(train, steps, batch_size=64, lr=3e-3, seed=0, device=device)
    return net.eval()


@torch.no_grad()
def features(net, images: torch.Tensor) -> np.ndarray:
    """Penultimate activations (after the hidden layer's ReLU) of images in [-1, 1]."""
    body = net.net[:-1]
    out = [body(chunk).double().cpu() for chunk in images.split(500)]
    return torch.cat(out).numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@torch.no_grad()
def fixed_samples(model, n: int, device) -> torch.Tensor:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1234)
        was = model.training
        model.eval()
        x = torch.cat([model.sample(min(500, n - i)).float() for i in range(0, n, 500)])
        model.train(was)
    return x


def load_shared(out: Path, size: int, device):
    """(train images uint8, reference features, feature network) written by the parent for ``size``."""
    from trip.metrics.conditional import AttributeClassifier

    state = torch.load(out / f"shared-{size}.pt", weights_only=False)
    net = AttributeClassifier(**state["options"])
    net.load_state_dict(state["weights"])
    train, _ = make_data(size, 20000, 0)
    return torch.from_numpy(train.images), state["reference"], net.to(device).eval()


def run_candidate(name: str, overrides: list[str], prior: str, args, out: Path) -> dict:
    from trip.config import load_config
    from trip.data import to_float
    from trip.profiles import read_profile, resolve
    from trip.train import build_model, gan_step, make_optimizers, vae_step

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_name = next(o.split("=")[1] for o in overrides if o.startswith("model.name="))
    profile = read_profile("configs/shapes.yaml")
    cfg = resolve(profile, model_name, prior, 0, "/tmp/unused", [o for o in overrides if not o.startswith("model.name")])
    size = cfg.data.image_size
    train_images, ref_feats, net = load_shared(out, size, device)
    torch.manual_seed(0)
    model = build_model(cfg, 3).to(device)
    opts = make_optimizers(model, cfg)
    step_fn = vae_step if model_name == "vae" else gan_step
    g = torch.Generator(device="cpu").manual_seed(0)
    n = train_images.shape[0]

    def next_batch():
        rows = torch.randint(0, n, (cfg.train.batch_size,), generator=g)
        return (to_float(train_images[rows]).to(device),)

    curve, seconds, step = [], 0.0, 0
    for stop in checkpoints(args.max_steps):
        tick = time.perf_counter()
        while step < stop:
            stats = step_fn(model, opts, next_batch, cfg)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - tick
        fd = frechet(features(net, fixed_samples(model, FD_SAMPLES, device)), ref_feats)
        curve.append({"step": step, "fd": fd, **{k: float(v) for k, v in stats.items()}})
        print(f"{name} {prior} step {step} fd {fd:.2f}", flush=True)
    from trip.figures import save_image_grid

    save_image_grid(fixed_samples(model, 64, device).cpu(), out / f"{name}-{prior}.png", padding=1)
    return {"name": name, "prior": prior, "overrides": overrides, "batch": cfg.train.batch_size,
            "seconds_per_step": seconds / max(step, 1), "curve": curve, "plateau_step": plateau_step(curve)}


def checkpoints(max_steps: int) -> list[int]:
    """50, 100, 200, ... doubling up to ``max_steps``."""
    out = [CHECKPOINTS[0]]
    while out[-1] * 2 <= max_steps:
        out.append(out[-1] * 2)
    return out


def plateau_step(curve: list[dict]) -> int | None:
    """First checkpoint T whose FD is within 10% of FD(T/2) (improved by less than 10% over the doubling)."""
    by_step = {c["step"]: c["fd"] for c in curve}
    for c in curve:
        half = by_step.get(c["step"] // 2)
        if half is not None and c["fd"] >= 0.9 * half:
            return c["step"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=CHECKPOINTS[-1])
    parser.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    parser.add_argument("--priors", nargs="*", default=["normal", "trip_learnable"])
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--classifier-threads", type=int, default=8)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = {k: v for k, v in candidates().items() if args.only is None or k in args.only}
    # Most informative first, so a sweep cut short by a time limit still answers the main question.
    jobs = [(name, ov, prior) for prior in args.priors for name, ov in todo.items()]
    sizes = sorted({int(next(o for o in ov if o.startswith("data.image_size")).split("=")[1]) for _, ov, _ in jobs})
    from trip.data import to_float
    from trip.metrics.conditional import classifier_accuracy

    torch.set_num_threads(args.classifier_threads)
    for size in sizes:
        tick = time.perf_counter()
        train, test = make_data(size, 20000, 4000)
        net = feature_net(train, torch.device(args.device), args.classifier_steps).cpu()
        acc = classifier_accuracy(net, test)
        ref = features(net, to_float(torch.from_numpy(test.images)))
        torch.save({"options": net.options, "weights": net.state_dict(), "reference": ref[:2000]},
                   out / f"shared-{size}.pt")
        real_floor = frechet(ref[:2000], ref[2000:4000])
        print(f"size {size}: classifier {time.perf_counter() - tick:.0f}s, accuracy {acc}, real floor FD {real_floor:.3f}",
              flush=True)
        (out / f"classifier-{size}.json").write_text(json.dumps({"accuracy": acc, "real_floor_fd": real_floor}))
    results = []
    if args.workers > 1:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")  # each worker makes its own CUDA context
        with ctx.Pool(args.workers) as pool:
            results = list(pool.imap(_star_job, [(j, args, out) for j in jobs]))
    else:
        results = [_job(j, args, out) for j in jobs]
    (out / "summary.json").write_text(json.dumps(results, indent=1))


def _star_job(packed) -> dict:
    return _job(*packed)


def _job(job, args, out: Path) -> dict:
    name, overrides, prior = job
    try:
        result = run_candidate(name, overrides, prior, args, out)
    except Exception as err:  # one bad candidate must not end the sweep
        result = {"name": name, "prior": prior, "error": repr(err)}
    (out / f"{name}-{prior}.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
