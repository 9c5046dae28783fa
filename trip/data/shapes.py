"""``shapes``: the embedded default dataset, generated procedurally so it needs no download.

Each image shows one coloured main shape on a tinted background, sometimes
with an outline, stripes and a second small dot. Nine binary attributes of
CelebA's kind decide the discrete look of an image; continuous nuisance
parameters (position jitter, size, rotation, hue, saturation, brightness,
background tint and gradient) vary within each attribute combination. With
2^9 = 512 attribute combinations separated by sharp visual changes, the data is
multimodal by construction -- the setting that the TRIP paper's claim is about.

Attributes (column order of ``Split.attributes``; 1 means the named property holds):

===============  ==================================================================  =====
name             meaning when 1 (0 is the opposite)                                  P(1)
===============  ==================================================================  =====
square           main shape is a square (0: a circle of equal area)                  0.5
large            main shape radius is 19-24% of the image side (0: 10-14%)           0.5
warm             fill hue is red/orange/yellow (0: green/cyan/blue/violet)           0.525
left             main shape centre is in the left half (0: right half)               0.5
top              main shape centre is in the top half (0: bottom half)               0.5
outline          a ring in a contrasting grey is drawn around the main shape         0.45
dark_background  background brightness is 0.03-0.22 (0: 0.72-0.95)                   0.5
second_object    a small dot of the complementary hue sits in the opposite quadrant  0.30
striped          the fill is crossed by darker stripes that turn with the shape      0.40
===============  ==================================================================  =====

Continuous nuisance, uniform within each attribute value: centre +-0.07 of the
side around 0.32 / 0.68; radius within its range; rotation 0-360 degrees;
fill hue within its family, saturation 0.55-1, value 0.75-1; background tint
(any hue, saturation 0.15), brightness within its range and a linear gradient
of up to +-0.08 in a random direction; dot position +-0.04; stripe phase.

Correlated attributes, as in real data (the generator samples exactly these):

- P(outline=1 | large=1) = 0.70,  P(outline=1 | large=0) = 0.20   -> P(outline) = 0.45
- P(warm=1 | dark_background=1) = 0.75,  P(warm=1 | dark_background=0) = 0.30   -> P(warm) = 0.525
- P(striped=1 | square=1) = 0.60,  P(striped=1 | square=0) = 0.20   -> P(striped) = 0.40
- P(second_object=1 | large=1) = 0.15,  P(second_object=1 | large=0) = 0.45   -> P(second_object) = 0.30
  (a negative correlation: a large shape leaves little room for a second one)

``outline`` and ``second_object`` are therefore correlated too, but only through
their common parent ``large``; all other pairs are independent.

Generator. Row ``i`` of a split is a pure function of one row of
``NUM_UNIFORMS`` uniforms drawn from ``numpy.random.default_rng([seed, split_id])``
(train 0, test 1): attributes by thresholding, nuisance parameters by scaling.
So the same seed gives byte-identical arrays (on one platform: float32 sin/cos
may differ in the last bit between CPU instruction sets, which can move a rare
pixel by one level), train and test are independent streams, and the first
``k`` images of a larger set equal a set of size ``k``.
Rendering is vectorised over a chunk of images with anti-aliased edges: for
each pixel the signed distance to the shape boundary (in pixels) is turned into
a coverage in [0, 1], and the layers (background, outline, fill, dot) are
alpha-composited.

Speed (``load_shapes()`` wall time on the 2-core development machine, numpy
float32): 20k train + 2k test at 32x32 take 0.7-1.2 s (up to 4 s while other
jobs load the machine); at 64x64, 3-5 s.
"""

from __future__ import annotations

import numpy as np

from trip.data.common import Split

ATTRIBUTES: tuple[str, ...] = (
    "square",
    "large",
    "warm",
    "left",
    "top",
    "outline",
    "dark_background",
    "second_object",
    "striped",
)

# Conditional probabilities of the correlated attributes: (P(1 | parent=1), P(1 | parent=0)).
P_OUTLINE_GIVEN_LARGE = (0.70, 0.20)
P_WARM_GIVEN_DARK = (0.75, 0.30)
P_STRIPED_GIVEN_SQUARE = (0.60, 0.20)
P_SECOND_GIVEN_LARGE = (0.15, 0.45)

# Columns of the per-image uniform row after the nine attribute columns.
NUISANCE = (
    "jitter_x", "jitter_y", "radius", "rotation", "hue", "saturation", "value",
    "bg_level", "bg_hue", "bg_slope", "bg_angle", "dot_x", "dot_y", "stripe_phase",
)
NUM_UNIFORMS = len(ATTRIBUTES) + len(NUISANCE)
SPLIT_IDS = {"train": 0, "test": 1}

SQUARE_HALF_SIDE = np.sqrt(np.pi) / 2  # a square of this half-side has the area of the unit circle
OUTLINE_WIDTH = 0.04  # of the image side
DOT_RADIUS = 0.06  # of the image side


def sample_attributes(u: np.ndarray) -> np.ndarray:
    """Turn (N, NUM_UNIFORMS) uniforms into (N, 9) int8 attributes with the documented correlations."""
    col = {name: u[:, i] for i, name in enumerate(ATTRIBUTES)}
    square = col["square"] < 0.5
    large = col["large"] < 0.5
    dark = col["dark_background"] < 0.5
    attrs = {
        "square": square,
        "large": large,
        "warm": col["warm"] < np.where(dark, *P_WARM_GIVEN_DARK),
        "left": col["left"] < 0.5,
        "top": col["top"] < 0.5,
        "outline": col["outline"] < np.where(large, *P_OUTLINE_GIVEN_LARGE),
        "dark_background": dark,
        "second_object": col["second_object"] < np.where(large, *P_SECOND_GIVEN_LARGE),
        "striped": col["striped"] < np.where(square, *P_STRIPED_GIVEN_SQUARE),
    }
    return np.stack([attrs[name] for name in ATTRIBUTES], axis=1).astype(np.int8)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for arrays of equal shape; returns shape (..., 3)."""
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32) + h[..., None] * 6) % 6
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _coverage(signed_dist_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a pixel whose centre is ``signed_dist_px`` inside an edge."""
    return np.clip(signed_dist_px + 0.5, 0.0, 1.0)


def render(attrs: np.ndarray, u: np.ndarray, size: int) -> np.ndarray:
    """Render images for attribute rows ``attrs`` and uniform rows ``u``; returns float32 (n, 3, S, S) in [0, 1]."""
    a = {name: attrs[:, i].astype(bool) for i, name in enumerate(ATTRIBUTES)}
    p = {name: u[:, len(ATTRIBUTES) + i].astype(np.float32) for i, name in enumerate(NUISANCE)}
    n = len(attrs)
    f32 = np.float32

    # Geometry in pixel units, shaped (n, 1, 1) to broadcast over the (S, S) grid.
    def per_image(x: np.ndarray) -> np.ndarray:
        return (x * size).astype(f32)[:, None, None]

    cx = per_image(np.where(a["left"], 0.32, 0.68) + (p["jitter_x"] - 0.5) * 0.14)
    cy = per_image(np.where(a["top"], 0.32, 0.68) + (p["jitter_y"] - 0.5) * 0.14)
    radius = per_image(np.where(a["large"], 0.19 + 0.05 * p["radius"], 0.10 + 0.04 * p["radius"]))
    theta = (p["rotation"] * 2 * np.pi).astype(f32)[:, None, None]
    grid = np.arange(size, dtype=f32) + 0.5
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy
    # Coordinates in the shape's rotated frame, in units of its radius.
    su = (dx * np.cos(theta) + dy * np.sin(theta)) / radius
    sv = (-dx * np.sin(theta) + dy * np.cos(theta)) / radius
    norm = np.where(
        a["square"][:, None, None],
        np.maximum(np.abs(su), np.abs(sv)) / SQUARE_HALF_SIDE,
        np.sqrt(su**2 + sv**2),
    )
    inside_px = (1 - norm) * radius  # signed distance to the boundary, positive inside

    # Per-image colours of the five layers every pixel mixes: background, gradient, ring, fill, dot.
    level = np.where(a["dark_background"], 0.03 + 0.19 * p["bg_level"], 0.72 + 0.23 * p["bg_level"]).astype(f32)
    bg_color = hsv_to_rgb(p["bg_hue"], np.full(n, 0.15, f32), level)
    ring_color = np.repeat(np.where(a["dark_background"], 0.92, 0.08).astype(f32)[:, None], 3, axis=1)
    # Warm hues wrap around red (-0.05..0.14); cool hues span green..violet (0.30..0.75).
    hue = np.where(a["warm"], (p["hue"] * 0.19 - 0.05) % 1.0, 0.30 + 0.45 * p["hue"]).astype(f32)
    fill_color = hsv_to_rgb(hue, 0.55 + 0.45 * p["saturation"], 0.75 + 0.25 * p["value"])
    dot_color = hsv_to_rgb((hue + 0.5) % 1.0, np.full(n, 0.8, f32), np.full(n, 0.95, f32))
    colors = np.stack([bg_color, np.ones_like(bg_color), ring_color, fill_color, dot_color], axis=2)  # (n, 3, 5)

    # Gradient: a gentle linear ramp of the background in a random direction.
    phi = (p["bg_angle"] * 2 * np.pi).astype(f32)[:, None, None]
    slope = ((p["bg_slope"] - 0.5) * 0.16).astype(f32)[:, None, None]
    centred = grid - size / 2
    ramp = slope * (centred[None, None, :] * np.cos(phi) + centred[None, :, None] * np.sin(phi)) / size
    # Outline: a ring just outside the shape, in a grey that contrasts with the background.
    ring = _coverage(inside_px + OUTLINE_WIDTH * size) * a["outline"][:, None, None]
    fill = _coverage(inside_px)
    stripes = np.clip(0.5 + 2.0 * np.sin(np.pi * (1.5 * su + p["stripe_phase"][:, None, None])), 0, 1)
    shade = 1 - 0.45 * stripes * a["striped"][:, None, None]
    # Second object: a small dot of the complementary hue in the diagonally opposite quadrant.
    dot_x = per_image(np.where(a["left"], 0.75, 0.25) + (p["dot_x"] - 0.5) * 0.08)
    dot_y = per_image(np.where(a["top"], 0.75, 0.25) + (p["dot_y"] - 0.5) * 0.08)
    dot_dist = np.sqrt((grid[None, None, :] - dot_x) ** 2 + (grid[None, :, None] - dot_y) ** 2)
    dot = _coverage(DOT_RADIUS * size - dot_dist) * a["second_object"][:, None, None]

    # Alpha-compositing background < ring < fill < dot, written as one weight per layer so
    # the three colour channels come from a single batched matmul instead of per-layer blends.
    behind_dot = 1 - dot
    behind_fill = (1 - fill) * behind_dot
    background = (1 - ring) * behind_fill
    weights = np.stack([background, ramp * background, ring * behind_fill, fill * shade * behind_dot, dot], axis=1)
    img = colors @ weights.reshape(n, 5, size * size)
    return np.clip(img, 0.0, 1.0).reshape(n, 3, size, size)


def generate_shapes(
    n: int, image_size: int = 32, seed: int = 0, split: str = "train", chunk: int | None = None
) -> Split:
    """Generate ``n`` images of one split. Deterministic in (seed, split); ``chunk`` never changes the output."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    u = np.random.default_rng([seed, SPLIT_IDS[split]]).random((n, NUM_UNIFORMS))
    attrs = sample_attributes(u)
    # About 64k pixels per chunk keeps every temporary in cache; 4x larger chunks run 3x slower.
    chunk = chunk or max(1, 2**16 // image_size**2)
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    for start in range(0, n, chunk):
        stop = start + chunk
        images[start:stop] = np.rint(render(attrs[start:stop], u[start:stop], image_size) * 255).astype(np.uint8)
    return Split(images, attrs, ATTRIBUTES, source=f"shapes generator (seed={seed}, split={split}, size={image_size})")


def load_shapes(n_train: int = 20_000, n_test: int = 2_000, image_size: int = 32, seed: int = 0) -> tuple[Split, Split]:
    """The registry entry: (train, test) splits of the shapes dataset."""
    return (
        generate_shapes(n_train, image_size, seed, "train"),
        generate_shapes(n_test, image_size, seed, "test"),
    )


# -- the exact joint distribution of the attributes --------------------------------------
def combination_index(attributes: np.ndarray) -> np.ndarray:
    """(N, 9) 0/1 attribute rows -> (N,) combination indices in 0..511: bit j holds ``ATTRIBUTES[j]``.

    So index 0 is all attributes 0, index 1 only ``square``, index 2**8 = 256
    only ``striped``; the order of :func:`attribute_probabilities`.
    """
    attributes = np.asarray(attributes)
    if attributes.ndim != 2 or attributes.shape[1] != len(ATTRIBUTES):
        raise ValueError(f"need (N, {len(ATTRIBUTES)}) attribute rows, got shape {attributes.shape}")
    return (attributes.astype(np.int64) << np.arange(len(ATTRIBUTES))).sum(axis=1)


def attribute_probabilities() -> np.ndarray:
    """The exact probability (512,) of every attribute combination under ``sample_attributes``.

    Entry ``i`` is P(attributes = a) for the combination a with
    ``combination_index(a) == i`` (bit j = attribute j of ``ATTRIBUTES``).
    Computed from the same constants the generator thresholds against: the
    five root attributes (square, large, left, top, dark_background) are 1
    with probability 0.5 each, and each correlated attribute depends only on
    its parent through the ``P_*`` pairs. The entries are positive and sum to 1.
    """
    bits = (np.arange(2 ** len(ATTRIBUTES))[:, None] >> np.arange(len(ATTRIBUTES))) & 1
    a = {name: bits[:, j].astype(bool) for j, name in enumerate(ATTRIBUTES)}
    p_one = {name: np.full(len(bits), 0.5) for name in ("square", "large", "left", "top", "dark_background")}
    for child, parent, (given_1, given_0) in (
        ("warm", "dark_background", P_WARM_GIVEN_DARK),
        ("outline", "large", P_OUTLINE_GIVEN_LARGE),
        ("second_object", "large", P_SECOND_GIVEN_LARGE),
        ("striped", "square", P_STRIPED_GIVEN_SQUARE),
    ):
        p_one[child] = np.where(a[parent], given_1, given_0)
    return np.prod([np.where(a[name], p_one[name], 1 - p_one[name]) for name in ATTRIBUTES], axis=0)
