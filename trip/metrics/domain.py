"""Dataset-native evaluation: distances in an attribute classifier's feature space, and mode coverage.

Inception FID at a few hundred samples cannot rank models on the 32x32
``shapes`` images, and Inception runs at ~10 images/s on this CPU. Here the
feature network is made for the dataset: the
:class:`~trip.metrics.conditional.AttributeClassifier` trained on its training
split, once per data config (``trip.conditional.train_classifier_cached``,
keyed on the data config without its cache path and on the classifier
settings; ``eval.domain_classifier_steps``). Its held-out accuracy must reach
:data:`MIN_ACCURACY` on every attribute; a warning names those that do not,
and the result records it (``classifier.ok``). Its hidden layer (after the
ReLU, 64 units) gives the features, its logits the attributes. The features
are divided by one constant, the root mean square of the reference features,
so that KID's cubic kernel sees x·y/d of order 1 (as with Inception features;
unscaled, the real floor's KID came out as 1200 ± 1200) and no value depends
on the arbitrary scale a training run gives the layer. Precision and recall
do not change under the scaling; FD is in these units. Metrics, for
generated images against real ones:

* ``fd``: the Fréchet distance of Gaussians fitted to the two feature sets
  (:func:`trip.metrics.fid.fid_from_stats`, FID's formula in this space);
* ``kid`` (``kid_std``): the kernel distance of Bińkowski et al. (2018): the
  unbiased MMD² with the cubic kernel k(x, y) = (x·y / d + 1)³, averaged over
  ``kid_subsets`` pairs of random subsets of ``kid_subset_size`` (drawn without
  replacement, as torch-fidelity does), and its standard deviation over them;
* ``precision``, ``recall``: Kynkäänniemi et al. (2019): a set's manifold is
  the union of balls around its features reaching each one's k-th nearest
  neighbour (k = ``pr_k``); precision is the fraction of generated features in
  the real manifold, recall the fraction of real features in the generated one;
* ``modes_covered`` of ``modes_total``, ``mode_kl``, ``mode_tv``, for datasets
  whose exact attribute distribution is known (:data:`EXACT_MODES`; ``shapes``:
  2^9 = 512 combinations): the classifier reads the attributes of
  ``mode_samples`` images; a combination is covered when at least one image has
  it. ``mode_kl`` is KL(p_data || p_model) in nats, with p_model smoothed by
  Jeffreys pseudo-counts, (count + 1/2) / (n + K/2) over the K cells, so an
  empty cell costs a finite penalty (about p log(2 p n) for a cell of data mass
  p) instead of infinity; ``mode_tv`` is the total variation
  1/2 sum |p_data - count/n| with the raw frequencies.

Real image sets, all from the test split (never seen by the classifier): the
reference is the first ``domain_real`` test images; the floor,
``domain["real"]``, scores the next ``domain_real`` test images against the
same reference (and the modes of the first ``mode_samples`` test images) with
the same code: what a perfect generator gets at these sample sizes (finite
samples and classifier errors). The test split must hold
max(2 ``domain_real``, ``mode_samples``) images (``data.options.n_test`` of
``shapes``).

Cache, per data config: ``<domain_cache_dir>/<dataset>-<size>px-<key>/`` holds
``classifier.pt`` and ``classifier.json`` (weights and held-out accuracy),
``reference-n<R>.npz`` (the reference features, tagged with the weights'
digest) and ``floor-<digest>.json`` (the floor's scores). The DVC ``prepare``
stage fills it (:func:`prepare_domain`); evaluation and training read it.
Features computed on a GPU (in full float32, as FID's) round differently from
CPU ones: their files name the device type (``reference-n<R>-cuda.npz``, a
floor digest over it too), while CPU files keep their names. The classifier
needs no such key: whichever device trained it, every result names its
weights' digest.

Training curves: ``reference = load_domain_reference(cfg.data, cfg.eval)`` once,
then ``reference.fd(images)`` (images in [-1, 1] or uint8) at each check.

Measured on shapes 32x32 (n_test 20000, the defaults: 2000 classifier steps,
5000 / 5000 / 10000 images). Classifier: held-out accuracy >= 0.994 on every
attribute (800 steps: square 0.947, striped 0.939). Real floor: FD 0.046,
KID -0.0005 ± 0.0038, precision 0.927, recall 0.933, modes 499/512, KL 0.028,
TV 0.087. An untrained VAE: FD 53.5, KID 2.44, precision = recall = 0, modes
1/512, KL 4.17. CPU time on one thread of the 2-core machine: the domain part
of one run 10.5 s (of which sampling 10000 images from the small VAE 2.5 s,
classifier features 4.9 s, KID 2.1 s, precision/recall 1.0 s); the real floor
10.6 s once; ``reference.fd`` of 1000 / 2000 images 0.6 / 1.0 s; training
the classifier (once per data config) took 756 s on one thread of the loaded machine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.ao.quantization import fuse_modules
from tqdm import tqdm

from trip.config import ConfigError, DataConfig, EvalConfig, RunConfig
from trip.data import Split, shapes, to_float
from trip.io import atomic_write, atomic_write_text
from trip.metrics.conditional import AttributeClassifier
from trip.metrics.fid import (
    FeatureStats,
    _as_batch_source,
    _split,
    feature_stats,
    fid_from_stats,
    full_precision,
    to_uint8,
)

log = logging.getLogger("trip.metrics.domain")

MIN_ACCURACY = 0.95  # held-out accuracy every attribute needs before the features and attributes are trusted
FEATURE_SPACE = "fused-hidden-relu/reference-rms"  # names the feature space in cached results; change it with the space


@dataclass(frozen=True)
class ExactModes:
    """A dataset's exact attribute joint: attribute order, cell probabilities, and rows -> cell indices."""

    attributes: tuple[str, ...]
    probabilities: Callable[[], np.ndarray]
    index: Callable[[np.ndarray], np.ndarray]


EXACT_MODES: dict[str, ExactModes] = {
    "shapes": ExactModes(shapes.ATTRIBUTES, shapes.attribute_probabilities, shapes.combination_index),
}


# -- features --------------------------------------------------------------------------
@torch.inference_mode()
def classifier_features(classifier: AttributeClassifier, images, batch_size: int = 500, progress: bool = False,
                        total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, hidden) float32 and predicted attributes (N, c) int8 of images.

    ``images``: uint8 (N, C, H, W), float in [-1, 1] (quantised to 256 levels
    first, as real images are), as a tensor or array, or an iterable of such
    batches (e.g. a generator drawing samples). The features are the
    classifier's hidden layer after its ReLU; the attributes, its logits > 0.
    """
    body, head = classifier.net[:-1], classifier.net[-1]
    device = next(classifier.parameters()).device
    features, attributes = [], []
    if total is None and isinstance(images, (np.ndarray, Tensor)):
        total = len(images)
    with full_precision(), tqdm(total=total, desc="domain features", unit="img", disable=not progress) as bar:
        for batch in _split(_as_batch_source(images), batch_size):
            x = torch.from_numpy(np.array(batch)) if isinstance(batch, np.ndarray) else batch.detach()
            if x.is_floating_point():
                x = to_uint8(x, (-1, 1))
            hidden = body(to_float(x.cpu()).to(device))
            features.append(hidden.float().cpu())
            attributes.append((head(hidden) > 0).to(torch.int8).cpu())
            bar.update(len(x))
    if not features:
        raise ValueError("no images given")
    return torch.cat(features).numpy(), torch.cat(attributes).numpy()


def inference_copy(classifier: AttributeClassifier) -> AttributeClassifier:
    """An eval-mode copy with each conv, batch norm and ReLU fused into one conv: the same outputs up to
    float rounding (~3e-5 of features up to ~100), 1.4-1.7x faster on this CPU."""
    fused = copy.deepcopy(classifier).eval()
    groups = [[str(i), str(i + 1), str(i + 2)] for i, layer in enumerate(fused.net) if isinstance(layer, nn.Conv2d)]
    fused.net = fuse_modules(fused.net, groups)
    return fused


# -- metrics on features ---------------------------------------------------------------
def frechet_distance(features: np.ndarray, reference: FeatureStats) -> float:
    """Fréchet distance of the Gaussian fitted to ``features`` (N, D) from the reference statistics."""
    return fid_from_stats(feature_stats(features), reference).value


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of samples x (n, D) and y (m, D) under k(a, b) = (a·b / D + 1)³ (diagonals left out).

    In float64, with torch's in-place ops (~3x numpy's time for 1000 x 1000 here).
    """
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    n, m, dim = len(x), len(y), x.shape[1]
    if n < 2 or m < 2 or y.shape[1] != dim:
        raise ValueError(f"need two (>= 2, D) samples of one dimension, got {tuple(x.shape)} and {tuple(y.shape)}")

    def kernel_sum(a: Tensor, b: Tensor, same: bool) -> float:
        k = (a @ b.T).div_(dim).add_(1).pow_(3)
        return (k.sum() - k.diagonal().sum() if same else k.sum()).item()

    return kernel_sum(x, x, True) / (n * (n - 1)) + kernel_sum(y, y, True) / (m * (m - 1)) \
        - 2 * kernel_sum(x, y, False) / (n * m)


def kid(features: np.ndarray, reference: np.ndarray, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, int]:
    """KID: mean and standard deviation of :func:`polynomial_mmd2` over random subset pairs, and the subset size.

    Each subset is ``subset_size`` rows drawn without replacement from each set
    (fewer if a set is smaller), as torch-fidelity does.
    """
    size = min(subset_size, len(features), len(reference))
    rng = np.random.default_rng(seed)
    x, y = torch.as_tensor(features, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64)
    values = [polynomial_mmd2(x[torch.from_numpy(rng.choice(len(x), size, replace=False))],
                              y[torch.from_numpy(rng.choice(len(y), size, replace=False))]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values)), size


def knn_radii(features: Tensor, k: int, chunk: int = 1000) -> Tensor:
    """Distance of each row to its k-th nearest other row (the row itself, at distance 0, is not counted)."""
    if not 1 <= k < len(features):
        raise ValueError(f"k must be in 1..{len(features) - 1} for {len(features)} points, got {k}")
    return torch.cat([torch.cdist(rows, features).kthvalue(k + 1, dim=1).values for rows in features.split(chunk)])


def precision_recall(features: np.ndarray, reference: np.ndarray, k: int = 3, chunk: int = 1000,
                     reference_radii: Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``features`` against ``reference``.

    Distances come in blocks of ``chunk`` generated rows against all real
    ones, so memory grows with ``chunk`` times the set size (20 MB for 1000 x
    5000), not its square; each block serves both directions. ``reference_radii``
    (:func:`knn_radii` of the reference) saves recomputing them.
    """
    fake, real = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(reference, dtype=torch.float32)
    real_radii = knn_radii(real, k, chunk) if reference_radii is None else reference_radii
    inside_real, covered = [], torch.zeros(len(real), dtype=torch.bool)
    for rows, radii in zip(fake.split(chunk), knn_radii(fake, k, chunk).split(chunk)):
        distances = torch.cdist(rows, real)
        inside_real.append((distances <= real_radii[None]).any(dim=1))  # in some real point's ball
        covered |= (distances <= radii[:, None]).any(dim=0)  # real points in some generated point's ball
    return torch.cat(inside_real).double().mean().item(), covered.double().mean().item()


def mode_statistics(cells: np.ndarray, p_data: np.ndarray) -> dict:
    """Coverage, KL(p_data || p_model) and TV of samples' cell indices against the exact cell probabilities.

    ``modes_covered``: cells of positive data mass with at least one sample, of
    ``modes_total`` such cells. ``mode_kl``: nats, p_model = (count + 1/2) /
    (n + K/2) over all K cells (Jeffreys pseudo-counts). ``mode_tv``: 1/2 sum
    |p_data - count / n|, unsmoothed.
    """
    counts = np.bincount(np.asarray(cells), minlength=len(p_data))
    if len(counts) != len(p_data):
        raise ValueError(f"cell indices up to {len(counts) - 1}, but p_data has {len(p_data)} cells")
    n, cells_total = int(counts.sum()), len(p_data)
    if n == 0:
        raise ValueError("no samples given")
    q = (counts + 0.5) / (n + 0.5 * cells_total)
    positive = p_data > 0  # the modes; cells of zero data mass add nothing to KL and are no mode to cover
    kl = float(np.sum(p_data[positive] * np.log(p_data[positive] / q[positive])))
    return {"modes_covered": int((counts[positive] > 0).sum()), "modes_total": int(positive.sum()), "mode_kl": kl,
            "mode_tv": float(0.5 * np.abs(p_data - counts / n).sum()), "n_modes_samples": n}


# -- the cached reference --------------------------------------------------------------
@dataclass
class DomainReference:
    """The feature network of a data config and the features of its reference set (the first R test images)."""

    classifier: AttributeClassifier  # fused for inference (:func:`inference_copy`)
    info: dict  # classifier.json: key, attribute names, held-out accuracy per attribute
    directory: Path
    dataset: str
    features: np.ndarray  # (R, D), scaled
    stats: FeatureStats
    weights: str  # digest of classifier.pt, which every cached result names
    scale: float  # raw features are divided by it: the reference's root mean square feature
    batch_size: int = 500
    _radii: dict = field(default_factory=dict, repr=False)

    def measure(self, images, progress: bool = False, total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scaled features and predicted attributes, see :func:`classifier_features`."""
        features, attributes = classifier_features(self.classifier, images, self.batch_size, progress, total)
        return features / np.float32(self.scale), attributes

    def radii(self, k: int) -> Tensor:
        """Each reference feature's distance to its k-th nearest other one (computed once per k)."""
        if k not in self._radii:
            self._radii[k] = knn_radii(torch.as_tensor(self.features, dtype=torch.float32), k)
        return self._radii[k]

    def fd(self, images) -> float:
        """Fréchet distance of these images to the reference: the cheap check for training curves."""
        return frechet_distance(self.measure(images)[0], self.stats)

    @property
    def accuracy_ok(self) -> bool:
        return min(self.info["accuracy"].values()) >= MIN_ACCURACY

    @property
    def device_suffix(self) -> str:
        return _device_suffix(next(self.classifier.parameters()).device)


def _device_suffix(device: str | torch.device) -> str:
    """What cached features' names add for the device that computes them: nothing for the CPU's."""
    kind = torch.device(device).type
    return "" if kind == "cpu" else f"-{kind}"


def domain_directory(data: DataConfig, ev: EvalConfig) -> Path:
    """Where the network of this data config and its reference results are cached."""
    from trip.conditional import classifier_key

    return Path(ev.domain_cache_dir) / f"{data.name}-{data.image_size}px-{classifier_key(data, _settings(ev))}"


def _settings(ev: EvalConfig):
    from trip.profiles import ClassifierSettings

    return ClassifierSettings(steps=ev.domain_classifier_steps)


def load_domain_reference(data: DataConfig | RunConfig, ev: EvalConfig, test: Split | None = None,
                          device: str | torch.device = "cpu", progress: bool = False) -> DomainReference:
    """The cached feature network and reference features of a data config, made on first use.

    Trains the classifier (minutes at most, once per data config) and computes
    the features of the first ``ev.domain_real`` test images unless cached.
    ``test`` saves loading the prepared test split again.
    """
    from trip.conditional import WEIGHTS, load_classifier, train_classifier_cached
    from trip.train import resolve_device

    device = resolve_device(str(device))
    data = data.data if isinstance(data, RunConfig) else data
    directory = domain_directory(data, ev)
    path = directory / f"reference-n{ev.domain_real}{_device_suffix(device)}.npz"
    if test is None and not path.exists():
        test = _test_split(data)
    if test is not None:  # before the classifier's training, which the error would waste
        check_test_size(data.name, len(test), ev, floor=False)
    start = time.perf_counter()
    info = train_classifier_cached(data, directory, _settings(ev), str(device))
    low = {name: acc for name, acc in info["accuracy"].items() if acc < MIN_ACCURACY}
    if low:
        log.warning("domain: the classifier in %s reads %s with held-out accuracy below %.2f: %s; its attributes "
                    "and features are unreliable (raise eval.domain_classifier_steps)", directory,
                    ", ".join(low), MIN_ACCURACY, ", ".join(f"{n} {a:.3f}" for n, a in low.items()))
    classifier = inference_copy(load_classifier(directory, device))
    weights = hashlib.sha256((directory / WEIGHTS).read_bytes()).hexdigest()[:16]
    key = f"{weights}-{FEATURE_SPACE}-test-first-{ev.domain_real}{_device_suffix(device)}"
    features = _read_features(path, key)
    if features is None:
        test = test if test is not None else _test_split(data)
        log.info("domain: features of %d reference test images -> %s", ev.domain_real, path)
        features = classifier_features(classifier, test.images[: ev.domain_real], ev.domain_batch_size, progress)[0]
        atomic_write(path, lambda handle: np.savez(handle, key=np.array(key), features=features))
    scale = float(np.sqrt(np.mean(features.astype(np.float64) ** 2)))
    if not scale > 0:
        raise RuntimeError(f"the classifier in {directory} gives all-zero features for the reference; retrain it")
    features = features / np.float32(scale)
    log.info("domain: reference of %s ready in %.1f s (%s, min held-out accuracy %.3f)", data.name,
             time.perf_counter() - start, directory, min(info["accuracy"].values()))
    return DomainReference(classifier, info, directory, data.name, features, feature_stats(features), weights,
                           scale, ev.domain_batch_size)


def _read_features(path: Path, key: str) -> np.ndarray | None:
    """Cached features, or None when absent or made by other weights (they are then recomputed)."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as stored:
        if str(stored["key"]) == key:
            return stored["features"]
    log.info("domain: %s belongs to other classifier weights; recomputing", path)
    return None


def _test_split(data: DataConfig) -> Split:
    from trip.train import load_data

    return load_data(RunConfig(data=data))[1]


def check_test_size(dataset: str, available: int, ev: EvalConfig, floor: bool = True) -> None:
    """Raise ConfigError naming ``data.options.n_test`` unless the test split holds the real sets.

    The reference needs ``domain_real`` images; with ``floor``, the floor needs
    another ``domain_real`` and, where the modes apply, ``mode_samples``.
    """
    needed, why = ev.domain_real, f"{ev.domain_real} reference images (eval.domain_real)"
    if floor:
        needed = 2 * ev.domain_real
        why = f"{ev.domain_real} reference + {ev.domain_real} floor images (eval.domain_real)"
        if dataset in EXACT_MODES:
            needed, why = max(needed, ev.mode_samples), why + f", {ev.mode_samples} for the modes (eval.mode_samples)"
    if available < needed:
        raise ConfigError(
            f"data.options.n_test: the {dataset} test split has {available} images, the domain evaluation needs "
            f"{needed} ({why}); raise data.options.n_test (shapes generates them in seconds) or lower "
            f"eval.domain_real / eval.mode_samples"
        )


# -- scores ----------------------------------------------------------------------------
def _scores(reference: DomainReference, features: np.ndarray, attributes: np.ndarray | None,
            ev: EvalConfig) -> dict:
    """The metrics of one feature set (and its attributes, for the modes) against the reference."""
    out = {"fd": frechet_distance(features, reference.stats)}
    out["kid"], out["kid_std"], out["kid_subset_size"] = kid(features, reference.features, ev.kid_subsets,
                                                             ev.kid_subset_size, ev.seed)
    out["precision"], out["recall"] = precision_recall(features, reference.features, ev.pr_k,
                                                       reference_radii=reference.radii(ev.pr_k))
    out.update({"n_samples": len(features), "n_real": len(reference.features), "kid_subsets": ev.kid_subsets,
                "pr_k": ev.pr_k, "feature_dim": features.shape[1]})
    out.update(_modes(reference, attributes))
    return out


def _modes(reference: DomainReference, attributes: np.ndarray | None) -> dict:
    spec = EXACT_MODES.get(reference.dataset)
    if spec is None or attributes is None:
        return dict.fromkeys(("modes_covered", "modes_total", "mode_kl", "mode_tv", "n_modes_samples"))
    names = list(reference.info["attributes"])
    missing = [name for name in spec.attributes if name not in names]
    if missing:
        raise ValueError(f"the classifier in {reference.directory} does not read {missing[0]!r}")
    cells = spec.index(attributes[:, [names.index(name) for name in spec.attributes]])
    return mode_statistics(cells, spec.probabilities())


def _generated_count(dataset: str, ev: EvalConfig) -> int:
    """Generated images needed: ``domain_samples``, or ``mode_samples`` where the modes apply and it is more."""
    return max(ev.domain_samples, ev.mode_samples if dataset in EXACT_MODES else 0)


def real_floor(reference: DomainReference, ev: EvalConfig, test: Split | None = None,
               data: DataConfig | None = None, progress: bool = False) -> dict:
    """The scores of held-out real images: the next ``domain_real`` test images (and the first ``mode_samples``
    for the modes) against the reference. Cached beside the reference."""
    settings = {k: getattr(ev, k) for k in ("domain_real", "mode_samples", "kid_subsets", "kid_subset_size",
                                            "pr_k", "seed")}
    what = [reference.weights, FEATURE_SPACE, settings] + ([reference.device_suffix] if reference.device_suffix else [])
    tag = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    tag = tag.hexdigest()[:16]
    path = reference.directory / f"floor-{tag}.json"
    if path.exists():
        return json.loads(path.read_text())
    if test is None:
        if data is None:
            raise ValueError("real_floor needs the test split or the data config to load it")
        test = _test_split(data)
    check_test_size(reference.dataset, len(test), ev)
    start = time.perf_counter()
    r = ev.domain_real
    features = reference.measure(test.images[r : 2 * r], progress)[0]
    attributes = None
    if reference.dataset in EXACT_MODES:
        attributes = reference.measure(test.images[: ev.mode_samples], progress)[1]
    out = {**_scores(reference, features, attributes, ev), "test_rows": [r, 2 * r]}
    atomic_write_text(path, json.dumps(out, indent=2))
    log.info("domain: real floor of %s in %.1f s: %s", reference.dataset, time.perf_counter() - start, summary(out))
    return out


def evaluate_domain(reference: DomainReference, samples: Tensor | Callable[[int], Tensor], ev: EvalConfig,
                    test: Split | None = None, data: DataConfig | None = None, progress: bool = False) -> dict:
    """The ``domain`` entry of ``eval.json`` for generated images, with the real floor under ``"real"``.

    ``samples``: images in [-1, 1] (or uint8), at least ``ev.domain_samples``
    of them (``ev.mode_samples`` where the modes apply), or a sampler
    ``n -> n images`` that is called in batches of ``ev.domain_batch_size``
    (seed it before). The first ``domain_samples`` images give ``fd``,
    ``kid``, ``precision`` and ``recall``; the first ``mode_samples``, the modes.
    ``test`` (or ``data``, to load it) is needed only when the floor is not cached.
    """
    start = time.perf_counter()
    floor = real_floor(reference, ev, test, data, progress)  # first: a too small test split fails before sampling
    n_generated = _generated_count(reference.dataset, ev)
    if callable(samples):
        batch = ev.domain_batch_size
        source = (samples(min(batch, n_generated - i)) for i in range(0, n_generated, batch))
    elif len(samples) < n_generated:
        raise ValueError(f"{len(samples)} images given, the domain evaluation needs {n_generated} "
                         f"(eval.domain_samples / eval.mode_samples)")
    else:
        source = samples[:n_generated]
    features, attributes = reference.measure(source, progress, total=n_generated)
    modes = attributes[: ev.mode_samples] if reference.dataset in EXACT_MODES else None
    out = _scores(reference, features[: ev.domain_samples], modes, ev)
    out["real"] = floor
    out["classifier"] = {"directory": str(reference.directory), "weights": reference.weights,
                         "min_accuracy": min(reference.info["accuracy"].values()), "ok": reference.accuracy_ok}
    out["seconds"] = time.perf_counter() - start
    log.info("domain: %s (real floor: %s) in %.1f s", summary(out), summary(out["real"]), out["seconds"])
    return out


def prepare_domain(cfg: RunConfig, test: Split | None = None, device: str | torch.device = "cpu",
                   progress: bool = False) -> DomainReference:
    """Fill the cache of a run config's data: network, reference features and the real floor (the prepare stage)."""
    test = test if test is not None else _test_split(cfg.data)
    check_test_size(cfg.data.name, len(test), cfg.eval)  # before the classifier's training
    reference = load_domain_reference(cfg.data, cfg.eval, test, device, progress)
    real_floor(reference, cfg.eval, test, cfg.data, progress)
    return reference


def summary(result: dict) -> str:
    """One line: FD, KID, precision/recall and modes with their sample counts."""
    text = (f"FD {result['fd']:.3f} KID {result['kid']:.4f}±{result['kid_std']:.4f} P {result['precision']:.3f} "
            f"R {result['recall']:.3f} (n={result['n_samples']} vs {result['n_real']})")
    if result.get("modes_covered") is not None:
        text += (f", modes {result['modes_covered']}/{result['modes_total']} KL {result['mode_kl']:.3f} "
                 f"TV {result['mode_tv']:.3f} (n={result['n_modes_samples']})")
    return text


__all__ = [
    "EXACT_MODES", "MIN_ACCURACY", "DomainReference", "ExactModes", "check_test_size", "classifier_features",
    "domain_directory", "evaluate_domain", "frechet_distance", "kid", "knn_radii", "load_domain_reference",
    "mode_statistics", "polynomial_mmd2", "precision_recall", "prepare_domain", "real_floor", "summary",
]
