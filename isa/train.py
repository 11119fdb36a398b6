"""The machine's training arithmetic (docs/training.md): the one definition of what `nrn`'s active band,
`nbwd` and `sgd` compute, called by the simulator's handlers and by the integer training reference
(`ttc.compiler.train_reference`) alike. Integers of any kind (NumPy or torch int64), as isa/neuron.py.

    active(h)  = |h - theta| < band                  the neuron-step is inside the surrogate's band: the
                                                     forward tapes this bit, the backward reads it
    g_h[t]     = sat(R(g_s[t], src_shift) * active[t] + G(s[t]) * D(g_h[t+1]))    (nbwd)
                 the rectangular surrogate (1 inside the band, 0 outside) applied to the spike gradient,
                 plus the membrane gradient of the next step carried back through the decay
                 D(v) = R(v * decay_mul, -decay_shift), gated by G(s) = 1 - s for a hard reset (the
                 reset detached: dh[t+1]/dh[t] = decay * (1 - s[t])) and G = 1 for subtract or none,
                 saturated to the gradient's width (`saturate`)
    w'         = sat(w - R(g, shift)),  g' = 0       (sgd: a power-of-two learning rate)
    g_x        = the max pool's gradient routed back (pbwd): each window's gradient goes to its first
                 maximum in scan order (PyTorch's CPU kernel's choice), padding never chosen
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ttc.isa.table import rescale

#: An active band is stored as a 7-bit mantissa and a 5-bit exponent (band = mantissa << exponent).
BAND_MANTISSA_BITS, BAND_EXP_BITS = 7, 5


def band_fields(band: int) -> tuple[int, int]:
    """(mantissa, exponent) of the band nearest `band` (a non-negative integer) that nrn's fields hold:
    exact up to 127, rounded half up to 7 significant bits above that."""
    exp = max(0, band.bit_length() - BAND_MANTISSA_BITS)
    mant = (band + ((1 << exp) >> 1)) >> exp
    if mant >> BAND_MANTISSA_BITS:
        mant, exp = mant >> 1, exp + 1
    if exp >= 1 << BAND_EXP_BITS:
        raise ValueError(f"active band {band} beyond what nrn's fields hold")
    return mant, exp


def active(h, theta: int, band: int):
    """The active bits of states h: |h - theta| < band (a boolean array or tensor, as h)."""
    return abs(h - theta) < band


def decay(v, decay_mul: int, decay_shift: int):
    return rescale(v * decay_mul, -decay_shift)


def backward_step(g_next, g_s, tape, spikes, *, decay_mul: int, decay_shift: int, gate: str, src_shift: int):
    """One step of `nbwd`: the membrane gradients g_h[t] from those of step t+1 (`g_next`), the spike
    gradients `g_s`, the taped active bits and (gate 'spike') the step's spikes, all integers."""
    carried = decay(g_next, decay_mul, decay_shift)
    if gate == "spike":
        carried = carried * (1 - spikes)
    return rescale(g_s, src_shift) * tape + carried


#: The accumulator of a saturating multiply-accumulate (dconv with sat_bits): its exact sums hold this many bits.
ACC_BITS = 48


def saturate(v, bits: int):
    """v clamped to a signed integer of `bits` bits, +-(2^(bits-1) - 1), and how many values were clamped
    (the gradients' saturation: their formats are chosen for the weights' typical size, not the worst case)."""
    top = (1 << (bits - 1)) - 1
    return v.clip(-top, top), int((abs(v) > top).sum())


def sgd(w, g, shift: int, bits: int):
    """The updated weights sat_bits(w - R(g, shift)) and how many saturated."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    raw = w - rescale(g, shift)
    return raw.clip(lo, hi), int(((raw < lo) | (raw > hi)).sum())


def pool_backward(x, g, k: int, stride: int, pt: int, pl: int):
    """The gradient of a max pool's input, [B, C, ih, iw], from its output's gradient g [B, C, oh, ow] and its
    input x [B, C, ih, iw] (NumPy int64): each window's gradient added at the window's first maximum (row by
    row), the padding (pt rows above, pl columns left, and below and right as far as the windows reach)
    never a maximum."""
    b, c, ih, iw = x.shape
    oh, ow = g.shape[2:]
    rows, cols = (oh - 1) * stride + k, (ow - 1) * stride + k
    low = np.iinfo(np.int64).min
    padded = np.full((b, c, max(rows, pt + ih), max(cols, pl + iw)), low, dtype=np.int64)
    padded[:, :, pt:pt + ih, pl:pl + iw] = x
    win = sliding_window_view(padded[:, :, :rows, :cols], (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    first = win.reshape(b, c, oh, ow, k * k).argmax(axis=4)  # NumPy's argmax: the first maximum
    iy = np.arange(oh)[:, None] * stride + first // k - pt
    ix = np.arange(ow)[None, :] * stride + first % k - pl
    out = np.zeros((b, c, ih * iw), dtype=np.int64)
    at = (iy * iw + ix).reshape(b, c, -1)
    np.add.at(out, (np.arange(b)[:, None, None], np.arange(c)[None, :, None], at), g.reshape(b, c, -1))
    return out.reshape(b, c, ih, iw)


def average_backward(g, shape: tuple[int, int], k: int, stride: int, pt: int, pl: int):
    """The gradient of an average pool's input [B, C, ih, iw] (`shape` = (ih, iw)) from its output's g [B, C,
    oh, ow] (NumPy int64): every input gets the gradient of each window that holds it (the 1/area is in the
    gradient's frac)."""
    b, c, oh, ow = g.shape
    ih, iw = shape
    rows, cols = max((oh - 1) * stride + k, pt + ih), max((ow - 1) * stride + k, pl + iw)
    out = np.zeros((b, c, rows, cols), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride] += g
    return out[:, :, pt:pt + ih, pl:pl + iw]
