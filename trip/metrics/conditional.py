"""Judging conditional samples (paper Sec. 6.4, Table 3): an attribute classifier, violation, diversity.

Samples generated for a partial specification ("smiling woman", the rest
free) should carry every specified attribute and vary in the others. A small
CNN trained on the real images reads the attributes off the samples; then

* ``violation_rates``: for each specified attribute the fraction of samples
  whose predicted value differs, and the fraction violating any of them;
* ``diversity``: the entropy, in bits, of each unspecified attribute among
  the samples (1 bit: a binary attribute split evenly; 0: collapsed), and
  the joint entropy of all unspecified attributes together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trip.data import Split, to_float
from trip.models.architectures import ARCHITECTURES


class AttributeClassifier(nn.Module):
    """Images (B, C, H, W) in [-1, 1] -> logits (B, c) of c binary attributes.

    One stage per stride-2 stage of architecture ``arch`` (its widths), each a
    3x3 conv and a stride-2 3x3 conv with batch norm, then one hidden layer.
    Two convs per stage: with one, square-vs-circle on shapes stays near chance.
    """

    def __init__(self, channels: int, image_size: int, n_attributes: int, arch: str = "small", hidden: int = 64):
        super().__init__()
        self.options = {"channels": channels, "image_size": image_size, "n_attributes": n_attributes,
                        "arch": arch, "hidden": hidden}
        widths = ARCHITECTURES.get(arch).widths(image_size)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([channels, *widths], widths):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.Conv2d(c_out, c_out, 3, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.Flatten(), nn.Linear(widths[-1] * 16, hidden), nn.ReLU(), nn.Linear(hidden, n_attributes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def train_classifier(train_split: Split, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                     device: str | torch.device = "cpu", arch: str = "small") -> AttributeClassifier:
    """Fit an :class:`AttributeClassifier` to every attribute of ``train_split`` (binary cross-entropy, Adam).

    Deterministic in ``seed``; the global RNG is left as it was.
    """
    images = torch.from_numpy(np.ascontiguousarray(train_split.images))
    targets = torch.from_numpy(train_split.attributes.astype(np.float32))
    n, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AttributeClassifier(channels, size, targets.shape[1], arch).to(device)
    model.attribute_names = tuple(train_split.attribute_names)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.empty(0, dtype=torch.long)
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:  # a fresh permutation per epoch; the tail of the last one is dropped
            order = torch.randperm(n, generator=g)
        rows, order = order[:batch_size], order[batch_size:]
        logits = model(to_float(images[rows]).to(device))
        loss = F.binary_cross_entropy_with_logits(logits, targets[rows].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict_attributes(model: AttributeClassifier, images: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted attributes (n, c) in {0, 1} of uint8 images or float images in [-1, 1]."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for chunk in images.split(batch_size):
        x = to_float(chunk) if chunk.dtype == torch.uint8 else chunk.float()
        out.append((model(x.to(device)) > 0).long().cpu())
    model.train(was_training)
    return torch.cat(out)


def classifier_accuracy(model: AttributeClassifier, test_split: Split) -> dict[str, float]:
    """Held-out accuracy of each attribute, by name."""
    predicted = predict_attributes(model, torch.from_numpy(np.ascontiguousarray(test_split.images)))
    correct = (predicted.numpy() == test_split.attributes).mean(axis=0)
    return {name: float(acc) for name, acc in zip(test_split.attribute_names, correct)}


def violation_rates(predicted, spec_values, spec_mask) -> dict:
    """How often samples contradict a specification.

    Args:
        predicted: (n, c) attribute values of n samples.
        spec_values: (c,) the specified values (ignored where not specified).
        spec_mask: (c,) bool, which attributes are specified.

    Returns ``per_attribute`` (c,), the violating fraction of each specified
    attribute (NaN where unspecified); ``mean``, their average (NaN if none);
    ``any``, the fraction of samples violating at least one.
    """
    predicted, values, mask = _arrays(predicted, spec_values, spec_mask)
    wrong = (predicted != values) & mask
    per = np.where(mask, wrong.mean(axis=0), np.nan)
    mean = float(per[mask].mean()) if mask.any() else float("nan")
    return {"per_attribute": per, "mean": mean, "any": float(wrong.any(axis=1).mean())}


def diversity(predicted, spec_mask) -> dict:
    """Entropy in bits of the unspecified attributes among the samples.

    Returns ``per_attribute`` (c,), each unspecified attribute's entropy (NaN
    where specified); ``mean``, their average (NaN if none); ``joint``, the
    entropy of the tuple of all unspecified values (0 if none).
    """
    predicted, _, mask = _arrays(predicted, np.zeros(len(spec_mask)), spec_mask)
    per = np.full(mask.shape, np.nan)
    for j in np.flatnonzero(~mask):
        per[j] = entropy_bits(np.unique(predicted[:, j], return_counts=True)[1])
    free = predicted[:, ~mask]
    joint = entropy_bits(np.unique(free, axis=0, return_counts=True)[1]) if free.shape[1] else 0.0
    mean = float(per[~mask].mean()) if (~mask).any() else float("nan")
    return {"per_attribute": per, "mean": mean, "joint": joint}


def entropy_bits(counts) -> float:
    """Entropy in bits of the empirical distribution with these counts."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def _arrays(predicted, values, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted)
    values, mask = np.asarray(values), np.asarray(mask, dtype=bool)
    if predicted.ndim != 2 or values.shape != (predicted.shape[1],) or mask.shape != values.shape:
        raise ValueError(f"need predicted (n, c) and spec values and mask (c,), got shapes "
                         f"{predicted.shape}, {values.shape}, {mask.shape}")
    return predicted, values, mask


__all__ = [
    "AttributeClassifier", "classifier_accuracy", "diversity", "entropy_bits", "predict_attributes",
    "train_classifier", "violation_rates",
]
