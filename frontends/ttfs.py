"""Time-to-first-spike (TTFS) coding with conversion-aware training (CAT): the reference modules.

ttc's scheme (DESIGN.md section 2, docs/ttfs.md). A value v is one spike at time

    t(v) = max(0, round(-log2 v))        standing for 2^-t(v),

sent when v > 0 and t(v) < window; otherwise no spike (the value 0). round is to the nearest integer:
a tie would need v = 2^-(k + 1/2), which no binary number is, so t(v) = ceil(-log2 v - 1/2) exactly,
and in integers v >= 2^-(k + 1/2) iff v^2 >= 2^-(2k + 1).

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

#: Exponent codes 0..14 are weights 2^(s - e); code 15 is zero.
ZERO_EXPONENT = 15
WEIGHT_BITS = 5


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
        if not 1 <= window <= ZERO_EXPONENT + 1:
            raise ValueError(f"window {window}: between 1 and {ZERO_EXPONENT + 1} steps")
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
