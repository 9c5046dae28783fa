"""Pieces shared by the dataset loaders: the ``Split`` container, the two error
types, file lookup with readable "not found" messages, and image resizing.

Every loader returns images as ``uint8`` arrays of shape ``(N, C, H, W)`` and
attributes as ``int8`` arrays of shape ``(N, A)`` holding 0 or 1, so the
prepared format and the models never care where the data came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset: images, binary attributes and their names."""

    images: np.ndarray  # (N, C, H, W) uint8
    attributes: np.ndarray  # (N, A) int8, values 0/1
    attribute_names: tuple[str, ...]
    source: str = ""  # where the data came from, recorded in the manifest

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.attributes.dtype != np.int8 or self.attributes.ndim != 2:
            raise ValueError(f"attributes must be int8 (N, A), got {self.attributes.dtype} {self.attributes.shape}")
        if len(self.attributes) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.attributes)} attribute rows")
        if self.attributes.shape[1] != len(self.attribute_names):
            raise ValueError(f"{self.attributes.shape[1]} attribute columns but {len(self.attribute_names)} names")
        object.__setattr__(self, "attribute_names", tuple(self.attribute_names))

    def __len__(self) -> int:
        return len(self.images)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing. ``missing`` maps each place looked in to
    the files that were absent there."""

    def __init__(self, dataset: str, missing: Mapping[Path, Sequence[str]], hint: str = ""):
        self.dataset = dataset
        self.missing = {Path(where): list(files) for where, files in missing.items()}
        lines = [f"dataset {dataset!r} not found; looked in:"]
        lines += [f"  {where}: missing {', '.join(files)}" for where, files in self.missing.items()]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class CorruptDataError(ValueError):
    """A dataset file exists but is truncated, malformed or inconsistent."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {problem}")


def data_root() -> Path:
    """Directory that holds datasets when no ``root`` is given: ``$TRIP_DATA_ROOT`` or ``./data``."""
    return Path(os.environ.get("TRIP_DATA_ROOT", "data"))


def locate(
    dataset: str,
    candidates: Sequence[str | os.PathLike],
    required: Mapping[str, Sequence[str]],
    hint: str = "",
) -> dict[str, Path]:
    """Return the files of the first candidate directory that has all of ``required``.

    ``required`` maps a key to alternative relative paths (e.g. a file and its
    ``.gz``); a path ending in ``/`` must be a directory. Raises
    ``DatasetNotFoundError`` listing what was missing in every candidate.
    """
    missing: dict[Path, list[str]] = {}
    for root in dict.fromkeys(Path(c).expanduser().absolute() for c in candidates):
        found = {key: _first_existing(root, names) for key, names in required.items()}
        absent = [" or ".join(required[key]) for key, path in found.items() if path is None]
        if not absent:
            return found  # type: ignore[return-value]
        missing[root] = absent
    raise DatasetNotFoundError(dataset, missing, hint)


def _first_existing(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        path = root / name
        if path.is_dir() if name.endswith("/") else path.is_file():
            return path
    return None


def one_hot(labels: np.ndarray, num_classes: int, path: str | os.PathLike) -> np.ndarray:
    """Class labels -> (N, num_classes) int8 0/1 attributes; ``path`` names the file for errors."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDataError(path, f"labels outside 0..{num_classes - 1} (min {labels.min()}, max {labels.max()})")
    return np.eye(num_classes, dtype=np.int8)[labels]


def resize_images(images: np.ndarray, size: int, batch: int = 4096) -> np.ndarray:
    """Bilinearly resize uint8 (N, C, H, W) images to (N, C, size, size); antialiased when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    out = np.empty(images.shape[:2] + (size, size), dtype=np.uint8)
    for start in range(0, len(images), batch):
        chunk = torch.from_numpy(images[start : start + batch].astype(np.float32))  # a copy: inputs may be read-only
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + batch] = chunk.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def gray_to_rgb(images: np.ndarray) -> np.ndarray:
    """Repeat a single channel three times so grayscale data fits RGB models."""
    return np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images


def decode_image(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB; a broken file raises ``CorruptDataError``."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode, so truncation shows here
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptDataError(path, f"image fails to decode ({err})") from err


def image_array(img: Image.Image, size: int | None = None) -> np.ndarray:
    """PIL RGB image -> uint8 (3, H, W), bilinearly resized to ``size`` x ``size`` when given."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
