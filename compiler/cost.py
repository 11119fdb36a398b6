"""The analytic cost model: each layer's cycles and energy predicted from its plan (`ttc.compiler.tiling`)
and the hardware config, without generating or running code. The allocate pass uses it to choose tile
sizes (and with them how much is double-buffered); tests hold it to the simulator.

Cycles. A layer is a pipeline of steps (one tile, one time step): DMA in, vector (bias), PE groups (in
parallel), neuron, DMA out. In steady state a step takes its period: the busiest resource (the DRAM
interface, which loads and stores share, the PEs, the neuron or vector unit), or, for a buffer with
fewer slots than it needs, the chain of work between refilling a slot and the slot's last use divided
by the slots. The layer takes its first step's full latency (both DRAM latencies included), the periods
of the rest, and a bubble wherever a single-slot buffer must drain: weights between output-channel
tiles, membranes and accumulators between tiles.

Energy. Every instruction of the plan moves a known number of bytes and does a known number of
actions, priced as the simulator prices them (`ttc.simulator.energy`); the one data-dependent count,
the spike-driven adds, is the input's spike density (a parameter) times the in-bounds synapses. Leakage
is the buffers' leakage power over the predicted cycles.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np
import torch

from ttc.isa.hwconfig import (TTFS_FIRE_ACTIONS, TTFS_SYNAPSE_ACTIONS, HwConfig, multiply_action, neuron_update_actions,
                              spike_add_action)
from ttc.isa.mt import code_planes
from ttc.isa.table import TIME, elems_bytes

from .ir import AvgPool, Conv2d, Graph, Linear, MaxPool, Membrane, NeuronQ, Op, TimeReduce, live_synapses
from .tiling import (ConvPlan, ElementwisePlan, PoolPlan, RowTile, conv_plan, elementwise_plan, fmt, fused_consumer,
                     is_elementwise, pool_plan, split)

DEFAULT_DENSITY = 0.1  # input spikes per neuron and step, when nothing better is known


@dataclass
class LayerCost:
    cycles: float
    energy_pj: dict[str, float]
    dram_bytes: int

    @property
    def total_pj(self) -> float:
        return sum(self.energy_pj.values())



@dataclass
class _Step:
    """One step's work per resource (cycles) and its slot chains (cycles of work per buffer slot)."""

    loads: float = 0.0
    stores: float = 0.0
    pe: float = 0.0
    neuron: float = 0.0
    vector: float = 0.0
    chains: dict = field(default_factory=dict)  # buffer -> (cycles of work holding one slot, slots)
    latency: float = 0.0
    boundary: float = 0.0  # the first step of a tile: cycles after the previous step starts, at least

    def throughput(self) -> float:
        """Cycles between steps when no buffer slot holds them back: the busiest resource."""
        return max(self.loads + self.stores, self.pe, self.neuron, self.vector)


class _Bill:
    """Energy of instruction-shaped work, priced as `ttc.simulator.energy.EnergyModel` prices it."""

    def __init__(self, hw: HwConfig):
        self.hw, self.pj, self.dram_bytes = hw, Counter(), 0

    def access(self, mem: str, direction: str, nbytes: int, times: float = 1) -> None:
        if mem == "dram":
            self.dram_bytes += nbytes * times
        self.pj[mem] += times * self.hw.access_pj(mem, direction, nbytes)

    def load(self, mem: str, nbytes: int, times: float = 1) -> float:
        """Price a load; return its transfer cycles."""
        self.access("dram", "read", nbytes, times)
        self.access(mem, "write", nbytes, times)
        return self.hw.transfer_cycles(nbytes)

    def store(self, mem: str, nbytes: int, times: float = 1) -> float:
        self.access(mem, "read", nbytes, times)
        self.access("dram", "write", nbytes, times)
        return self.hw.transfer_cycles(nbytes)

    def act(self, unit: str, actions: dict, times: float) -> None:
        for action, n in actions.items():
            self.pj[unit] += times * n * self.hw.energy_pj[action]


def _in_bounds(n_out: int, n_in: int, k: int, s: int, pad: int) -> np.ndarray:
    """For each kernel offset, how many of the n_out outputs read an input inside [0, n_in)."""
    pos = np.arange(n_out)[:, None] * s + np.arange(k)[None, :] - pad
    return ((pos >= 0) & (pos < n_in)).sum(axis=0)


def _pipeline(hw: HwConfig, steps: list[tuple[_Step, int]], bubbles: float) -> float:
    """Cycles of a pipeline of (step, repeat count) pairs in order: step k starts step k-1's throughput
    after step k-1, and no sooner than a slot chain after step k-slots, which used the same slot.
    Once a repeated step (past its first) finds the last starts evenly spaced by the spacing it adds,
    every further repeat adds the same (the recurrence only sees start differences): the rest are
    counted, not stepped."""
    window = max([slots for step, _ in steps for _, slots in step.chains.values()] + [1])
    recent: deque[float] = deque(maxlen=window + 1)  # the last starts; recent[-s] is step k-s's
    k, gap = 0, 0.0
    for step, count in steps:
        done = 0
        while done < count:
            start = recent[-1] + max(gap, step.boundary) if k else 0.0
            for work, slots in step.chains.values():
                if k >= slots:
                    start = max(start, recent[-slots] + work)
            spacing = start - recent[-1] if k else None
            recent.append(start)
            k, done, gap = k + 1, done + 1, step.throughput()
            if done > 1 and k > window and all(b - a == spacing for a, b in pairwise(recent)):
                rest = count - done
                recent.extend(start + spacing * j for j in range(max(1, rest - window), rest + 1))
                k, done = k + rest, count
    return recent[-1] + steps[-1][0].latency + bubbles


def conv_cost(plan: ConvPlan, time: int, live: np.ndarray, neuron: dict | None = None, membranes: int = 0,
              density: float = DEFAULT_DENSITY) -> LayerCost:
    """`neuron`: the fused neuron's reset, in_shift, decay_mul and decay_shift (None if there is none)."""
    hw, bill, lat = plan.hw, _Bill(plan.hw), plan.hw.dram_latency_cycles
    taps = plan.taps
    slots = {b: plan.slots(b) for b in plan.slot_bytes}
    steps: list[tuple[_Step, int]] = []
    bubbles = 0.0
    # tiles of the same shape do the same work: price each shape once, for all its tiles
    shapes = Counter((c1 - c0, rt) for c0, c1 in plan.co_tiles for rt in plan.row_tiles)
    priced = {(tc, rt): _conv_step(plan, bill, tc, rt, time * count, membranes, slots) for (tc, rt), count in shapes.items()}
    sums_out = 0.0  # a reduction's store of the previous tile's sums
    for c0, c1 in plan.co_tiles:
        tc = c1 - c0
        weights_cycles = 0.0
        if plan.resident:
            weights_cycles = sum(bill.load("wgt", tc * (i1 - i0) * taps * plan.wbytes) for i0, i1 in plan.ci_tiles)
            weights_cycles += bill.load("wgt", 4 * tc) if plan.bias else 0
        for k, rt in enumerate(plan.row_tiles):
            step = priced[(tc, rt)]
            n = tc * (rt.y1 - rt.y0) * plan.ow
            fill = hw.vector_cycles(n)
            if plan.consumer in ("neuron", "reduce"):  # the tile's membranes or sums start filled
                bill.access("vmem" if plan.consumer == "neuron" else "ofmap", "write", 4 * n)
            # what the tile's first step waits for after the previous step starts (its PE work, then ...)
            waits = []
            if steps and k == 0 and slots["wgt"] == 1 and plan.resident:  # ... this tile's weights
                waits.append(weights_cycles + lat)
            if steps and plan.consumer == "neuron":  # ... the last neuron step, this tile's fill and bias
                waits.append(steps[-1][0].neuron + fill + step.vector)
            prefetched = weights_cycles if k == 0 and c0 and slots["wgt"] == 2 else 0.0
            if steps and plan.consumer == "reduce":  # ... the last sums out (queued behind these weights), fill, bias
                waits.append(steps[-1][0].vector + prefetched + sums_out + lat + fill + step.vector)
            if not steps:
                bubbles += weights_cycles  # the first input waits behind the first weights
            boundary = steps[-1][0].pe + max(waits) if waits else 0.0
            first = replace(step, loads=step.loads + prefetched, boundary=boundary)
            steps += [(first, 1), (step, time - 1)]
            if plan.consumer == "reduce":
                sums_out = bill.store("ofmap", 4 * n)
    if plan.consumer == "reduce":
        bubbles += sums_out + lat
    _conv_actions(plan, bill, time, live, neuron, density)
    return _finish(hw, bill, steps, bubbles)


def _conv_step(plan: ConvPlan, bill: _Bill, tc: int, rt: RowTile, time: int, membranes: int, slots: dict) -> _Step:
    """One time step of an output tile (tc channels, row tile rt); its energy is billed `time` times."""
    hw, lat, taps = plan.hw, plan.hw.dram_latency_cycles, plan.taps
    rows = rt.y1 - rt.y0
    n = tc * rows * plan.ow
    step = _Step()
    chain_ifmap = chain_wgt = 0.0
    for k, (i0, i1) in enumerate(plan.ci_tiles):
        tci = i1 - i0
        block = plan.input_block((i0, i1), rt).nbytes
        load = sum(bill.load("ifmap", block, time) for _ in range(plan.in_planes))
        wload = 0.0
        if not plan.resident:
            wload = bill.load("wgt", tc * tci * taps * plan.wbytes, time) + (bill.load("wgt", 4 * tc, time) if plan.bias and k == 0 else 0)
        conv = 0
        for lo, hi in split(tc, hw.pe_groups):
            g = hi - lo
            conv = max(conv, hw.conv_cycles(g, rows, plan.ow, tci, plan.kh, plan.kw, plan.in_planes))
            bill.access("ifmap", "read", plan.in_planes * block, time)
            bill.access("wgt", "read", g * tci * taps * plan.wbytes, time)
            if plan.bias or k:
                bill.access("psum", "read", 4 * g * rows * plan.ow, time)
            bill.access("psum", "write", 4 * g * rows * plan.ow, time)
        step.loads += load + wload
        step.pe += conv
        chain_ifmap += load + lat + conv
        chain_wgt += wload + lat + conv
    if plan.bias:
        bill.access("wgt", "read", 4 * tc, time)
        bill.access("psum", "write", 4 * n, time)
        step.vector += hw.vector_cycles(n)
    out = 0.0
    if plan.consumer == "neuron":
        step.neuron = hw.neuron_cycles(n, plan.out_planes, plan.out_mode)
        bill.access("psum", "read", 4 * n, time)
        bill.access("vmem", "read", 4 * n, time)
        bill.access("vmem", "write", 4 * n, time)
        spikes = plan.output_block("spike", (0, tc), rt).nbytes
        bill.access("ofmap", "write", plan.out_planes * elems_bytes("spike", n), time)
        out = (sum(bill.store("ofmap", spikes, time) for _ in range(plan.out_planes))
               + sum(bill.store("vmem", 4 * n, time) for _ in range(membranes)))
        step.chains["ofmap"] = (step.neuron + out + lat, slots["ofmap"])
    elif plan.consumer == "fire":
        step.neuron = hw.neuron_cycles(n)
        bill.access("psum", "read", 4 * n, time)
        bill.access("ofmap", "write", elems_bytes(TIME, n), time)
        out = bill.store("ofmap", plan.output_block(TIME, (0, tc), rt).nbytes, time)
        step.chains["ofmap"] = (step.neuron + out + lat, slots["ofmap"])
    elif plan.consumer == "reduce":
        step.vector += hw.vector_cycles(n)
        bill.access("psum", "read", 4 * n, time)
        bill.access("ofmap", "read", 4 * n, time)
        bill.access("ofmap", "write", 4 * n, time)
    elif plan.narrowed:  # the vector unit narrows the sums into ofmap, which is stored
        narrow = elems_bytes(plan.out_fmt, n)
        step.vector += hw.vector_cycles(n)
        bill.access("psum", "read", 4 * n, time)
        bill.access("ofmap", "write", narrow, time)
        out = bill.store("ofmap", plan.output_block(plan.out_fmt, (0, tc), rt).nbytes, time)
        step.chains["ofmap"] = (step.vector + out + lat, slots["ofmap"])
    else:
        out = bill.store("psum", 4 * n, time)
    step.stores = out
    step.chains["ifmap"] = (chain_ifmap, slots["ifmap"])
    if not plan.resident:
        step.chains["wgt"] = (chain_wgt, slots["wgt"])
    release = (step.neuron if plan.consumer in ("neuron", "fire") else 0 if plan.consumer or plan.narrowed
               else out + lat)  # psum's last use
    step.chains["psum"] = (step.vector + step.pe + release, slots["psum"])
    # the step's input blocks take turns in their slots: with fewer slots than blocks they serialise
    inner = max([step.loads / len(plan.ci_tiles) + lat + step.pe]
                + [work / slots for b, (work, slots) in step.chains.items() if b in ("ifmap", "wgt")])
    step.latency = inner + step.vector + step.neuron + (out + lat if out else 0)
    return step


def _conv_actions(plan: ConvPlan, bill: _Bill, time: int, live: np.ndarray, neuron: dict | None, density: float) -> None:
    rows = _in_bounds(plan.oh, plan.ih, plan.kh, plan.sh, plan.pt)
    cols = _in_bounds(plan.ow, plan.iw, plan.kw, plan.sw, plan.pl)
    reach = np.outer(rows, cols)  # outputs each kernel tap reaches
    w = live.reshape(plan.cout, plan.cin, plan.kh, plan.kw)
    synapses = density * float((w.sum(axis=(0, 1)) * reach).sum()) * plan.in_planes  # per step, at the spike density
    if plan.in_fmt == TIME:
        bill.act("pe", {action: n * synapses for action, n in TTFS_SYNAPSE_ACTIONS.items()}, time)
    elif plan.in_fmt == "spike":
        bill.act("pe", {spike_add_action(plan.wfmt): synapses}, time)
    else:
        macs = plan.cout * plan.cin * int(reach.sum())
        bill.act("pe", {"add32": macs, multiply_action(plan.in_fmt, plan.wfmt): macs}, time)
    n = plan.cout * plan.oh * plan.ow
    shifts = (plan.shift != 0 and plan.in_fmt != TIME)  # tconv's shift is its base, not a shift of the sums
    shifts += plan.in_planes - 1 if plan.in_mode == "cascade" else 0  # a cascade's doubling between planes
    if shifts:
        bill.act("pe", {"shift32": n * len(plan.ci_tiles) * shifts}, time)
    if neuron is not None:
        bill.act("neuron", neuron_update_actions(**neuron), time * n)
    elif plan.consumer == "fire":
        bill.act("neuron", TTFS_FIRE_ACTIONS, time * n)
    elif plan.consumer == "reduce":
        bill.act("vector", {"add32": n}, time)


def pool_cost(plan: PoolPlan, time: int, mode: str) -> LayerCost:
    hw, bill, lat = plan.hw, _Bill(plan.hw), plan.hw.dram_latency_cycles
    slots = {b: plan.slots(b) for b in plan.slot_bytes}
    steps = []
    for c0, c1 in plan.channel_tiles:
        for rt in plan.row_tiles:
            tc, rows = c1 - c0, rt.y1 - rt.y0
            src = plan.input_block((c0, c1), rt).nbytes
            dst = plan.output_block((c0, c1), rt).nbytes
            step = _Step(loads=bill.load("ifmap", src, time), stores=bill.store("ofmap", dst, time),
                         vector=hw.vector_cycles(tc * rows * plan.ow * plan.k ** 2))
            bill.access("ifmap", "read", src, time)
            bill.access("ofmap", "write", dst, time)
            step.chains = {"ifmap": (step.loads + lat + step.vector, slots["ifmap"]),
                           "ofmap": (step.vector + step.stores + lat, slots["ofmap"])}
            step.latency = step.loads + lat + step.vector + step.stores + lat
            steps.append((step, time))
    action = "add32" if mode == "sum" else "or1" if plan.in_fmt == "spike" else "cmp32"
    bill.act("vector", {action: plan.c * plan.oh * plan.ow * plan.k ** 2}, time)
    return _finish(hw, bill, steps, 0.0)


def elementwise_cost(plan: ElementwisePlan, time: int, neuron: dict | None = None, membranes: int = 0) -> LayerCost:
    """An add, rescale, unfused neuron or firing: each chunk's steps load their operands, compute, store.
    `neuron`: the neuron's update arguments."""
    hw, bill, lat = plan.hw, _Bill(plan.hw), plan.hw.dram_latency_cycles
    slots = {b: plan.slots(b) for b in plan.slot_bytes}
    src = "psum" if neuron or plan.kind == "fire" else "ifmap"
    steps: list[tuple[_Step, int]] = []
    for e0, e1 in plan.chunks:
        c = e1 - e0
        out = elems_bytes(plan.out_fmt, c)
        step = _Step(loads=sum(bill.load(src, elems_bytes(f, c), time) for f in plan.in_fmts))
        if neuron:
            bill.access("vmem", "write", 4 * c)  # the chunk's membranes start at v_init
            step.neuron = hw.neuron_cycles(c, plan.out_planes, plan.out_mode)
            for mem, direction, nbytes in (("psum", "read", 4 * c), ("vmem", "read", 4 * c), ("vmem", "write", 4 * c),
                                           ("ofmap", "write", plan.out_planes * out)):
                bill.access(mem, direction, nbytes, time)
            step.stores = (sum(bill.store("ofmap", out, time) for _ in range(plan.out_planes))
                           + sum(bill.store("vmem", 4 * c, time) for _ in range(membranes)))
            work = step.neuron
            step.boundary = steps[-1][0].neuron + hw.vector_cycles(c) if steps else 0.0
        elif plan.kind == "fire":
            step.neuron = work = hw.neuron_cycles(c)
            bill.access("psum", "read", elems_bytes(plan.in_fmts[0], c), time)
            bill.access("ofmap", "write", out, time)
            step.stores = bill.store("ofmap", out, time)
        else:
            for k, f in enumerate(plan.in_fmts):
                bill.access("ifmap", "read", elems_bytes(f, c), time)
                if k:
                    bill.access("ofmap", "read", out, time)
                bill.access("ofmap", "write", out, time)
            step.vector = len(plan.in_fmts) * hw.vector_cycles(c)
            step.stores = bill.store("ofmap", out, time)
            work = step.vector
        step.chains = {src: (step.loads + lat + work, slots[src]), "ofmap": (work + step.stores + lat, slots["ofmap"])}
        step.latency = step.loads + lat + work + step.stores + lat
        steps.append((step, time))
    if neuron:
        bill.act("neuron", neuron_update_actions(**neuron), time * plan.n)
    elif plan.kind == "fire":
        bill.act("neuron", TTFS_FIRE_ACTIONS, time * plan.n)
    else:
        bill.act("vector", {"add32": (len(plan.in_fmts) - 1) * plan.n, "shift32": sum(s != 0 for s in plan.shifts) * plan.n}, time)
    return _finish(hw, bill, steps, hw.vector_cycles(plan.chunks[0][1]) if neuron else 0.0)


def reduce_cost(hw: HwConfig, in_fmt: str, n: int, time: int) -> LayerCost:
    """A sum over time that is not fused with a conv: accumulate each loaded step, store the sums."""
    bill, lat = _Bill(hw), hw.dram_latency_cycles
    bill.access("ofmap", "write", 4 * n)
    step_bytes = elems_bytes(in_fmt, n)
    step = _Step(loads=bill.load("ifmap", step_bytes, time), vector=hw.vector_cycles(n))
    for mem, direction, nbytes in (("ifmap", "read", step_bytes), ("ofmap", "read", 4 * n), ("ofmap", "write", 4 * n)):
        bill.access(mem, direction, nbytes, time)
    step.chains = {"ifmap": (step.loads + lat + step.vector, 1)}
    step.latency = step.loads + lat + step.vector
    bill.act("vector", {"add32": n}, time)
    return _finish(hw, bill, [(step, time)], hw.vector_cycles(n) + bill.store("ofmap", 4 * n) + lat)


def op_cost(graph: Graph, op: Op, hw: HwConfig, tile=None, density: float = DEFAULT_DENSITY) -> LayerCost | None:
    """The cost of the layer `op` heads (with `tile`, default its own), or None if it is not a layer
    (fused into another, or free: flatten, repeat)."""
    x_op = graph.op(op.inputs[0]) if op.inputs else None
    if isinstance(op, (Conv2d, Linear)):
        consumer = fused_consumer(graph, op)
        plan = conv_plan(graph, op, hw, tile or op.tile)
        neuron = _neuron_args(consumer) if isinstance(consumer, NeuronQ) else None
        return conv_cost(plan, x_op.type.time, live_synapses(op), neuron, plan.membranes, density)
    if isinstance(op, (MaxPool, AvgPool)):
        return pool_cost(pool_plan(graph, op, hw, tile or op.tile), x_op.type.time, "max" if isinstance(op, MaxPool) else "sum")
    if is_elementwise(graph, op):
        plan = elementwise_plan(graph, op, hw, tile or op.tile)
        if isinstance(op, NeuronQ):
            membranes = sum(isinstance(u, Membrane) for u in graph.users(op.name))
            return elementwise_cost(plan, op.type.time, _neuron_args(op), membranes)
        return elementwise_cost(plan, op.type.time)
    if isinstance(op, TimeReduce) and fused_consumer(graph, x_op) is None:
        return reduce_cost(hw, fmt(x_op.type.dtype), x_op.type.numel, x_op.type.time)
    return None


def _neuron_args(n: NeuronQ) -> dict:
    return dict(reset=n.reset, in_shift=n.in_shift, decay_mul=n.decay_mul, decay_shift=n.decay_shift, levels=n.levels,
                mode=n.mode)


def _finish(hw: HwConfig, bill: _Bill, steps: list, bubbles: float) -> LayerCost:
    cycles = _pipeline(hw, steps, bubbles)
    bill.pj["leakage"] = hw.leakage_pj(cycles)
    return LayerCost(cycles, dict(bill.pj), bill.dram_bytes)



def input_densities(graph: Graph, values: dict) -> dict[str, float]:
    """Spikes per input neuron (and plane, MT) and step of every conv and linear with a spike (or spike
    time) input, from a run of the quantized reference (`ttc.compiler.reference.evaluate`), keyed by the conv's name."""
    out = {}
    for op in graph.ops:
        dtype = graph.op(op.inputs[0]).type.dtype if op.inputs else None
        if isinstance(op, (Conv2d, Linear)) and dtype.kind in ("spike", "ttfs", "mt"):
            planes = code_planes(values[op.inputs[0]].long(), dtype.planes, dtype.mode) if dtype.kind == "mt" \
                else [values[op.inputs[0]] != 0]
            out[op.name] = float(torch.stack(planes).double().mean())
    return out


def graph_costs(graph: Graph, hw: HwConfig, densities: dict[str, float] | None = None) -> dict[str, LayerCost]:
    """Every layer's predicted cost, keyed as the program's layer table names layers (a conv fused
    with a neuron or reduction by the consumer's name)."""
    out = {}
    for op in graph.ops:
        cost = op_cost(graph, op, hw, density=(densities or {}).get(op.name, DEFAULT_DENSITY))
        if cost is not None:
            out[(fused_consumer(graph, op) or op).name] = cost
    return out
