"""CIFAR-10 from a local copy, in torchvision's layout or as an image folder.

torchvision layout (what ``torchvision.datasets.CIFAR10(root, download=True)``
leaves behind; ``root`` may also be the ``cifar-10-batches-py`` folder itself)::

    <root>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta

Each batch is a pickled dict with ``data`` (N x 3072 uint8, channel-major
32x32 images) and ``labels``; ``batches.meta`` holds ``label_names``.

Image-folder layout (e.g. exported PNGs), used when the batches are absent::

    <root>/train/<class name>/*.png    <root>/test/<class name>/*.png

The class becomes ten one-hot binary attributes named after the classes.
Nothing is downloaded unless ``download=True``; offline, that fails with the
list of missing files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trip.data.common import (
    CorruptDataError,
    DatasetNotFoundError,
    Split,
    data_root,
    decode_image,
    image_array,
    locate,
    one_hot,
    resize_images,
)

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TRAIN_SIZE, TEST_SIZE = 50_000, 10_000  # the standard split: five training batches of 10,000 and test_batch


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches but refuses every global except numpy array reconstruction,
    so a tampered batch file cannot run code."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes this way
    }

    def find_class(self, module: str, name: str):
        module = module.replace("numpy.core.", "numpy._core.")  # pickles from numpy < 2
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()  # latin1: the batches were pickled by Python 2
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CorruptDataError(path, f"truncated or malformed pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise CorruptDataError(path, f"expected a pickled dict, found {type(obj).__name__}")
    return obj


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    path = Path(path)
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise CorruptDataError(path, f"missing 'data' or 'labels' (keys: {sorted(map(str, batch))})")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(path, f"'data' should be uint8 (N, 3072), found {data.dtype} {data.shape}")
    if len(labels) != len(data):
        raise CorruptDataError(path, f"{len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CorruptDataError(path, f"labels outside 0..{len(CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def read_meta(path: str | Path) -> tuple[str, ...]:
    """Class names from ``batches.meta``."""
    path = Path(path)
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != len(CLASSES):
        raise CorruptDataError(path, f"'label_names' should list {len(CLASSES)} classes, found {names!r}")
    return tuple(str(n) for n in names)


def split_sizes(**_options) -> tuple[int, int]:
    """(train, test) image counts of :func:`load_cifar10` for the standard dataset, without reading a file
    (an image-folder copy holds what it holds); no option changes them."""
    return TRAIN_SIZE, TEST_SIZE


def load_cifar10(root: str | Path | None = None, image_size: int = 32, download: bool = False) -> tuple[Split, Split]:
    """CIFAR-10 train (50k) and test (10k) with one-hot class attributes."""
    base = Path(root) if root is not None else data_root()
    candidates = [base / FOLDER, base, base / "cifar10"]
    required = {name: (name,) for name in (*TRAIN_BATCHES, TEST_BATCH, META)}
    try:
        files = locate("cifar10", candidates, required)
    except DatasetNotFoundError as err:
        folder = next((c for c in candidates[1:] if _is_image_folder(c)), None)
        if folder is not None:
            train, test = (_read_image_folder(folder / s, image_size) for s in ("train", "test"))
            if train.attribute_names != test.attribute_names:
                problem = f"train classes {train.attribute_names} differ from test classes {test.attribute_names}"
                raise CorruptDataError(folder, problem)
            return train, test
        hint = f"No image-folder copy either (train/<class>/*.png and test/<class>/*.png under {base.absolute()})."
        if not download:
            raise DatasetNotFoundError("cifar10", err.missing, hint + " Pass download=True to fetch it.") from None
        _download(base, err.missing)
        files = locate("cifar10", candidates, required)
    classes = read_meta(files[META])
    batches = [read_batch(files[name]) for name in TRAIN_BATCHES]
    train_images, train_labels = (np.concatenate(parts) for parts in zip(*batches))
    source = str(files[META].parent)
    return (
        _split(train_images, train_labels, classes, image_size, source),
        _split(*read_batch(files[TEST_BATCH]), classes, image_size, source),
    )


def _split(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], size: int, source: str) -> Split:
    return Split(resize_images(images, size), one_hot(labels, len(classes), source), classes, source=source)


def _is_image_folder(root: Path) -> bool:
    return all((root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()) for s in ("train", "test"))


def _read_image_folder(split_dir: Path, image_size: int) -> Split:
    """``split_dir/<class>/*.png`` -> Split; classes in CIFAR-10 order when they are its ten names."""
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = CLASSES if sorted(CLASSES) == found else tuple(found)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DatasetNotFoundError("cifar10", {split_dir.absolute(): ["<class>/*.png"]})
    progress = tqdm(paths, desc=f"decoding {split_dir}", unit="img", disable=len(paths) < 5000)
    images = np.stack([image_array(decode_image(p), image_size) for p in progress])
    return Split(images, one_hot(np.array(labels), len(classes), split_dir), classes, source=str(split_dir.parent))


def _download(base: Path, missing: dict[Path, list[str]]) -> None:
    """Fetch with torchvision into ``base``; any failure (e.g. offline) keeps the list of missing files."""
    import torchvision.datasets

    try:
        torchvision.datasets.CIFAR10(str(base), train=True, download=True)
    except Exception as err:  # torchvision raises URLError, RuntimeError or OSError depending on the failure
        raise DatasetNotFoundError("cifar10", missing, f"Download into {base.absolute()} failed: {err}") from err
