"""Model builders shared by tests, benchmarks, examples and the notes: VGG-style LIF SNNs for 3x32x32
inputs, sized to be larger than the buffers of the shipped hardware configs, and MS-ResNets with dense
or tensor-train convolutions (TT-SNN)."""
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
    return spiking_statistics(net, seed + 1)


def spiking_statistics(net: nn.Module, seed: int, var: float = 0.25) -> nn.Module:
    """Batchnorm statistics that make an untrained network spike in every layer."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(var)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.1)
    return net.eval()


#: Blocks per stage and channels of the stem and each stage: the CIFAR ResNets of TT-SNN (18, 34) and
#: the ResNet-19 of tdBN / TET.
RESNETS = {18: ((2, 2, 2, 2), (64, 64, 128, 256, 512)),
           34: ((3, 4, 6, 3), (64, 64, 128, 256, 512)),
           19: ((3, 3, 2), (128, 128, 256, 512))}


def tt_resnet(depth: int = 18, ranks=None, variant: str = "stt", in_channels: int = 3, size: int = 32,
              classes: int = 10, steps: int | None = 4, seed: int = 0) -> nn.Sequential:
    """An MS-ResNet (`M.MSBlock`) of `depth` 18, 34 or 19: [T, N, C, H, W] (or [N, C, H, W] repeated over
    `steps`, direct coding) -> [N, classes]. `ranks`: two TT ranks per block (16 for ResNet-18 and -19, 32
    for ResNet-34), or None for dense 3x3 convolutions. The first stage keeps the resolution, every
    other halves it; a LIF, global average pool and linear readout (averaged over time) end it."""
    if depth not in RESNETS:
        raise ValueError(f"depth must be one of {sorted(RESNETS)}, got {depth}")
    blocks, widths = RESNETS[depth]
    if ranks is not None and len(ranks) != 2 * sum(blocks):
        raise ValueError(f"ResNet-{depth} has {sum(blocks)} blocks: give {2 * sum(blocks)} ranks, got {len(ranks)}")
    torch.manual_seed(seed)
    layers = [M.DirectEncoder(steps)] if steps is not None else []
    layers += [M.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), M.BatchNorm2d(widths[0])]
    c, k = widths[0], 0
    for stage, (count, width) in enumerate(zip(blocks, widths[1:])):
        for b in range(count):
            stride = 2 if stage and not b else 1
            pair = None if ranks is None else tuple(ranks[2 * k:2 * k + 2])
            layers.append(M.MSBlock(c, width, stride, pair, variant))
            size //= stride
            c, k = width, k + 1
    layers += [M.LIF(), M.AvgPool2d(size), M.Flatten(), M.Linear(c, classes), M.TimeMean()]
    return spiking_statistics(nn.Sequential(*layers), seed + 1)
