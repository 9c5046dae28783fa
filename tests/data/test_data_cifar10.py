"""CIFAR-10 loader on fixtures written here in torchvision's on-disk format
(``cifar-10-batches-py/`` with pickled batches and ``batches.meta``) and as an
image folder."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from PIL import Image

from trip.data import CorruptDataError, DatasetNotFoundError, load_cifar10
from trip.data.cifar10 import CLASSES, META, TEST_BATCH, TRAIN_BATCHES, read_batch, split_sizes

PER_BATCH, N_TEST = 4, 6


def write_batch(path: Path, data: np.ndarray, labels: list[int], label: str) -> None:
    """A batch as CIFAR-10's python version stores it (a protocol-2 pickled dict)."""
    batch = {
        "batch_label": label,
        "labels": labels,
        "data": data,
        "filenames": [f"img_{i}.png" for i in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five train batches and a test batch of random images; returns (train x, train y, test x, test y)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i, name in enumerate(TRAIN_BATCHES):
        x = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        y = [(i * PER_BATCH + j) % 10 for j in range(PER_BATCH)]
        write_batch(folder / name, x, y, f"training batch {i + 1} of 5")
        xs.append(x)
        ys += y
    test_x = rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8)
    test_y = [9 - j for j in range(N_TEST)]
    write_batch(folder / TEST_BATCH, test_x, test_y, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": PER_BATCH, "label_names": list(CLASSES), "num_vis": 3072}
    (folder / META).write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(xs), np.array(ys), test_x, np.array(test_y)


def test_torchvision_layout(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar(tmp_path)
    train, test = load_cifar10(root=tmp_path)
    assert train.images.shape == (5 * PER_BATCH, 3, 32, 32) and test.images.shape == (N_TEST, 3, 32, 32)
    # Rows are channel-major: the first 1024 bytes are the red plane, row by row.
    np.testing.assert_array_equal(train.images.reshape(len(train), -1), train_x)
    np.testing.assert_array_equal(test.images[0, 0, 0, :5], test_x[0, :5])
    np.testing.assert_array_equal(train.attributes.argmax(axis=1), train_y)
    np.testing.assert_array_equal(test.attributes.argmax(axis=1), test_y)
    assert train.attribute_names == CLASSES


def test_matches_torchvision_reading_the_same_files(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    # torchvision checks the official files' md5 sums, which a fixture cannot match.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    reference = torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
    train, _ = load_cifar10(root=tmp_path)
    np.testing.assert_array_equal(train.images.transpose(0, 2, 3, 1), reference.data)  # torchvision is HWC
    np.testing.assert_array_equal(train.attributes.argmax(axis=1), reference.targets)


def test_root_may_be_the_batches_folder_and_images_resize(tmp_path):
    write_cifar(tmp_path)
    train, test = load_cifar10(root=tmp_path / "cifar-10-batches-py", image_size=64)
    assert train.images.shape == (5 * PER_BATCH, 3, 64, 64) and test.images.shape == (N_TEST, 3, 64, 64)


def test_image_folder_copy(tmp_path):
    rng = np.random.default_rng(1)
    expected = {}
    for split, count in (("train", 2), ("test", 1)):
        for name in CLASSES:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
                expected[(split, name, i)] = pixels
    train, test = load_cifar10(root=tmp_path)
    assert len(train) == 20 and len(test) == 10 and train.attribute_names == CLASSES
    # Files are read class by class in CIFAR-10's order, each class sorted by name.
    np.testing.assert_array_equal(train.images[2].transpose(1, 2, 0), expected[("train", "automobile", 0)])
    assert train.attributes[2].argmax() == CLASSES.index("automobile")
    np.testing.assert_array_equal(test.images[9].transpose(1, 2, 0), expected[("test", "truck", 0)])


def test_undecodable_image_in_folder_names_the_file(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / split / "cat" / "0.png")
    broken = tmp_path / "test" / "cat" / "1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(CorruptDataError, match="fails to decode") as info:
        load_cifar10(root=tmp_path)
    assert info.value.path == broken


def test_missing_dataset_lists_files_and_places(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(root=tmp_path)
    message = str(info.value)
    for place in (tmp_path / "cifar-10-batches-py", tmp_path, tmp_path / "cifar10"):
        assert f"{place.absolute()}: missing" in message
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        assert name in message
    assert "image-folder" in message and "download=True" in message


def test_one_missing_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(root=tmp_path)
    assert info.value.missing[(tmp_path / "cifar-10-batches-py").absolute()] == ["data_batch_3"]


def test_download_only_when_allowed_and_offline_failure_is_clear(tmp_path, monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError):
        load_cifar10(root=tmp_path)
    assert calls == []
    with pytest.raises(DatasetNotFoundError, match="Download into .* failed: <urlopen error") as info:
        load_cifar10(root=tmp_path, download=True)
    assert calls == [{"train": True, "download": True}] and "data_batch_1" in str(info.value)


def test_truncated_pickle_names_the_file(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(CorruptDataError, match="truncated or malformed pickle") as info:
        load_cifar10(root=tmp_path)
    assert info.value.path == path


def test_inconsistent_batch_is_rejected(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / TEST_BATCH
    write_batch(path, np.zeros((3, 3072), np.uint8), [0, 1], "testing batch 1 of 1")
    with pytest.raises(CorruptDataError, match="2 labels for 3 images") as info:
        load_cifar10(root=tmp_path)
    assert info.value.path == path
    write_batch(path, np.zeros((3, 100), np.uint8), [0, 1, 2], "testing batch 1 of 1")
    with pytest.raises(CorruptDataError, match=r"uint8 \(N, 3072\)"):
        read_batch(path)


def test_pickle_with_arbitrary_code_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(Path("x"), protocol=2))  # references pathlib, not a numpy array
    with pytest.raises(CorruptDataError, match="refusing to unpickle pathlib"):
        read_batch(path)


def test_split_sizes_are_the_standard_split_without_files(tmp_path):
    from trip.config import known_split_sizes, load_config

    assert split_sizes() == (50_000, 10_000) == (len(TRAIN_BATCHES) * 10_000, 10_000)
    cfg = load_config({"data": {"name": "cifar10", "options": {"root": str(tmp_path / "absent")}}})
    assert known_split_sizes(cfg.data) == (50_000, 10_000)
