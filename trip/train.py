"""Train one (dataset, model, prior, seed) run into a run directory.

    python -m trip.train --profile configs/shapes.yaml --model wgan_gp --prior trip_learnable

The run directory holds:

* ``config.yaml``: the resolved configuration (and its content hash);
* ``checkpoint.pt``: model, prior, optimisers, step, data cursor and RNG states,
  written atomically every ``train.checkpoint_every`` steps and at the end;
* ``metrics.jsonl``: one line of averaged training metrics per logging step;
* ``samples.png``: a grid of samples at the end;
* ``complete.json``: written last. Without it a run directory is never taken
  as finished, and running again resumes from the checkpoint.

Resuming replays exactly: the data order is a function of (seed, epoch) and
the RNG states are restored, so a resumed run ends in the same state as an
uninterrupted one.

Conditional models (``config.CONDITIONAL_MODELS``) train on (images, attributes,
observed) batches. Which labels a run sees is drawn once per training example
from the run seed (``labels.missing`` of each attribute hidden), so it is the
same after a resume; hidden values are zeroed before the model sees them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from trip.config import ConfigError, RunConfig, config_hash, read_config, to_dict
from trip.data import Split, load_prepared, prepare, to_float
from trip.io import atomic_write, atomic_write_text
from trip.models import MODELS, VAE
from trip.priors import TRIPPrior

log = logging.getLogger("trip.train")


@dataclass
class RunResult:
    run_dir: Path
    config_hash: str
    steps: int
    final_metrics: dict
    wall_seconds: float
    skipped: bool = False


# -- data ------------------------------------------------------------------------------
def load_data(cfg: RunConfig) -> tuple[Split, Split]:
    """Prepare the dataset once (cached by name, size and options) and load both splits."""
    d = cfg.data
    key = hashlib.sha256(json.dumps(d.options, sort_keys=True).encode()).hexdigest()[:8]
    directory = Path(d.prepared_root) / f"{d.name}-{d.image_size}px-{key}"
    prepare(d.name, directory, image_size=d.image_size, **d.options)
    return load_prepared(directory, "train"), load_prepared(directory, "test")


class Batches:
    """Batch ``i`` of a run is a pure function of (seed, i): epoch e uses permutation(seed, e)."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int):
        if images.shape[0] < batch_size:
            raise ConfigError(f"train.batch_size: {batch_size} exceeds the {images.shape[0]} training images")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.per_epoch = images.shape[0] // batch_size
        self._epoch, self._order = -1, None

    def rows(self, index: int) -> torch.Tensor:
        """The training examples of batch ``index``."""
        epoch, offset = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.images.shape[0], generator=g)
        return self._order[offset * self.batch_size : (offset + 1) * self.batch_size]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[self.rows(index)]


@dataclass
class Labels:
    """A conditional run's attributes: names, values (N, c) with hidden ones zeroed, observed mask (N, c)."""

    names: tuple[str, ...]
    values: torch.Tensor
    observed: torch.Tensor


def select_attributes(cfg: RunConfig, available: tuple[str, ...]) -> tuple[str, ...]:
    wanted = cfg.labels.attributes
    if wanted is None:
        return tuple(available)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ConfigError(f"labels.attributes: {unknown[0]!r} is not an attribute of {cfg.data.name} "
                          f"(has: {', '.join(available)})")
    return tuple(wanted)


def observed_mask(n: int, count: int, missing: float, seed: int) -> torch.Tensor:
    """(n, count) bool: per attribute, round(missing * n) examples chosen at random have the label hidden."""
    rng = np.random.default_rng([seed, 0x1ABE1])  # a stream of its own: the batch order does not move it
    hidden = round(missing * n)
    mask = np.ones((n, count), dtype=bool)
    for j in range(count):
        mask[rng.permutation(n)[:hidden], j] = False
    return torch.from_numpy(mask)


def load_labels(cfg: RunConfig, split: Split) -> Labels:
    names = select_attributes(cfg, split.attribute_names)
    columns = [split.attribute_names.index(name) for name in names]
    values = torch.from_numpy(split.attributes[:, columns].astype(np.int64))
    observed = observed_mask(len(split), len(names), cfg.labels.missing, cfg.seed)
    return Labels(names, torch.where(observed, values, 0), observed)


def build_model(cfg: RunConfig, channels: int, attributes: tuple[str, ...] | None = None) -> torch.nn.Module:
    """The run's model; a conditional one over ``attributes`` (None: the count the config implies)."""
    builder = MODELS.get(cfg.model.name)
    if not cfg.conditional:
        return builder(cfg, channels)
    return builder(cfg, channels, None if attributes is None else len(attributes))


# -- optimisation ----------------------------------------------------------------------
def _optimizer(params: list[dict], cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=t.lr)
    return torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas))


def _groups(main: list, prior, cfg: RunConfig) -> list[dict]:
    """Parameter groups: the networks at train.lr, a learnable prior at train.prior_lr."""
    groups = [{"params": main}]
    prior_params = [p for p in prior.parameters() if p.requires_grad]
    if prior_params:
        groups.append({"params": prior_params, "lr": cfg.train.prior_lr or cfg.train.lr})
    return groups


def make_optimizers(model, cfg: RunConfig) -> dict[str, torch.optim.Optimizer]:
    if isinstance(model, VAE):
        networks = [p for n, p in model.named_parameters() if not n.startswith("prior.")]
        return {"model": _optimizer(_groups(networks, model.prior, cfg), cfg)}
    return {
        "critic": _optimizer([{"params": list(model.critic.parameters())}], cfg),
        "generator": _optimizer(_groups(list(model.generator.parameters()), model.prior, cfg), cfg),
    }


def vae_step(model, opts, next_batch, cfg: RunConfig) -> dict[str, float]:
    loss, stats = model.loss(*next_batch())
    opts["model"].zero_grad(set_to_none=True)
    loss.backward()
    opts["model"].step()
    return stats


def gan_step(model, opts, next_batch, cfg: RunConfig) -> dict[str, float]:
    stats: dict[str, float] = {}
    for _ in range(cfg.train.n_critic):
        loss, stats = model.critic_loss(*next_batch())
        opts["critic"].zero_grad(set_to_none=True)
        loss.backward()
        opts["critic"].step()
        model.clip_critic()
    model.critic.requires_grad_(False)  # the generator step must not accumulate critic grads
    loss, g_stats = model.generator_and_prior_loss(cfg.train.batch_size)
    opts["generator"].zero_grad(set_to_none=True)
    loss.backward()
    opts["generator"].step()
    model.critic.requires_grad_(True)
    return {**stats, **g_stats}


def reinit_due(cfg: RunConfig, model, epochs_done: int) -> bool:
    """Paper's VAE-TRIP schedule: at the start, after epoch `reinit_first`, then every `reinit_every`."""
    p = cfg.prior
    if not (isinstance(model, VAE) and isinstance(model.prior, TRIPPrior) and p.learnable):
        return False
    if epochs_done == 0:
        return True
    if p.reinit_every == 0 or epochs_done < p.reinit_first:
        return epochs_done == p.reinit_first and p.reinit_first > 0
    return (epochs_done - p.reinit_first) % p.reinit_every == 0


def reinit_prior(model, opts, train_images: torch.Tensor, cfg: RunConfig, epochs_done: int, device) -> None:
    """Fit 1-D GMMs to codes z ~ q(z|x) and redraw the cores; forget the prior's optimiser moments.

    Codes are posterior samples, not means, as in the paper's code: the prior
    should match the aggregate posterior, which is wider than the spread of means.
    """
    count = min(cfg.prior.reinit_codes, train_images.shape[0])
    g = torch.Generator().manual_seed(cfg.seed + epochs_done)
    rows = torch.randperm(train_images.shape[0], generator=g)[:count]
    was_training = model.training
    model.eval()
    codes = []
    with torch.no_grad():
        for chunk in rows.split(cfg.train.batch_size):
            mean, logvar = model.encode(to_float(train_images[chunk]).to(device))
            noise = torch.randn(mean.shape, generator=g).to(mean)
            codes.append(mean + (0.5 * logvar).exp() * noise)
    model.train(was_training)
    model.prior.fit_marginals(torch.cat(codes).to(model.prior.device), seed=cfg.seed + epochs_done)
    for p in model.prior.parameters():
        opts["model"].state.pop(p, None)
    log.info("re-initialised the TRIP prior from %d posterior samples after epoch %d", count, epochs_done)


# -- checkpoints -----------------------------------------------------------------------
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, opts, step: int, cursor: int, digest: str, channels: int,
                    attributes: tuple[str, ...] | None = None) -> None:
    state = {
        "model": model.state_dict(),
        "channels": channels,
        "optimizers": {k: o.state_dict() for k, o in opts.items()},
        "step": step,
        "cursor": cursor,
        "rng": _rng_state(),
        "config_hash": digest,
    }
    if attributes is not None:  # conditional models: the attributes, in the order the model sees them
        state["attributes"] = list(attributes)
    atomic_write(path, lambda handle: torch.save(state, handle))  # a kill keeps the previous one


def load_checkpoint(path: Path, model, opts, digest: str) -> tuple[int, int]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise RuntimeError(f"checkpoint {path} is unreadable ({err}); delete it to restart the run") from None
    if state.get("config_hash") != digest:
        raise RuntimeError(f"checkpoint {path} belongs to another config; delete it or choose another run_dir")
    model.load_state_dict(state["model"])
    for k, o in opts.items():
        o.load_state_dict(state["optimizers"][k])
    _set_rng_state(state["rng"])
    return state["step"], state["cursor"]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint: the resumed run logs them again."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


# -- the run ---------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} was requested but CUDA is not available")
    return device


def is_complete(run_dir: str | Path, digest: str | None = None) -> bool:
    marker = Path(run_dir) / "complete.json"
    if not marker.exists():
        return False
    return digest is None or json.loads(marker.read_text()).get("config_hash") == digest


def _prepare_run_dir(cfg: RunConfig, digest: str) -> Path:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    if saved.exists():
        old = yaml.safe_load(saved.read_text()) or {}
        if old.get("config_hash") != digest:
            raise ConfigError(f"run_dir: {run_dir} holds a run of another config; choose another run_dir")
    else:
        atomic_write_text(saved, yaml.safe_dump(to_dict(cfg), sort_keys=False) + f"config_hash: {digest}\n")
    return run_dir


def run(cfg: RunConfig, stop_after: int | None = None, progress: bool | None = None) -> RunResult:
    """Train (or resume, or skip if complete) the run described by ``cfg``.

    ``stop_after`` ends the process-equivalent of a kill after that many steps
    (checkpoint written, no completion marker), for tests and for chunked jobs.
    """
    digest = config_hash(cfg)
    if is_complete(cfg.run_dir, digest):
        done = json.loads((Path(cfg.run_dir) / "complete.json").read_text())
        return RunResult(Path(cfg.run_dir), digest, done["steps"], done["final_metrics"], 0.0, skipped=True)
    device = resolve_device(cfg.device)
    run_dir = _prepare_run_dir(cfg, digest)
    start = time.perf_counter()
    train, _ = load_data(cfg)
    images = torch.from_numpy(np.ascontiguousarray(train.images))
    labels = load_labels(cfg, train) if cfg.conditional else None
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = build_model(cfg, images.shape[1], None if labels is None else labels.names).to(device)
    opts = make_optimizers(model, cfg)
    batches = Batches(images, cfg.train.batch_size, cfg.seed)
    ckpt, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    step = cursor = 0
    if ckpt.exists():
        step, cursor = load_checkpoint(ckpt, model, opts, digest)
        _truncate_metrics(metrics_path, step)
        log.info("resuming %s at step %d", run_dir, step)
    elif metrics_path.exists():
        metrics_path.unlink()  # lines from a run killed before its first checkpoint
    final = _train_loop(cfg, model, opts, batches, labels, device, step, cursor, stop_after, progress)
    if final is None:
        return RunResult(run_dir, digest, stop_after or 0, {}, time.perf_counter() - start)
    _finish(cfg, model, run_dir, digest, final, time.perf_counter() - start)
    return RunResult(run_dir, digest, cfg.train.steps, final, time.perf_counter() - start)


def _train_loop(cfg, model, opts, batches, labels, device, step, cursor, stop_after, progress):
    """Steps from ``step`` to ``train.steps``; returns the last logged metrics, or None if stopped early."""
    run_dir, images = Path(cfg.run_dir), batches.images
    step_fn = vae_step if isinstance(model, VAE) else gan_step
    state = {"cursor": cursor}

    def next_batch() -> tuple[torch.Tensor, ...]:
        """The model's inputs: (images,), or (images, attributes, observed) for a conditional model."""
        rows = batches.rows(state["cursor"])
        state["cursor"] += 1
        x = to_float(images[rows]).to(device)
        if labels is None:
            return (x,)
        return x, labels.values[rows].to(device), labels.observed[rows].to(device)

    if step == 0 and reinit_due(cfg, model, 0):
        reinit_prior(model, opts, images, cfg, 0, device)
    sums: dict[str, float] = {}
    last: dict = {}
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not (sys.stderr.isatty() if progress is None else progress))
    tick = time.perf_counter()
    model.train()
    while step < cfg.train.steps:
        epoch_before = state["cursor"] // batches.per_epoch
        for k, v in step_fn(model, opts, next_batch, cfg).items():
            sums[k] = sums.get(k, 0.0) + v
        step += 1
        bar.update()
        epochs_done = state["cursor"] // batches.per_epoch
        if epochs_done > epoch_before and reinit_due(cfg, model, epochs_done):
            reinit_prior(model, opts, images, cfg, epochs_done, device)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            count = cfg.train.log_every if step % cfg.train.log_every == 0 else step % cfg.train.log_every
            last = {"step": step, "epoch": epochs_done, **{k: v / count for k, v in sums.items()}}
            last["steps_per_s"] = count / (time.perf_counter() - tick)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(last) + "\n")
            log.info("step %d/%d %s", step, cfg.train.steps, _fmt(last))
            sums, tick = {}, time.perf_counter()
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or step == stop_after:
            save_checkpoint(
                run_dir / "checkpoint.pt", model, opts, step, state["cursor"], config_hash(cfg), images.shape[1],
                None if labels is None else labels.names,
            )
        if step == stop_after and step < cfg.train.steps:
            bar.close()
            return None
    bar.close()
    return last


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("step",))


def _finish(cfg: RunConfig, model, run_dir: Path, digest: str, final: dict, wall: float) -> None:
    from trip.figures import save_image_grid

    model.eval()
    with torch.no_grad():
        samples = model.sample(cfg.train.sample_count).float().cpu()
    save_image_grid(samples, run_dir / "samples.png", padding=1)
    marker = {"config_hash": digest, "steps": cfg.train.steps, "final_metrics": final, "wall_seconds": wall}
    atomic_write_text(run_dir / "complete.json", json.dumps(marker, indent=2))
    log.info("finished %s in %.1fs", run_dir, wall)


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(config, model) of a run directory, with the checkpoint's weights, in eval mode."""
    from trip.config import load_config

    run_dir = Path(run_dir)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw.pop("config_hash", None)
    cfg = load_config(raw)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} does not exist: the run has not been trained")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_model(cfg, state["channels"], state.get("attributes")).to(device)
    model.load_state_dict(state["model"])
    model.image_channels = state["channels"]
    if cfg.conditional:
        model.attribute_names = tuple(state["attributes"])
    return cfg, model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--profile", help="profile YAML (e.g. configs/shapes.yaml); pick a run with --model/--prior/--seed")
    source.add_argument("--config", help="a single resolved run config (e.g. a run directory's config.yaml)")
    parser.add_argument("--model", default="vae", help="a model section of the profile: vae, wgan, wgan_gp")
    parser.add_argument("--prior", default="normal", help="a prior variant of the profile, e.g. trip_learnable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-root", default="runs", help="run directories go under RUN_ROOT/PROFILE/")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.steps=200")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.profile:
            from trip.profiles import read_profile, resolve

            cfg = resolve(read_profile(args.profile), args.model, args.prior, args.seed, args.run_root, args.set)
        else:
            cfg = read_config(args.config, args.set)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")
    result = run(cfg)
    state = "already complete, skipped" if result.skipped else f"trained {result.steps} steps"
    print(f"{result.run_dir}: {cfg.model.name} / {cfg.prior.name} on {cfg.data.name}, {state} (config {result.config_hash})")


if __name__ == "__main__":
    main()
