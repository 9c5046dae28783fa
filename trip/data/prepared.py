"""The prepared-data format that training and evaluation read.

``prepare(name, out_dir, **options)`` runs a registered loader once and writes::

    out_dir/train_images.npy       uint8 (N, C, H, W)
    out_dir/train_attributes.npy   int8 (N, A), values 0/1
    out_dir/test_images.npy, out_dir/test_attributes.npy
    out_dir/manifest.json          dataset, options, source, image shape, counts,
                                   attribute names, and bytes + sha256 of every file

Everything is written to a temporary sibling directory that is renamed into
place only after ``manifest.json`` is written, so an interrupted run never
leaves a directory that looks prepared. ``load_prepared`` always compares file
sizes with the manifest and, by default, the full sha256; a mismatch raises
``CorruptDataError`` naming the file. ``ImageDataset`` serves the arrays to
PyTorch as float images in [-1, 1], the range of the decoders' Tanh output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from trip.data.common import CorruptDataError, DatasetNotFoundError, Split

FORMAT = "trip-prepared"
VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("images", "attributes")


def file_name(split: str, kind: str) -> str:
    return f"{split}_{kind}.npy"


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prepare(dataset_name: str, out_dir: str | Path, *, overwrite: bool = False, **options: Any) -> Path:
    """Load ``dataset_name`` from the registry with ``options`` and write it to ``out_dir``.

    An existing complete directory prepared from the same dataset and options is
    reused unless ``overwrite``. Returns ``out_dir``.
    """
    from trip.data import DATASETS  # the registry lives in the package __init__, which imports this module

    out_dir = Path(out_dir)
    if not overwrite and is_prepared(out_dir):
        manifest = read_manifest(out_dir)
        if manifest["dataset"] == dataset_name and manifest["options"] == _jsonable(options):
            return out_dir
    train, test = DATASETS.get(dataset_name)(**options)
    return write_prepared({"train": train, "test": test}, out_dir, dataset_name, options)


def write_prepared(splits: Mapping[str, Split], out_dir: str | Path, dataset: str, options: Mapping[str, Any]) -> Path:
    """Write ``splits`` in the prepared format, atomically replacing ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        manifest = _manifest(splits, dataset, options)
        for split_name, split in splits.items():
            for kind in KINDS:
                path = tmp / file_name(split_name, kind)
                _save_synced(path, getattr(split, kind))
                manifest["splits"][split_name]["files"][kind] = {
                    "name": path.name,
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())  # last: marks the data complete
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _manifest(splits: Mapping[str, Split], dataset: str, options: Mapping[str, Any]) -> dict:
    first = next(iter(splits.values()))
    names = list(first.attribute_names)
    for name, split in splits.items():
        if list(split.attribute_names) != names or split.images.shape[1:] != first.images.shape[1:]:
            raise ValueError(f"split {name!r} differs from the others in attributes or image shape")
    return {
        "format": FORMAT,
        "version": VERSION,
        "dataset": dataset,
        "options": _jsonable(options),
        "image_shape": list(first.images.shape[1:]),  # (C, H, W)
        "attribute_names": names,
        "splits": {
            name: {"count": len(split), "source": split.source, "files": {}} for name, split in splits.items()
        },
    }


def _jsonable(options: Mapping[str, Any]) -> dict:
    # Paths and tuples become strings and lists, so stored and fresh options compare equal.
    return json.loads(json.dumps(dict(options), default=str, sort_keys=True))


def _save_synced(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, first moving aside an old prepared (or partial) ``target``."""
    if not target.exists():
        os.rename(new, target)
        return
    ours = tuple(f"_{kind}.npy" for kind in KINDS)
    foreign = [p.name for p in target.iterdir() if p.name != MANIFEST and not p.name.endswith(ours)]
    if foreign:
        raise FileExistsError(f"refusing to replace {target}: it holds files that are not prepared data: {foreign[:5]}")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / target.name)
    os.rename(new, target)
    shutil.rmtree(old)


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a prepared directory; a missing one means the directory is not prepared."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        hint = "Not prepared, or preparation was interrupted: run prepare()."
        raise DatasetNotFoundError("prepared", {Path(directory).absolute(): [MANIFEST]}, hint)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptDataError(path, f"unreadable manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "splits" not in manifest:
        raise CorruptDataError(path, f"not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CorruptDataError(path, f"format version {manifest.get('version')}, this code reads {VERSION}")
    return manifest


def is_prepared(directory: str | Path) -> bool:
    """True if ``directory`` has a valid manifest and every listed file has its recorded size."""
    try:
        manifest = read_manifest(directory)
        for entry in manifest["splits"].values():
            for info in entry["files"].values():
                _check_size(Path(directory) / info["name"], info["bytes"])
    except (FileNotFoundError, CorruptDataError, KeyError, TypeError):
        return False
    return True


def _check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        hint = "The prepared directory is incomplete."
        raise DatasetNotFoundError("prepared", {path.parent.absolute(): [path.name]}, hint)
    found = path.stat().st_size
    if found != expected:
        raise CorruptDataError(path, f"size {found} bytes, manifest says {expected}: truncated or replaced")


def load_prepared(directory: str | Path, split: str, *, verify: bool = True, mmap: bool = False) -> Split:
    """Read one split of a prepared directory.

    File sizes are always checked against the manifest; ``verify`` also checks
    the sha256 of every file (reads each file once more). ``mmap`` maps the
    arrays read-only instead of loading them into memory.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        raise ValueError(f"{directory} has no split {split!r}; it has {sorted(manifest['splits'])}")
    entry = manifest["splits"][split]
    arrays = {}
    for kind in KINDS:
        info = entry["files"][kind]
        path = directory / info["name"]
        _check_size(path, info["bytes"])
        if verify and sha256_file(path) != info["sha256"]:
            raise CorruptDataError(path, "sha256 checksum does not match the manifest: the file is corrupt")
        try:
            arrays[kind] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as err:
            raise CorruptDataError(path, f"not a readable .npy array ({err})") from err
    if len(arrays["images"]) != entry["count"] or list(arrays["images"].shape[1:]) != manifest["image_shape"]:
        raise CorruptDataError(directory / entry["files"]["images"]["name"], "array shape disagrees with the manifest")
    return Split(arrays["images"], arrays["attributes"], tuple(manifest["attribute_names"]), source=entry["source"])


_LEVELS = torch.arange(256, dtype=torch.uint8).float() / 127.5 - 1.0  # the 256 values, as the CPU rounds them
_levels_on: dict[torch.device, torch.Tensor] = {}


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (0 -> -1, 255 -> 1), bit-identical on every device.

    A GPU divides by a scalar as a multiplication by its reciprocal, which rounds some levels 1 ulp
    away from the CPU's; looking the CPU's values up instead keeps a GPU's batches the CPU's.
    """
    if not isinstance(images, torch.Tensor):
        images = torch.from_numpy(np.array(images, dtype=np.uint8))  # a copy: memory maps are read-only
    if images.device.type == "cpu" or images.dtype != torch.uint8:
        return images.float() / 127.5 - 1.0
    if images.device not in _levels_on:
        _levels_on[images.device] = _LEVELS.to(images.device)
    return _levels_on[images.device][images.long()]


class ImageDataset(Dataset):
    """(image, attributes) pairs: float32 (C, H, W) in [-1, 1] and float32 (A,) of 0/1."""

    def __init__(self, split: Split):
        self.images = split.images
        self.attributes = split.attributes
        self.attribute_names = split.attribute_names

    @classmethod
    def from_prepared(
        cls, directory: str | Path, split: str, *, verify: bool = True, mmap: bool = False
    ) -> "ImageDataset":
        return cls(load_prepared(directory, split, verify=verify, mmap=mmap))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.images[index]), torch.from_numpy(np.array(self.attributes[index], dtype=np.float32))
