import numpy as np
import pytest
import torch
from torch import nn

from ttc.frontends import modules as M


def small_conv_snn(seed: int = 0, bn: bool = True) -> nn.Sequential:
    """A two-layer conv LIF SNN on [4, N, 1, 8, 8] with non-trivial batchnorm statistics."""
    torch.manual_seed(seed)
    layers = [M.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(M.BatchNorm2d(4))
    layers += [M.LIF(decay=0.5, threshold=0.5), M.MaxPool2d(2), M.Flatten(), M.Linear(64, 10), M.TimeMean()]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def grid_inputs(shape, seed: int = 0, levels: int = 16) -> np.ndarray:
    """Inputs k/levels in [0, 1]: exact in every input format ttc uses by default."""
    return (np.random.default_rng(seed).integers(0, levels + 1, size=shape) / levels).astype(np.float32)


@pytest.fixture
def conv_snn():
    return small_conv_snn()
