"""Stand-ins for the official TT-SNN model classes (github donghyunli/TT-SNN, models/MS_ResNet_TT.py),
written here from their documented behaviour (../shared/DESIGN.md section 2) so that tests can build a
model exactly as a TT-SNN user would, without importing or copying that code. ttc must recognise these
classes by name and attributes. Names, attributes, module-level constants and the glue code of
`ResNet_CIFAR.forward` (a torch.zeros buffer filled step by step, the global average pool and the mean
over time before the classifier) follow the published interface."""
import torch
import torch.nn.functional as F
from torch import nn

thresh, decay, time_window = 0.5, 0.25, 4


class mem_update(nn.Module):  # noqa: N801 (the official name)
    """mem = x[0], then mem = mem * decay * (1 - spike) + x[t]; spike = [mem > thresh]."""

    def forward(self, x):
        out, mem, spike = torch.zeros_like(x), torch.zeros_like(x[0]), torch.zeros_like(x[0])
        for t in range(time_window):
            mem = x[t] if t == 0 else mem * decay * (1 - spike) + x[t]
            spike = (mem > thresh).float()
            out[t] = spike
        return out


class Snn_Conv2d(nn.Conv2d):  # noqa: N801
    def forward(self, x):
        return torch.stack([super(Snn_Conv2d, self).forward(x[t]) for t in range(time_window)])


class batch_norm_2d(nn.Module):  # noqa: N801
    """A BatchNorm3d over [B, C, T, H, W] (statistics per channel, over time too), in `bn`."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x):
        return self.bn(x.permute(1, 2, 0, 3, 4)).permute(2, 0, 1, 3, 4)


class batch_norm_2d1(batch_norm_2d):  # noqa: N801
    pass


class _TT(nn.Module):
    """The cores and the max-pool rule; each variant's `step(x, t)` is one time step of the cores."""

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0, bias=None):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.rank = stride, padding, rank
        self.first_layer = nn.Conv2d(in_channels, rank, (1, 1), bias=False)
        self.second_layer = nn.Conv2d(rank, rank, (3, 1), padding=(1, 0), bias=False)
        self.third_layer = nn.Conv2d(rank, rank, (1, 3), padding=(0, 1), bias=False)
        self.fourth_layer = nn.Conv2d(rank, out_channels, (1, 1), bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)

    def forward(self, x):
        steps = []
        for t in range(time_window):
            y = self.step(x[t], t)
            steps.append(self.pool(y) if self.in_channels != self.out_channels else y)
        return torch.stack(steps)


class STT_Snn_Conv2d(_TT):  # noqa: N801
    def step(self, x, t):
        return self.fourth_layer(self.third_layer(self.second_layer(self.first_layer(x))))


class PTT_Snn_Conv2d(_TT):  # noqa: N801
    def step(self, x, t):
        u = self.first_layer(x)
        return self.fourth_layer((self.second_layer(u) + self.third_layer(u)) / 2)


class HTT_Snn_Conv2d(PTT_Snn_Conv2d):  # noqa: N801
    def step(self, x, t):
        return super().step(x, t) if t < 2 else self.fourth_layer(self.first_layer(x))


class BasicBlock(nn.Module):
    def __init__(self, tt, in_channels, out_channels, rank, stride=1):
        super().__init__()
        self.residual_function = nn.Sequential(
            mem_update(), tt(in_channels, out_channels, 3, rank[0], stride, 1), batch_norm_2d(out_channels),
            mem_update(), tt(out_channels, out_channels, 3, rank[1], 1, 1), batch_norm_2d1(out_channels))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(Snn_Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          batch_norm_2d(out_channels))

    def forward(self, x):
        return self.residual_function(x) + self.shortcut(x)


class ResNet_CIFAR(nn.Module):  # noqa: N801
    """The official network's shape, scaled by `widths` (the published one: 64, 64, 128, 256, 512)."""

    def __init__(self, tt, num_block, rank_list, num_classes, widths=(64, 64, 128, 256, 512), in_channels=3):
        super().__init__()
        self.conv1 = nn.Sequential(Snn_Conv2d(in_channels, widths[0], 3, padding=1, bias=False), batch_norm_2d(widths[0]))
        self.mem_update = mem_update()
        stages, c, k = [], widths[0], 0
        for s, (count, width) in enumerate(zip(num_block, widths[1:])):
            blocks = []
            for b in range(count):
                blocks.append(BasicBlock(tt, c, width, rank_list[2 * k:2 * k + 2], 2 if s and not b else 1))
                c, k = width, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        input = torch.zeros(time_window, x.size()[0], x.size()[1], x.size()[2], x.size()[3])
        for i in range(time_window):
            input[i] = x
        output = self.stage4(self.stage3(self.stage2(self.stage1(self.conv1(input)))))
        output = F.adaptive_avg_pool3d(self.mem_update(output), (None, 1, 1))
        output = output.view(output.size()[0], output.size()[1], -1)
        output = output.sum(dim=0) / output.size()[0]
        return self.fc(output)
