"""Datasets: the embedded ``shapes`` generator, loaders for local copies of
CelebA, CIFAR-10, MNIST and Fashion-MNIST, and the prepared-data format.

Every registered loader takes keyword options and returns ``(train, test)``
``Split`` objects (uint8 images (N, C, H, W), int8 0/1 attributes (N, A),
attribute names)::

    from trip.data import DATASETS, prepare, ImageDataset
    train, test = DATASETS.get("shapes")(image_size=32)
    prepare("shapes", "prepared/shapes", image_size=32)
    dataset = ImageDataset.from_prepared("prepared/shapes", "train")

Errors: missing files raise ``DatasetNotFoundError`` (a ``FileNotFoundError``)
listing the missing files per directory looked in; truncated, malformed or
inconsistent files raise ``CorruptDataError`` (a ``ValueError``) naming the file.
"""

from trip.data.celeba import load_celeba, load_celeba_split
from trip.data.cifar10 import load_cifar10
from trip.data.common import CorruptDataError, DatasetNotFoundError, Split, data_root
from trip.data.mnist import load_fashion_mnist, load_mnist, read_idx
from trip.data.shapes import generate_shapes, load_shapes
from trip.registry import Registry

DATASETS: Registry = Registry("dataset")
DATASETS.register("shapes")(load_shapes)
DATASETS.register("celeba")(load_celeba)
DATASETS.register("cifar10")(load_cifar10)
DATASETS.register("mnist")(load_mnist)
DATASETS.register("fashion_mnist")(load_fashion_mnist)

from trip.data.prepared import ImageDataset, is_prepared, load_prepared, prepare, to_float  # noqa: E402

__all__ = [
    "DATASETS",
    "CorruptDataError",
    "DatasetNotFoundError",
    "ImageDataset",
    "Split",
    "data_root",
    "generate_shapes",
    "is_prepared",
    "load_celeba",
    "load_celeba_split",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "load_prepared",
    "load_shapes",
    "prepare",
    "read_idx",
    "to_float",
]
