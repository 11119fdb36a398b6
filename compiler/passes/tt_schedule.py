"""tt-schedule: choose how each tensor-train layer is contracted, and rewrite it into the convolutions
that plan runs (DESIGN.md section 7, docs/tensor-train.md). Every plan computes the same integers as
the core-by-core reference (`ttc.compiler.reference.tt_conv`): they differ in cost only.

    cores   G1, G2, G3, G4 as four convolutions (ptt: G2 and G3 on the same input, then their sum);
            the intermediates are multi-bit, so G2..G4 multiply, and they round-trip through DRAM
    merged  G1, one 3x3 R -> R conv for the middle (stt: G2 G3 contracted; ptt: the cross-shaped
            kernel holding G2 in its middle column and G3 in its middle row), G4
    dense   all four cores contracted into one 3x3 Cin -> Cout kernel: spike-driven adds only, but
            wider weights (16 bits where 8 do not hold them) and Cin*Cout*9 of them

htt runs the plan on its ptt steps (t < T/2) and G4 (G1 x) << (f2 + 1) on the rest (slices of one
sequence, concatenated in place). A plan whose weights do not fit 16 bits is unavailable. The pass
prices every available plan with the cost model (`ttc.compiler.cost`, each conv tiled as the tile pass
would) and takes the best for `objective` (latency: cycles, energy, edp: their product), unless
`schedule` forces one ("cores", or "path=plan,path=plan"). Its reasons go to `graph.notes["schedule"]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ttc.isa.errors import InternalError
from ttc.isa.hwconfig import HwConfig, load_hw

from ..cost import OBJECTIVES, layer_cost, score
from ..ir import Add, Conv2d, Graph, IRError, Op, TimeConcat, TimeSlice, TTConv2d
from ..plan import layer_plan
from . import Pass, parse_per_layer, register, user_option
from .fuse import fuse_layer
from .tile import choose_tile
from .quantize import contracted, conv_bounds, middle, stored_bits

PLANS = ("cores", "merged", "dense")
I16_MAX = (1 << 15) - 1


class PlanUnavailable(InternalError):
    pass


def _weights(w: np.ndarray, what: str) -> np.ndarray:
    peak = int(np.abs(w).max())
    if peak > I16_MAX:
        raise PlanUnavailable(f"{what} reaches {peak}, beyond 16-bit weights")
    return w.astype(np.int8 if peak <= 127 else np.int16)


@dataclass
class _Builder:
    """Emits the plan's ops for TT layer `tt`, tracking each value's per-channel bound and frac."""

    tt: TTConv2d
    x_bound: int
    x_frac: int
    ops: list = field(default_factory=list)
    bounds: dict = field(default_factory=dict)
    fracs: dict = field(default_factory=dict)

    def conv(self, suffix: str, x: str, weight, frac: int, padding=(0, 0), shift: int = 0, ends: bool = False) -> str:
        """A conv; one that `ends` the layer carries its bias and keeps 32 bits (and, unless an htt half,
        the layer's name)."""
        name = self.tt.name if ends and self.tt.variant != "htt" else f"{self.tt.name}.{suffix}"
        bound = conv_bounds(weight, self.bounds.get(x, self.x_bound)) << shift
        op = Conv2d(name=name, inputs=(x,), path=self.tt.path, weight=_weights(weight, f"the {suffix} kernel"),
                    bias=self.tt.bias if ends else None, padding=padding, weight_frac=frac, shift=shift,
                    out_bits=32 if ends else stored_bits(int(bound.max())))
        return self._emit(op, bound, self.fracs.get(x, self.x_frac) + frac + shift)

    def add(self, suffix: str, a: str, b: str) -> str:
        """(a + b) / 2: both operands share a frac; the halving is one more fractional bit."""
        bound = self.bounds[a] + self.bounds[b]
        op = Add(name=f"{self.tt.name}.{suffix}", inputs=(a, b), path=self.tt.path, halve=1, frac=self.fracs[a] + 1,
                 out_bits=stored_bits(int(bound.max())))
        return self._emit(op, bound, op.frac)

    def slice(self, x: str, start: int, stop: int, suffix: str) -> str:
        op = TimeSlice(name=f"{self.tt.name}.{suffix}", inputs=(x,), path=self.tt.path, start=start, stop=stop)
        return self._emit(op, self.bounds.get(x, self.x_bound), self.fracs.get(x, self.x_frac))

    def _emit(self, op: Op, bound, frac: int) -> str:
        self.ops.append(op)
        self.bounds[op.name], self.fracs[op.name] = bound, frac
        return op.name


def lower(tt: TTConv2d, plan: str, x_frac: int, x_bound: int, steps: int) -> list[Op]:
    """The ops of `plan` for `tt`; the last one is named as `tt`."""
    if plan not in PLANS:
        raise IRError(f"unknown tensor-train plan {plan!r} (plans: {', '.join(PLANS)})")
    f1, f2, f3, f4 = tt.fracs
    b = _Builder(tt, x_bound, x_frac)
    mid_frac = f2 + f3 if tt.variant == "stt" else f2 + 1  # ptt's /2: one more fractional bit

    def stt_or_ptt(x: str, u: str) -> str:
        """The stt/ptt function of the plan, from the input x or G1's result u."""
        if plan == "dense":
            return b.conv("dense", x, contracted(tt), f1 + mid_frac + f4, (1, 1), ends=True)
        if plan == "merged":
            m = b.conv("middle", u, middle(tt), mid_frac, (1, 1))
        elif tt.variant == "stt":
            m = b.conv("g3", b.conv("g2", u, tt.g2, f2, (1, 0)), tt.g3, f3, (0, 1))
        else:
            m = b.add("mean", b.conv("g2", u, tt.g2, f2, (1, 0)), b.conv("g3", u, tt.g3, f3, (0, 1)))
        return b.conv("g4", m, tt.g4, f4, ends=True)

    x = tt.inputs[0]
    u = x if plan == "dense" else b.conv("g1", x, tt.g1, f1)  # dense reads x itself
    if tt.variant != "htt":
        stt_or_ptt(x, u)
        return b.ops
    half = steps // 2
    early, late = (b.slice(u, lo, hi, f"steps{lo}") for lo, hi in ((0, half), (half, steps)))
    y_early = stt_or_ptt(early, early)
    late_kernel, late_frac = (contracted(tt, late=True), f1 + f4) if plan == "dense" else (tt.g4, f4)
    y_late = b.conv("late", late, late_kernel, late_frac, shift=tt.late_shift(), ends=True)
    b.ops.append(TimeConcat(name=tt.name, inputs=(y_early, y_late), path=tt.path))
    return b.ops


@register
@dataclass
class TTSchedule(Pass):
    name = "tt-schedule"
    hw: str | HwConfig = "sata"
    objective: str = user_option("latency", "objective", "what the tensor-train contraction plans are chosen for",
                                 choices=OBJECTIVES)
    schedule: str = user_option("", "schedule", "force the contraction plan (cores, merged, dense) of every or of the "
                                "named TT layers", metavar="PLAN|PATH=PLAN,...")
    fusion: str = "all"  # the fuse pass's option (`pipeline_arguments` passes it): plans are priced fused so

    def run(self, graph: Graph) -> Graph:
        if self.objective not in OBJECTIVES:
            raise IRError(f"unknown objective {self.objective!r} (one of {', '.join(OBJECTIVES)})")
        hw = self.hw if isinstance(self.hw, HwConfig) else load_hw(self.hw)
        forced = parse_per_layer(self.schedule, "--schedule")
        for plan in forced.values():
            if plan not in PLANS:
                raise IRError(f"--schedule names unknown plan {plan!r} (plans: {', '.join(PLANS)})")
        notes = graph.notes.setdefault("schedule", {})
        for tt in [o for o in graph.ops if isinstance(o, TTConv2d)]:
            if tt.fracs is None:
                tt.fail("is not quantized (run quantize first)")
            x = graph.op(tt.inputs[0]).type
            x_bound = 1 if x.dtype.kind == "spike" else 1 << (x.dtype.bits - 1)
            options, built = {}, {}
            for plan in PLANS:
                try:
                    built[plan] = lower(tt, plan, x.dtype.frac, x_bound, x.time)
                except PlanUnavailable as e:
                    options[plan] = {"available": False, "why": str(e)}
                    continue
                options[plan] = {"available": True, **_price(graph, tt, built[plan], hw, self.fusion)}
            want = forced.get(tt.path, forced.get("*"))
            if want is not None and not options[want]["available"]:
                tt.fail(f"plan {want!r} is unavailable: {options[want]['why']}")
            chosen = want or min((p for p in PLANS if options[p]["available"]), key=lambda p: score(options[p]["cycles"], options[p]["energy_pj"], self.objective))
            notes[tt.path or tt.name] = {"variant": tt.variant, "ranks": list(tt.ranks), "chosen": chosen,
                                         "forced": want is not None, "objective": self.objective, "plans": options}
            graph.replace_op(tt, built[chosen])
        return graph.infer_types()


def _price(graph: Graph, tt: TTConv2d, ops: list[Op], hw: HwConfig, fusion: str) -> dict:
    """Predicted cycles and energy of a plan's layers, each tiled as the tile pass would and fused with all
    that fits (the fuse pass then keeps the fusions the cost model prefers): the layer that takes the TT layer's
    name is priced with what it runs (its neuron, or the residual add and the neuron after it, and the core
    before it made inside it). The ops are left unfused and untiled: those passes record their decisions in
    the final graph."""
    trial = Graph(graph.name, list(graph.ops), list(graph.outputs))
    trial.replace_op(tt, ops)
    trial.infer_types()
    cycles = energy = 0.0
    dram = 0
    layers, fused = [], []
    for op in ops:
        fused += fuse_layer(trial, op, fusion, hw, weigh=False)  # (the fuse pass weighs each fusion)
        tile = choose_tile(trial, op, hw)
        plan = layer_plan(trial, op, hw, tile)
        if plan is None:
            continue
        cost = layer_cost(plan)
        cycles, energy, dram = cycles + cost.cycles, energy + cost.total_pj, dram + cost.dram_bytes
        layers.append({"op": op.opname, "name": op.name, "tile": list(tile) if tile else None,
                       "cycles": round(cost.cycles), "energy_pj": round(cost.total_pj, 1)})
    for op in fused:  # (an add after the plan's last conv too: it belongs to the graph)
        op.fused = None
    weights = sum(o.weight.nbytes for o in ops if isinstance(o, Conv2d))
    return {"cycles": cycles, "energy_pj": energy, "dram_bytes": dram, "weight_bytes": int(weights), "layers": layers}
