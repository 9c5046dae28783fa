"""Optuna search over TRIP's shape: components per dimension N, core size m, optionally the latent size.

The driver owns the study; Optuna's SQLite storage is the source of truth:

    study = open_study(tune, storage_dir)
    outcome = run_study(study, tune, make_config, compute, on_trial_end)
    write_tuning_report(study, out_dir)

Instead of Ray Tune's ``OptunaSearch`` (which keeps its own trial bookkeeping and
reports to Optuna only at the end), the driver runs Optuna's ask/tell loop itself
and trains every trial in chunks of ``report_every`` steps, each chunk one Ray
task. After a chunk the driver reports the objective as an intermediate value
and asks the pruner; up to ``parallel`` trials interleave through
``ray.wait``. A chunk resumes the trial's run from its checkpoint, so a trial
re-asked after an interrupted study continues instead of starting over:
``load_if_exists`` reopens the study, trials a dead driver left RUNNING are
marked FAIL and their parameters enqueued again with the same run directory.

The objective follows the model (:data:`OBJECTIVES`): a VAE maximises the
validation ELBO, a GAN minimises FID of ``tune.fid_samples`` samples against
the cached reference statistics (computed at every report step, so pruning
compares like with like).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
import pandas as pd
import ray
from optuna.trial import FrozenTrial, TrialState

from pipeline.ray_runner import ComputeConfig, check_ray_device, gpus_per_run, pick_task, remote_variants
from trip.config import NON_EMPTY, POSITIVE, ConfigError, RunConfig, bounds, build_dataclass, rule

log = logging.getLogger("pipeline.tune")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REPORT_COLUMNS = ("number", "state", "n_components", "core_size", "latent_dim", "value", "pruned_at_step")


@dataclass
class TuneParams:
    """The ``tune`` section: the search space, the budget of each trial and where the study lives."""

    # a model of the profile: a VAE maximises validation ELBO, a GAN minimises FID
    model: str = field(default="vae", metadata=NON_EMPTY)
    prior: str = field(default="trip_learnable", metadata=NON_EMPTY)  # a TRIP prior variant of the profile
    n_trials: int = field(default=8, metadata=POSITIVE)  # finished (complete or pruned) trials the study should hold
    parallel: int = field(default=2, metadata=POSITIVE)  # trials in flight at once
    # components per dimension N
    n_min: int = field(default=2, metadata=rule(lambda n: n >= 2, "TRIP needs at least 2 components per dimension"))
    n_max: int = 20
    m_min: int = field(default=1, metadata=POSITIVE)  # core size m, searched on a log scale
    m_max: int = 64
    tune_latent: bool = False
    latent_choices: list = field(default_factory=lambda: [8, 16, 32], metadata=rule(
        lambda v: v and all(type(d) is int and d > 0 for d in v), "must be a non-empty list of positive integers"))
    steps: int = field(default=300, metadata=POSITIVE)  # training steps of each trial
    # steps between intermediate values (and pruning decisions)
    report_every: int = field(default=50, metadata=POSITIVE)
    validation_examples: int = field(default=256, metadata=POSITIVE)  # first test images scored by the ELBO (VAE)
    # generated and reference images of the FID objective (GAN)
    fid_samples: int = field(default=200, metadata=bounds(ge=2))
    seed: int = 0  # training seed of every trial and the sampler's seed
    # SQLite file, relative to the project root unless absolute
    storage: str = field(default="optuna.db", metadata=NON_EMPTY)
    study_name: str | None = field(default=None, metadata=NON_EMPTY)  # default: <profile>-<model>-<prior>

    def check(self, prefix: str) -> None:
        for low, high in (("n_min", "n_max"), ("m_min", "m_max")):
            if getattr(self, high) < getattr(self, low):
                raise ConfigError(f"{prefix}{high}: must be >= {prefix}{low} ({getattr(self, low)}), "
                                  f"got {getattr(self, high)}")

    def report_steps(self) -> list[int]:
        """The training steps after which a trial reports: every ``report_every``, and the last."""
        return list(range(self.report_every, self.steps, self.report_every)) + [self.steps]


def tune_params(raw: dict | None) -> TuneParams:
    """TuneParams from a mapping (``None``: the defaults); type and value errors name ``tune.<key>``."""
    return build_dataclass(TuneParams, raw or {}, "tune.")


# -- the objective ---------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    name: str  # as written in the report
    direction: str  # Optuna's "maximize" or "minimize"
    metric: str  # the intermediate values' MLflow metric name


OBJECTIVES = {
    "vae": Objective("validation ELBO (nats/image)", "maximize", "tune.elbo"),
    "wgan": Objective("FID", "minimize", "tune.fid"),
    "wgan_gp": Objective("FID", "minimize", "tune.fid"),
}


def objective_for(model_name: str) -> Objective:
    if model_name not in OBJECTIVES:
        raise ConfigError(f"tune.model: no tuning objective for a {model_name} (have: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[model_name]


# -- the study -------------------------------------------------------------------------
def open_study(tune: TuneParams, storage_path: str | Path, study_name: str,
               pruner: optuna.pruners.BasePruner | None = None, direction: str = "maximize") -> optuna.Study:
    """Create or reopen the study; trials a dead driver left RUNNING become FAIL and are re-asked."""
    storage_path = Path(storage_path).resolve()
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{storage_path}",
        study_name=study_name,
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=tune.seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("trial %d was left running by an interrupted study: marked FAIL, asked again", stale.number)
        study.tell(stale.number, state=TrialState.FAIL)
        # Same parameters and run directory: the new trial resumes from the old one's checkpoint.
        study.enqueue_trial(stale.params, user_attrs={"run_dir": stale.user_attrs.get("run_dir")})
    return study


def suggest(trial: optuna.Trial, tune: TuneParams) -> dict:
    """The trial's point of the search space, as config overrides."""
    overrides = {
        "prior.n_components": trial.suggest_int("n_components", tune.n_min, tune.n_max),
        "prior.core_size": trial.suggest_int("core_size", tune.m_min, tune.m_max, log=True),
    }
    if tune.tune_latent:
        overrides["model.latent_dim"] = trial.suggest_categorical("latent_dim", tune.latent_choices)
    return overrides


# -- one chunk of one trial, in a Ray worker -------------------------------------------
def checkpoint_step(run_dir: str | Path) -> int:
    """The step of the run's checkpoint (0 without one)."""
    import torch

    ckpt = Path(run_dir) / "checkpoint.pt"
    if not ckpt.exists():
        return 0
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"])


def validation_elbo(run_dir: str | Path, examples: int, seed: int = 0) -> float:
    """Mean ELBO (nats per image) over the first ``examples`` test images, one fixed noise draw.

    Evaluated where the run trains (its ``device``, resolved in this task), with
    a generator on that device: the model draws its noise on the device of its
    input, and ``randn`` refuses a generator of another device. The same noise
    at every step, so values compare within a study (whose trials share a device).
    """
    import numpy as np
    import torch

    from trip.data.prepared import to_float
    from trip.train import load_data, load_run, resolve_device

    cfg, model = load_run(run_dir)
    device = resolve_device(cfg.device)
    model.to(device)
    _, test = load_data(cfg)
    images = to_float(torch.from_numpy(np.ascontiguousarray(test.images[:examples])))
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        total = sum(model.elbo(x.to(device), generator).double().sum() for x in images.split(256))
    return total.item() / len(images)  # one host sync, at the end


def validation_fid(run_dir: str | Path, samples: int, seed: int = 0) -> float:
    """FID of ``samples`` generated images against as many training images (cached statistics)."""
    import dataclasses

    from trip.evaluate import EvalContext, fid_part
    from trip.train import load_data, load_run, resolve_device

    cfg, model = load_run(run_dir)
    device = resolve_device(cfg.device)
    model.to(device)
    train, test = load_data(cfg)
    ev = dataclasses.replace(cfg.eval, fid_samples=samples, seed=seed)
    return fid_part(cfg, model, train, test, ev, EvalContext(device))["value"]


def train_chunk(cfg: RunConfig, until: int, tune: TuneParams) -> float:
    """Train the trial's run up to step ``until`` (resuming it) and return the objective there."""
    from trip.train import run

    # run() trains on past stop_after when the checkpoint is already there: skip what is done.
    if checkpoint_step(cfg.run_dir) < until:
        run(cfg, stop_after=None if until >= cfg.train.steps else until, progress=False)
    if cfg.model.name == "vae":
        return validation_elbo(cfg.run_dir, tune.validation_examples, cfg.seed)
    return validation_fid(cfg.run_dir, tune.fid_samples, cfg.seed)


_CHUNK = remote_variants(train_chunk)  # a GPU chunk gets a fresh worker (max_calls=1), see remote_variants


# -- the driver loop -------------------------------------------------------------------
@dataclass
class _Running:
    trial: optuna.Trial
    cfg: RunConfig
    pending: list[int]  # report steps still to train
    step: int = 0  # the step the chunk in flight trains up to


@dataclass
class TuneOutcome:
    finished: list[int] = field(default_factory=list)  # trial numbers completed or pruned in this session
    failed: dict[int, str] = field(default_factory=dict)  # trial number -> error


def run_study(
    study: optuna.Study,
    tune: TuneParams,
    make_config: Callable[[dict, str], RunConfig],
    compute: ComputeConfig,
    on_trial_end: Callable[[FrozenTrial, RunConfig], None] | None = None,
) -> TuneOutcome:
    """Ask, train in chunks, report, prune, tell, until the study holds ``n_trials`` finished trials.

    ``make_config(overrides, trial_dir_name)`` gives the trial's RunConfig; needs an open Ray
    session. A trial whose chunk fails is told FAIL and the others go on.
    """
    outcome = TuneOutcome()
    gpus = gpus_per_run(compute)
    # Every trial has the device of this config (trials change N, m and the latent size): check it before any.
    check_ray_device(make_config({}, "check").device, gpus, " (tune trials)")
    task, options = pick_task(_CHUNK, compute.cpus_per_run, gpus)
    limit = min(tune.parallel, compute.max_parallel or tune.parallel)
    in_flight: dict[ray.ObjectRef, _Running] = {}

    def submit(state: _Running) -> None:
        state.step = state.pending.pop(0)
        ref = task.options(name=f"trial-{state.trial.number}-{state.step}", **options).remote(
            state.cfg, state.step, tune)
        in_flight[ref] = state

    while True:
        while len(in_flight) < limit and _finished_count(study) + len(in_flight) < tune.n_trials:
            submit(_ask(study, tune, make_config))
        if not in_flight:
            return outcome
        [done], _ = ray.wait(list(in_flight), num_returns=1)
        state = in_flight.pop(done)
        ended = _advance(study, state, done, outcome)
        if ended is None:
            submit(state)
        elif on_trial_end is not None:
            on_trial_end(ended, state.cfg)


def _finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _ask(study: optuna.Study, tune: TuneParams, make_config) -> _Running:
    trial = study.ask()
    overrides = suggest(trial, tune)
    # An enqueued retry names the run directory of the trial it replaces.
    run_dir_name = trial.user_attrs.get("run_dir") or f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", run_dir_name)
    cfg = make_config(overrides, run_dir_name)
    log.info("trial %d: %s -> %s", trial.number, trial.params, cfg.run_dir)
    return _Running(trial, cfg, tune.report_steps())


def _advance(study: optuna.Study, state: _Running, ref: ray.ObjectRef, outcome: TuneOutcome) -> FrozenTrial | None:
    """Take one chunk's result: report it, then prune, finish, or return None to go on."""
    trial = state.trial
    try:
        value = ray.get(ref)
    except ray.exceptions.RayError as err:
        outcome.failed[trial.number] = (str(err).splitlines() or [""])[0]
        log.error("trial %d failed at step %d:\n%s", trial.number, state.step, err)
        return study.tell(trial, state=TrialState.FAIL)
    if not math.isfinite(value):
        outcome.failed[trial.number] = f"objective {value} at step {state.step}"
        return study.tell(trial, state=TrialState.FAIL)
    trial.report(value, state.step)
    if state.pending and trial.should_prune():
        log.info("trial %d pruned at step %d (objective %.2f)", trial.number, state.step, value)
        outcome.finished.append(trial.number)
        return study.tell(trial, state=TrialState.PRUNED)
    if state.pending:
        return None
    log.info("trial %d complete: objective %.2f", trial.number, value)
    outcome.finished.append(trial.number)
    return study.tell(trial, value)


# -- the report ------------------------------------------------------------------------
def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """``study.trials_dataframe()`` as the report's columns: number, state, N, m, latent size, value, pruned at."""
    frame = study.trials_dataframe(attrs=("number", "state", "params", "value"))
    frame = frame.rename(columns=lambda c: c.removeprefix("params_")).reindex(columns=list(REPORT_COLUMNS))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    frame["pruned_at_step"] = frame["number"].map({t.number: max(t.intermediate_values)
                                                   for t in pruned if t.intermediate_values})
    integers = ["number", "n_components", "core_size", "latent_dim", "pruned_at_step"]
    return frame.astype({c: "Int64" for c in integers} | {"value": float})


def write_tuning_report(study: optuna.Study, out_dir: str | Path, objective: Objective) -> list[Path]:
    """best.json, trials.csv, trials.md and Optuna's plots in ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = trials_frame(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = {"study": study.study_name, "direction": objective.direction, "objective": objective.name,
            "n_trials": len(trials), "n_complete": len(complete)}
    if complete:
        best.update(best_value=study.best_value, best_params=study.best_params, best_trial=study.best_trial.number)
    written = [out_dir / "best.json", out_dir / "trials.csv", out_dir / "trials.md"]
    written[0].write_text(json.dumps(best, indent=2) + "\n")
    trials.to_csv(written[1], index=False, lineterminator="\n")
    plots, notes = _plots(study, out_dir, complete)
    written[2].write_text(_markdown(study, best, trials, notes))
    return written + plots


def _markdown(study: optuna.Study, best: dict, trials: pd.DataFrame, notes: list[str]) -> str:
    lines = [f"# Tuning: {study.study_name}", ""]
    if "best_value" in best:
        lines += [f"Best {best['objective']} {best['best_value']:.3f} (trial {best['best_trial']}, "
                  f"{best['direction']}d): {best['best_params']}", ""]
    else:
        lines += ["No trial has completed yet.", ""]
    shown = trials.astype(object).where(trials.notna(), None)  # tabulate prints None as missingval
    lines.append(shown.to_markdown(index=False, floatfmt=".3f", missingval=""))
    return "\n".join(lines + [""] + [f"Note: {n}" for n in notes]) + "\n"


def _plots(study: optuna.Study, out_dir: Path, complete: list[FrozenTrial]) -> tuple[list[Path], list[str]]:
    """Optimisation history, parameter importances and the N x m contour, as far as the trials allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    made, notes = [], []
    wanted = {"optimization_history.png": lambda: ovm.plot_optimization_history(study)}
    if _importances_possible(complete):
        wanted["param_importances.png"] = lambda: ovm.plot_param_importances(study)
    else:
        notes.append("parameter importances need at least 2 completed trials whose parameters differ; not plotted.")
    if complete:
        wanted["contour_n_m.png"] = lambda: ovm.plot_contour(study, params=["n_components", "core_size"])
    else:
        notes.append("no completed trial: no contour over N x m.")
    with warnings.catch_warnings():
        # The matplotlib backend is marked experimental; the plots are what we want regardless.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A history of pruned trials only has no labelled line; an empty legend is no problem.
        warnings.filterwarnings("ignore", "No artists with labels", UserWarning)
        for name, draw in wanted.items():
            draw()
            plt.gcf().savefig(out_dir / name, bbox_inches="tight", dpi=100)
            plt.close("all")
            made.append(out_dir / name)
    return made, notes


def _importances_possible(complete: list[FrozenTrial]) -> bool:
    if len(complete) < 2:
        return False
    names = {name for t in complete for name in t.params}
    return any(len({t.params.get(name) for t in complete}) > 1 for name in names)
