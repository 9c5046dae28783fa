"""CelebA loader on a small folder written here in the official layout:
``img_align_celeba/*.jpg`` (178x218), ``list_attr_celeba.txt`` and
``list_eval_partition.txt`` with the official headers and spacing."""

from pathlib import Path

import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image

from trip.data import CorruptDataError, DatasetNotFoundError, load_celeba, load_celeba_split
from trip.data.celeba import ATTRIBUTES, OFFICIAL_SIZES, crop_and_resize, split_sizes
from trip.data.common import decode_image

PARTITION = [0, 0, 0, 1, 2, 2]  # three train, one valid, two test
NAMES = [f"{i:06d}.jpg" for i in range(1, len(PARTITION) + 1)]
INNER = (40, 160, 90)  # colour inside the central 160x160 crop
BORDER = (255, 0, 0)  # colour only outside it


def attribute_values() -> np.ndarray:
    """(6, 40) values of -1/1: image i has attribute j iff (i + j) % 3 == 0."""
    i, j = np.indices((len(NAMES), len(ATTRIBUTES)))
    return np.where((i + j) % 3 == 0, 1, -1)


def write_celeba(root: Path) -> Path:
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    for k, name in enumerate(NAMES):
        img = Image.new("RGB", (178, 218), BORDER)
        # The crop box torchvision's CenterCrop(160) takes from 178x218: left 9, top 29.
        img.paste(INNER, (9, 29, 169, 189))
        img.paste((255, 255, 255), (9 + 16 * k, 29, 9 + 16 * k + 16, 45))  # a marker that tells images apart
        img.save(images / name, quality=95)
    # The official files right-align the values with two spaces before a 1, one before a -1.
    rows = ["".join(f"{v:>3d}" for v in row) for row in attribute_values()]
    attr_lines = [str(len(NAMES)), " ".join(ATTRIBUTES) + " "] + [f"{n}{r}" for n, r in zip(NAMES, rows)]
    (root / "list_attr_celeba.txt").write_text("\r\n".join(attr_lines) + "\r\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\r\n" for n, p in zip(NAMES, PARTITION)))
    return root


@pytest.fixture
def celeba(tmp_path) -> Path:
    return write_celeba(tmp_path / "celeba")


def test_official_partitions_and_attributes(celeba):
    train, test = load_celeba(root=celeba)
    assert train.images.shape == (3, 3, 64, 64) and test.images.shape == (2, 3, 64, 64)
    assert train.attribute_names == ATTRIBUTES and len(ATTRIBUTES) == 40
    values = (attribute_values() > 0).astype(np.int8)  # -1 -> 0, 1 -> 1
    np.testing.assert_array_equal(train.attributes, values[:3])
    np.testing.assert_array_equal(test.attributes, values[4:])
    valid = load_celeba_split(root=celeba, split="valid")
    np.testing.assert_array_equal(valid.attributes, values[3:4])
    _, test_is_valid = load_celeba(root=celeba, test_split="valid")
    np.testing.assert_array_equal(test_is_valid.images, valid.images)


def test_center_crop_160_then_resize_as_in_the_paper_code(celeba):
    train, _ = load_celeba(root=celeba, image_size=64)
    paper = T.Compose([T.CenterCrop(160), T.Resize(64)])
    for k in range(3):
        with Image.open(celeba / "img_align_celeba" / NAMES[k]) as img:
            reference = np.asarray(paper(img.convert("RGB"))).transpose(2, 0, 1)
        assert np.abs(train.images[k].astype(int) - reference).max() <= 1
    # Nothing of the red border outside the crop survives.
    red_excess = train.images[:, 0].astype(int) - train.images[:, 2].astype(int)
    assert red_excess.max() < 60  # the inner colour has red - blue = -50; white markers have 0


def test_image_size_and_limit(celeba):
    train, test = load_celeba(root=celeba, image_size=32, limit=2)
    assert train.images.shape == (2, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    full, _ = load_celeba(root=celeba, image_size=32)
    np.testing.assert_array_equal(train.images, full.images[:2])


def test_torchvision_style_root_with_celeba_subfolder(celeba):
    train, _ = load_celeba(root=celeba.parent)  # <root>/celeba/... as torchvision lays it out
    assert len(train) == 3


def test_missing_dataset_lists_files_and_places(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_celeba(root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in (tmp_path, tmp_path / "celeba"):
        assert f"{place}: missing img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt" in message


def test_missing_partition_file_is_named(celeba):
    (celeba / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_celeba(root=celeba)
    assert info.value.missing[celeba] == ["list_eval_partition.txt"]


def test_missing_image_is_named(celeba):
    (celeba / "img_align_celeba" / NAMES[4]).unlink()
    with pytest.raises(DatasetNotFoundError, match=NAMES[4]) as info:
        load_celeba(root=celeba)
    assert celeba / "img_align_celeba" in info.value.missing


def test_attribute_file_with_wrong_row_count(celeba):
    path = celeba / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # a partial copy: last row lost
    with pytest.raises(CorruptDataError, match="declares 6 images but has 5 rows") as info:
        load_celeba(root=celeba)
    assert info.value.path == path and "list_attr_celeba.txt" in str(info.value)


def test_attribute_file_with_bad_values_or_header(celeba):
    path = celeba / "list_attr_celeba.txt"
    original = path.read_bytes().decode()  # keeps the CRLF line ends
    path.write_text(original.replace(" 1\r\n", " 0\r\n", 1))
    with pytest.raises(CorruptDataError, match="must be -1 or 1"):
        load_celeba(root=celeba)
    path.write_text(original.replace("Young", "Old"))
    with pytest.raises(CorruptDataError, match="40 CelebA attribute names"):
        load_celeba(root=celeba)
    lines = original.splitlines()
    path.write_text("\n".join(lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:]))
    with pytest.raises(CorruptDataError, match="line 4 has 40 fields, expected 41"):
        load_celeba(root=celeba)


def test_partition_file_that_disagrees_with_attributes(celeba):
    path = celeba / "list_eval_partition.txt"
    path.write_text("".join(f"{n} 0\n" for n in NAMES[:-1]))
    with pytest.raises(CorruptDataError, match="lists 5 images but list_attr_celeba.txt lists 6") as info:
        load_celeba(root=celeba)
    assert info.value.path == path
    path.write_text("000001.jpg 7\n")
    with pytest.raises(CorruptDataError, match="line 1 should be"):
        load_celeba(root=celeba)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_image_that_fails_to_decode_is_named(celeba, damage):
    path = celeba / "img_align_celeba" / NAMES[1]
    data = path.read_bytes()
    path.write_bytes(b"this is not a jpeg" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="fails to decode") as info:
        load_celeba(root=celeba)
    assert info.value.path == path


# -- the paper's random 90/10 split and the known sizes ---------------------------------
def test_random_partition_is_the_paper_codes_90_10_permutation(celeba):
    train, test = load_celeba(root=celeba, partition="random")
    order = np.random.RandomState(777).permutation(len(NAMES))  # the paper code: np.random.seed(777)
    cut = round(0.9 * len(NAMES))
    assert (len(train), len(test)) == (cut, len(NAMES) - cut) == (5, 1)
    values = (attribute_values() > 0).astype(np.int8)
    np.testing.assert_array_equal(train.attributes, values[order[:cut]])
    np.testing.assert_array_equal(test.attributes, values[order[cut:]])
    for j, row in enumerate(order[:cut]):
        expected = crop_and_resize(decode_image(celeba / "img_align_celeba" / NAMES[row]), 64)
        np.testing.assert_array_equal(train.images[j], expected)


def test_random_partition_takes_limit_from_the_permuted_order(celeba):
    full, _ = load_celeba(root=celeba, partition="random", image_size=16)
    part, test = load_celeba(root=celeba, partition="random", image_size=16, limit=2)
    np.testing.assert_array_equal(part.images, full.images[:2])
    assert len(test) == 1


def test_split_sizes_are_known_without_files():
    assert split_sizes() == (162_770, 19_962)
    assert split_sizes(test_split="valid") == (162_770, 19_867)
    assert split_sizes(partition="random") == (182_339, 20_260)
    assert sum(split_sizes(partition="random")) == sum(OFFICIAL_SIZES.values()) == 202_599
    assert split_sizes(partition="random", limit=1000, root="/nowhere") == (1000, 1000)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"partition": "paper"}, "partition: must be 'official' or 'random'"),
        ({"partition": "random", "test_split": "valid"}, "test_split: must be 'test' with the random partition"),
        ({"test_split": "train"}, "test_split: must be 'test' or 'valid'"),
        ({"limit": 0}, "limit: must be null or an integer >= 1"),
    ],
)
def test_bad_split_options_are_named_before_reading_files(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        split_sizes(**options)
    with pytest.raises(ValueError, match=message.split(":")[0]):
        load_celeba(root=tmp_path / "absent", **options)  # the option, not the missing folder
