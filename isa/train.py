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
"""
from __future__ import annotations

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
