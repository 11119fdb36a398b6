"""The machine's TTFS arithmetic (docs/ttfs.md): spike times from integer accumulators, and 5-bit
logarithmic weight codes. The simulator's `tfire` and `tconv`, and the compiler's quantized reference,
compute with these functions; `ttc.frontends.ttfs` defines the same grid in floating point for
training, and the tests hold the two equal.

Spike times. A value v = a / 2^frac (a an integer) fires at t(v) = max(0, round(-log2 v)) when
a > 0 and t(v) < window; otherwise no spike, stored as t = window. Rounding on the log2 scale has no
ties (2^(k + 1/2) is irrational), and needs no logarithm: with p the position of a's leading one,
round(log2 a) is p + 1 if a >= sqrt(2) * 2^p, else p, and sqrt(2) * 2^p lies strictly between
integers, so the test is a >= ceil(sqrt(2) * 2^p), one comparison with a constant per p.

Weights. A code is sign << 4 | e, e < 15 standing for sign * 2^-e (times the layer's scale 2^s), e = 15
for zero. A spike at time t through code e adds sign * 2^(base - e - t) to an integer accumulator: a
shift and an add; a term below the accumulator's last bit (base < e + t) is dropped.
"""
from __future__ import annotations

import math

import numpy as np

ZERO_EXPONENT = 15
MAX_WINDOW = 16

#: ceil(sqrt(2) * 2^p) for every leading-one position p of a 63-bit accumulator.
SQRT2_STEPS = np.array([math.isqrt(1 << (2 * p + 1)) + 1 for p in range(63)], dtype=np.int64)


def leading_one(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) of positive int64 values, exactly (no floating point)."""
    p = np.zeros(a.shape, dtype=np.int64)
    rest = a.copy()
    for step in (32, 16, 8, 4, 2, 1):
        high = rest >= (1 << step)
        p += np.where(high, step, 0)
        rest = np.where(high, rest >> step, rest)
    return p


def fire_times(a: np.ndarray, frac: int, window: int) -> np.ndarray:
    """The spike time of every accumulator a (int64) standing for a / 2^frac: window for no spike."""
    a = np.asarray(a, dtype=np.int64)
    positive = a > 0
    safe = np.where(positive, a, 1)
    p = leading_one(safe)
    nearest = p + (safe >= SQRT2_STEPS[p])  # round(log2 a)
    t = np.maximum(frac - nearest, 0)
    return np.where(positive & (t < window), t, window)


def time_values(t: np.ndarray, window: int) -> np.ndarray:
    """The integers 2^(window - 1 - t) that spike times stand for at frac window - 1 (0: no spike)."""
    t = np.asarray(t, dtype=np.int64)
    return np.where(t < window, np.left_shift(1, np.maximum(window - 1 - t, 0)), 0)


def code_exponents(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sign as +1 / -1, e) of 5-bit weight codes; e = 15 for zero."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= 32):
        raise ValueError("a 5-bit weight code lies outside 0..31")
    return 1 - 2 * ((codes >> 4) & 1), codes & 0xF


def synapse_weights(codes: np.ndarray, shift: int) -> np.ndarray:
    """What one spike adds through each code into an integer accumulator: sign * 2^(shift - e), or 0
    where that is below the accumulator's last bit (shift < e: the shifter drops it) or e = 15, as int64.
    A spike at time t adds synapse_weights(codes, base - t)."""
    sign, e = code_exponents(codes)
    kept = (e < ZERO_EXPONENT) & (e <= shift)
    return np.where(kept, sign * np.left_shift(1, np.clip(shift - e, 0, 62)), 0)
