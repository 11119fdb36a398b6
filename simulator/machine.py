"""The instruction-level simulator: machine state, one handler per opcode, counters.

A batch of B inputs runs in lock-step: every memory is a [B, bytes] array and every handler works on
all samples at once (the program is static, so every sample takes the same path). Handlers compute
with NumPy on int64, or, for convolutions, with torch in floating point where that is provably exact;
every value written to a 32-bit location is checked to fit.

Each handler fills the instruction's `Event`: its action counts (summed over the batch) and the bytes
it moved per memory. The dispatch loop adds events to the counters and hands them to listeners, such as
the timeline (`ttc.simulator.timeline`). Every access a handler makes must lie inside the footprint the
instruction table declares for it, which is what the timeline's hazard check relies on.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ttc.isa.encoding import Instr, Ref
from ttc.isa import progress
from ttc.isa.errors import InternalError, UserError
from ttc.isa.footprint import regions
from ttc.isa.limits import check_memory
from ttc.isa.hwconfig import (COUNTER_NAMES, PLANE_ADD, PLANE_SHIFT, TTFS_FIRE_ACTIONS, TTFS_SYNAPSE_ACTIONS,
                              memory_bytes, multiply_action, neuron_update_actions, spike_add_action)
from ttc.isa.neuron import PARAMS as NEURON_PARAMS, step as neuron_step
from ttc.isa.program import Program
from ttc.isa.table import BY_NAME, FORMAT_BYTES, LOG5, TIME, elems_bytes, rescale
from ttc.isa.ttfs import ZERO_EXPONENT, code_exponents, fire_times, synapse_weights
from ttc.isa import train

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


class SimError(UserError, RuntimeError):
    """The program did something the machine cannot: out-of-bounds access, 32-bit overflow."""


@dataclass
class Event:
    actions: Counter = field(default_factory=Counter)  # summed over the batch
    reads: Counter = field(default_factory=Counter)  # bytes per memory, per sample
    writes: Counter = field(default_factory=Counter)


class Machine:
    def __init__(self, prog: Program, batch: int):
        self.prog, self.hw, self.batch = prog, prog.hw, batch
        sizes = {"dram": prog.meta["dram_bytes"], **{m: b.bytes for m, b in prog.hw.buffers.items()}}
        try:  # every sample of the batch has its own memories: refuse a batch that cannot fit, up front
            check_memory(batch * sum(sizes.values()), f"simulating a batch of {batch}", "simulator")
        except UserError as e:
            raise SimError(str(e)) from None
        self.mem = self._memories({m: (batch, n) for m, n in self.sample_bytes(sizes).items()})
        self.mem["dram"][:, :len(prog.data)] = np.frombuffer(prog.data, dtype=np.uint8)
        self.counters: Counter = Counter()
        self.sample_pj = np.zeros(batch)  # each sample's energy in the actions that depend on its data
        self.pe_work: dict[int, np.ndarray] = {}  # where the array skips: instruction -> each sample's PE work
        self.listeners: list = []
        self.pc = 0
        self.event = Event()
        self.footprint = []
        self._regions = {}

    def sample_bytes(self, sizes: dict[str, int]) -> dict[str, int]:
        """Each sample's bytes of each memory: all of it."""
        return sizes

    def _memories(self, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
        """Zeroed memories of these shapes: those a finished machine of the program gave back (`release`), where
        they have them, else new ones."""
        spare = self.prog.__dict__.pop("_spare_memories", None)
        if spare is not None and {m: a.shape for m, a in spare.items()} == shapes:
            for a in spare.values():
                a.fill(0)
            return spare
        return {m: np.zeros(shape, dtype=np.uint8) for m, shape in shapes.items()}

    def release(self) -> None:
        """Give the memories to the program for its next machine of the same batch (`ttc.runtime.run.run` does,
        once it has read the outputs): clearing them costs less than the page faults of new ones (digits at
        batch 256: 9.3 ms a run with new memories, 7.5 with these). At most one machine's memories are kept, as
        long as the program is; this machine is done with."""
        self.prog._spare_memories, self.mem = self.mem, None

    # ---- memory access (bounds-checked, counted)
    def _span(self, ref: Ref, nbytes: int, mode: str) -> slice:
        """The bytes an access touches; they lie inside the instruction's footprint, which `step` has
        checked against the memories."""
        if nbytes and not self._declared(ref, nbytes, mode):
            raise SimError(f"{mode} access {ref}+{nbytes} lies outside its declared footprint (ISA table bug)")
        return slice(ref.addr, ref.addr + nbytes)

    def _declared(self, ref: Ref, nbytes: int, mode: str) -> bool:
        """Whether [addr, addr + nbytes) lies inside one region of the instruction's footprint. A strided
        copy declares a region per row and accesses every row: searched by bisection (the regions of
        (mem, mode) by lower bound, with the running maximum of their upper bounds), not row by row,
        which made a copy of 65535 rows take minutes."""
        key = (ref.mem, mode)
        if key not in self._regions:
            spans = sorted((r.lo, r.hi) for r in self.footprint if r.mem == ref.mem and mode in r.mode)
            los, reach, top = [lo for lo, _ in spans], [], 0
            for _, hi in spans:
                top = max(top, hi)
                reach.append(top)
            self._regions[key] = (los, reach)
        los, reach = self._regions[key]
        k = bisect_right(los, ref.addr) - 1  # the last region starting at or below addr
        return k >= 0 and reach[k] >= ref.addr + nbytes

    def _check_bounds(self) -> None:
        """Every range the instruction may touch lies inside its memory, checked before the handler
        computes anything: a conv whose output lies far outside psum used to be computed (for seconds)
        before its write was refused."""
        for r in self.footprint:
            size = self.mem[r.mem].shape[1]
            if r.hi > size:
                raise SimError(f"{r.mem}[{r.lo:#x}]+{r.hi - r.lo} lies beyond the {size} bytes of {r.mem}")

    def read_bytes(self, ref: Ref, nbytes: int) -> np.ndarray:
        self.event.reads[ref.mem] += nbytes
        return self.mem[ref.mem][:, self._span(ref, nbytes, "r")]

    def write_bytes(self, ref: Ref, data: np.ndarray) -> None:
        self.event.writes[ref.mem] += data.shape[1]
        self.mem[ref.mem][:, self._span(ref, data.shape[1], "w")] = data

    def read(self, ref: Ref, fmt: str, n: int) -> np.ndarray:
        """n elements as int64 [B, n]."""
        if fmt == "spike":
            raw = self.read_bytes(ref, (n + 7) // 8)
            return np.unpackbits(raw, axis=1, count=n, bitorder="little").astype(np.int64)
        raw = np.ascontiguousarray(self.read_bytes(ref, n * FORMAT_BYTES[fmt]))
        return raw.view(f"<i{FORMAT_BYTES[fmt]}").astype(np.int64)

    def write(self, ref: Ref, fmt: str, values: np.ndarray) -> None:
        values = values.reshape(self.batch, -1)
        if fmt == "spike":  # a non-zero value is a spike (a pool of integers written as spikes)
            self.write_bytes(ref, np.packbits(values != 0, axis=1, bitorder="little"))
            return
        bits = 8 * FORMAT_BYTES[fmt]
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if values.size and (values.min() < lo or values.max() > hi):
            raise SimError(f"instruction {self.pc} ({self.prog.code[self.pc].op}): value out of {fmt} range "
                           f"writing {ref} (overflow)")
        self.write_bytes(ref, values.astype(f"<i{FORMAT_BYTES[fmt]}").view(np.uint8))

    # ---- execution
    def step(self, instr: Instr) -> bool:
        self.event = Event()
        self.footprint = regions(instr)
        self._regions = {}  # the footprint's search index by (memory, mode), built on the first access
        try:
            self._check_bounds()
            HANDLERS[instr.op](self, instr)
        except SimError as e:  # a handler's check that does not know the program counter: say where
            if str(e).startswith("instruction "):
                raise
            raise SimError(f"instruction {self.pc} ({instr.op}): {e}") from None
        self.counters.update(self.event.actions)
        for direction, moved in (("read", self.event.reads), ("write", self.event.writes)):
            for m, n in moved.items():
                self.counters[memory_bytes(m, direction)] += n * self.batch
        self.counters["instructions"] += self.batch
        for listener in self.listeners:
            listener.on_instr(self.pc, instr, self.event)
        return instr.op != "halt"

    def run(self, start: int = 0) -> None:
        """Run from instruction `start` to the next halt."""
        code = self.prog.code
        with progress.bar(len(code) - start, f"simulate (batch {self.batch})", "instr") as shown:
            for self.pc in range(start, len(code)):
                if not self.step(code[self.pc]):
                    self.check_counters()
                    return
                if self.pc % 64 == 63:  # the bar is updated in blocks: it is not free per instruction
                    shown.update(64)
        raise SimError("the program ran past its last instruction without halting")

    def run_shared(self, start: int) -> None:
        """Run from `start` to the next halt once for the whole batch (a training step's weight update):
        on the first sample's memories, whose DRAM bytes it wrote then become every sample's (weights and
        their gradients are one per machine; every sample's copy of them is the same)."""
        batch, mem, sample_pj = self.batch, self.mem, self.sample_pj
        self.batch, self.mem, self.sample_pj = 1, {m: a[:1] for m, a in mem.items()}, np.zeros(1)
        try:
            self.run(start)
        finally:
            self.batch, self.mem, self.sample_pj = batch, mem, sample_pj
        for instr in self.prog.code[start:self.pc]:
            for r in regions(instr):
                if r.mem == "dram" and "w" in r.mode:
                    mem["dram"][1:, r.lo:r.hi] = mem["dram"][0, r.lo:r.hi]

    def charge_samples(self, action: str, per_sample: np.ndarray) -> None:
        """Each sample's count of a data-dependent action, priced (what makes one sample's energy differ from
        another's: RunResult.energy_pj_per_sample)."""
        pj = self.hw.energy_pj.get(action)
        if pj:
            self.sample_pj += pj * per_sample

    def record_work(self, i: Instr, active, events: np.ndarray) -> None:
        """Where the array skips (`[array] skip`), each sample's PE work of spike-driven instruction `i`, which its
        cycles follow (`ttc.simulator.timeline.sample_timelines`): its spike-driven adds or synapses (`events`,
        per sample) under "event", the dense pairs of its spike rows holding a spike under "tile" (`active()`: where
        its input [B, planes * cin, ih, iw] has a spike)."""
        if self.hw.pe_skip == "event":
            self.pe_work[self.pc] = np.asarray(events, dtype=np.int64)
        elif self.hw.pe_skip == "tile":
            self.pe_work[self.pc] = row_work(active(), i)

    def check_counters(self) -> None:
        """Every counter a handler emitted is declared (once per run: not on the per-instruction path)."""
        undeclared = self.counters.keys() - COUNTER_NAMES
        if undeclared:
            raise InternalError(f"the simulator counts {', '.join(sorted(undeclared))}, which ttc.isa.hwconfig "
                                "does not declare (a simulator bug)")


# ------------------------------------------------------------------------------------- handlers

def _halt(m: Machine, i: Instr) -> None:
    pass


def _copy(m: Machine, i: Instr) -> None:
    for r in range(i["rows"]):
        src = Ref(i["src"].mem, i["src"].addr + r * i["src_stride"])
        dst = Ref(i["dst"].mem, i["dst"].addr + r * i["dst_stride"])
        m.write_bytes(dst, m.read_bytes(src, i["row_bytes"]).copy())


def _vfill(m: Machine, i: Instr) -> None:
    m.write(i["dst"], "i32", np.full((m.batch, i["n"]), i["value"], dtype=np.int64))


def _vbias(m: Machine, i: Instr) -> None:
    bias = m.read(i["bias"], "i32", i["channels"])
    m.write(i["dst"], "i32", np.repeat(bias, i["plane"], axis=1))


def _window(x: np.ndarray, i: Instr, kh: int, kw: int, sh: int, sw: int, pl: int, fill: int = 0) -> np.ndarray:
    """The input the oh x ow outputs read: x [B, C, ih, iw] with pt rows of `fill` above (pt < 0: the
    first -pt rows skipped), pl columns left, and `fill` below and right as far as the outputs reach."""
    if min(i["oh"], i["ow"], kh, kw, sh, sw) < 1:  # the encoding allows 0; no window is empty or steps by 0
        raise SimError(f"oh={i['oh']} ow={i['ow']} kh={kh} kw={kw} sh={sh} sw={sw}: "
                       "each must be at least 1")
    rows, cols = (i["oh"] - 1) * sh + kh, (i["ow"] - 1) * sw + kw
    x = x[:, :, max(0, -i["pt"]):]
    top = max(0, i["pt"])
    return np.pad(x, ((0, 0), (0, 0), (top, max(0, rows - top - x.shape[2])),
                      (pl, max(0, cols - pl - x.shape[3]))), constant_values=fill)[:, :, :rows, :cols]


def _padded(x: np.ndarray, i: Instr) -> np.ndarray:
    return _window(x, i, i["kh"], i["kw"], i["sh"], i["sw"], i["pl"])


def _per_tap(x: np.ndarray, i: Instr) -> np.ndarray:
    """For every tap (c, i, j): the sum over the batch and all outputs of the input it reads."""
    win = sliding_window_view(_padded(x, i).sum(axis=0), (i["kh"], i["kw"]), axis=(1, 2))
    return win[:, ::i["sh"], ::i["sw"]].sum(axis=(1, 2)).reshape(-1)


def _tap_weighted(x: np.ndarray, i: Instr, per_tap: np.ndarray) -> np.ndarray:
    """Each sample's sum over its outputs and their taps (c, i, j) of the input the tap reads times
    per_tap[c, i, j] (`_per_tap(x) @ per_tap`, sample by sample): one single-channel conv, exact in float32
    below 2^24 (its partial sums are integers no larger than the bound), else in float64."""
    per_tap = np.asarray(per_tap)
    bound = int(np.abs(per_tap).sum()) * int(np.abs(x).max(initial=0)) * i["oh"] * i["ow"]
    dtype = torch.float32 if bound < 1 << 24 else torch.float64  # (exact either way)
    kernel = torch.from_numpy(per_tap.reshape(1, i["cin"], i["kh"], i["kw"])).to(dtype)
    y = torch.nn.functional.conv2d(torch.from_numpy(_padded(x, i)).to(dtype), kernel, stride=(i["sh"], i["sw"]))
    return np.rint(y.double().sum(dim=(1, 2, 3)).numpy()).astype(np.int64)


def row_work(active: np.ndarray, i: Instr) -> np.ndarray:
    """Each sample's dense (output, tap) pairs that read a spike row holding a spike: a row of one input channel
    and plane of `active` [B, planes * cin, ih, iw] with a spike in a column the outputs read, times the pairs
    reading it, cout * ow * kw per tap row (oy, ky) that lands on it (input row oy * sh + ky - pt)."""
    per_row = _taps_reading(i["oh"], i["ih"], i["kh"], i["sh"], i["pt"])
    read = _taps_reading(i["ow"], i["iw"], i["kw"], i["sw"], i["pl"]) > 0
    spiking = (active & read).any(axis=3).astype(np.int64)
    return (spiking @ per_row).sum(axis=1) * (i["cout"] * i["ow"] * i["kw"])


def _taps_reading(n_out: int, n_in: int, k: int, s: int, pad: int) -> np.ndarray:
    """For each of n_in input positions, the (output, tap) pairs of one axis that read it: at out * s + tap - pad."""
    at = (np.arange(n_out)[:, None] * s + np.arange(k) - pad).ravel()
    return np.bincount(at[(at >= 0) & (at < n_in)], minlength=n_in)


def _conv_sums(m: Machine, i: Instr, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The integer convolution of x [B, cin, ih, iw] with w [cout, cin*kh*kw] as [B, cout*oh*ow], through
    torch's conv2d in floating point, which is exact here: every partial sum is an integer bounded by
    max|x| * sum|w|, checked below 2^24 for float32 (else float64, below 2^53)."""
    cout, cin, kh, kw = i["cout"], i["cin"], i["kh"], i["kw"]
    bound = int(np.abs(x).max(initial=0)) * int(np.abs(w).sum(axis=1).max(initial=0))
    if bound >= 1 << 53:
        raise SimError(f"instruction {m.pc} ({m.prog.code[m.pc].op}): partial sums may reach {bound}, beyond exact arithmetic")
    xp, w4 = torch.from_numpy(_padded(x, i)), torch.from_numpy(w.reshape(cout, cin, kh, kw))
    y = None
    if bound < 1 << 24:
        y = torch.nn.functional.conv2d(xp.float(), w4.float(), stride=(i["sh"], i["sw"])).numpy()
        y = y if (y == np.rint(y)).all() else None  # a transform-domain algorithm (Winograd) would round
    if y is None:
        y = torch.nn.functional.conv2d(xp.double(), w4.double(), stride=(i["sh"], i["sw"])).numpy()
    return np.rint(y).astype(np.int64).reshape(m.batch, -1)


def _accumulate(m: Machine, i: Instr, y: np.ndarray) -> None:
    if i["accumulate"]:
        y = y + m.read(i["dst"], "i32", y.shape[1])
    m.write(i["dst"], "i32", y)


def _conv_operands(m: Machine, i: Instr, src_fmt: str, wfmt: str, planes: int = 1,
                   weights: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The input [B, planes * cin, ih, iw] (planes one after another) and the weights [cout, cin*kh*kw]
    (unless `weights` is false: the caller reads them its own way)."""
    cin, cout, ih, iw, kh, kw = (i[k] for k in ("cin", "cout", "ih", "iw", "kh", "kw"))
    if min(cin, cout, planes) < 1:  # the encoding allows 0; a conv of no channels or planes computes nothing
        raise SimError(f"cin={cin} cout={cout} planes={planes}: each must be at least 1")
    x = np.concatenate([m.read(Ref(i["src"].mem, i["src"].addr + p * elems_bytes(src_fmt, cin * ih * iw)), src_fmt,
                               cin * ih * iw) for p in range(planes)], axis=1)
    x = x.reshape(m.batch, planes * cin, ih, iw)
    return x, m.read(i["wgt"], wfmt, cout * cin * kh * kw)[0].reshape(cout, cin * kh * kw) if weights else None


def _sconv(m: Machine, i: Instr) -> None:
    """Plane by plane: each plane's spikes add the weights they reach into the sums, which a cascade
    doubles before every plane after the first (so plane p ends up weighing 2^plane_shift(p))."""
    cin, planes, mode = i["cin"], i["planes"], i["mode"]
    x, w = _conv_operands(m, i, "spike", i["wfmt"], planes)
    fanout = (w != 0).sum(axis=0)
    y, adds, per_sample = 0, [], 0
    for p in range(planes):
        spikes = x[:, p * cin:(p + 1) * cin]
        y = (y << 1 if p and mode == "cascade" else y) + _conv_sums(m, i, spikes, w)
        sample_adds = _tap_weighted(spikes, i, fanout)
        adds.append(int(sample_adds.sum()))
        per_sample = per_sample + sample_adds
    m.event.actions.update(sconv_actions(i, m.batch, adds))
    m.charge_samples(spike_add_action(i["wfmt"]), per_sample)
    m.record_work(i, lambda: x != 0, per_sample)
    _accumulate(m, i, y << i["shift"])


def sconv_actions(i: Instr, batch: int, adds: list[int]) -> Counter:
    """What an sconv does, given each plane's spike-driven adds (over the batch)."""
    a, outputs = Counter(), i["cout"] * i["oh"] * i["ow"] * batch
    for p, n in enumerate(adds):
        if p and i["mode"] == "cascade":
            a[PLANE_SHIFT.format(k=p)] = outputs
            a["shift32"] += outputs
        a[PLANE_ADD.format(k=p)] = n
        a["spike_add"] += n
    a[spike_add_action(i["wfmt"])] = a["spike_add"]
    if i["shift"]:
        a["shift32"] += outputs
    return a


def _tconv(m: Machine, i: Instr) -> None:
    """TTFS, in time order: the spikes at t each add sign << (shift - e - t) for every non-zero code e
    they reach, dropped where shift < e + t (below the accumulator's last bit). Up to the time `exact`
    at which no term is dropped yet, the terms are 2^(exact - t) times those at `exact`: those times
    are one integer conv; each later time is one conv of its own."""
    times, codes = _conv_operands(m, i, TIME, LOG5)
    window, shift = i["window"], i["shift"]
    if codes.size and (codes.min() < 0 or codes.max() > 31):  # data a program placed there, not a simulator bug
        raise SimError(f"instruction {m.pc} (tconv): a weight byte holds {int(codes.min() if codes.min() < 0 else codes.max())}, "
                       "not a 5-bit log code (0..31)")
    _, e = code_exponents(codes)
    live = e < ZERO_EXPONENT
    exact = min(window - 1, shift - int(e[live].max(initial=0)))
    early = times <= exact
    x = np.where(early, np.left_shift(1, np.clip(exact - times, 0, 62)), 0)
    w = synapse_weights(codes, shift - exact) if exact >= 0 else np.zeros_like(codes)
    y = _conv_sums(m, i, x, w)
    per_sample = _tap_weighted(early.astype(np.int64), i, live.sum(axis=0))
    for t in range(max(exact + 1, 0), window):
        spikes = (times == t).astype(np.int64)
        w = synapse_weights(codes, shift - t)
        y += _conv_sums(m, i, spikes, w)
        per_sample = per_sample + _tap_weighted(spikes, i, (w != 0).sum(axis=0))
    _accumulate(m, i, y)
    m.record_work(i, lambda: times < window, per_sample)
    synapses = int(per_sample.sum())
    m.event.actions["shift_add"] = synapses
    for action, per_synapse in TTFS_SYNAPSE_ACTIONS.items():
        m.event.actions[action] += synapses * per_synapse
        m.charge_samples(action, per_sample * per_synapse)


def _tfire(m: Machine, i: Instr) -> None:
    t = fire_times(m.read(i["src"], i["src_fmt"], i["n"]), i["frac"], i["window"])
    m.write(i["dst"], TIME, t)
    a, count = m.event.actions, i["n"] * m.batch
    a["fire"] = count
    a["spike"] = int((t < i["window"]).sum())
    for action, per_neuron in TTFS_FIRE_ACTIONS.items():
        a[action] += count * per_neuron


def _dconv(m: Machine, i: Instr) -> None:
    """Every in-bounds tap multiplies, whatever the values (with skip: every tap of a non-zero input).
    Transposed, the weights are a forward layer's [cin, cout, kh, kw], read swapped and flipped."""
    cin, cout, kh, kw = i["cin"], i["cout"], i["kh"], i["kw"]
    conv = i
    real = None  # the positions of src's elements in the spread-out input (transposed with a stride)
    if i["transposed"]:
        x, _ = _conv_operands(m, i, i["fmt"], i["wfmt"], weights=False)
        w = m.read(i["wgt"], i["wfmt"], cout * cin * kh * kw)[0].reshape(cin, cout, kh, kw)
        w = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1].reshape(cout, -1)
        sh, sw = i["sh"], i["sw"]
        if (sh, sw) != (1, 1):
            spread = np.zeros(x.shape[:2] + ((x.shape[2] - 1) * sh + 1, (x.shape[3] - 1) * sw + 1), dtype=x.dtype)
            spread[:, :, ::sh, ::sw] = x
            real = np.zeros((1,) + spread.shape[1:], dtype=np.int64)
            real[:, :, ::sh, ::sw] = 1
            x = spread
        conv = {**i.args, "sh": 1, "sw": 1}
    else:
        x, w = _conv_operands(m, i, i["fmt"], i["wfmt"])
    y = _conv_sums(m, conv, x, w) << i["shift"]
    a = m.event.actions
    if i["sat_bits"]:
        if y.size and int(np.abs(y).max()) >> (train.ACC_BITS - 1):
            raise SimError(f"instruction {m.pc} (dconv): sums of {int(np.abs(y).max()).bit_length()} bits overflow "
                           f"its {train.ACC_BITS}-bit accumulator")
        y = rescale(y, -i["round_shift"])
        if i["accumulate"]:
            y = y + m.read(i["dst"], "i32", y.shape[1])
        y, a["grad_saturated"] = train.saturate(y, min(i["sat_bits"], 32))
        m.write(i["dst"], "i32", y)
    else:
        _accumulate(m, i, y)
    if i["skip"]:
        macs = int(_per_tap((x != 0).astype(np.int64), conv).sum()) * cout
    elif real is not None:
        macs = int(_per_tap(real, conv).sum()) * cout * m.batch
    else:
        macs = dense_dconv_macs(i, m.batch)
    a.update(dconv_actions(i, m.batch, macs))


def dconv_actions(i: Instr, batch: int, macs: int) -> Counter:
    """What a dconv does besides saturating, given its multiply-accumulates (over the batch)."""
    a = Counter(mac=macs, add32=macs)
    a[multiply_action(i["fmt"], i["wfmt"])] = macs
    if i["shift"]:
        a["shift32"] += i["cout"] * i["oh"] * i["ow"] * batch
    return a


def dense_dconv_macs(i: Instr, batch: int) -> int:
    """A forward dconv's multiply-accumulates (every in-bounds tap, whatever the values)."""
    return int(_per_tap(np.ones((1, i["cin"], i["ih"], i["iw"]), np.int64), i).sum()) * i["cout"] * batch


def _pool(m: Machine, i: Instr) -> None:
    c, h, w, k, s = i["channels"], i["ih"], i["iw"], i["k"], i["stride"]
    x = m.read(i["src"], i["src_fmt"], c * h * w).reshape(m.batch, c, h, w)
    fill = -(1 << (8 * FORMAT_BYTES[i["src_fmt"]] - 1)) if i["mode"] == "max" and i["src_fmt"] != "spike" else 0
    win = sliding_window_view(_window(x, i, k, k, s, s, i["pl"], fill), (k, k), axis=(2, 3))[:, :, ::s, ::s]
    y = {"max": win.max, "min": win.min, "sum": win.sum}[i["mode"]](axis=(4, 5))
    m.write(i["dst"], i["dst_fmt"], y)
    m.event.actions.update(pool_actions(i, m.batch))


def pool_actions(i: Instr, batch: int) -> Counter:
    op = "add32" if i["mode"] == "sum" else "or1" if i["src_fmt"] == "spike" else "cmp32"
    return Counter({op: i["channels"] * i["oh"] * i["ow"] * i["k"] * i["k"] * batch})


def _nrn(m: Machine, i: Instr) -> None:
    n, state = i["n"], i["state"]
    params = {p: i[p] for p in NEURON_PARAMS}
    if i["per_neuron"]:  # each neuron's own multiplier, the n i32 after the n states
        params["decay_mul"] = m.read(Ref(state.mem, state.addr + 4 * n), "i32", n)
    planes, h = neuron_step(m.read(state, "i32", n), m.read(i["src"], "i32", n), **params)
    m.write(state, "i32", h)
    spikes, active = sum(int(s.sum()) for s in planes), None
    if i["band"]:  # training: the active bits follow the spike planes
        planes = [*planes, train.active(h, i["theta"], i["band"] << i["band_exp"])]
        active = int(planes[-1].sum())
    for k, s in enumerate(planes):
        m.write(Ref(i["dst"].mem, i["dst"].addr + k * elems_bytes("spike", n)), "spike", s)
    m.event.actions.update(nrn_actions(m, i, spikes, active))


def nrn_actions(m: Machine, i: Instr, spikes: int, active: int | None, static: Counter | None = None) -> Counter:
    """What an nrn does, given the spikes it fired and (with a band) its active neurons, over the batch: its
    `nrn_static_actions` (or `static`, those made before) with them filled in."""
    a = Counter(static) if static is not None else nrn_static_actions(m, i, active is not None)
    a["spike"] = spikes
    if active is not None:
        a["active"] = active
    return a


def nrn_static_actions(m: Machine, i: Instr, band: bool) -> Counter:
    """What an nrn does whatever its data, over the batch; its spikes (and with a band its active neurons) 0 in
    their places (the order of the counts is the order the energy model adds them in)."""
    n, state = i["n"], i["state"]
    a, count = Counter(spike=0, neuron_update=n * m.batch), n * m.batch
    if band:
        a["active"] = 0
    # every sample holds the same per-neuron multipliers (the n i32 after the states): sample 0's, looked at
    # (the handler has read them, and counted it)
    at = state.addr + 4 * n
    decays = m.mem[state.mem][0, at:at + 4 * n].view("<i4").astype(np.int64) if i["per_neuron"] else i["decay_mul"]
    actions = neuron_update_actions(i["reset"], i["in_shift"], decays, i["decay_shift"], i["levels"], i["mode"])
    for action, per_update in actions.items():
        a[action] = round(count * per_update)  # averaged over the n multipliers: the product is whole
    return a


def _vacc(m: Machine, i: Instr) -> None:
    n, shift = i["n"], i["shift"]
    y = rescale(m.read(i["src"], i["src_fmt"], n), shift) * (-1 if i["neg"] else 1)
    if i["accumulate"]:
        y = y + m.read(i["dst"], i["dst_fmt"], n)
    m.event.actions.update(vacc_actions(i, m.batch))
    m.write(i["dst"], i["dst_fmt"], y)


def vacc_actions(i: Instr, batch: int) -> Counter:
    a = Counter()
    if i["accumulate"]:
        a["add32"] = i["n"] * batch
    if i["shift"]:
        a["shift32"] = i["n"] * batch
    return a


def _nbwd(m: Machine, i: Instr) -> None:
    n = i["n"]
    spikes = m.read(i["spikes"], "spike", n) if i["gate"] == "spike" else 0
    if not 2 <= i["bits"] <= 32:
        raise SimError(f"nbwd saturates to {i['bits']} bits: 2 to 32")
    g = train.backward_step(m.read(i["state"], "i32", n), m.read(i["src"], "i32", n), m.read(i["tape"], "spike", n),
                            spikes, decay_mul=i["decay_mul"], decay_shift=i["decay_shift"], gate=i["gate"],
                            src_shift=i["src_shift"])
    g, saturated = train.saturate(g, i["bits"])
    m.write(i["state"], "i32", g)
    m.write(i["dst"], "i32", g)
    a, count = m.event.actions, n * m.batch
    a["grad_saturated"] = saturated
    a["neuron_backward"] = count
    a["grad_nonzero"] = int((g != 0).sum())
    for action, per_step in neuron_update_actions("none", i["src_shift"], i["decay_mul"], i["decay_shift"]).items():
        a[action] += count * per_step  # a decay, a shift of the input, an add (the gate and the tape are muxes)


def _wgrad(m: Machine, i: Instr) -> None:
    """Every sample's weight gradient, summed over the batch into the one shared accumulator: every
    sample's copy of dst holds the same sum (the batch's samples run one after another on the machine,
    and integer sums do not depend on their order)."""
    cout, kh, kw = i["cout"], i["kh"], i["kw"]
    x, _ = _conv_operands(m, i, i["fmt"], "i8", weights=False)
    g = m.read(i["grad"], "i32", cout * i["oh"] * i["ow"]).reshape(m.batch, cout, i["oh"], i["ow"])
    win = sliding_window_view(_padded(x, i), (kh, kw), axis=(2, 3))[:, :, ::i["sh"], ::i["sw"]]
    per_sample = np.einsum("bcyxij,boyx->bocij", win, g, optimize=True).reshape(m.batch, -1)
    total = rescale(per_sample, i["shift"]).sum(axis=0)
    if i["accumulate"]:
        total = total + m.read(i["dst"], "i32", total.size)[0]
    a = m.event.actions
    if i["sat_bits"]:
        total, a["grad_saturated"] = train.saturate(total, min(i["sat_bits"], 32))
    m.write(i["dst"], "i32", np.tile(total, (m.batch, 1)))
    gated = np.einsum("bcyxij,boyx->", (win != 0).astype(np.int64) if i["fmt"] == "spike" else np.ones_like(win),
                      ((g != 0) if i["skip"] else np.ones_like(g)).astype(np.int64), optimize=True)
    a["weight_grad"] = a["add32"] = int(gated)
    if i["fmt"] != "spike":
        a[multiply_action(i["fmt"], "i16")] = int(gated)
    if i["shift"]:
        a["shift32"] += total.size * m.batch


def _pbwd(m: Machine, i: Instr) -> None:
    c, ih, iw, oh, ow, k, s = (i[f] for f in ("channels", "ih", "iw", "oh", "ow", "k", "stride"))
    if min(c, oh, ow, k, s) < 1 or i["pt"] < 0:
        raise SimError(f"channels={c} oh={oh} ow={ow} k={k} stride={s} pt={i['pt']}: each must be at least 1 (pt 0)")
    if i["pt"] >= k or i["pl"] >= k or (oh - 1) * s - i["pt"] >= ih or (ow - 1) * s - i["pl"] >= iw:
        raise SimError(f"{oh}x{ow} windows of {k} by {s} (padding {i['pt']}, {i['pl']}): one holds no input of the "
                       f"{ih}x{iw} input")
    g = m.read(i["src"], "i32", c * oh * ow).reshape(m.batch, c, oh, ow)
    a = m.event.actions
    if i["mode"] == "avg":
        m.write(i["dst"], "i32", train.average_backward(g, (ih, iw), k, s, i["pt"], i["pl"]))
        a["add32"] = m.batch * c * oh * ow * k * k
        return
    x = m.read(i["x"], i["x_fmt"], c * ih * iw).reshape(m.batch, c, ih, iw)
    m.write(i["dst"], "i32", train.pool_backward(x, g, k, s, i["pt"], i["pl"]))
    a["add32"] = m.batch * c * oh * ow
    a["or1" if i["x_fmt"] == "spike" else "cmp32"] = m.batch * c * oh * ow * k * k


def _sgd(m: Machine, i: Instr) -> None:
    n, bits = i["n"], i["bits"]
    if not 2 <= bits <= 8 * FORMAT_BYTES[i["wfmt"]]:
        raise SimError(f"sgd saturates to {bits} bits, which {i['wfmt']} does not hold")
    w, saturated = train.sgd(m.read(i["wgt"], i["wfmt"], n), m.read(i["grad"], "i32", n), i["shift"], bits)
    m.write(i["wgt"], i["wfmt"], w)
    m.write(i["grad"], "i32", np.zeros_like(w))
    a, count = m.event.actions, n * m.batch
    a["weight_update"] = a["add32"] = a["cmp32"] = count
    a["weight_saturated"] = saturated
    if i["shift"]:
        a["shift32"] = count


HANDLERS = {"halt": _halt, "load": _copy, "store": _copy, "vfill": _vfill, "vbias": _vbias, "sconv": _sconv, "dconv": _dconv,
            "pool": _pool, "nrn": _nrn, "vacc": _vacc, "tconv": _tconv, "tfire": _tfire,
            "nbwd": _nbwd, "wgrad": _wgrad, "sgd": _sgd, "pbwd": _pbwd}

if set(HANDLERS) != set(BY_NAME):
    raise ImportError(f"simulator handlers {sorted(HANDLERS)} do not match the ISA table {sorted(BY_NAME)}")
