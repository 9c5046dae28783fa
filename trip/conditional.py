"""Generation with missing conditions (paper Sec. 4 and Table 3): train, then judge the samples.

    python -m trip.conditional classifier --profile configs/shapes.yaml
    python -m trip.conditional train --profile configs/shapes.yaml --method vae_trip_cond --missing 0.5
    python -m trip.conditional evaluate --profile configs/shapes.yaml --method vae_trip_cond --missing 0.5
    python -m trip.conditional all --profile configs/shapes.yaml

A profile's ``conditional`` section (see :mod:`trip.profiles`) names the
methods, the fractions of hidden labels, the partial specifications and the
classifier. ``classifier`` trains the attribute classifier once per profile
(``RUN_ROOT/PROFILE/cond-classifier/``: ``classifier.pt`` and
``classifier.json`` with the held-out accuracy of each attribute); ``train``
is ``trip.train`` for one conditional run; ``evaluate`` generates
``samples_per_spec`` images per specification, classifies them and writes
``cond_eval.json`` (violation and diversity per specification and averaged)
and ``cond_samples.png`` (one row per specification) into the run directory;
``all`` does everything for every run and prints a table.

The functions take paths and configs and keep no state, so each can run as a
separate (e.g. Ray) task. ``device`` is resolved as training resolves it
(:func:`trip.train.resolve_device`): ``auto`` is the GPU when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from trip.config import ConfigError, DataConfig, RunConfig, config_hash
from trip.data import Split, to_float
from trip.figures import save_image_grid
from trip.io import atomic_write, atomic_write_text
from trip.metrics.conditional import (
    AttributeClassifier,
    classifier_accuracy,
    diversity,
    predict_attributes,
    train_classifier,
    violation_rates,
)
from trip.profiles import (
    ClassifierSettings,
    classifier_dir,
    conditional_runs,
    conditional_section,
    read_profile,
    resolve_conditional,
)
from trip.train import is_complete, load_data, load_run, resolve_device, run

log = logging.getLogger("trip.conditional")

WEIGHTS, ACCURACY = "classifier.pt", "classifier.json"
EVAL_JSON, GRID_PNG = "cond_eval.json", "cond_samples.png"


# -- the classifier --------------------------------------------------------------------
def classifier_key(data: DataConfig, settings: ClassifierSettings) -> str:
    """What a classifier depends on: the data (not where it is cached) and its settings."""
    content = {"data": dataclasses.asdict(data), "classifier": dataclasses.asdict(settings)}
    content["data"].pop("prepared_root")
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def train_classifier_cached(cfg_or_data: RunConfig | DataConfig, out_dir: str | Path,
                            settings: ClassifierSettings | None = None, device: str = "cpu") -> dict:
    """Train the attribute classifier of this data into ``out_dir``, unless one with the same key is there.

    Returns the content of ``classifier.json``: key, attribute names, held-out
    accuracy per attribute and their mean. The weights are written first and
    the json last, so a json always describes complete weights.
    """
    data = cfg_or_data.data if isinstance(cfg_or_data, RunConfig) else cfg_or_data
    settings = settings or ClassifierSettings()
    out_dir, key = Path(out_dir), classifier_key(data, settings)
    if (out_dir / ACCURACY).exists() and (out_dir / WEIGHTS).exists():
        info = json.loads((out_dir / ACCURACY).read_text())
        if info.get("key") == key:
            return info
    train, test = load_data(RunConfig(data=data))
    start = time.perf_counter()
    model = train_classifier(train, settings.steps, settings.batch_size, settings.lr, settings.seed,
                             resolve_device(str(device)))
    accuracy = classifier_accuracy(model, test)
    state = {"state_dict": model.state_dict(), "options": model.options,
             "attribute_names": list(train.attribute_names), "key": key}
    atomic_write(out_dir / WEIGHTS, lambda handle: torch.save(state, handle))
    info = {"key": key, "attributes": list(train.attribute_names), "accuracy": accuracy,
            "mean_accuracy": float(np.mean(list(accuracy.values()))), "settings": dataclasses.asdict(settings),
            "train_seconds": time.perf_counter() - start}
    atomic_write_text(out_dir / ACCURACY, json.dumps(info, indent=2))
    log.info("classifier: mean held-out accuracy %.3f (%s)", info["mean_accuracy"], out_dir)
    return info


def load_classifier(path: str | Path, device: str = "cpu") -> AttributeClassifier:
    """A classifier written by ``train_classifier_cached`` (its ``classifier.pt``, or the directory)."""
    path = Path(path)
    path = path / WEIGHTS if path.is_dir() else path
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = AttributeClassifier(**state["options"])
    model.load_state_dict(state["state_dict"])
    model.attribute_names = tuple(state["attribute_names"])
    return model.to(resolve_device(str(device))).eval()


# -- evaluation ------------------------------------------------------------------------
def spec_vector(spec: dict, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A specification {attribute: value} as values (c,) and a specified-mask (c,) over ``names``."""
    unknown = [name for name in spec if name not in names]
    if unknown:
        raise ValueError(f"specification {spec}: {unknown[0]!r} is not an attribute of the run ({', '.join(names)})")
    values = np.array([int(spec.get(name, 0)) for name in names])
    return values, np.array([name in spec for name in names])


def evaluate_conditional(run_dir: str | Path, classifier_path: str | Path, specs: list[dict],
                         samples_per_spec: int, seed: int = 0, out_dir: str | Path | None = None,
                         device: str = "cpu", grid_columns: int = 8) -> dict:
    """Generate ``samples_per_spec`` images per specification, classify them, score and write them.

    Returns (and writes to ``out_dir/cond_eval.json``, default the run
    directory) per specification the violation rate of each specified
    attribute, the fraction of samples violating any, the entropy in bits of
    each free attribute and of all free attributes jointly; ``summary``
    averages them over the specifications; ``readable`` is the classifier's
    accuracy on the run's reconstructions of held-out images (see
    ``reconstruction_accuracy``). ``cond_samples.png`` shows the first
    ``grid_columns`` samples of each specification, one row each.
    """
    if samples_per_spec < 1:
        raise ValueError(f"samples_per_spec must be >= 1, got {samples_per_spec}")
    device = resolve_device(str(device))
    run_dir = Path(run_dir)
    out_dir = run_dir if out_dir is None else Path(out_dir)
    if not is_complete(run_dir):
        raise RuntimeError(f"{run_dir} is not complete (no complete.json): train it first")
    cfg, model = load_run(run_dir, device)
    classifier = load_classifier(classifier_path, device)
    names = model.attribute_names
    absent = [name for name in names if name not in classifier.attribute_names]
    if absent:
        raise ValueError(f"the classifier at {classifier_path} does not predict {absent[0]!r}")
    columns = [classifier.attribute_names.index(name) for name in names]
    readable = reconstruction_accuracy(model, classifier, names, load_data(cfg)[1], device=device)
    records, rows = [], []
    for i, spec in enumerate(specs):
        values, mask = spec_vector(spec, names)
        # On the model's device: its prior draws there, and randn refuses a generator of another device.
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
        y = torch.from_numpy(values).expand(samples_per_spec, -1).to(device)
        observed = torch.from_numpy(mask).expand(samples_per_spec, -1).to(device)
        samples = model.sample_given(y, observed, generator).float().cpu()
        predicted = predict_attributes(classifier, samples)[:, columns].numpy()
        records.append(_record(spec, names, violation_rates(predicted, values, mask), diversity(predicted, mask)))
        rows.append(samples[:grid_columns])
    result = {
        "run": {"method": cfg.model.name, "missing": cfg.labels.missing, "seed": cfg.seed, "dataset": cfg.data.name,
                "run_dir": str(run_dir), "config_hash": config_hash(cfg)},
        "classifier": {"path": str(classifier_path)},
        "readable": readable,
        "settings": {"samples_per_spec": samples_per_spec, "seed": seed},
        "specs": records,
        "summary": _summary(records),
    }
    atomic_write_text(out_dir / EVAL_JSON, json.dumps(result, indent=2))
    save_image_grid(torch.cat(rows), out_dir / GRID_PNG, nrow=len(rows[0]), padding=1)
    return result


def reconstruction_accuracy(model, classifier: AttributeClassifier, names: tuple[str, ...], split: Split,
                            count: int = 512, device: str = "cpu") -> dict[str, float]:
    """Per attribute, how often the classifier reads the true value off the model's reconstructions
    (given all labels) of ``count`` images of ``split``: near 0.5, violations of that attribute say little."""
    device = resolve_device(str(device))
    columns = [split.attribute_names.index(name) for name in names]
    x = to_float(torch.from_numpy(np.ascontiguousarray(split.images[:count]))).to(device)
    y = torch.from_numpy(split.attributes[:count, columns].astype(np.int64)).to(device)
    outputs = model.reconstruct(x, y, torch.ones_like(y, dtype=torch.bool)).float().cpu()
    judged = predict_attributes(classifier, outputs)[:, [classifier.attribute_names.index(n) for n in names]]
    return {name: float(acc) for name, acc in zip(names, (judged == y.cpu()).float().mean(0).tolist())}


def _record(spec: dict, names: tuple[str, ...], violation: dict, spread: dict) -> dict:
    return {
        "spec": dict(spec),
        "label": " ".join(f"{k}={v}" for k, v in spec.items()),
        "violation": {n: float(r) for n, r in zip(names, violation["per_attribute"]) if n in spec},
        "violation_mean": violation["mean"],
        "violation_any": violation["any"],
        "diversity": {n: float(h) for n, h in zip(names, spread["per_attribute"]) if n not in spec},
        "diversity_mean": None if math.isnan(spread["mean"]) else spread["mean"],
        "diversity_joint": spread["joint"],
    }


def _summary(records: list[dict]) -> dict:
    def average(key: str) -> float | None:
        values = [r[key] for r in records if r[key] is not None]
        return float(np.mean(values)) if values else None

    keys = ("violation_any", "violation_mean", "diversity_mean", "diversity_joint")
    return {key: average(key) for key in keys}


# -- the grid of a profile -------------------------------------------------------------
def run_grid(profile: dict, seeds: list[int], run_root: str | Path = "runs", overrides: list[str] | None = None,
             device: str = "cpu") -> list[dict]:
    """Classifier, every conditional run and its evaluation, in order; returns the evaluations."""
    section = conditional_section(profile)
    runs = conditional_runs(profile, seeds)
    first = resolve_conditional(profile, *runs[0], run_root=run_root, overrides=overrides)
    out = classifier_dir(profile, run_root)
    train_classifier_cached(first, out, section.classifier, device)
    results = []
    for method, missing, seed in runs:
        cfg = resolve_conditional(profile, method, missing, seed, run_root, overrides)
        run(cfg)
        results.append(evaluate_conditional(cfg.run_dir, out, section.specs, section.samples_per_spec, seed,
                                            device=device))
    return results


def summary_table(results: list[dict]) -> str:
    """One line per evaluation: violations, diversity (bits) and the judge's mean accuracy on reconstructions."""
    lines = [f"{'method':<16}{'missing':>8}{'seed':>6}{'violated':>10}{'viol/attr':>11}{'H free':>8}{'H joint':>9}"
             f"{'readable':>10}"]
    for r in results:
        run, s = r["run"], r["summary"]
        h = "n/a" if s["diversity_mean"] is None else f"{s['diversity_mean']:.3f}"
        lines.append(f"{run['method']:<16}{run['missing']:>8.2f}{run['seed']:>6}{s['violation_any']:>10.3f}"
                     f"{s['violation_mean']:>11.3f}{h:>8}{s['diversity_joint']:>9.3f}"
                     f"{np.mean(list(r['readable'].values())):>10.3f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["classifier", "train", "evaluate", "all"])
    parser.add_argument("--profile", required=True, help="a profile YAML with a conditional section")
    parser.add_argument("--method", help="train/evaluate: a method of the conditional section, e.g. cvae")
    parser.add_argument("--missing", type=float, help="train/evaluate: the fraction of hidden labels, e.g. 0.5")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="seed(s) of the runs")
    parser.add_argument("--run-root", default="runs", help="run directories go under RUN_ROOT/PROFILE/")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (auto: the GPU if there is one)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        _command(args)
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as err:
        parser.exit(2, f"{args.command}: {err}\n")


def _command(args) -> None:

    profile = read_profile(args.profile)
    section = conditional_section(profile)
    if args.command == "all":
        print(summary_table(run_grid(profile, args.seed, args.run_root, args.set, args.device)))
        return
    method = args.method or next(iter(section.methods))
    missing = section.missing[0] if args.missing is None else args.missing
    cfg = resolve_conditional(profile, method, missing, args.seed[0], args.run_root, args.set)
    out = classifier_dir(profile, args.run_root)
    if args.command == "classifier":
        info = train_classifier_cached(cfg, out, section.classifier, args.device)
        print(f"{out}: mean held-out accuracy {info['mean_accuracy']:.3f}")
    elif args.command == "train":
        result = run(cfg)
        print(f"{result.run_dir}: {'already complete' if result.skipped else f'trained {result.steps} steps'}")
    else:
        result = evaluate_conditional(cfg.run_dir, out, section.specs, section.samples_per_spec, args.seed[0],
                                      device=args.device)
        print(summary_table([result]))


if __name__ == "__main__":
    main()
