"""Time-to-first-spike (TTFS) coding with conversion-aware training (CAT): the reference modules.

ttc's scheme (DESIGN.md section 2, docs/ttfs.md). A value v is one spike at time

    t(v) = max(0, round(-log2 v))        standing for 2^-t(v),

sent when v > 0 and t(v) < window; otherwise no spike (the value 0). round is to the nearest integer:
a tie would need v = 2^-(k + 1/2), which no binary number is, so t(v) = ceil(-log2 v - 1/2) exactly,
and the machine decides it in integers (ttc.isa.ttfs.fire_times, held equal to spike_time by the tests).

Weights are 5-bit logarithmic: w = sign * 2^(s - e), a sign bit and a 4-bit exponent e in 0..14 (code
15 is zero), with one power-of-two scale 2^s per layer, s = round(log2 max |w|) (the largest weight on
e = 0). e is t(|w| / 2^s), the same logarithmic rounding as values; an e beyond 14 is zero. A spike at t through weight e adds
sign * 2^-(t + e - s) to the accumulator: a shift and an add, never a multiply.

CAT trains the ANN with `CATActivation` (the value grid above, straight-through gradient) after each
weighted layer, and `LogConv2d` / `LogLinear` (weights quantised in the forward pass, straight-through
gradient), so that the TTFS network computes exactly what the trained ANN computes.
"""
from __future__ import annotations

import torch
from torch import nn

from ttc.isa.errors import UserError
from ttc.isa.ttfs import MAX_WINDOW, ZERO_EXPONENT  # the codes' format is the machine's: exponent 15 is zero

from .modules import ModelDefinitionError


class NotConvertible(UserError, TypeError):
    """A module that `convert` cannot turn into its TTFS counterpart; the message names it."""


def _nearest_exponent(v: torch.Tensor) -> torch.Tensor:
    """round(-log2 v) for v > 0 (int64): ceil(-log2 v - 1/2), there being no ties."""
    return torch.ceil(-torch.log2(v.detach().to(torch.float64)) - 0.5).to(torch.int64)


def spike_time(v: torch.Tensor, window: int) -> torch.Tensor:
    """t(v) for every element as int64, or `window` (no spike) where v <= 0 or t(v) >= window."""
    positive = v.detach() > 0
    t = _nearest_exponent(torch.where(positive, v.detach(), 1.0)).clamp(min=0)
    return torch.where(positive & (t < window), t, torch.full_like(t, window))


def spike_value(t: torch.Tensor, window: int) -> torch.Tensor:
    """2^-t for t < window, 0 for no spike (float32)."""
    return torch.where(t < window, torch.exp2(-t.to(torch.float64)), 0.0).to(torch.float32)


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantised value; backward: the gradient where `passes`, else zero."""

    @staticmethod
    def forward(ctx, x, quantised, passes):
        ctx.save_for_backward(passes)
        return quantised

    @staticmethod
    def backward(ctx, grad):
        (passes,) = ctx.saved_tensors
        return grad * passes, None, None


class CATActivation(nn.Module):
    """y = 2^-t(x) where x spikes within `window` steps, else 0: the TTFS value grid. The gradient
    is the clipped ReLU's (1 on 0 < x <= 1), straight through the rounding."""

    def __init__(self, window: int = 8):
        super().__init__()
        if not 1 <= window <= MAX_WINDOW:
            raise ModelDefinitionError(f"window {window}: between 1 and {MAX_WINDOW} steps")
        self.window = window

    def forward(self, x):
        y = spike_value(spike_time(x, self.window), self.window).to(x.dtype)
        return _StraightThrough.apply(x, y, ((x > 0) & (x <= 1)).to(x.dtype))

    def extra_repr(self):
        return f"window={self.window}"


def weight_scale(w: torch.Tensor) -> int:
    """s = round(log2 max |w|) (no tie: see t(v)), so the largest weight gets e = 0; 0 for all zeros."""
    peak = w.detach().abs().max() if w.numel() else torch.tensor(0.0)
    return -int(_nearest_exponent(peak)) if peak > 0 else 0


def log_weight_codes(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The 5-bit codes of `w` (uint8: sign << 4 | e, e = 15 for zero) and the layer's scale s."""
    s = weight_scale(w)
    e = spike_time(w.detach().abs().to(torch.float64) * 2.0 ** -s, ZERO_EXPONENT)  # 15 = below the grid: zero
    sign = ((w.detach() < 0) & (e < ZERO_EXPONENT)).to(torch.uint8)
    return (sign << 4 | e.to(torch.uint8)), s


def log_weight_values(codes: torch.Tensor, s: int) -> torch.Tensor:
    """The weights the codes stand for (float32; exact: powers of two)."""
    e = (codes & 0xF).to(torch.int64)
    sign = 1.0 - 2.0 * ((codes >> 4) & 1).to(torch.float64)
    return (sign * torch.where(e < ZERO_EXPONENT, torch.exp2((s - e).to(torch.float64)), 0.0)).to(torch.float32)


def log_quantize(w: torch.Tensor) -> torch.Tensor:
    """w on its 5-bit logarithmic grid, with a straight-through gradient (for training)."""
    q = log_weight_values(*log_weight_codes(w)).to(w.dtype)
    return _StraightThrough.apply(w, q, torch.ones_like(w))


class LogConv2d(nn.Conv2d):
    """A conv whose weights are used on their 5-bit logarithmic grid (bias as trained: it is added
    to the accumulator, not shifted)."""

    def forward(self, x):
        return self._conv_forward(x, log_quantize(self.weight), self.bias)


class LogLinear(nn.Linear):
    """A linear layer whose weights are used on their 5-bit logarithmic grid."""

    def forward(self, x):
        return nn.functional.linear(x, log_quantize(self.weight), self.bias)


# ------------------------------------------------------------------------ the converted TTFS model

class TTFSEncoder(nn.Module):
    """The input layer of a converted TTFS network: values [B, ...] -> spike times t(x) (int64,
    `window` = no spike)."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window

    def forward(self, x):
        return spike_time(x, self.window)


class TTFSLinear(nn.Module):
    """A converted linear layer: spike times in (window `in_window`), each spike at t through code e
    adding sign * 2^(s - e - t) to its neurons' accumulators (bias first). The result is the spike times
    the accumulators fire at (window `out_window`), or, for a readout (`out_window` None), the
    accumulators. Exact: sums of powers of two and a float32 bias, in float64."""

    def __init__(self, codes: torch.Tensor, scale: int, bias: torch.Tensor | None, in_window: int,
                 out_window: int | None):
        super().__init__()
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.scale, self.in_window, self.out_window = scale, in_window, out_window

    def weight_values(self) -> torch.Tensor:
        return log_weight_values(self.codes, self.scale)

    def accumulate(self, values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return nn.functional.linear(values, weight, bias)

    def forward(self, times):
        values = spike_value(times, self.in_window).to(torch.float64)
        bias = None if self.bias is None else self.bias.to(torch.float64)
        acc = self.accumulate(values, self.weight_values().to(torch.float64), bias)
        return acc.to(torch.float32) if self.out_window is None else spike_time(acc, self.out_window)


class TTFSConv2d(TTFSLinear):
    """A converted conv layer: as TTFSLinear, its synapses a convolution's."""

    def __init__(self, codes, scale, bias, in_window, out_window, stride=(1, 1), padding=(0, 0)):
        super().__init__(codes, scale, bias, in_window, out_window)
        self.stride, self.padding = tuple(stride), tuple(padding)

    def accumulate(self, values, weight, bias):
        return nn.functional.conv2d(values, weight, bias, self.stride, self.padding)


class TTFSMaxPool2d(nn.Module):
    """Max pooling of TTFS values: the earliest spike of each window."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, times):
        return -nn.functional.max_pool2d(-times.to(torch.float64), self.kernel_size, self.stride).to(torch.int64)


class TTFSAvgPool2d(nn.Module):
    """Average pooling of TTFS values, fired again with `out_window`: a TTFS layer of weight 1/k^2 from
    each channel to itself (k^2 a power of two, so the weight is a 5-bit log weight)."""

    def __init__(self, kernel_size: int, stride: int, in_window: int, out_window: int):
        super().__init__()
        if kernel_size & (kernel_size - 1):
            raise ModelDefinitionError(f"a {kernel_size}x{kernel_size} average: 1/{kernel_size ** 2} is not a power of "
                                       "two")
        self.kernel_size, self.stride, self.in_window, self.out_window = kernel_size, stride, in_window, out_window

    def forward(self, times):
        values = spike_value(times, self.in_window).to(torch.float64)
        return spike_time(nn.functional.avg_pool2d(values, self.kernel_size, self.stride), self.out_window)


def _square(m: nn.Module, name: str, attr: str) -> int:
    v = getattr(m, attr)
    a, b = (v, v) if isinstance(v, int) else v
    if a != b:
        raise NotConvertible(f"module {name!r}: non-square {attr} {v} does not convert")
    return a


def convert(ann: nn.Sequential) -> nn.Sequential:
    """The TTFS network of a CAT-trained ANN (docs/ttfs.md): the CAT activation on the input becomes
    the encoder; each LogConv2d / LogLinear a TTFS layer that fires with the window of the CAT
    activation right after it (the last layer, with none after it, is the readout); a max pool the
    earliest spike; an average pool followed by a CAT activation a TTFSAvgPool2d; Flatten, Identity
    and Dropout stay."""
    if not isinstance(ann, nn.Sequential):
        raise NotConvertible(f"convert takes an nn.Sequential CAT ANN, not {type(ann).__name__}")
    items = list(ann.named_children())
    out, window = [], None
    for k, (name, m) in enumerate(items):
        following = items[k + 1][1] if k + 1 < len(items) else None
        fires = following.window if isinstance(following, CATActivation) else None
        if isinstance(m, CATActivation):
            if window is None:
                out.append(TTFSEncoder(m.window))
            window = m.window
            continue
        if window is None:
            raise NotConvertible(f"module {name!r} ({type(m).__name__}) comes before the input's CAT activation")
        if isinstance(m, (LogConv2d, LogLinear, nn.AvgPool2d)) and fires is None and following is not None:
            raise NotConvertible(f"module {name!r} ({type(m).__name__}) is followed by {type(following).__name__}, not "
                                 "a CAT activation (only the last layer reads out its accumulators)")
        if isinstance(m, LogConv2d):
            if m.groups != 1 or m.dilation != (1, 1) or not isinstance(m.padding, tuple):
                raise NotConvertible(f"module {name!r}: grouped, dilated or string-padded convs do not convert")
            out.append(TTFSConv2d(*log_weight_codes(m.weight), m.bias, window, fires, m.stride, m.padding))
        elif isinstance(m, LogLinear):
            out.append(TTFSLinear(*log_weight_codes(m.weight), m.bias, window, fires))
        elif isinstance(m, nn.MaxPool2d):
            out.append(TTFSMaxPool2d(_square(m, name, "kernel_size"), _square(m, name, "stride")))
        elif isinstance(m, nn.AvgPool2d) and fires is not None:
            out.append(TTFSAvgPool2d(_square(m, name, "kernel_size"), _square(m, name, "stride"), window, fires))
        elif isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):
            out.append(m)
        else:
            raise NotConvertible(f"module {name!r} ({type(m).__name__}) has no TTFS conversion")
        window = fires or window
    return nn.Sequential(*out).eval()


SAFE_CLASSES = (CATActivation, LogConv2d, LogLinear, TTFSEncoder, TTFSConv2d, TTFSLinear, TTFSMaxPool2d, TTFSAvgPool2d)
