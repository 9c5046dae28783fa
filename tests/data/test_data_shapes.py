"""The shapes generator: shapes and ranges, determinism, attribute statistics
measured on generated data, and that each attribute is visibly rendered."""

import colorsys
import time

import numpy as np
import pytest

from trip.data.shapes import ATTRIBUTES, NUM_UNIFORMS, generate_shapes, load_shapes, render, sample_attributes


@pytest.fixture(scope="module")
def default_sets():
    start = time.perf_counter()
    train, test = load_shapes()
    return train, test, time.perf_counter() - start


@pytest.fixture(scope="module")
def small():
    return generate_shapes(4000, image_size=32, seed=0)


def column(split, name):
    return split.attributes[:, ATTRIBUTES.index(name)].astype(bool)


def test_defaults_are_20k_train_2k_test_generated_in_seconds(default_sets):
    train, test, seconds = default_sets
    assert train.images.shape == (20_000, 3, 32, 32) and test.images.shape == (2_000, 3, 32, 32)
    assert seconds < 20  # about 2 s on 2 cores; generous for loaded CI machines


def test_arrays_have_the_split_contract(small):
    assert small.images.dtype == np.uint8 and small.attributes.dtype == np.int8
    assert small.attributes.shape == (4000, len(ATTRIBUTES)) and len(ATTRIBUTES) >= 8
    assert set(np.unique(small.attributes)) == {0, 1}
    assert small.attribute_names == ATTRIBUTES
    assert small.images.min() <= 10 and small.images.max() >= 245  # uses the full range


def test_works_at_64_with_the_same_attributes():
    big, little = generate_shapes(50, image_size=64, seed=1), generate_shapes(50, image_size=32, seed=1)
    assert big.images.shape == (50, 3, 64, 64)
    np.testing.assert_array_equal(big.attributes, little.attributes)
    # Downscaled, the 64px images show the same picture as the 32px ones.
    pooled = big.images.reshape(50, 3, 32, 2, 32, 2).astype(float).mean(axis=(3, 5))
    assert np.abs(pooled - little.images).mean() < 6


def test_same_seed_gives_byte_identical_arrays():
    a, b = generate_shapes(300, seed=7), generate_shapes(300, seed=7)
    assert a.images.tobytes() == b.images.tobytes() and a.attributes.tobytes() == b.attributes.tobytes()
    assert a.images.tobytes() != generate_shapes(300, seed=8).images.tobytes()
    assert a.images.tobytes() != generate_shapes(300, seed=7, split="test").images.tobytes()


def test_output_does_not_depend_on_chunking_or_set_size():
    whole = generate_shapes(500, seed=2)
    assert generate_shapes(500, seed=2, chunk=37).images.tobytes() == whole.images.tobytes()
    np.testing.assert_array_equal(generate_shapes(120, seed=2).images, whole.images[:120])


def test_marginal_frequencies(default_sets):
    train = default_sets[0]
    expected = {"square": 0.5, "large": 0.5, "warm": 0.525, "left": 0.5, "top": 0.5, "outline": 0.45,
                "dark_background": 0.5, "second_object": 0.30, "striped": 0.40}
    measured = {name: column(train, name).mean() for name in ATTRIBUTES}
    for name, p in expected.items():
        assert abs(measured[name] - p) < 0.015, (name, measured[name])


@pytest.mark.parametrize(
    "child, parent, p_given_1, p_given_0",
    [
        ("outline", "large", 0.70, 0.20),
        ("warm", "dark_background", 0.75, 0.30),
        ("striped", "square", 0.60, 0.20),
        ("second_object", "large", 0.15, 0.45),
    ],
)
def test_correlated_attributes_follow_the_documented_conditionals(default_sets, child, parent, p_given_1, p_given_0):
    train = default_sets[0]
    c, p = column(train, child), column(train, parent)
    assert abs(c[p].mean() - p_given_1) < 0.02
    assert abs(c[~p].mean() - p_given_0) < 0.02


def test_other_pairs_are_uncorrelated(default_sets):
    corr = np.corrcoef(default_sets[0].attributes.T.astype(float))
    linked = {("outline", "large"), ("warm", "dark_background"), ("striped", "square"), ("second_object", "large"),
              ("second_object", "outline")}  # the last pair only through their common parent, large
    for i, a in enumerate(ATTRIBUTES):
        for j, b in enumerate(ATTRIBUTES[:i]):
            if (a, b) in linked or (b, a) in linked:
                assert abs(corr[i, j]) > 0.1, (a, b, corr[i, j])
            else:
                assert abs(corr[i, j]) < 0.03, (a, b, corr[i, j])


def test_many_modes_are_populated(default_sets):
    combos = {row.tobytes() for row in default_sets[0].attributes}
    assert len(combos) > 450  # of 512 possible attribute combinations


# The attributes are visible: measured on the pixels of generated images.


def corner_background(images):
    return np.median(images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]], axis=2)  # (N, 3)


def foreground(images):
    """Pixels that differ clearly from the background colour read off the corners."""
    bg = corner_background(images)
    return np.abs(images - bg[:, :, None, None]).max(axis=1) > 60


def test_dark_background_is_dark(small):
    x = small.images.astype(float)
    brightness = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].mean(axis=(1, 2))
    dark = column(small, "dark_background")
    assert brightness[dark].max() < 0.3 * 255 and brightness[~dark].min() > 0.6 * 255


def test_large_shapes_cover_more_pixels(small):
    plain = ~column(small, "outline") & ~column(small, "second_object")
    area = foreground(small.images.astype(float)).sum(axis=(1, 2))
    large = column(small, "large")
    assert area[plain & ~large].max() < 90 < area[plain & large].min()


@pytest.mark.parametrize("name, axis", [("left", 2), ("top", 1)])
def test_position_attributes_place_the_shape(small, name, axis):
    alone = ~column(small, "second_object")
    mask = foreground(small.images.astype(float))[alone]
    coords = np.indices((32, 32))[axis - 1]
    centroid = (mask * coords).sum(axis=(1, 2)) / mask.sum(axis=(1, 2))
    flag = column(small, name)[alone]
    assert centroid[flag].max() < 14 and centroid[~flag].min() > 18


def test_warm_fills_have_warm_hues(small):
    x = small.images.astype(float)
    plain = ~column(small, "outline") & ~column(small, "second_object") & ~column(small, "striped")
    mask = foreground(x)
    hues = np.array([colorsys.rgb_to_hsv(*(x[i][:, mask[i]].mean(axis=1) / 255))[0] for i in np.flatnonzero(plain)])
    warm = column(small, "warm")[plain]
    signed = np.where(hues > 0.5, hues - 1, hues)  # warm hues wrap around red
    assert signed[warm].min() > -0.08 and signed[warm].max() < 0.17
    assert hues[~warm].min() > 0.27 and hues[~warm].max() < 0.78


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_flipping_any_attribute_changes_every_image(name):
    u = np.random.default_rng(0).random((200, NUM_UNIFORMS))
    attrs = sample_attributes(u)
    flipped = attrs.copy()
    flipped[:, ATTRIBUTES.index(name)] ^= 1
    before, after = render(attrs, u, 32), render(flipped, u, 32)
    changed_pixels = (np.abs(before - after).max(axis=1) > 0.1).sum(axis=(1, 2))
    assert changed_pixels.min() >= 5


def test_outline_is_a_ring_in_the_contrasting_grey():
    u = np.random.default_rng(1).random((100, NUM_UNIFORMS))
    attrs = sample_attributes(u)
    attrs[:, ATTRIBUTES.index("second_object")] = 0  # nothing drawn over the ring
    attrs[:, ATTRIBUTES.index("outline")] = 0
    ringed_attrs = attrs.copy()
    ringed_attrs[:, ATTRIBUTES.index("outline")] = 1
    plain, ringed = render(attrs, u, 64), render(ringed_attrs, u, 64)  # 64px: the ring is 2.6px wide
    grey = np.where(attrs[:, ATTRIBUTES.index("dark_background")] == 1, 0.92, 0.08)[:, None, None, None]

    def grey_pixels(img):
        return (np.abs(img - grey).max(axis=1) < 0.03).sum(axis=(1, 2))

    assert grey_pixels(plain).max() == 0  # fills are saturated and backgrounds far from the ring grey
    ring, shape = grey_pixels(ringed), foreground(plain * 255).sum(axis=(1, 2))
    assert ring.min() >= 20 and (ring < shape).all()  # a thin ring around the shape


# The exact joint distribution of the 512 attribute combinations.


def test_attribute_probabilities_sum_to_one_and_give_the_documented_marginals():
    from trip.data.shapes import attribute_probabilities, combination_index

    p = attribute_probabilities()
    assert p.shape == (512,) and (p > 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
    bits = (np.arange(512)[:, None] >> np.arange(9)) & 1
    np.testing.assert_array_equal(combination_index(bits), np.arange(512))
    marginals = {name: p[bits[:, j] == 1].sum() for j, name in enumerate(ATTRIBUTES)}
    expected = {"square": 0.5, "large": 0.5, "warm": 0.525, "left": 0.5, "top": 0.5, "outline": 0.45,
                "dark_background": 0.5, "second_object": 0.30, "striped": 0.40}
    for name, value in expected.items():
        assert marginals[name] == pytest.approx(value, abs=1e-12), name
    # One cell by hand: only `square` set -> 0.5^5 (roots) * P(warm=0|light) * P(outline=0|small)
    # * P(second=0|small) * P(striped=0|square).
    assert p[1] == pytest.approx(0.5**5 * 0.70 * 0.80 * 0.55 * 0.40)


def test_attribute_probabilities_match_the_generator_frequencies(monkeypatch):
    from trip.data import shapes

    rng, n, counts = np.random.default_rng(123), 0, np.zeros(512)
    for _ in range(8):  # 1.6M rows in chunks of 200k
        attrs = sample_attributes(rng.random((200_000, NUM_UNIFORMS)))
        counts += np.bincount(shapes.combination_index(attrs), minlength=512)
        n += len(attrs)

    def z_scores():
        expected = shapes.attribute_probabilities() * n
        return (counts - expected) / np.sqrt(expected)

    bound = 511 + 5 * np.sqrt(2 * 511)  # chi-square with 511 degrees of freedom, + 5 sd
    z = z_scores()
    assert np.abs(z).max() < 5 and (z**2).sum() < bound  # every cell within 5 standard errors
    # The check has power, and the function reads the generator's constants: P(warm | dark) = 0.73
    # instead of 0.75 is detected.
    monkeypatch.setattr(shapes, "P_WARM_GIVEN_DARK", (0.73, 0.30))
    assert (z_scores() ** 2).sum() > bound
