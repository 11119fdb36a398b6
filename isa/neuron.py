"""The machine's integer neuron: one time step of `nrn`, the one definition the simulator's handler and
the compiler's quantized reference (`ir.NeuronQ`, looping over time) both call (docs/numerics.md).

With u the state (h of the step before), x the step's input (both integers):

    (s, y) = F(u)                     the K spike planes u fired and what they stand for (isa/mt.py `fire`)
    Z(v)   = v_reset where any plane of s is 1, else v    (reset 'hard')
             v - y                                          (reset 'subtract')
             v                                              (reset 'none')
    D(v)   = R(v * decay_mul, -decay_shift) = (v * decay_mul + 2^(decay_shift-1)) >> decay_shift
             (v * decay_mul when decay_shift = 0)
    u'     = D(Z(u)) (order 'reset_decay')  or  Z(D(u)) (order 'decay_reset')
    h      = u' + R(x, in_shift)      R(v, s) = v << s, or (v + 2^(-s-1)) >> -s for s < 0 (isa/table.py `rescale`)
    planes = the K spike planes of F(h); the new state is h

decay_mul is one multiplier, or one per neuron: an integer array (NumPy) or tensor (torch) that broadcasts
against u (the `nrn` instruction's per_neuron decays; the IR's decays per channel, expanded).

F compares against theta with `cmp` ('gt': u > theta, 'ge': u >= theta), K = `levels` thresholds in
`mode` (parallel or cascade). Everything is integer arithmetic on int64 values, NumPy arrays or torch
tensors alike (the result has the inputs' kind): the reset's select is written as arithmetic
(v + (v_reset - v) * spiked) so that one expression serves both.
"""
from __future__ import annotations

from ttc.isa.mt import fire
from ttc.isa.table import rescale

#: The neuron's parameters: fields of the `nrn` instruction and of `ir.NeuronQ` under the same names.
PARAMS = ("theta", "v_reset", "decay_mul", "decay_shift", "in_shift", "cmp", "reset", "order", "levels", "mode")


def _decay(v, decay_mul, decay_shift: int):
    """D(v) = R(v * decay_mul, -decay_shift): the decay factor decay_mul / 2^decay_shift, rounding half up."""
    return rescale(v * decay_mul, -decay_shift)


def step(u, x, *, theta: int, v_reset: int, decay_mul, decay_shift: int, in_shift: int, cmp: str, reset: str,
         order: str, levels: int, mode: str):
    """One time step of neurons with state u and input x: (the K spike planes of h, h), as in the module
    docstring. The planes are boolean arrays or tensors (as u), h is the new state (int64)."""
    planes, y = fire(u, theta, levels, mode, cmp)

    def apply_reset(v):
        if reset == "hard":
            spiked = sum(s * 1 for s in planes) > 0
            return v + (v_reset - v) * spiked
        return v - y if reset == "subtract" else v

    if order == "reset_decay":
        u = _decay(apply_reset(u), decay_mul, decay_shift)
    else:
        u = apply_reset(_decay(u, decay_mul, decay_shift))
    h = u + rescale(x, in_shift)
    return fire(h, theta, levels, mode, cmp)[0], h
