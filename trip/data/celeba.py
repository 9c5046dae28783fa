"""CelebA from a local folder in the official layout.

torchvision's Google-Drive download of CelebA fails often, so this loader only
reads a local copy. Get the "Align&Cropped Images" and the annotation files
from the CelebA page (mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and place them
as below, under ``root`` (default ``$TRIP_DATA_ROOT/celeba``, i.e. ``data/celeba``)
or under ``root/celeba`` (torchvision's layout)::

    img_align_celeba/000001.jpg ... 202599.jpg   (178x218 JPEGs)
    list_attr_celeba.txt      line 1: image count; line 2: the 40 attribute names;
                              then "<file> <40 values of -1 or 1>" per image
    list_eval_partition.txt   "<file> <0|1|2>" per image: 0 train, 1 valid, 2 test

As in the paper's code, each image is center-cropped to 160x160 (torchvision's
``CenterCrop(160)`` box) and resized to ``image_size`` (64 by default) with
bilinear filtering. The 40 attributes become 0/1 (the file's -1 becomes 0).

Two train/test splits (option ``partition``):

* ``official``: the partition file's train (162,770 images) against its test
  (19,962) or valid (19,867) part;
* ``random``: the paper's "random train-test split" (Sec. 6) of all 202,599
  images, as its code makes it (core/custom_datasets/celeba_dataset.py): a
  permutation from ``np.random.seed(777)``, the first round(0.9 * 202,599) =
  182,339 images for training and the other 20,260 for testing. The code
  permutes ``os.listdir`` order, which depends on the file system; we permute
  the files in name order, so the sizes are the paper's, the membership is ours.

:func:`split_sizes` gives the image counts of either without reading any file.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from trip.data.common import CorruptDataError, DatasetNotFoundError, Split, data_root, decode_image, image_array, locate

ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
PARTITIONS = {"train": 0, "valid": 1, "test": 2}
OFFICIAL_SIZES = {"train": 162_770, "valid": 19_867, "test": 19_962}  # list_eval_partition.txt
TOTAL_IMAGES = 202_599
RANDOM_TRAIN_FRACTION, RANDOM_SEED = 0.9, 777  # the paper's code: celeba_dataset.py
CROP = 160
IMAGES, ATTR_FILE, PARTITION_FILE = "img_align_celeba/", "list_attr_celeba.txt", "list_eval_partition.txt"


def find_celeba(root: str | Path | None = None) -> dict[str, Path]:
    """Paths of the image folder and the two text files, or ``DatasetNotFoundError``."""
    base = Path(root) if root is not None else data_root() / "celeba"
    required = {"images": (IMAGES,), "attributes": (ATTR_FILE,), "partition": (PARTITION_FILE,)}
    hint = "Put the official CelebA files there (see trip/data/celeba.py) or pass root=..."
    return locate("celeba", [base, base / "celeba"], required, hint)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError as err:
        raise CorruptDataError(path, f"not a text file ({err})") from err


def read_attributes(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``list_attr_celeba.txt`` -> (file names, (N, 40) int8 attributes in {0, 1})."""
    path = Path(path)
    lines = _read_lines(path)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise CorruptDataError(path, "first line should be the number of images")
    declared = int(lines[0])
    if tuple(lines[1].split()) != ATTRIBUTES:
        raise CorruptDataError(path, "second line should list the 40 CelebA attribute names")
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != declared:
        raise CorruptDataError(path, f"declares {declared} images but has {len(rows)} rows")
    for number, row in enumerate(rows, start=3):
        if len(row) != 1 + len(ATTRIBUTES):
            raise CorruptDataError(path, f"line {number} has {len(row)} fields, expected {1 + len(ATTRIBUTES)}")
    try:
        values = np.array([row[1:] for row in rows], dtype=np.int64).reshape(len(rows), len(ATTRIBUTES))
    except ValueError as err:
        raise CorruptDataError(path, f"non-integer attribute value ({err})") from err
    if not np.isin(values, (-1, 1)).all():
        raise CorruptDataError(path, "attribute values must be -1 or 1")
    return [row[0] for row in rows], (values > 0).astype(np.int8)


def read_partition(path: str | Path) -> dict[str, int]:
    """``list_eval_partition.txt`` -> {file name: 0 train / 1 valid / 2 test}."""
    path = Path(path)
    partition = {}
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise CorruptDataError(path, f"line {number} should be '<file> <0|1|2>', got {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


def crop_and_resize(img: Image.Image, size: int) -> np.ndarray:
    """Center-crop to 160x160 with torchvision's rounding, resize to ``size``; uint8 (3, size, size)."""
    width, height = img.size
    left, top = int(round((width - CROP) / 2.0)), int(round((height - CROP) / 2.0))
    return image_array(img.crop((left, top, left + CROP, top + CROP)), size)


class _Index(NamedTuple):
    files: dict[str, Path]
    names: list[str]  # image file names in attribute-file order
    attributes: np.ndarray  # (N, 40) int8
    partition: np.ndarray  # (N,) 0 train / 1 valid / 2 test


def _read_index(root: str | Path | None) -> _Index:
    """Locate the files and read both text files, checking that they describe the same images."""
    files = find_celeba(root)
    names, attributes = read_attributes(files["attributes"])
    partition = read_partition(files["partition"])
    unlisted = [n for n in names if n not in partition]
    if unlisted or len(partition) != len(names):
        raise CorruptDataError(
            files["partition"],
            f"lists {len(partition)} images but {files['attributes'].name} lists {len(names)}"
            + (f"; missing e.g. {unlisted[:3]}" if unlisted else ""),
        )
    return _Index(files, names, attributes, np.array([partition[n] for n in names]))


def _official_rows(index: _Index, split: str) -> np.ndarray:
    if split not in PARTITIONS:
        raise ValueError(f"split must be one of {list(PARTITIONS)}, got {split!r}")
    return np.flatnonzero(index.partition == PARTITIONS[split])


def random_split(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of the paper code's random split of ``count`` images, in permuted order."""
    order = np.random.RandomState(RANDOM_SEED).permutation(count)  # the code's np.random.seed(777); permutation
    cut = round(RANDOM_TRAIN_FRACTION * count)
    return order[:cut], order[cut:]


def _decode_split(index: _Index, rows: np.ndarray, label: str, image_size: int, workers: int) -> Split:
    files, names, attributes, _ = index
    paths = [files["images"] / names[i] for i in rows]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        listed = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        raise DatasetNotFoundError("celeba", {files["images"]: [listed]}, f"{len(absent)} listed images are absent.")
    images = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    # Decoding dominates; PIL releases the GIL while decoding, so threads scale.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        decoded = pool.map(lambda p: crop_and_resize(decode_image(p), image_size), paths)
        for i, image in enumerate(tqdm(decoded, total=len(paths), desc=f"celeba {label}", disable=len(paths) < 5000)):
            images[i] = image
    return Split(images, attributes[rows], ATTRIBUTES, source=str(files["images"].parent))


def load_celeba_split(
    root: str | Path | None = None,
    split: str = "train",
    image_size: int = 64,
    limit: int | None = None,
    workers: int = min(8, os.cpu_count() or 1),
) -> Split:
    """One official partition (``train``, ``valid`` or ``test``), optionally only its first ``limit`` images."""
    index = _read_index(root)
    return _decode_split(index, _official_rows(index, split)[:limit], split, image_size, workers)


def split_sizes(partition: str = "official", test_split: str = "test", limit: int | None = None,
                **_other_options) -> tuple[int, int]:
    """(train, test) image counts of :func:`load_celeba` with these options, for the complete dataset,
    without reading a file. A bad ``partition``, ``test_split`` or ``limit`` raises ``ValueError``
    naming the option."""
    if partition not in ("official", "random"):
        raise ValueError(f"partition: must be 'official' or 'random', got {partition!r}")
    allowed = ("test", "valid") if partition == "official" else ("test",)
    if test_split not in allowed:
        raise ValueError(f"test_split: must be {' or '.join(map(repr, allowed))} with the {partition} partition, "
                         f"got {test_split!r}")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ValueError(f"limit: must be null or an integer >= 1, got {limit!r}")
    if partition == "official":
        train, test = OFFICIAL_SIZES["train"], OFFICIAL_SIZES[test_split]
    else:
        train = round(RANDOM_TRAIN_FRACTION * TOTAL_IMAGES)
        test = TOTAL_IMAGES - train
    return (train, test) if limit is None else (min(train, limit), min(test, limit))


def load_celeba(
    root: str | Path | None = None,
    image_size: int = 64,
    partition: str = "official",
    test_split: str = "test",
    limit: int | None = None,
    workers: int = min(8, os.cpu_count() or 1),
) -> tuple[Split, Split]:
    """The registry entry: (train, test) of the ``official`` partition (test: ``test`` or ``valid``)
    or of the paper's ``random`` 90/10 split; optionally only the first ``limit`` images of each."""
    split_sizes(partition, test_split, limit)  # the options, checked before any file is read
    index = _read_index(root)
    if partition == "random":
        rows = random_split(len(index.names))
    else:
        rows = _official_rows(index, "train"), _official_rows(index, test_split)
    labels = ("train", test_split)
    return tuple(_decode_split(index, r[:limit], name, image_size, workers) for r, name in zip(rows, labels))
