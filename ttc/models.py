"""Model builders shared by tests, benchmarks and the notes: VGG-style LIF SNNs for 3x32x32 inputs,
sized to be larger than the buffers of the shipped hardware configs."""
from __future__ import annotations

import torch
from torch import nn

from ttc.frontends import modules as M


def vgg_snn(widths=(64, 128, 256, 256, 512), pool_after=(0, 1, 3, 4), in_channels: int = 3, size: int = 32,
            classes: int = 10, seed: int = 0) -> nn.Sequential:
    """[T, N, in_channels, size, size] -> [N, classes]: 3x3 conv-BN-LIF blocks of `widths` channels, a
    2x2 max pool after the blocks numbered in `pool_after`, a linear rate readout. Random weights, with
    batchnorm statistics set so that every layer spikes (cost studies, not accuracy)."""
    torch.manual_seed(seed)
    layers, c = [], in_channels
    for k, width in enumerate(widths):
        layers += [M.Conv2d(c, width, 3, padding=1), M.BatchNorm2d(width), M.LIF(decay=0.5, threshold=0.5)]
        if k in pool_after:
            layers.append(M.MaxPool2d(2))
            size //= 2
        c = width
    net = nn.Sequential(*layers, M.Flatten(), M.Linear(c * size * size, classes), M.TimeMean())
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(0.25)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.1)
    return net.eval()
