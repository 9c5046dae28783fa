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

Resuming replays exactly on the CPU: the data order is a function of (seed,
epoch) and the RNG states (the CUDA one of the run's device too) are restored,
so a resumed run ends in the same state as an uninterrupted one. On CUDA that
holds only with ``train.deterministic`` (cuDNN's and cuBLAS's default kernels
may sum in another order on each call).

The training step reads nothing back from the device: its statistics are
summed there and read once per logged line (``train.log_every``). The GPU
speed switches of ``train`` (amp, channels_last, cudnn_benchmark, compile,
resident_data, deterministic) default to the plain float32 path.

Conditional models (``config.CONDITIONAL_MODELS``) train on (images, attributes,
observed) batches. Which labels a run sees is drawn once per training example
from the run seed (``labels.missing`` of each attribute hidden), so it is the
same after a resume; hidden values are zeroed before the model sees them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from trip.config import (GAN_MODELS, ConfigError, RunConfig, TrainConfig, config_hash, known_split_sizes,
                         read_config, to_dict)
from trip.data import Split, load_prepared, prepare, to_float
from trip.io import atomic_write, atomic_write_text, read_metrics, read_yaml_mapping
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
            order = torch.randperm(self.images.shape[0], generator=g)  # on the CPU: the same order everywhere
            self._epoch, self._order = epoch, to_device(order, self.images.device)
        return self._order[offset * self.batch_size : (offset + 1) * self.batch_size]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[self.rows(index)]


@dataclass
class Labels:
    """A conditional run's attributes: names, values (N, c) with hidden ones zeroed, observed mask (N, c)."""

    names: tuple[str, ...]
    values: torch.Tensor
    observed: torch.Tensor


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the CPU to a GPU through pinned memory, so that the host does not wait."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class TrainState:
    """What the training loop carries from step to step: ``step`` optimiser steps are done and
    ``cursor`` batches drawn. ``autocast`` is the context the losses are computed in."""

    model: torch.nn.Module
    opts: dict
    batches: Batches
    labels: Labels | None
    device: torch.device
    step: int = 0
    cursor: int = 0
    channels_last: bool = False
    autocast: Callable = contextlib.nullcontext

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """The model's inputs: (images,), or (images, attributes, observed) for a conditional model."""
        rows = self.batches.rows(self.cursor)
        self.cursor += 1
        x = to_float(to_device(self.batches.images[rows], self.device))  # uint8 crosses, not float32
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.labels is None:
            return (x,)
        return x, to_device(self.labels.values[rows], self.device), to_device(self.labels.observed[rows], self.device)


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


def vae_step(model, opts, next_batch, cfg: RunConfig, autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """One optimiser step; the batch means of the loss terms, as detached tensors (nothing read back)."""
    with autocast():
        loss, stats = model.loss(*next_batch())
    opts["model"].zero_grad(set_to_none=True)
    loss.backward()
    opts["model"].step()
    return stats


def gan_step(model, opts, next_batch, cfg: RunConfig, autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """n_critic critic steps and one generator (and prior) step; the last critic step's statistics and the
    generator's, as detached tensors (nothing read back)."""
    stats: dict[str, torch.Tensor] = {}
    for _ in range(cfg.train.n_critic):
        with autocast():
            loss, stats = model.critic_loss(*next_batch())
        opts["critic"].zero_grad(set_to_none=True)
        loss.backward()
        opts["critic"].step()
        model.clip_critic()
    model.critic.requires_grad_(False)  # the generator step must not accumulate critic grads
    with autocast():
        loss, g_stats = model.generator_and_prior_loss(cfg.train.batch_size)
    opts["generator"].zero_grad(set_to_none=True)
    loss.backward()
    opts["generator"].step()
    model.critic.requires_grad_(True)
    return {**stats, **g_stats}


def train_step(cfg: RunConfig, state: TrainState, sums: dict[str, torch.Tensor]) -> None:
    """One training step; its statistics are added to ``sums`` on the device and nothing is read back
    (a read makes the host wait for the device, every step): the loop reads ``sums`` at log time."""
    step_fn = vae_step if isinstance(state.model, VAE) else gan_step
    for k, v in step_fn(state.model, state.opts, state.next_batch, cfg, state.autocast).items():
        v = v.double()  # summed in float64, as the Python floats were: the logged means do not change
        sums[k] = sums[k] + v if k in sums else v
    state.step += 1


def read_means(sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """The means over ``count`` steps of the summed statistics: one read from the device."""
    if not sums:
        return {}
    return dict(zip(sums, (torch.stack(list(sums.values())) / count).tolist()))


# -- the GPU switches -------------------------------------------------------------------
def configure_backends(t: TrainConfig) -> None:
    """The process-wide numerics switches of a run, set before its first CUDA work, and set both ways,
    so that runs in one process (tests, chunked jobs) never inherit each other's."""
    if t.deterministic:
        # cuBLAS is reproducible only with a fixed workspace; it reads this when its handle is made.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(t.deterministic)
    torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic  # timing picks kernels by speed


def networks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's networks: its children but the prior and the likelihood, which stay float32."""
    return [m for name, m in model.named_children() if name not in ("prior", "likelihood")]


def _float32_outputs(module, inputs, output):
    """A network's outputs leave bf16 autocast as float32: the loss math after them stays float32."""
    return tuple(o.float() for o in output) if isinstance(output, tuple) else output.float()


def apply_speed_switches(model: torch.nn.Module, t: TrainConfig) -> None:
    """train.amp, channels_last and compile, on the networks, in place (with the defaults: nothing).

    Only training applies them: the weights and their state_dict keys are the same either way, and
    ``load_run`` gives the plain float32 model for evaluation.
    """
    for net in networks(model):
        if t.amp != "none":
            net.register_forward_hook(_float32_outputs)
        if t.channels_last:
            net.to(memory_format=torch.channels_last)
        if t.compile:
            net.compile()  # in place: state_dict keys keep their names


def autocast_context(t: TrainConfig, device: torch.device) -> Callable:
    """The context of the losses: bf16 autocast with train.amp bf16 (the networks run in it; the prior
    and the gradient penalty opt out), else none."""
    if t.amp == "bf16":
        return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def start_state(cfg: RunConfig, images: torch.Tensor, labels: Labels | None, device: torch.device) -> TrainState:
    """A run at step 0: the model and optimisers seeded from the run seed, the switches applied, the data."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    t = cfg.train
    model = build_model(cfg, images.shape[1], None if labels is None else labels.names).to(device)
    apply_speed_switches(model, t)
    opts = make_optimizers(model, cfg)
    if t.resident_data:  # moved once; batches are then indexed on the device
        images = images.to(device)
        if labels is not None:
            labels = Labels(labels.names, labels.values.to(device), labels.observed.to(device))
    batches = Batches(images, t.batch_size, cfg.seed)
    return TrainState(model, opts, batches, labels, device, channels_last=t.channels_last,
                      autocast=autocast_context(t, device))


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
def rng_state(device: torch.device) -> dict:
    """The RNG states a run draws from: the CPU's and, on CUDA, its own device's only. Every GPU's
    (get_rng_state_all) would not restore in a task that sees fewer GPUs, as a Ray task sees one."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore :func:`rng_state`. A CUDA state is restored only on a CUDA run: a checkpoint moved between
    the CPU and a GPU resumes (the draws on the new device then differ, as they would anyway)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # an older checkpoint: one state per visible GPU
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(path: Path, state: TrainState, digest: str) -> None:
    content = {
        "model": state.model.state_dict(),
        "channels": state.batches.images.shape[1],
        "optimizers": {k: o.state_dict() for k, o in state.opts.items()},
        "step": state.step,
        "cursor": state.cursor,
        "rng": rng_state(state.device),
        "config_hash": digest,
    }
    if state.labels is not None:  # conditional models: the attributes, in the order the model sees them
        content["attributes"] = list(state.labels.names)
    atomic_write(path, lambda handle: torch.save(content, handle))  # a kill keeps the previous one


def load_checkpoint(path: Path, state: TrainState, digest: str) -> None:
    """Restore a run's model, optimisers, position and RNG states into ``state``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise RuntimeError(f"checkpoint {path} is unreadable ({err}); delete it to restart the run") from None
    if saved.get("config_hash") != digest:
        raise RuntimeError(f"checkpoint {path} belongs to another config; delete it or choose another run_dir")
    state.model.load_state_dict(saved["model"])
    for k, o in state.opts.items():
        o.load_state_dict(saved["optimizers"][k])
    set_rng_state(saved["rng"], state.device)
    state.step, state.cursor = saved["step"], saved["cursor"]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint: the resumed run logs them again."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


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
        old = read_yaml_mapping(saved, "run config")
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
    configure_backends(cfg.train)  # before any CUDA work
    run_dir = _prepare_run_dir(cfg, digest)
    log.info("training %s on %s", run_dir, describe_device(device))
    start = time.perf_counter()
    train, _ = load_data(cfg)
    images = torch.from_numpy(np.ascontiguousarray(train.images))
    labels = load_labels(cfg, train) if cfg.conditional else None
    state = start_state(cfg, images, labels, device)
    ckpt, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    if ckpt.exists():
        load_checkpoint(ckpt, state, digest)
        _truncate_metrics(metrics_path, state.step)
        log.info("resuming %s at step %d", run_dir, state.step)
    elif metrics_path.exists():
        metrics_path.unlink()  # lines from a run killed before its first checkpoint
    final = _train_loop(cfg, state, stop_after, progress)
    if final is None:
        return RunResult(run_dir, digest, stop_after or 0, {}, time.perf_counter() - start)
    _finish(cfg, state, run_dir, digest, final, time.perf_counter() - start)
    return RunResult(run_dir, digest, cfg.train.steps, final, time.perf_counter() - start)


def describe_device(device: torch.device) -> str:
    """The device, with the GPU's name: a GPU host that trains on the CPU shows in the log."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _train_loop(cfg: RunConfig, state: TrainState, stop_after: int | None, progress: bool | None) -> dict | None:
    """Steps from ``state.step`` to ``train.steps``; returns the last logged metrics, or None if stopped early."""
    t, run_dir, model, images = cfg.train, Path(cfg.run_dir), state.model, state.batches.images
    probe, probe_steps = make_fd_probe(cfg, state.device), fd_steps(t)
    if state.step == 0 and reinit_due(cfg, model, 0):
        reinit_prior(model, state.opts, images, cfg, 0, state.device)
    sums: dict[str, torch.Tensor] = {}
    last: dict = {}
    count = 0
    bar = tqdm(total=t.steps, initial=state.step, disable=not (sys.stderr.isatty() if progress is None else progress))
    tick = time.perf_counter()
    model.train()
    while state.step < t.steps:
        train_step(cfg, state, sums)
        step, count = state.step, count + 1
        bar.update()
        epochs_done = state.cursor // state.batches.per_epoch
        if reinit_due(cfg, model, step):
            reinit_prior(model, state.opts, images, cfg, step, state.device)
        probe_due = probe is not None and step in probe_steps
        if step % t.log_every == 0 or step == t.steps or probe_due:
            last = {"step": step, "epoch": epochs_done, **read_means(sums, count)}
            last["steps_per_s"] = count / (time.perf_counter() - tick)  # after the read: the device is done
            if probe_due:
                last["domain_fd"] = probe(model)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(last) + "\n")
            log.info("step %d/%d %s", step, t.steps, _fmt(last))
            sums, count, tick = {}, 0, time.perf_counter()
        if step % t.checkpoint_every == 0 or step == t.steps or step == stop_after:
            save_checkpoint(run_dir / "checkpoint.pt", state, config_hash(cfg))
        if step == stop_after and step < t.steps:
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


def _finish(cfg: RunConfig, state: TrainState, run_dir: Path, digest: str, final: dict, wall: float) -> None:
    from trip.figures import save_image_grid

    state.model.eval()
    with torch.no_grad():
        samples = state.model.sample(cfg.train.sample_count).float().cpu()
    save_image_grid(samples, run_dir / "samples.png", padding=1)
    marker = {"config_hash": digest, "steps": cfg.train.steps, "final_metrics": final, "wall_seconds": wall,
              "device": str(state.device),
              "convergence": convergence(read_metrics(run_dir / "metrics.jsonl", missing_ok=True), cfg.train.steps)}
    atomic_write_text(run_dir / "complete.json", json.dumps(marker, indent=2))
    log.info("finished %s in %.1fs", run_dir, wall)


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(config, model) of a run directory, with the checkpoint's weights, in eval mode."""
    from trip.config import load_config

    run_dir = Path(run_dir)
    raw = read_yaml_mapping(run_dir / "config.yaml", "run config")
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
