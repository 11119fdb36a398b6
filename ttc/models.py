"""Model builders shared by tests, benchmarks, examples and the notes: VGG-style LIF SNNs for 3x32x32
inputs, sized to be larger than the buffers of the shipped hardware configs, MS-ResNets with dense
or tensor-train convolutions (TT-SNN), and VGG-shaped CAT ANNs for TTFS (docs/ttfs.md)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ttc.frontends import modules as M
from ttc.frontends import ttfs


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

#: The per-TT-conv ranks of TT-SNN's ResNet-34 STT as SATA_Sim ran it (two per MS-ResNet block, 16
#: blocks, in order): each TT conv's first core's output channels ('Num Filter' of layer 'Conv{k}a') in
#: RuokaiYin/SATA_Sim commit d447058, inference-energy-cal/workloads/tt-snn/workload_stt_res34.yaml.
SATA_SIM_RES34_STT_RANKS = (24, 23, 22, 17, 16, 12, 22, 31, 25, 25, 24, 21, 20, 19, 48, 79, 64, 69, 63, 69, 60, 65,
                            63, 63, 62, 58, 121, 170, 173, 147, 161, 108)


def tt_resnet(depth: int = 18, ranks=None, variant: str = "stt", in_channels: int = 3, size: int = 32,
              classes: int = 10, steps: int | None = 4, seed: int = 0) -> nn.Sequential:
    """An MS-ResNet (`M.MSBlock`) of `depth` 18, 34 or 19: [T, N, C, H, W] (or [N, C, H, W] repeated over
    `steps`, direct coding) -> [N, classes]. `ranks`: two TT ranks per block (16 for ResNet-18 and -19, 32
    for ResNet-34), or None for dense 3x3 convolutions. The first stage keeps the resolution, every
    other halves it; a LIF, global average pool and linear readout (averaged over time) end it."""
    if depth not in RESNETS:
        raise M.ModelDefinitionError(f"depth must be one of {sorted(RESNETS)}, got {depth}")
    blocks, widths = RESNETS[depth]
    if ranks is not None and len(ranks) != 2 * sum(blocks):
        raise M.ModelDefinitionError(f"ResNet-{depth} has {sum(blocks)} blocks: give {2 * sum(blocks)} ranks, got {len(ranks)}")
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


#: VGG-16's 13 convolutions (channels; "M" a 2x2 max pool), then three linear layers.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def cat_vgg(cfg=VGG16, hidden: int = 512, in_channels: int = 3, size: int = 32, classes: int = 10, window: int = 8,
            seed: int = 0) -> nn.Sequential:
    """[N, in_channels, size, size] -> [N, classes]: a VGG-shaped CAT ANN (3x3 LogConv2d + CAT, max pools
    as in `cfg`, then LogLinear + CAT to `hidden`, twice, and a LogLinear readout). Random weights, each
    layer scaled (by a power of two: the 5-bit grid is kept) so that its largest pre-activation on
    uniform random images lies in [1, 2): every layer fires (cost studies, not accuracy)."""
    torch.manual_seed(seed)
    act = lambda: ttfs.CATActivation(window)
    layers, c = [act()], in_channels
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            layers += [ttfs.LogConv2d(c, item, 3, padding=1), act()]
            c = item
    layers += [nn.Flatten(), ttfs.LogLinear(c * size * size, hidden), act(), ttfs.LogLinear(hidden, hidden), act(),
               ttfs.LogLinear(hidden, classes)]
    net = nn.Sequential(*layers).eval()
    x = torch.rand(16, in_channels, size * 2 ** cfg.count("M"), size * 2 ** cfg.count("M"), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for m in net:
            if isinstance(m, (ttfs.LogConv2d, ttfs.LogLinear)):
                m.bias.zero_()
                peak = float(m(x).max())
                m.weight.mul_(2.0 ** -math.floor(math.log2(peak)) if peak > 0 else 1.0)
            x = m(x)
    return net
