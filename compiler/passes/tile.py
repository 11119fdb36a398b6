"""tile: cut every layer into tiles that fit the on-chip buffers of the hardware config (docs/memory.md),
and record them as the layer's `tile` field.

Each layer kind's plan (`ttc.compiler.plan.layer_plan`) says what its tiles are: output channels x
output rows x input channels for a conv or linear, channels x output rows for a pooling, elements for
an elementwise layer (add, rescale, a neuron or firing not fused with a conv). Of the tilings whose
tiles start on bytes and fit every buffer, the pass takes the one the cost model (`ttc.compiler.cost`,
which prices the plan's walk) predicts fastest, then with the fewest tiles, then least energy; the
choice also decides which buffers are double-buffered (those with room for two slots). An elementwise
layer streams: the largest chunk of which two slots fit (double buffering), else of which one does. A
layer that no tiling fits is an error naming the layer, the buffer and the sizes of its smallest tile.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from ttc.isa import progress
from ttc.isa.hwconfig import HwConfig, load_hw

from ..cost import PricedWalk, layer_cost
from ..ir import Graph, Membrane, NeuronQ, Op
from ..plan import ConvPlan, ElementwisePlan, LayerPlan, PoolPlan, ReducePlan, layer_plan, plan_kind
from . import Pass, register

CYCLE_TIE = 0.01
_CHOSEN: dict[tuple, tuple] = {}  # (id of the config, layer shape) -> (config, tile)


def _fail(op: Op, hw: HwConfig, what: str, plan: LayerPlan) -> None:
    buffer, need, have = plan.overflow()
    op.fail(f"{what} needs {need} bytes of the {buffer} buffer, which holds {have} bytes in hardware config {hw.name!r}")


def choose_tile(graph: Graph, op: Op, hw: HwConfig) -> tuple | None:
    """The tile of the layer `op` heads (None if it is not a layer)."""
    kind = plan_kind(graph, op)
    if kind is None:
        if isinstance(op, Membrane) and not isinstance(graph.op(op.inputs[0]), NeuronQ):
            op.fail("membrane of a value that is not a quantized neuron")
        return None
    if kind is ReducePlan:
        plan = layer_plan(graph, op, hw, ())
        if plan.overflow():  # it is not tiled
            _fail(op, hw, {"ifmap": "one time step of its input", "ofmap": "its accumulators"}[plan.overflow()[0]], plan)
        return ()
    if kind is ElementwisePlan:
        return _elements(graph, op, hw)
    # layers of one shape get one tile: the search ranks tilings by cycles, tiles and energy, and only
    # the energy of the arithmetic depends on the weights, by the same amount for every tiling of a
    # layer; ResNets repeat their blocks, and tt-schedule searches the shapes the tile pass meets again
    shape = (id(hw), layer_plan(graph, op, hw, kind.extents(graph, op)).shape_key())
    chosen = _CHOSEN.get(shape)
    if chosen is None or chosen[0] is not hw:
        chosen = _CHOSEN[shape] = (hw, _fastest(graph, op, hw, kind))
    return chosen[1]


def _elements(graph: Graph, op: Op, hw: HwConfig) -> tuple[int]:
    n = op.type.numel
    unit = 8 if n % 8 == 0 else n  # spike chunks start on bytes
    for slots in (2, 1):
        hi, lo = n // unit, 1
        while lo < hi:  # the largest count of units whose plan fits `slots` slots
            mid = (lo + hi + 1) // 2
            if layer_plan(graph, op, hw, (mid * unit,)).fits(slots):
                lo = mid
            else:
                hi = mid - 1
        if layer_plan(graph, op, hw, (lo * unit,)).fits(slots):
            return (lo * unit,)
    _fail(op, hw, f"its smallest tile ({unit} elements)", layer_plan(graph, op, hw, (unit,)))


def _fastest(graph: Graph, op: Op, hw: HwConfig, kind: type[ConvPlan] | type[PoolPlan]) -> tuple:
    """For every choice of the leading sizes, the largest last size that fits is a candidate; of those
    within `CYCLE_TIE` of the fewest cycles (each tile costs instructions the model does not time), the
    one with the fewest tiles wins, then the least energy. Candidates are taken fewest tiles first (the
    cheapest to walk, and mostly the fastest); one whose lower bound on cycles (`PricedWalk.bound`, which
    stops walking once it is exceeded) passes the window of the fastest so far could not be in the final
    window either, and is not priced: the choice is the one pricing them all would make."""
    *outer, last = kind.sizes(graph, op)
    fitting, smallest = [], None
    for lead in product(*outer):
        for size in last:
            plan = layer_plan(graph, op, hw, (*lead, size))
            if not plan.aligned():
                continue
            smallest = plan
            if plan.overflow() is None:
                fitting.append(plan)
                break
    scored, window = [], float("inf")
    for plan in sorted(fitting, key=lambda p: p.tiles):
        walk = PricedWalk(plan)
        if walk.bound(enough=window) > window:
            continue
        cost = layer_cost(plan, walk=walk)
        scored.append((cost.cycles, plan.tiles, cost.total_pj, plan.tile))
        window = min(window, cost.cycles * (1 + CYCLE_TIE))
    if not scored:
        if smallest is None:
            op.fail(f"no tiling of it starts every spike tile on a byte in hardware config {hw.name!r}")
        tile = ", ".join(map(str, smallest.tile))
        _fail(op, hw, f"its smallest tile (({', '.join(kind.tile_names)}) = ({tile}))", smallest)
    fastest = min(s[0] for s in scored)
    return min((s for s in scored if s[0] <= fastest * (1 + CYCLE_TIE)), key=lambda s: s[1:3])[3]


@register
@dataclass
class Tile(Pass):
    name = "tile"
    hw: str | HwConfig = "sata"

    def run(self, graph: Graph) -> Graph:
        hw = self.hw if isinstance(self.hw, HwConfig) else load_hw(self.hw)
        with progress.bar(len(graph.ops), "tile search", "op") as shown:
            for op in graph.ops:
                tile = choose_tile(graph, op, hw)
                if tile:
                    op.tile = tile
                shown.update()
        return graph
