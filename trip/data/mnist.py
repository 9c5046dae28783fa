"""MNIST and Fashion-MNIST from the raw IDX files.

Accepted layouts (each file may be plain or gzipped, ``name`` or ``name.gz``):

- torchvision: ``<root>/MNIST/raw/`` and ``<root>/FashionMNIST/raw/``;
- a flat folder holding the four files, e.g. ``<root>`` itself;
- Fashion-MNIST only: Debian's ``dataset-fashion-mnist`` package, which installs
  the four gzipped files flat in ``/usr/share/datasets/fashion-mnist/``.

The four files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``. Images are 28x28
grayscale; they are resized to ``image_size`` and, by default, repeated to
three channels so they fit the RGB models. The class label becomes ten one-hot
binary attributes.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from trip.data.common import (
    CorruptDataError,
    DatasetNotFoundError,
    Split,
    data_root,
    gray_to_rgb,
    locate,
    one_hot,
    resize_images,
)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MNIST_CLASSES = tuple(f"digit_{d}" for d in range(10))
FASHION_MNIST_CLASSES = (
    "t_shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
_IDX_UBYTE = 0x08  # the only element type the MNIST files use


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped if the name ends in ``.gz``).

    Raises ``CorruptDataError`` naming the file if it is truncated, has trailing
    bytes, a bad header, or (when given) a number of dimensions other than ``ndim``.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CorruptDataError(path, f"damaged gzip stream ({err})") from err
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise CorruptDataError(path, "not an IDX file (bad magic number)")
    if data[2] != _IDX_UBYTE:
        raise CorruptDataError(path, f"unsupported IDX element type 0x{data[2]:02x} (expected unsigned byte 0x08)")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise CorruptDataError(path, "truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=data[3], offset=4))
    if ndim is not None and len(dims) != ndim:
        raise CorruptDataError(path, f"expected {ndim} dimensions, header says {len(dims)}")
    expected, found = int(np.prod(dims)), len(data) - header
    if found != expected:
        kind = "truncated" if found < expected else "has trailing bytes"
        raise CorruptDataError(path, f"{kind}: header {dims} promises {expected} data bytes, file has {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable, unlike the buffer


def load_mnist(
    root: str | Path | None = None, image_size: int = 32, rgb: bool = True, download: bool = False
) -> tuple[Split, Split]:
    """MNIST (train 60k, test 10k) with one-hot digit attributes ``digit_0..digit_9``."""
    return _load("mnist", "MNIST", MNIST_CLASSES, root, image_size, rgb, download, extra_roots=())


def load_fashion_mnist(
    root: str | Path | None = None, image_size: int = 32, rgb: bool = True, download: bool = False
) -> tuple[Split, Split]:
    """Fashion-MNIST (train 60k, test 10k) with one-hot class attributes; also finds the Debian package."""
    return _load(
        "fashion_mnist", "FashionMNIST", FASHION_MNIST_CLASSES, root, image_size, rgb, download,
        extra_roots=(DEBIAN_FASHION_MNIST,),
    )


def _load(
    name: str,
    folder: str,
    classes: tuple[str, ...],
    root: str | Path | None,
    image_size: int,
    rgb: bool,
    download: bool,
    extra_roots: tuple[Path, ...],
) -> tuple[Split, Split]:
    base = Path(root) if root is not None else data_root()
    candidates = [base / folder / "raw", base, *extra_roots]
    required = {key: (file, file + ".gz") for key, file in FILES.items()}
    try:
        files = locate(name, candidates, required)
    except DatasetNotFoundError as err:
        if not download:
            raise DatasetNotFoundError(name, err.missing, "Pass download=True to fetch it with torchvision.") from None
        _download(name, folder, base, err.missing)
        files = locate(name, candidates, required)
    return tuple(  # type: ignore[return-value]
        _split(files[f"{split}_images"], files[f"{split}_labels"], classes, image_size, rgb)
        for split in ("train", "test")
    )


def _split(images_path: Path, labels_path: Path, classes: tuple[str, ...], image_size: int, rgb: bool) -> Split:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise CorruptDataError(labels_path, f"{len(labels)} labels for {len(images)} images in {images_path}")
    images = resize_images(images[:, None], image_size)
    if rgb:
        images = gray_to_rgb(images)
    return Split(images, one_hot(labels, len(classes), labels_path), classes, source=str(images_path.parent))


def _download(name: str, folder: str, base: Path, missing: dict[Path, list[str]]) -> None:
    """Fetch with torchvision into ``base``; any failure (e.g. offline) keeps the list of missing files."""
    import torchvision.datasets

    try:
        for train in (True, False):
            getattr(torchvision.datasets, folder)(str(base), train=train, download=True)
    except Exception as err:  # torchvision raises URLError, RuntimeError or OSError depending on the mirror
        raise DatasetNotFoundError(name, missing, f"Download into {base.absolute()} failed: {err}") from err
