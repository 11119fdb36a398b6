"""ttc's reference modules: what users train with. Every module takes and returns time-first tensors
[T, B, ...] (SpikingJelly's multi-step convention) and means exactly what the IR op it lowers to
means (ttc.compiler.ir), so a trained model compiles without surprises. All of them pickle with
`torch.save` and load with `weights_only=True`.
"""
from __future__ import annotations

import torch
from torch import nn

from ttc.isa.errors import UserError
from ttc.isa.table import MAX_LEVELS, MODES


class ModelDefinitionError(UserError, ValueError):
    """A ttc module, or a model of ttc.models, given arguments it cannot take."""


def _per_step(layer_forward, x: torch.Tensor) -> torch.Tensor:
    """Apply a single-step layer to every time step at once by folding T into the batch."""
    t, b = x.shape[:2]
    y = layer_forward(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


class Conv2d(nn.Conv2d):
    """nn.Conv2d applied at every time step: [T, B, Cin, H, W] -> [T, B, Cout, H', W']."""

    def forward(self, x):
        return _per_step(super().forward, x)


class Linear(nn.Linear):
    """nn.Linear applied at every time step: [T, B, Fin] -> [T, B, Fout]."""


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d over [T, B, C, H, W], statistics shared across time (as tdBN and TT-SNN)."""

    def forward(self, x):
        return _per_step(super().forward, x)


class MaxPool2d(nn.MaxPool2d):
    def forward(self, x):
        return _per_step(super().forward, x)


class AvgPool2d(nn.AvgPool2d):
    def forward(self, x):
        return _per_step(super().forward, x)


class Flatten(nn.Module):
    """[T, B, C, H, W] -> [T, B, C*H*W]."""

    def forward(self, x):
        return x.flatten(2)


class DirectEncoder(nn.Module):
    """Direct input coding: a static input [B, ...] repeated over `steps` time steps."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def forward(self, x):
        return x.unsqueeze(0).expand(self.steps, *x.shape)


class TimeMean(nn.Module):
    """[T, B, ...] -> [B, ...], the mean over time (a rate readout)."""

    def forward(self, x):
        return x.mean(0)


class _SpikeFn(torch.autograd.Function):
    """Heaviside step forward; the arctan surrogate gradient backward (alpha = 2)."""

    @staticmethod
    def forward(ctx, v, strict: bool):
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype) if strict else (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad / (1 + (torch.pi * v) ** 2), None


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons over [T, B, ...] (ttc.compiler.ir.Neuron, order reset_decay):

        u_t = decay * R(h_{t-1}, s_{t-1}) + input_gain * x_t + charge,   s_t = [u_t > threshold] (cmp='gt') or >=
        R(h, s) = h * (1 - s) + v_reset * s  (reset='hard'; TT-SNN's mem_update with v_reset = 0)
        R(h, s) = h - threshold * s          (reset='subtract')

    starting from h_{-1} = v_reset (hard) or 0 (subtract) and s_{-1} = 0. `input_gain` and `charge`
    (1 and 0 unless given) are how a NIR LIF's r*dt/tau and v_leak*dt/tau arrive (ttc.frontends.nir);
    the compiler folds them into the layer that feeds the neuron (fold-neuron-input).
    """

    # Class-level defaults, so that LIF modules pickled before these two existed load and run unchanged.
    input_gain = 1.0
    charge = 0.0

    def __init__(self, decay: float = 0.25, threshold: float = 0.5, reset: str = "hard",
                 v_reset: float = 0.0, cmp: str = "gt", input_gain: float = 1.0, charge: float = 0.0):
        super().__init__()
        if reset not in ("hard", "subtract") or cmp not in ("gt", "ge"):
            raise ModelDefinitionError(f"reset must be 'hard' or 'subtract' and cmp 'gt' or 'ge', got {reset!r}, {cmp!r}")
        self.decay, self.threshold, self.reset, self.v_reset, self.cmp = decay, threshold, reset, v_reset, cmp
        if input_gain != 1.0 or charge != 0.0:
            self.input_gain, self.charge = input_gain, charge

    @property
    def v_init(self) -> float:
        return self.v_reset if self.reset == "hard" else 0.0

    def forward(self, x):
        h = torch.full_like(x[0], self.v_init)
        s = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            r = h * (1 - s) + self.v_reset * s if self.reset == "hard" else h - self.threshold * s
            # gain 1 and charge 0 leave x untouched, so models without them compute exactly as before
            x_t = x[t] if self.input_gain == 1.0 else self.input_gain * x[t]
            h = self.decay * r + x_t if self.charge == 0.0 else self.decay * r + x_t + self.charge
            s = _SpikeFn.apply(h - self.threshold, self.cmp == "gt")
            out.append(s)
        return torch.stack(out)

    def extra_repr(self):
        gain = f", input_gain={self.input_gain}, charge={self.charge}" if (self.input_gain, self.charge) != (1.0, 0.0) else ""
        return f"decay={self.decay}, threshold={self.threshold}, reset={self.reset}, v_reset={self.v_reset}, cmp={self.cmp}{gain}"


class IF(LIF):
    """Integrate-and-fire: LIF with decay 1."""

    def __init__(self, threshold: float = 1.0, reset: str = "hard", v_reset: float = 0.0, cmp: str = "gt",
                 input_gain: float = 1.0):
        super().__init__(1.0, threshold, reset, v_reset, cmp, input_gain)


class MTNeuron(nn.Module):
    """Multi-threshold leaky integrate-and-fire neurons (MT-SNN; ttc.compiler.ir.Neuron with `levels` K,
    docs/mt.md) over [T, B, ...], each emitting one of several levels a step:

        h_t = decay * (h_{t-1} - y_{t-1}) + x_t                     (h_{-1} = y_{-1} = 0)
        'parallel': s_k = [h_t > k*theta], k = 1..K, compared at once;              y_t = theta * sum_k s_k
        'cascade':  r_1 = h_t, s_k = [r_k > theta_k], r_(k+1) = r_k - theta_k s_k,
                    theta_k = theta * 2^-(k-1) (successive approximation);        y_t = sum_k theta_k s_k

    (`cmp='ge'`: >= instead of >), returning y_t: K+1 levels (parallel) or 2^K (cascade). K = 1 is a LIF
    with subtract reset whose spikes weigh theta. PLIF base (`learn_decay`): decay = sigmoid(w) with w a
    trained parameter (initialised to give `decay`); once trained the neuron compiles as a LIF with that
    constant. Each compare's gradient is the arctan surrogate of `LIF`."""

    def __init__(self, levels: int = 2, mode: str = "parallel", threshold: float = 1.0, decay: float = 0.5,
                 cmp: str = "gt", learn_decay: bool = False):
        super().__init__()
        if not 1 <= levels <= MAX_LEVELS or mode not in MODES or cmp not in ("gt", "ge") or not threshold > 0:
            raise ModelDefinitionError(f"levels 1..{MAX_LEVELS}, mode 'parallel' or 'cascade', cmp 'gt' or 'ge' and a "
                                       f"positive threshold, got {levels}, {mode!r}, {cmp!r}, {threshold}")
        if not 0.0 < decay < 1.0 and learn_decay:
            raise ModelDefinitionError(f"a learnt decay starts inside (0, 1), got {decay}")
        self.levels, self.mode, self.threshold, self.cmp = levels, mode, threshold, cmp
        if learn_decay:
            self.decay_logit = nn.Parameter(torch.logit(torch.tensor(float(decay))))
        else:
            self.fixed_decay = decay

    @property
    def decay(self):
        return torch.sigmoid(self.decay_logit) if hasattr(self, "decay_logit") else self.fixed_decay

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        """y for membranes h."""
        strict, y, rest = self.cmp == "gt", 0, h
        for k in range(1, self.levels + 1):
            if self.mode == "parallel":
                y = y + self.threshold * _SpikeFn.apply(h - k * self.threshold, strict)
            else:
                step = self.threshold * 2.0 ** -(k - 1)
                fired = step * _SpikeFn.apply(rest - step, strict)
                y, rest = y + fired, rest - fired
        return y

    def forward(self, x):
        h, y, out = torch.zeros_like(x[0]), torch.zeros_like(x[0]), []
        for t in range(x.shape[0]):
            h = self.decay * (h - y) + x[t]
            y = self.fire(h)
            out.append(y)
        return torch.stack(out)

    def extra_repr(self):
        decay = "learnt" if hasattr(self, "decay_logit") else self.fixed_decay
        return f"levels={self.levels}, mode={self.mode!r}, threshold={self.threshold}, decay={decay}, cmp={self.cmp}"


class TTConv2d(nn.Module):
    """A 3x3 convolution (stride 1, padding 1, no bias) factorised into tensor-train cores, over
    [T, B, Cin, H, W] (TT-SNN; ttc.compiler.ir.TTConv2d):

        G1 1x1 Cin -> R,  G2 (3,1) R -> R,  G3 (1,3) R -> R,  G4 1x1 R -> Cout;   u = G1 * x[t]
        'stt': G4 * (G3 * (G2 * u))
        'ptt': G4 * ((G2 * u + G3 * u) / 2)
        'htt': 'ptt' for t < T/2, G4 * u for t >= T/2

    The cores are the attributes `first_layer` .. `fourth_layer` (nn.Conv2d), as in the TT-SNN code.
    To downsample, follow it with MaxPool2d(2)."""

    def __init__(self, in_channels: int, out_channels: int, rank: int, variant: str = "stt"):
        super().__init__()
        if variant not in ("stt", "ptt", "htt"):
            raise ModelDefinitionError(f"variant must be 'stt', 'ptt' or 'htt', got {variant!r}")
        self.in_channels, self.out_channels, self.rank, self.variant = in_channels, out_channels, rank, variant
        self.first_layer = nn.Conv2d(in_channels, rank, 1, bias=False)
        self.second_layer = nn.Conv2d(rank, rank, (3, 1), padding=(1, 0), bias=False)
        self.third_layer = nn.Conv2d(rank, rank, (1, 3), padding=(0, 1), bias=False)
        self.fourth_layer = nn.Conv2d(rank, out_channels, 1, bias=False)

    def _ptt(self, u):
        return self.fourth_layer((self.second_layer(u) + self.third_layer(u)) / 2)

    def forward(self, x):
        if self.variant == "stt":
            return _per_step(lambda v: self.fourth_layer(self.third_layer(self.second_layer(self.first_layer(v)))), x)
        if self.variant == "ptt":
            return _per_step(lambda v: self._ptt(self.first_layer(v)), x)
        half = x.shape[0] // 2
        return torch.cat([_per_step(lambda v: self._ptt(self.first_layer(v)), x[:half]),
                          _per_step(lambda v: self.fourth_layer(self.first_layer(v)), x[half:])])

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, rank={self.rank}, variant={self.variant!r}"


class MSBlock(nn.Module):
    """An MS-ResNet basic block (membrane shortcut) over [T, B, C, H, W], real values in and out:

        y = BN(conv2(LIF(BN(conv1(LIF(x)))))) + shortcut(x)

    conv1 is Cin -> Cout, conv2 Cout -> Cout, both 3x3: dense (`ranks` None) or tensor-train convolutions
    of ranks `ranks` = (r1, r2) in `variant`; with `stride` 2 a dense conv1 strides, a TT conv1 is followed
    by a 2x2 max pool (as in TT-SNN). The shortcut is the identity, or a strided 1x1 conv + BN where
    the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, ranks=None, variant: str = "stt",
                 decay: float = 0.25, threshold: float = 0.5):
        super().__init__()

        def conv(cin, cout, stride, rank):
            if rank is None:
                return [Conv2d(cin, cout, 3, stride, 1, bias=False)]
            return [TTConv2d(cin, cout, rank, variant)] + ([MaxPool2d(2)] if stride == 2 else [])

        r1, r2 = ranks if ranks is not None else (None, None)
        self.residual = nn.Sequential(
            LIF(decay, threshold), *conv(in_channels, out_channels, stride, r1), BatchNorm2d(out_channels),
            LIF(decay, threshold), *conv(out_channels, out_channels, 1, r2), BatchNorm2d(out_channels))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          BatchNorm2d(out_channels))

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


SAFE_CLASSES = (Conv2d, Linear, BatchNorm2d, MaxPool2d, AvgPool2d, Flatten, DirectEncoder, TimeMean, LIF, IF,
                MTNeuron, TTConv2d, MSBlock)
