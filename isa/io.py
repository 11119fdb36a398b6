"""How a program's inputs and outputs are encoded: the contract between the host (runtime, and the
compiler's quantized reference) and the machine. The metadata of prog.bin names, for every input, its
integer width and fractional bits, and for every output its format, fractional bits and the divisor
the host applies (T for a mean over time)."""
from __future__ import annotations

import numpy as np


def encode_input(x: np.ndarray, bits: int, frac: int) -> np.ndarray:
    """q = clamp(round_half_even(x * 2^frac), -2^(bits-1), 2^(bits-1) - 1), as int64."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 2.0 ** frac), lo, hi).astype(np.int64)


def decode_output(q: np.ndarray, frac: int, divide_by: int = 1) -> np.ndarray:
    """float32(q * 2^-frac), then divided by `divide_by` in float32, as PyTorch's float32 mean does."""
    y = (np.asarray(q, dtype=np.float64) * 2.0 ** -frac).astype(np.float32)
    return y / np.float32(divide_by) if divide_by != 1 else y
