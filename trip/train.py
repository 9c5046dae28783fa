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

from trip.config import GAN_MODELS, ConfigError, RunConfig, config_hash, known_split_sizes, read_config, to_dict
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


class JointOptimizer:
    """The networks' optimiser and a learnable prior's own, zeroed, stepped and saved as one."""

    def __init__(self, networks: torch.optim.Optimizer, prior: torch.optim.Optimizer):
        self.networks, self.prior = networks, prior

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.networks.zero_grad(set_to_none=set_to_none)
        self.prior.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.networks.step()
        self.prior.step()

    def state_dict(self) -> dict:
        return {"networks": self.networks.state_dict(), "prior": self.prior.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.networks.load_state_dict(state["networks"])
        self.prior.load_state_dict(state["prior"])


def _optimizer_and_prior(main: list, prior, cfg: RunConfig) -> torch.optim.Optimizer | JointOptimizer:
    """The optimiser of ``main`` and a learnable prior (at train.prior_lr): the prior is a parameter group
    of the networks' optimiser, or, with train.prior_betas set, has an Adam of its own (the paper's code)."""
    t, prior_params = cfg.train, [p for p in prior.parameters() if p.requires_grad]
    lr = t.prior_lr or t.lr
    if not prior_params:
        return _optimizer([{"params": main}], cfg)
    if t.prior_betas is None:
        return _optimizer([{"params": main}, {"params": prior_params, "lr": lr}], cfg)
    own = torch.optim.Adam(prior_params, lr=lr, betas=tuple(t.prior_betas))
    return JointOptimizer(_optimizer([{"params": main}], cfg), own)


def make_optimizers(model, cfg: RunConfig) -> dict:
    if isinstance(model, VAE):
        networks = [p for n, p in model.named_parameters() if not n.startswith("prior.")]
        return {"model": _optimizer_and_prior(networks, model.prior, cfg)}
    return {
        "critic": _optimizer([{"params": list(model.critic.parameters())}], cfg),
        "generator": _optimizer_and_prior(list(model.generator.parameters()), model.prior, cfg),
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


def refits_prior(cfg: RunConfig) -> bool:
    """Whether the run re-fits its prior from encoder codes (paper Sec. 3.1): a VAE with a learnable TRIP."""
    return cfg.model.name not in GAN_MODELS and cfg.prior.name == "trip" and cfg.prior.learnable


def _on_reinit_schedule(cfg: RunConfig, step: int) -> bool:
    """Step 0, prior.reinit_first_step, then every prior.reinit_every_steps; none at or after train.steps."""
    p = cfg.prior
    if step >= cfg.train.steps:
        return False
    if step in (0, p.reinit_first_step):
        return True
    since_first, every = step - p.reinit_first_step, p.reinit_every_steps
    return every > 0 and since_first > 0 and since_first % every == 0


def reinit_steps(cfg: RunConfig) -> list[int]:
    """The numbers of optimiser steps done at which the run re-fits its prior; [] if it never does."""
    if not refits_prior(cfg):
        return []
    first, every, end = cfg.prior.reinit_first_step, cfg.prior.reinit_every_steps, cfg.train.steps
    candidates = {0, first, *range(first, end, every or end)}
    return sorted(step for step in candidates if _on_reinit_schedule(cfg, step))


def reinit_due(cfg: RunConfig, model, step: int) -> bool:
    """Whether ``model`` (the run's) re-fits its prior once ``step`` optimiser steps are done."""
    is_vae_trip = isinstance(model, VAE) and isinstance(model.prior, TRIPPrior) and cfg.prior.learnable
    return is_vae_trip and _on_reinit_schedule(cfg, step)


def reinit_prior(model, opts, train_images: torch.Tensor, cfg: RunConfig, step: int, device) -> None:
    """Fit 1-D GMMs to codes z ~ q(z|x) and redraw the cores; forget the prior's optimiser moments.

    Codes are posterior samples, not means, as in the paper's code: the prior
    should match the aggregate posterior, which is wider than the spread of means.
    """
    count = min(cfg.prior.reinit_codes, train_images.shape[0])
    g = torch.Generator().manual_seed(cfg.seed + step)
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
    model.prior.fit_marginals(torch.cat(codes).to(model.prior.device), seed=cfg.seed + step)
    opt = opts["model"]
    moments = opt.prior.state if isinstance(opt, JointOptimizer) else opt.state
    for p in model.prior.parameters():
        moments.pop(p, None)
    log.info("re-initialised the TRIP prior from %d posterior samples at step %d", count, step)


# -- the plan of a run, without data (--dry-run) ------------------------------------------
def schedule(cfg: RunConfig) -> dict:
    """What training does: updates, batches drawn, epochs over the dataset's known size, re-fit steps."""
    t = cfg.train
    if cfg.model.name in GAN_MODELS:  # gan_step: n_critic critic updates on a batch each, then the generator
        critic = t.steps * t.n_critic
        out = {"generator_updates": t.steps, "critic_updates": critic, "batches": critic}
    else:
        out = {"steps": t.steps, "batches": t.steps}
    sizes = known_split_sizes(cfg.data)
    per_epoch = None if sizes is None else sizes[0] // t.batch_size  # Batches drops the last partial batch
    epochs = None if per_epoch is None else round(out["batches"] / per_epoch, 3)
    out.update(batch_size=t.batch_size, train_images=None if sizes is None else sizes[0],
               batches_per_epoch=per_epoch, epochs=epochs)
    return {**out, "reinit_steps": reinit_steps(cfg)}


def eval_protocol(cfg: RunConfig) -> dict:
    """What ``python -m trip.evaluate`` measures for the run (settings: the config's ``eval``), each count
    resolved against the known split sizes (``*_split_size`` None where the dataset declares none)."""
    ev = cfg.eval
    train_n, test_n = known_split_sizes(cfg.data) or (None, None)
    reference = train_n if ev.fid_split == "train" else test_n
    fid_n = _at_most(ev.fid_samples, reference)
    out = {"fid": {"generated": fid_n, "reference_images": fid_n, "reference_split": ev.fid_split,
                   "reference_split_size": reference}}
    if cfg.model.name in GAN_MODELS:
        out["reversal"] = {"codes": _at_most(ev.reversal_examples, train_n), "steps": ev.reversal_steps,
                           "pag_reference": "N(0, I)", "latent_dim": cfg.model.latent_dim}
    else:
        out["likelihood"] = {"test_images": _at_most(ev.likelihood_examples, test_n), "test_split_size": test_n,
                             "iwae_k": ev.iwae_k, "units": ["nats per image", "bits per dimension"]}
    return out


def _at_most(count: int, available: int | None) -> int:
    """The configured count, cut to what the split holds where that is known."""
    return count if available is None else min(count, available)


def dry_run(cfg: RunConfig) -> dict:
    """The resolved config, its hash, the training schedule and the evaluation protocol; reads no data."""
    return {"config": to_dict(cfg), "config_hash": config_hash(cfg), "schedule": schedule(cfg),
            "eval": eval_protocol(cfg)}


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
    probe, probe_steps = make_fd_probe(cfg, device), fd_steps(cfg.train)

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
    count = 0
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not (sys.stderr.isatty() if progress is None else progress))
    tick = time.perf_counter()
    model.train()
    while step < cfg.train.steps:
        for k, v in step_fn(model, opts, next_batch, cfg).items():
            sums[k] = sums.get(k, 0.0) + v
        step, count = step + 1, count + 1
        bar.update()
        epochs_done = state["cursor"] // batches.per_epoch
        if reinit_due(cfg, model, step):
            reinit_prior(model, opts, images, cfg, step, device)
        probe_due = probe is not None and step in probe_steps
        if step % cfg.train.log_every == 0 or step == cfg.train.steps or probe_due:
            last = {"step": step, "epoch": epochs_done, **{k: v / count for k, v in sums.items()}}
            last["steps_per_s"] = count / (time.perf_counter() - tick)
            if probe_due:
                last["domain_fd"] = probe(model)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(last) + "\n")
            log.info("step %d/%d %s", step, cfg.train.steps, _fmt(last))
            sums, count, tick = {}, 0, time.perf_counter()
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


# -- convergence -----------------------------------------------------------------------
PLATEAU_RULE = "domain FD improved by less than 10% over the last doubling of steps (FD(T) >= 0.9 FD(T/2))"


def fd_steps(t) -> set[int]:
    """Steps at which the FD probe runs: every ``fd_every``, and at half and all of ``steps``."""
    if not t.fd_every:
        return set()
    return set(range(t.fd_every, t.steps + 1, t.fd_every)) | {t.steps // 2, t.steps}


def make_fd_probe(cfg: RunConfig, device):
    """model -> domain FD of ``train.fd_samples`` samples from a fixed seed; None when ``fd_every`` is 0.

    The samples come from a forked RNG, so probing never changes the training
    stream and a resumed run stays bit-identical to an uninterrupted one.
    """
    if not cfg.train.fd_every:
        return None
    from trip.metrics.domain import load_domain_reference

    reference = load_domain_reference(cfg.data, cfg.eval, device=device)

    def probe(model) -> float:
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(0xFD)
            n, chunk = cfg.train.fd_samples, 500
            samples = torch.cat([model.sample(min(chunk, n - i)).float() for i in range(0, n, chunk)])
        model.train(was_training)
        return reference.fd(samples)

    return probe


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (empty if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def convergence(records: list[dict], steps: int) -> dict:
    """Whether a run reached its plateau by :data:`PLATEAU_RULE`, from its logged ``domain_fd`` values."""
    fd = {r["step"]: r["domain_fd"] for r in records if "domain_fd" in r}
    half, end = fd.get(steps // 2), fd.get(steps)
    out = {"rule": PLATEAU_RULE, "steps": steps, "fd_half": half, "fd_end": end, "converged": None}
    if half is not None and end is not None:
        out["converged"] = bool(end >= 0.9 * half)
    return out


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("step",))


def _finish(cfg: RunConfig, model, run_dir: Path, digest: str, final: dict, wall: float) -> None:
    from trip.figures import save_image_grid

    model.eval()
    with torch.no_grad():
        samples = model.sample(cfg.train.sample_count).float().cpu()
    save_image_grid(samples, run_dir / "samples.png", padding=1)
    marker = {"config_hash": digest, "steps": cfg.train.steps, "final_metrics": final, "wall_seconds": wall,
              "convergence": convergence(read_metrics(run_dir / "metrics.jsonl"), cfg.train.steps)}
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


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.profile:
        from trip.profiles import read_profile, resolve

        return resolve(read_profile(args.profile), args.model, args.prior, args.seed, args.run_root, args.set)
    return read_config(args.config, args.set)


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
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, schedule and evaluation protocol as JSON; read no data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = _config_from_args(args)
        if args.dry_run:
            print(json.dumps(dry_run(cfg), indent=2))
            return
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")
    result = run(cfg)
    state = "already complete, skipped" if result.skipped else f"trained {result.steps} steps"
    print(f"{result.run_dir}: {cfg.model.name} / {cfg.prior.name} on {cfg.data.name}, {state} (config {result.config_hash})")


if __name__ == "__main__":
    main()
