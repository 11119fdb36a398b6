"""How a program's inputs and outputs are encoded: the contract between the host (runtime, and the
compiler's quantized reference) and the machine. The metadata of prog.bin names, for every input, its
format (`spike` for an input compiled with input_encoding = spikes, else an integer width) and
fractional bits, and for every output its format, fractional bits and the divisor the host applies
(T for a mean over time)."""
from __future__ import annotations

import numpy as np

from .errors import UserError


class InputError(UserError, ValueError):
    """An input the program cannot take: wrong shape, batch, values."""


def encode_input(x: np.ndarray, bits: int, frac: int) -> np.ndarray:
    """q = clamp(round_half_even(x * 2^frac), -2^(bits-1), 2^(bits-1) - 1), as int64."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 2.0 ** frac), lo, hi).astype(np.int64)


def decode_output(q: np.ndarray, frac: int, divide_by: int = 1) -> np.ndarray:
    """float32(q * 2^-frac), then divided by `divide_by` in float32, as PyTorch's float32 mean does."""
    y = (np.asarray(q, dtype=np.float64) * 2.0 ** -frac).astype(np.float32)
    return y / np.float32(divide_by) if divide_by != 1 else y


def spike_input(x: np.ndarray, name: str) -> np.ndarray:
    """The 0/1 events of a spike-encoded input as uint8, checked on the values as given (before any
    conversion, so 1 + 1e-9 is caught too). Anything else is an InputError naming the first offending
    element in the input's own layout: thresholding it would hide a wrong input behind plausible spikes."""
    x = np.asarray(x)
    bad = ~((x == 0) | (x == 1))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"input {name!r} was compiled as spikes (input_encoding = spikes) and takes only 0 and 1, "
                         f"but element [{', '.join(map(str, first))}] is {x[first].item()!r} ({int(bad.sum())} of {x.size} "
                         "elements are neither 0 nor 1)")
    return x.astype(np.uint8)
