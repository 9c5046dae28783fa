"""The converted weights, pytorch-fid's network on them, and offline operation."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid.inception import InceptionV3

from trip.metrics.fid import (
    FEATURE_DIM,
    conv_name_map,
    convert_torchscript_state_dict,
    ensure_inception_weights,
    inception_features,
    inception_weights_path,
    is_genuine_weights,
    load_inception,
)

ATOL = 1e-5


class NetworkBlocked(RuntimeError):
    """Raised by the patched network functions: any use of the network fails the test."""


def _refuse(*args, **kwargs):
    raise NetworkBlocked(f"network access attempted: {args[:2]}")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every route pytorch-fid / torch.hub could take to the internet raises instead."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse)


@pytest.fixture
def fresh_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(torch.hub.get_dir()).is_relative_to(tmp_path)
    return tmp_path


def test_name_map_covers_every_torchscript_tensor(torchscript) -> None:
    names = conv_name_map()
    assert len(names) == 94
    assert len(set(names.values())) == 94
    ts_keys = set(torchscript.state_dict())
    parts = ("weight", "beta", "mean", "var")
    assert ts_keys == {f"net.layers.{ts}.{part}" for ts in names for part in parts}


def test_conversion_is_a_pure_renaming(torchscript) -> None:
    ts_state = torchscript.state_dict()
    state = convert_torchscript_state_dict(ts_state)
    for ts, fid in conv_name_map().items():
        src = f"net.layers.{ts}"
        assert torch.equal(state[f"{fid}.conv.weight"], ts_state[f"{src}.weight"])
        assert torch.equal(state[f"{fid}.bn.bias"], ts_state[f"{src}.beta"])
        assert torch.equal(state[f"{fid}.bn.running_mean"], ts_state[f"{src}.mean"])
        assert torch.equal(state[f"{fid}.bn.running_var"], ts_state[f"{src}.var"])
        assert torch.equal(state[f"{fid}.bn.weight"], torch.ones_like(ts_state[f"{src}.mean"]))
    assert not state["fc.weight"].any() and not state["fc.bias"].any()


def test_batch_norm_epsilon_matches_torchscript(inception, torchscript) -> None:
    # The TorchScript layers call batch_norm(..., eps=0.001) on unfolded statistics.
    assert "0.001" in torchscript.net.layers.conv.code
    bns = [m for m in inception.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and {bn.eps for bn in bns} == {0.001}


def test_fc_is_not_part_of_the_feature_network(inception) -> None:
    # Why zero-filling fc is harmless: pytorch-fid's InceptionV3 keeps only blocks up to pool3.
    assert not any(name.startswith("fc") or ".fc." in name for name, _ in inception.named_parameters())


@pytest.mark.parametrize("channels_last", [True, False])
def test_features_match_torchscript(torch_home, torchscript, monkeypatch, channels_last: bool) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = load_inception(channels_last=channels_last)
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = torchscript(2 * x - 1)  # the TorchScript model takes [-1, 1] directly
    got = inception_features(x, value_range=(0, 1), model=model, progress=False)
    assert got.shape == (2, FEATURE_DIM)
    max_abs = np.abs(got - expected.numpy()).max()
    print(f"max abs feature difference (channels_last={channels_last}): {max_abs:.3g}")
    assert max_abs < ATOL


def test_input_conventions_give_the_same_features(inception) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    from_uint8 = inception_features(images, batch_size=1, model=inception, progress=False)
    signed = torch.from_numpy(images).float() / 127.5 - 1
    from_signed = inception_features(signed, value_range=(-1, 1), model=inception, progress=False)
    batches = (torch.from_numpy(images[i : i + 1]).float() / 255 for i in range(2))
    from_batches = inception_features(batches, value_range=(0, 1), model=inception, progress=False, total=2)
    np.testing.assert_allclose(from_signed, from_uint8, atol=ATOL)
    np.testing.assert_allclose(from_batches, from_uint8, atol=ATOL)


def test_grayscale_is_read_as_rgb(inception) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (1, 1, 8, 8), dtype=np.uint8)
    rgb = np.repeat(gray, 3, axis=1)
    both = inception_features(iter([gray, rgb]), model=inception, progress=False)
    np.testing.assert_allclose(both[0], both[1], atol=ATOL)


def test_float_images_need_a_value_range(inception) -> None:
    with pytest.raises(ValueError, match="value_range"):
        inception_features(torch.rand(1, 3, 8, 8), model=inception, progress=False)


def test_the_network_guard_is_effective(fresh_torch_home, no_network) -> None:
    # Without the converted file, plain pytorch-fid goes to GitHub and the guard stops it.
    with pytest.raises(NetworkBlocked):
        InceptionV3([3])


def test_everything_works_offline_from_an_empty_cache(fresh_torch_home, no_network) -> None:
    model = load_inception()
    path = inception_weights_path()
    assert path.is_file() and path.is_relative_to(fresh_torch_home)
    assert not is_genuine_weights(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    features = inception_features(np.zeros((1, 3, 8, 8), np.uint8), model=model, progress=False)
    assert features.shape == (1, FEATURE_DIM) and np.isfinite(features).all()


def test_an_existing_weights_file_is_used_as_is(fresh_torch_home, no_network) -> None:
    path = inception_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stand-in for the genuine download")
    before = path.stat().st_mtime_ns
    assert ensure_inception_weights() == path
    assert path.read_bytes() == b"stand-in for the genuine download"
    assert path.stat().st_mtime_ns == before
