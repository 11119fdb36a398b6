"""The JIT backend of the simulator: the machine of `ttc.simulator.machine` with native kernels
(`ttc.simulator.native`) for the opcodes they cover, the NumPy handlers for the rest.

What an instruction does natively is planned once per program (`plan`): its kernel, its fields as the
kernel's integers, the scratch it needs, the bytes it moves (its footprint, which is what the NumPy
handlers count) and its static work. An instruction no kernel takes (an opcode without one, a format or
mode it does not handle, a footprint outside the memories, fields the NumPy handler refuses) runs its
NumPy handler, which also gives it its error. Counters, events and listeners are the NumPy backend's:
each kernel returns what depends on the data (spikes fired, adds done, values saturated) and the same
rules (`sconv_actions`, `nrn_actions`, ...) turn that into the instruction's actions.
"""
from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ttc.isa.encoding import Instr
from ttc.isa.errors import InternalError
from ttc.isa.footprint import regions
from ttc.isa.hwconfig import memory_bytes, spike_add_action
from ttc.isa.program import Program
from ttc.isa.table import MEMORIES, elems_bytes

from . import native
from .machine import (Event, Machine, SimError, dconv_actions, dense_dconv_macs, nrn_actions, nrn_static_actions,
                      pool_actions, sconv_actions, vacc_actions)


@dataclass
class Planned:
    """One instruction as a kernel call."""

    kernel: object
    args: np.ndarray
    scratch: int  # bytes
    reads: Counter  # bytes per sample, by memory
    writes: Counter
    static: Counter  # actions that do not depend on the data (for a batch of one)
    dynamic: bool  # does what it counts depend on the data (else `static` is all of it)

    def __post_init__(self):
        self.args_at = self.args.ctypes.data  # (the array lives as long as the plan)
        self.nrn_static = {}  # an nrn's actions whatever its data, by batch (nrn_static_actions)
        self.moved = tuple((memory_bytes(m, direction), n) for direction, moved in (("read", self.reads),
                           ("write", self.writes)) for m, n in moved.items())
        self._events = {}

    def event(self, batch: int) -> tuple[Event, tuple]:
        """A data-independent instruction's event for a batch, and its counter increments: made once."""
        if batch not in self._events:
            event = Event(actions=Counter({a: n * batch for a, n in self.static.items()}), reads=self.reads,
                          writes=self.writes)
            increments = (*event.actions.items(), *((key, n * batch) for key, n in self.moved), ("instructions", batch))
            self._events[batch] = event, increments
        return self._events[batch]


def _conv_scratch(i: Instr) -> int:
    """The transposed weights (i32), each tap's non-zero count (i64) and the sums (i64); the dense form
    (native._Dense) after them: its weights (i16 channel pairs; i8 quads take less), each input's fan-out
    (i64), which rows and columns reach the outputs (i64), each output's first input (i64), each input's
    place in the padded input (i64) and the padded input (i16), with one element after it."""
    taps, lanes = i["cin"] * i["kh"] * i["kw"], -(-i["cout"] // 16) * 16  # (at least native._lanes)
    channels = i["cin"] + i["cin"] % 2
    rows, cols = (i["oh"] - 1) * i["sh"] + i["kh"], (i["ow"] - 1) * i["sw"] + i["kw"]
    return (4 * taps * lanes + 8 * taps + 8 * lanes * i["oh"] * i["ow"]
            + 2 * i["kh"] * i["kw"] * channels * lanes + 8 * i["cin"] * i["ih"] * i["iw"]
            + 8 * (i["ih"] * i["kh"] + i["iw"] * i["kw"] + i["oh"] * i["ow"]) + 8 * i["cin"] * i["ih"] * i["iw"]
            + 2 * (rows * cols * channels + 1))


def _native(i: Instr, footprint: list, sizes: dict[str, int]):
    """Whether a kernel computes `i` as its NumPy handler does (else the handler runs it, and raises what it
    refuses), and the scratch it needs."""
    op = i.op
    if op not in native.KERNELS:
        return None
    if any(r.hi > sizes[r.mem] for r in footprint):
        return None
    if op in ("sconv", "dconv"):
        if min(i["cin"], i["cout"], i["oh"], i["ow"], i["kh"], i["kw"], i["sh"], i["sw"]) < 1:
            return None
        if op == "sconv" and not 1 <= i["planes"] < native.OUT_SLOTS:
            return None
        if op == "dconv" and (i["transposed"] or i["skip"]):
            return None
        return _conv_scratch(i)
    if op == "pool":  # (a max of spikes: each output column's window, i64)
        return None if min(i["oh"], i["ow"], i["k"], i["stride"]) < 1 else 8 * i["ow"]
    if op == "nrn":
        return None if i["levels"] != 1 else 2 * i["n"]  # its spikes and active bits, a byte each
    return 0


def plan(prog: Program) -> tuple:
    """Per instruction: a `Planned` kernel call, or None (the NumPy handler runs it). Made once per program."""
    return _prepared(prog)[0]


def reach(prog: Program) -> dict[str, int]:
    """Per on-chip buffer, the bytes the program's instructions can touch (their footprints' end, at most
    the buffer's size): a sample's copy of the buffer needs no more. Made once per program."""
    return _prepared(prog)[1]


def _prepared(prog: Program) -> tuple:
    if getattr(prog, "_jit_plan", None) is None:
        prog._jit_plan = _plan(prog)
    return prog._jit_plan


def _plan(prog: Program) -> tuple:
    """(`plan`, `reach`): one pass over the instructions' footprints."""
    kernels = native.compiled()
    sizes = {"dram": prog.meta["dram_bytes"], **{m: b.bytes for m, b in prog.hw.buffers.items()}}
    ends = dict.fromkeys(prog.hw.buffers, 0)
    out = []
    for i in prog.code:
        footprint = regions(i)
        for r in footprint:
            if r.mem in ends:
                ends[r.mem] = max(ends[r.mem], r.hi)
        scratch = _native(i, footprint, sizes)
        args = native.encode(i) if scratch is not None else None
        if args is None:
            out.append(None)
            continue
        reads, writes = Counter(), Counter()
        for r in footprint:
            for mode, moved in (("r", reads), ("w", writes)):
                if mode in r.mode:
                    moved[r.mem] += r.hi - r.lo
        static = Counter()
        if i.op == "vacc":
            static = vacc_actions(i, 1)
        elif i.op == "pool":
            static = pool_actions(i, 1)
        elif i.op == "dconv":
            static = dconv_actions(i, 1, dense_dconv_macs(i, 1))
        dynamic = i.op in ("sconv", "nrn") or (i.op == "dconv" and i["sat_bits"] != 0)
        out.append(Planned(kernels[i.op], args, scratch, +reads, +writes, static, dynamic))
    return tuple(out), {m: min(end, prog.hw.buffers[m].bytes) for m, end in ends.items()}


class JitMachine(Machine):
    """The simulator's machine, with native kernels where `plan` has one."""

    def __init__(self, prog: Program, batch: int):
        super().__init__(prog, batch)
        self.plan = plan(prog)
        self.bases = (ctypes.c_void_p * len(MEMORIES))(*(self.mem[m].ctypes.data for m in MEMORIES))
        self.strides = np.array([self.mem[m].shape[1] for m in MEMORIES], dtype=np.int64)
        self.scratch = np.zeros(max((p.scratch for p in self.plan if p is not None), default=0) + 64, dtype=np.uint8)
        self.out = np.zeros(native.OUT_SLOTS * (batch + 1), dtype=np.int64)
        self.per_sample = self.out[native.OUT_SLOTS:].reshape(batch, native.OUT_SLOTS)  # (a view)
        self.at = (self.strides.ctypes.data, self.out.ctypes.data, self.scratch.ctypes.data)

    def sample_bytes(self, sizes: dict[str, int]) -> dict[str, int]:
        """Each sample's buffers only as long as the program reaches (a bounds check still sees the buffer's
        size where a footprint goes beyond it): the batch's copies lie close together, fewer pages to fault in
        and to cache (digits at batch 256: 32 KB per sample and buffer, of which it uses 0.1-4)."""
        ends = reach(self.prog)
        return {m: ends.get(m, n) for m, n in sizes.items()}

    def step(self, instr: Instr) -> bool:
        p = self.plan[self.pc]
        if p is None:
            return super().step(instr)
        strides, out, scratch = self.at  # (the kernel clears the batch's counts)
        p.kernel(self.bases, strides, self.batch, p.args_at, out, scratch)
        if self.out[0]:
            self._fail(instr, int(self.out[0]))
        counters = self.counters
        if p.dynamic:
            self.event = Event(actions=self._actions(instr, p), reads=p.reads, writes=p.writes)
            counters.update(self.event.actions)
            for key, n in p.moved:
                counters[key] += n * self.batch
            counters["instructions"] += self.batch
        else:
            self.event, increments = p.event(self.batch)
            for key, n in increments:
                counters[key] += n
        for listener in self.listeners:
            listener.on_instr(self.pc, instr, self.event)
        return True

    def _actions(self, i: Instr, p: Planned) -> Counter:
        """The NumPy handler's actions, from the kernel's counts."""
        op, out = i.op, self.out
        if op == "sconv":
            adds = self.per_sample[:, 1:1 + i["planes"]].sum(axis=1)
            self.charge_samples(spike_add_action(i["wfmt"]), adds)
            self.record_work(i, lambda: self._spikes(i), adds)
            return sconv_actions(i, self.batch, [int(out[1 + k]) for k in range(i["planes"])])
        if op == "nrn":
            spikes, active = int(out[1]), int(out[2]) if i["band"] else None
            if i["per_neuron"]:  # (its multipliers are read from memory)
                return nrn_actions(self, i, spikes, active)
            if self.batch not in p.nrn_static:
                p.nrn_static[self.batch] = nrn_static_actions(self, i, active is not None)
            return nrn_actions(self, i, spikes, active, p.nrn_static[self.batch])
        a = Counter({action: n * self.batch for action, n in p.static.items()})
        a["grad_saturated"] = int(out[1])  # (a saturating dconv)
        return a

    def _spikes(self, i: Instr) -> np.ndarray:
        """An sconv's input spikes [B, planes * cin, ih, iw] as bits (not counted as moved: the kernel's footprint
        was)."""
        n = i["cin"] * i["ih"] * i["iw"]
        step = elems_bytes("spike", n)
        raw = self.mem[i["src"].mem][:, i["src"].addr:i["src"].addr + i["planes"] * step]
        bits = np.unpackbits(raw.reshape(self.batch, i["planes"], step), axis=2, count=n, bitorder="little")
        return bits.reshape(self.batch, i["planes"] * i["cin"], i["ih"], i["iw"])

    def _fail(self, i: Instr, code: int) -> None:
        """The error the NumPy handler raises: an overflow is said here (the kernel may have written part of
        its output); the checks made before anything is written, by the handler itself."""
        if code == native.OVERFLOW:
            fmt, ref = {"vacc": ("dst_fmt", "dst"), "pool": ("dst_fmt", "dst")}.get(i.op, (None, "dst"))
            ref = "state" if i.op == "nrn" else ref
            raise SimError(f"instruction {self.pc} ({i.op}): value out of {i[fmt] if fmt else 'i32'} range writing "
                           f"{i[ref]} (overflow)")
        super().step(i)
        raise InternalError(f"instruction {self.pc} ({i.op}): the native kernel failed ({code}) where the NumPy "
                            "handler does not (a JIT bug)")
