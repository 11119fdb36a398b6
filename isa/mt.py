"""The machine's multi-threshold arithmetic (MT-SNN; docs/mt.md). The simulator's `nrn` and `sconv` and
the compiler's quantized reference compute with these functions, on integers (NumPy or torch int64).

A neuron with K thresholds emits K spike bit-planes s_1..s_K a step and subtracts what they stand for:

    parallel: s_k = [u cmp k*theta], all K compares against the same u;            y = theta * sum_k s_k
    cascade:  r_1 = u, s_k = [r_k cmp theta_k], r_(k+1) = r_k - theta_k s_k,        y = sum_k theta_k s_k
              theta_k = R(theta, -(k-1)) (theta halved k-1 times, rounding half up; exact when 2^(K-1) | theta)

The level code a next layer sees is q = sum_k s_k << plane_shift(k): parallel planes are a thermometer
code (q = the count of thresholds passed, weight 1 each), cascade planes a binary one (plane k weighs
2^(K-k)); in units of theta, q stands for q (parallel) or q * 2^-(K-1) (cascade). A layer reading the
planes adds each plane's spikes into its accumulator and, in cascade, doubles the accumulator between
planes: adds and shifts, no multiply. K = 1 is the ordinary neuron in both modes.
"""
from __future__ import annotations

from ttc.isa.table import rescale


def thresholds(theta: int, levels: int, mode: str) -> list[int]:
    """theta_1..theta_K of a neuron (integers)."""
    if mode == "parallel":
        return [k * theta for k in range(1, levels + 1)]
    return [rescale(theta, -k) for k in range(levels)]


def fire(u, theta: int, levels: int, mode: str, cmp: str):
    """The K spike planes of membranes u (each as u's type, 0/1 values compared) and y, what they stand for."""
    above = (lambda v, th: v > th) if cmp == "gt" else (lambda v, th: v >= th)
    planes, rest = [], u
    for th in thresholds(theta, levels, mode):
        s = above(u if mode == "parallel" else rest, th)
        planes.append(s)
        if mode == "cascade":
            rest = rest - s * th
    y = theta * sum(s * 1 for s in planes) if mode == "parallel" else u - rest
    return planes, y


def plane_shift(k: int, levels: int, mode: str) -> int:
    """Plane k's (from 0) weight in the level code is 2^plane_shift."""
    return levels - 1 - k if mode == "cascade" else 0


def level_code(planes, mode: str):
    """q = sum_k s_k << plane_shift(k)."""
    return sum((s * 1) << plane_shift(k, len(planes), mode) for k, s in enumerate(planes))


def code_planes(q, levels: int, mode: str) -> list:
    """The spike planes of level codes q (inverse of `level_code`)."""
    if mode == "parallel":
        return [q > k for k in range(levels)]
    return [(q >> plane_shift(k, levels, mode)) & 1 for k in range(levels)]


def max_code(levels: int, mode: str) -> int:
    return levels if mode == "parallel" else (1 << levels) - 1
