"""Violation rates and diversity on constructed cases; the attribute classifier on an easy split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trip.data import Split
from trip.metrics.conditional import (
    classifier_accuracy,
    diversity,
    entropy_bits,
    predict_attributes,
    train_classifier,
    violation_rates,
)

PREDICTED = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0]])


def test_violation_rates_count_each_specified_attribute_and_any():
    out = violation_rates(PREDICTED, [1, 0, 1], [True, True, False])
    # attribute 0 is wrong in row 2, attribute 1 in row 1; attribute 2 is free
    np.testing.assert_allclose(out["per_attribute"][:2], [0.25, 0.25])
    assert math.isnan(out["per_attribute"][2])
    assert out["mean"] == 0.25 and out["any"] == 0.5


def test_violation_rates_edge_cases():
    none = violation_rates(PREDICTED, [0, 0, 0], [False] * 3)
    assert none["any"] == 0.0 and math.isnan(none["mean"])
    all_wrong = violation_rates(PREDICTED, 1 - PREDICTED[0], [True] * 3)
    assert all_wrong["per_attribute"].tolist() == [0.75, 0.75, 0.5] and all_wrong["any"] == 1.0
    with pytest.raises(ValueError, match="shapes"):
        violation_rates(PREDICTED, [1, 0], [True, False])


def test_entropy_bits_known_answers():
    assert entropy_bits([5, 5]) == 1.0
    assert entropy_bits([7]) == 0.0 and entropy_bits([3, 0]) == 0.0
    assert entropy_bits([1, 1, 1, 1]) == 2.0
    assert entropy_bits([1, 3]) == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))


def test_diversity_of_free_attributes_and_their_joint():
    predicted = np.array([[0, 0, 0, 1], [0, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 0]])
    out = diversity(predicted, [False, False, False, True])
    np.testing.assert_allclose(out["per_attribute"][:3], [1.0, 1.0, 1.0])
    assert math.isnan(out["per_attribute"][3])
    assert out["mean"] == 1.0
    # columns 1 and 2 are equal: four distinct rows over (0, 1) only, 2 bits jointly
    assert out["joint"] == 2.0
    collapsed = diversity(np.zeros((6, 2), dtype=int), [False, False])
    assert collapsed["mean"] == 0.0 and collapsed["joint"] == 0.0
    fixed = diversity(predicted, [True] * 4)
    assert math.isnan(fixed["mean"]) and fixed["joint"] == 0.0


def test_diversity_joint_brute_force():
    rng = np.random.default_rng(0)
    predicted = rng.integers(0, 2, (200, 5))
    mask = np.array([True, False, True, False, False])
    counts: dict[tuple, int] = {}
    for row in predicted[:, ~mask]:
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    p = np.array(list(counts.values())) / len(predicted)
    assert diversity(predicted, mask)["joint"] == pytest.approx(-(p * np.log2(p)).sum())


def _easy_split(n: int, seed: int) -> Split:
    """Attribute 0: a bright image; attribute 1: a bright left half. Trivially learnable."""
    rng = np.random.default_rng(seed)
    attributes = rng.integers(0, 2, (n, 2)).astype(np.int8)
    images = rng.integers(0, 60, (n, 3, 16, 16)).astype(np.uint8)
    images[attributes[:, 0] == 1] += 120
    images[attributes[:, 1] == 1, :, :, :8] += 70
    return Split(images, attributes, ("bright", "left"))


def test_classifier_learns_an_easy_split_deterministically():
    train, test = _easy_split(256, 0), _easy_split(128, 1)
    state = torch.get_rng_state()
    model = train_classifier(train, steps=150, batch_size=32, lr=3e-3, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    accuracy = classifier_accuracy(model, test)
    assert set(accuracy) == {"bright", "left"} and min(accuracy.values()) > 0.9, accuracy
    again = train_classifier(train, steps=150, batch_size=32, lr=3e-3, seed=3)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_predict_attributes_takes_uint8_or_float_images():
    model = train_classifier(_easy_split(64, 0), steps=2, batch_size=16, seed=0)
    images = torch.from_numpy(_easy_split(8, 2).images)
    as_float = images.float() / 127.5 - 1
    predicted = predict_attributes(model, images, batch_size=3)
    assert predicted.shape == (8, 2) and set(predicted.unique().tolist()) <= {0, 1}
    assert torch.equal(predicted, predict_attributes(model, as_float))
