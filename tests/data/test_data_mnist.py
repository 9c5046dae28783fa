"""MNIST / Fashion-MNIST loaders on IDX fixtures written here in the real
on-disk layouts: torchvision's ``<root>/MNIST/raw`` (plain files) and the flat
gzipped folder that Debian's ``dataset-fashion-mnist`` installs."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets

from trip.data import CorruptDataError, DatasetNotFoundError, load_fashion_mnist, load_mnist, read_idx
from trip.data import mnist
from trip.data.mnist import FASHION_MNIST_CLASSES, FILES

N_TRAIN, N_TEST = 12, 5
# The real Debian package, where installed, is checked the same way as the fixture copy of its layout.
REAL_DEBIAN = [mnist.DEBIAN_FASHION_MNIST] if mnist.DEBIAN_FASHION_MNIST.is_dir() else []


def write_idx(path: Path, array: np.ndarray) -> Path:
    """The IDX format: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def write_idx_set(folder: Path, gz: bool) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    (train_x, train_y), (test_x, test_y) = make_digits(N_TRAIN, 0), make_digits(N_TEST, 1)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    for key, array in arrays.items():
        write_idx(folder / (FILES[key] + (".gz" if gz else "")), array)
    return arrays


def test_torchvision_layout_plain_files(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    train, test = load_mnist(root=tmp_path, image_size=28, rgb=False)
    np.testing.assert_array_equal(train.images[:, 0], arrays["train_images"])
    np.testing.assert_array_equal(test.images[:, 0], arrays["test_images"])
    np.testing.assert_array_equal(train.attributes.argmax(axis=1), arrays["train_labels"])
    assert train.attributes.sum(axis=1).tolist() == [1] * N_TRAIN  # one-hot
    assert train.attribute_names[3] == "digit_3"


def test_torchvision_reads_the_fixture_like_we_do(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    reference = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    np.testing.assert_array_equal(reference.data.numpy(), arrays["train_images"])
    np.testing.assert_array_equal(reference.targets.numpy(), arrays["train_labels"])


def test_rgb_and_resize(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    train, test = load_mnist(root=tmp_path, image_size=32)
    assert train.images.shape == (N_TRAIN, 3, 32, 32) and test.images.shape == (N_TEST, 3, 32, 32)
    assert (train.images[:, 0] == train.images[:, 2]).all()  # grey repeated to three channels
    mean_in, mean_out = arrays["train_images"].mean(), train.images.mean()
    assert abs(mean_in - mean_out) < 3  # bilinear resizing keeps the brightness


@pytest.mark.parametrize("real", [False] + [True] * len(REAL_DEBIAN))
def test_debian_fashion_mnist_layout(tmp_path, monkeypatch, real):
    if not real:
        debian = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
        write_idx_set(debian, gz=True)  # the package installs the four files gzipped, flat
        monkeypatch.setattr(mnist, "DEBIAN_FASHION_MNIST", debian)
    # No copy under the given root, so the Debian path is where the loader finds it.
    train, test = load_fashion_mnist(root=tmp_path / "elsewhere", image_size=32)
    expected = (60_000, 10_000) if real else (N_TRAIN, N_TEST)
    assert (len(train), len(test)) == expected
    assert train.attribute_names == FASHION_MNIST_CLASSES and train.images.shape[1:] == (3, 32, 32)
    assert train.source == str(mnist.DEBIAN_FASHION_MNIST)


def test_missing_dataset_lists_files_and_places(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in (tmp_path / "FashionMNIST" / "raw", tmp_path, tmp_path / "no-debian"):
        assert f"{place}: missing" in message
    for name in FILES.values():
        assert name in message


def test_partial_copy_names_only_the_missing_file(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / FILES["test_labels"]).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(root=tmp_path)
    assert info.value.missing[tmp_path.absolute()] == [f"{FILES['test_labels']} or {FILES['test_labels']}.gz"]


def test_download_failure_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetNotFoundError, match="failed: network is unreachable") as info:
        load_mnist(root=tmp_path, download=True)
    assert FILES["train_images"] in str(info.value)


def test_no_download_without_permission(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torchvision.datasets, "MNIST", forbidden)
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        load_mnist(root=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_is_detected(tmp_path, gz):
    write_idx_set(tmp_path, gz=gz)
    path = tmp_path / (FILES["train_images"] + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CorruptDataError, match="truncated|damaged gzip") as info:
        load_mnist(root=tmp_path)
    assert info.value.path == path and str(path) in str(info.value)


def test_idx_header_problems(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((2, 3, 3), np.uint8))
    np.testing.assert_array_equal(read_idx(good, ndim=3), np.zeros((2, 3, 3)))
    with pytest.raises(CorruptDataError, match="expected 1 dimensions"):
        read_idx(good, ndim=1)
    (tmp_path / "trailing").write_bytes(good.read_bytes() + b"\x00")
    with pytest.raises(CorruptDataError, match="trailing bytes"):
        read_idx(tmp_path / "trailing")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good.read_bytes()[2:])
    with pytest.raises(CorruptDataError, match="bad magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "float").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(CorruptDataError, match="element type 0x0d"):
        read_idx(tmp_path / "float")
    (tmp_path / "notgz.gz").write_bytes(good.read_bytes())
    with pytest.raises(CorruptDataError, match="damaged gzip"):
        read_idx(tmp_path / "notgz.gz")


def test_label_count_mismatch_names_the_labels_file(tmp_path):
    write_idx_set(tmp_path, gz=False)
    write_idx(tmp_path / FILES["train_labels"], np.zeros(N_TRAIN - 1, np.uint8))
    with pytest.raises(CorruptDataError, match=f"{N_TRAIN - 1} labels for {N_TRAIN} images") as info:
        load_mnist(root=tmp_path)
    assert info.value.path.name == FILES["train_labels"]


def test_out_of_range_labels_are_rejected(tmp_path):
    write_idx_set(tmp_path, gz=False)
    write_idx(tmp_path / FILES["test_labels"], np.full(N_TEST, 10, np.uint8))
    with pytest.raises(CorruptDataError, match="labels outside 0..9") as info:
        load_mnist(root=tmp_path)
    assert info.value.path.name == FILES["test_labels"]
