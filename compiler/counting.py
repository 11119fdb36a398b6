"""Static counts of a model's weighted layers (conv2d, linear, tt_conv2d), per layer and in total:

    params  weights and biases (batch norm folded in: count after fold-batchnorm)
    macs    multiply-accumulates per time step and sample (the FLOPs the TT-SNN paper reports); a
            tensor-train layer counts its four cores, htt the mean over its steps (G1 and G4 only on
            the late half)
    adds    the MACs whose activation is a spike: each is an add when its spike fires, nothing when
            not, so this is the spike-driven adds at full activity (a run's report counts the real ones);
            on TTFS spike times, the shift-adds; on MT spikes, one add per plane
    muls    the MACs whose activation is multi-bit (the first layer on a direct-coded input, the
            cores after G1): true multiplies

A value's dtype says whether it is a spike, so the count is exact for the graph it is given; in a
tensor-train layer only G1 reads the (spike) input, G2..G4 read its multi-bit intermediates.
"""
from __future__ import annotations

from fractions import Fraction

from .ir import Conv2d, Graph, Linear, TTConv2d

FIELDS = ("params", "macs", "adds", "muls")


def _number(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


def _tt_macs(op: TTConv2d, positions: int, steps: int) -> tuple[Fraction, Fraction]:
    """(MACs on the input, MACs on intermediates) per step: G1, then G2 G3 G4."""
    g1, g2, g3, g4 = (c.size * positions for c in op.cores)
    if op.variant != "htt":
        return Fraction(g1), Fraction(g2 + g3 + g4)
    early = steps // 2
    return Fraction(g1), Fraction(early * (g2 + g3 + g4) + (steps - early) * g4, steps)


def layer_counts(graph: Graph, op) -> dict | None:
    """The counts of one op, or None when it has no weights."""
    if not isinstance(op, (Conv2d, Linear, TTConv2d)):
        return None
    x = graph.op(op.inputs[0]).type
    out = op.type
    positions = out.shape[1] * out.shape[2] if len(out.shape) == 3 else 1
    spike_input = x.dtype.kind in ("spike", "ttfs", "mt")  # TTFS: each spike shifts and adds; MT: each plane's spike adds
    weights = op.cores if isinstance(op, TTConv2d) else (op.weight,)
    params = sum(w.size for w in weights) + (op.bias.size if op.bias is not None else 0)
    if isinstance(op, TTConv2d):
        on_input, inner = _tt_macs(op, positions, out.time or 1)
    else:
        on_input, inner = Fraction(op.weight.size * positions), Fraction(0)  # Cout Cin kh kw per output position
    adds, muls = (on_input * x.dtype.planes, inner) if spike_input else (Fraction(0), on_input + inner)
    return {"path": op.path or op.name, "op": op.opname, "params": int(params), "macs": _number(adds + muls),
            "adds": _number(adds), "muls": _number(muls)}


def count(graph: Graph) -> dict:
    """{"layers": [per-layer counts], "total": {field: sum}} for `graph` (types inferred)."""
    layers = [c for c in (layer_counts(graph, op) for op in graph.ops) if c is not None]
    total = {f: _number(sum((Fraction(c[f]) for c in layers), Fraction(0))) for f in FIELDS}
    return {"layers": layers, "total": total}
