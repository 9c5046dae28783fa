"""The prepared-data format: round trip, manifest, checksums, atomic writes,
the torch Dataset, and the dataset registry."""

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trip.data import (
    DATASETS,
    CorruptDataError,
    DatasetNotFoundError,
    ImageDataset,
    Split,
    is_prepared,
    load_prepared,
    load_shapes,
    prepare,
    to_float,
)
from trip.data import prepared as prepared_module

OPTIONS = {"n_train": 40, "n_test": 10, "image_size": 16, "seed": 3}


@pytest.fixture
def shapes_dir(tmp_path):
    return prepare("shapes", tmp_path / "shapes", **OPTIONS)


def test_round_trip_reproduces_the_loader_output(shapes_dir):
    train, test = load_shapes(**OPTIONS)
    for name, original in (("train", train), ("test", test)):
        loaded = load_prepared(shapes_dir, name)
        assert loaded.images.dtype == np.uint8 and loaded.attributes.dtype == np.int8
        np.testing.assert_array_equal(loaded.images, original.images)
        np.testing.assert_array_equal(loaded.attributes, original.attributes)
        assert loaded.attribute_names == original.attribute_names and loaded.source == original.source
    mapped = load_prepared(shapes_dir, "train", mmap=True)
    assert isinstance(mapped.images, np.memmap)
    np.testing.assert_array_equal(mapped.images, train.images)


def test_manifest_records_source_counts_names_and_checksums(shapes_dir):
    manifest = json.loads((shapes_dir / "manifest.json").read_text())
    assert manifest["dataset"] == "shapes" and manifest["options"] == OPTIONS
    assert manifest["image_shape"] == [3, 16, 16]
    assert manifest["attribute_names"][:2] == ["square", "large"]
    assert manifest["splits"]["train"]["count"] == 40 and manifest["splits"]["test"]["count"] == 10
    assert "seed=3" in manifest["splits"]["train"]["source"]
    files = sorted(p.name for p in shapes_dir.iterdir())
    assert files == ["manifest.json", "test_attributes.npy", "test_images.npy",
                     "train_attributes.npy", "train_images.npy"]
    for split in ("train", "test"):
        for kind in ("images", "attributes"):
            info = manifest["splits"][split]["files"][kind]
            data = (shapes_dir / info["name"]).read_bytes()
            assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert np.load(shapes_dir / "train_images.npy").shape == (40, 3, 16, 16)
    assert np.load(shapes_dir / "train_attributes.npy").shape == (40, 9)


def test_prepare_reuses_a_matching_directory_and_redoes_a_different_one(shapes_dir, monkeypatch):
    before = (shapes_dir / "train_images.npy").stat().st_mtime_ns
    calls = []
    original = DATASETS.get("shapes")
    monkeypatch.setitem(DATASETS._entries, "shapes", lambda **kw: calls.append(kw) or original(**kw))
    prepare("shapes", shapes_dir, **OPTIONS)
    assert calls == [] and (shapes_dir / "train_images.npy").stat().st_mtime_ns == before
    prepare("shapes", shapes_dir, **{**OPTIONS, "seed": 4})
    assert len(calls) == 1 and json.loads((shapes_dir / "manifest.json").read_text())["options"]["seed"] == 4
    prepare("shapes", shapes_dir, overwrite=True, **{**OPTIONS, "seed": 4})
    assert len(calls) == 2


def test_checksum_mismatch_names_the_file(shapes_dir):
    path = shapes_dir / "train_images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one pixel changed
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="sha256") as info:
        load_prepared(shapes_dir, "train")
    assert info.value.path == path and "train_images.npy" in str(info.value)
    assert len(load_prepared(shapes_dir, "train", verify=False)) == 40  # only the cheap size check
    load_prepared(shapes_dir, "test")  # the other split is intact


def test_truncation_is_caught_by_the_size_check_even_without_verify(shapes_dir):
    path = shapes_dir / "test_attributes.npy"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptDataError, match="truncated") as info:
        load_prepared(shapes_dir, "test", verify=False)
    assert info.value.path == path
    assert not is_prepared(shapes_dir)


def test_directory_without_manifest_is_not_prepared(shapes_dir, tmp_path):
    (shapes_dir / "manifest.json").unlink()
    assert not is_prepared(shapes_dir)
    with pytest.raises(DatasetNotFoundError, match="manifest.json"):
        load_prepared(shapes_dir, "train")
    prepare("shapes", shapes_dir, **OPTIONS)  # the partial directory is replaced
    assert is_prepared(shapes_dir)
    (shapes_dir / "manifest.json").write_text('{"format": "trip-prep')
    with pytest.raises(CorruptDataError, match="unreadable manifest"):
        load_prepared(shapes_dir, "train")


def test_unknown_split_and_missing_file(shapes_dir):
    with pytest.raises(ValueError, match="no split 'valid'"):
        load_prepared(shapes_dir, "valid")
    (shapes_dir / "test_images.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_images.npy"):
        load_prepared(shapes_dir, "test")


def test_interrupted_prepare_leaves_nothing_behind(tmp_path, monkeypatch):
    real_save, saved = prepared_module._save_synced, []

    def crash_on_third(path, array):
        if len(saved) == 2:
            raise KeyboardInterrupt
        real_save(path, array)
        saved.append(path)

    monkeypatch.setattr(prepared_module, "_save_synced", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare("shapes", tmp_path / "out", **OPTIONS)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary directory


def test_refuses_to_replace_a_directory_with_other_files(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        prepare("shapes", target, **OPTIONS)
    assert (target / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_prepare_a_real_loader_with_path_options(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, shape in [("train-images-idx3-ubyte", (4, 28, 28)), ("train-labels-idx1-ubyte", (4,)),
                        ("t10k-images-idx3-ubyte", (2, 28, 28)), ("t10k-labels-idx1-ubyte", (2,))]:
        header = struct.pack(">HBB", 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
        (raw / name).write_bytes(header + bytes(int(np.prod(shape))))
    out = prepare("mnist", tmp_path / "prepared", root=tmp_path, image_size=32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["root"] == str(tmp_path) and manifest["image_shape"] == [3, 32, 32]
    assert manifest["attribute_names"][0] == "digit_0" and len(load_prepared(out, "test")) == 2


def test_dataset_returns_tanh_range_floats_and_attributes(shapes_dir):
    dataset = ImageDataset.from_prepared(shapes_dir, "train", mmap=True)
    image, attributes = dataset[5]
    assert len(dataset) == 40
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16)
    assert image.min() >= -1 and image.max() <= 1
    raw = load_prepared(shapes_dir, "train")
    torch.testing.assert_close(image, torch.from_numpy(raw.images[5]).float() / 127.5 - 1)
    assert attributes.dtype == torch.float32 and attributes.tolist() == raw.attributes[5].tolist()
    images, attrs = next(iter(DataLoader(dataset, batch_size=8, shuffle=False)))
    assert images.shape == (8, 3, 16, 16) and attrs.shape == (8, 9)


def test_to_float_maps_the_byte_range_onto_minus_one_to_one():
    values = to_float(np.array([0, 255, 128], dtype=np.uint8))
    torch.testing.assert_close(values, torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))


def test_registry_lists_the_datasets():
    assert DATASETS.names() == ["celeba", "cifar10", "fashion_mnist", "mnist", "shapes"]
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known: celeba, cifar10"):
        DATASETS.get("imagenet")
    train, test = DATASETS.get("shapes")(n_train=3, n_test=2)
    assert isinstance(train, Split) and (len(train), len(test)) == (3, 2)


def test_split_rejects_inconsistent_arrays():
    images = np.zeros((2, 3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="2 images but 3 attribute rows"):
        Split(images, np.zeros((3, 1), np.int8), ("a",))
    with pytest.raises(ValueError, match="must be uint8"):
        Split(images.astype(np.float32), np.zeros((2, 1), np.int8), ("a",))
    with pytest.raises(ValueError, match="1 attribute columns but 2 names"):
        Split(images, np.zeros((2, 1), np.int8), ("a", "b"))
