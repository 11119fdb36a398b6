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


def _limits(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _scaled(x: np.ndarray, frac: int) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=np.float64) * 2.0 ** frac)


def encode_input(x: np.ndarray, bits: int, frac: int) -> np.ndarray:
    """q = clamp(round_half_even(x * 2^frac), -2^(bits-1), 2^(bits-1) - 1), as int64."""
    lo, hi = _limits(bits)
    return np.clip(_scaled(x, frac), lo, hi).astype(np.int64)


def input_saturation(x: np.ndarray, bits: int, frac: int) -> dict:
    """What `encode_input` saturates in `x`: the elements whose rounded value lies outside the format
    (so 127.998 in fix16.8 counts: it rounds to 2^15), their largest magnitude as given, and the range the
    format holds. Saturating is what the hardware does, but it changes the input the model sees, so the
    runtime reports it instead of clamping silently."""
    lo, hi = _limits(bits)
    x = np.asarray(x)
    scaled = _scaled(x, frac)
    outside = (scaled < lo) | (scaled > hi)
    return dict(format=f"fix{bits}.{frac}", range=[lo * 2.0 ** -frac, hi * 2.0 ** -frac],
                elements=int(x.size), saturated=int(outside.sum()),
                largest_magnitude=float(np.abs(x[outside]).max()) if outside.any() else 0.0)


def saturation_warning(name: str, s: dict) -> str | None:
    """One line on the saturated elements of input `name` (`input_saturation`'s dict), or None if none are."""
    if not s["saturated"]:
        return None
    return (f"input {name!r}: {s['saturated']} of {s['elements']} elements lie outside the range "
            f"[{s['range'][0]:g}, {s['range'][1]:g}] of its format {s['format']} and were saturated "
            f"(largest magnitude {s['largest_magnitude']:g}); scale the input, or compile with other "
            "--input-bits/--input-frac")


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
