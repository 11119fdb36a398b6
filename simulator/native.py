"""Native instruction kernels for the simulator's JIT backend (llvmlite): one generated LLVM function per
opcode, compiled once at -O3 for the host CPU (and cached on disk for the next process), called once per
instruction with the batch's memories (docs/simulator.md).

A kernel's signature is

    void k(i8** bases, i64* strides, i64 batch, i64* args, i64* out, i8* scratch)

`bases[m]` is memory m's first sample and `strides[m]` the bytes between two samples' copies (the machine's
[B, bytes] arrays); `args` the instruction's fields as integers (`ttc.simulator.jit` lays them out, a
reference as its memory's index and its address); `out` what the kernel counts (out[0]: an error code, 0
when none; the rest per opcode); `scratch` a work area (a conv's transposed weights and sums). Every kernel
loops over the samples itself. The arithmetic is the NumPy handlers' (`ttc.simulator.machine`), on int64,
and the JIT tests hold the two to the same bits and counters.

The kernels are written with `_Kernel`, a small structured builder over llvmlite's IRBuilder: loop
counters and running values live in allocas, which -O3 promotes to registers, so loops read as loops.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np

from ttc.isa.table import BY_NAME, MEMORIES, TIME

log = logging.getLogger(__name__)

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
P8 = I8.as_pointer()
WIDTH = {1: I8, 2: I16, 4: I32}
SIGNATURE = ir.FunctionType(ir.VoidType(), [P8.as_pointer(), I64.as_pointer(), I64, I64.as_pointer(), I64.as_pointer(), P8])
CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_void_p)

#: out[0] error codes (the JIT backend raises the NumPy backend's message for each)
OVERFLOW, INEXACT, ACCUMULATOR = 1, 2, 3
#: out holds OUT_SLOTS counts for the batch (out[0] the error code; every kernel clears them at its entry,
#: then adds to them), then OUT_SLOTS per sample (kernels set those)
OUT_SLOTS = 16


class _Kernel:
    """One kernel function being built: structured loops and branches, typed loads and stores, int64 values."""

    def __init__(self, module: ir.Module, name: str, op: str):
        self.fn = ir.Function(module, SIGNATURE, name)
        self.slots = layout(op)
        self.fields: dict[str, ir.Value] = {}
        self.module = module
        for arg in (self.fn.args[0], self.fn.args[1], self.fn.args[3], self.fn.args[4]):
            arg.add_attribute("noalias")
        self.bases, self.strides, self.batch, self.args, self.out, self.scratch = self.fn.args
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.sample = None
        for slot in range(OUT_SLOTS):  # (the batch's counts: cleared here, not by a NumPy call per instruction)
            self.b.store(self.c(0), self.b.gep(self.out, [self.c(slot)]))

    # ---- values
    @staticmethod
    def c(v: int) -> ir.Constant:
        return I64(v)

    def arg(self, k: int) -> ir.Value:
        return self.b.load(self.b.gep(self.args, [self.c(k)]))

    def f(self, name: str) -> ir.Value:
        """The instruction's field `name` (an integer), loaded once at the kernel's entry: a load in a loop
        would be repeated there, as any store may alias the args."""
        if name not in self.fields:
            with self.b.goto_block(self.entry):
                self.b.position_at_start(self.entry)
                self.fields[name] = self.b.load(self.b.gep(self.args, [self.c(self.slots[name])]))
        return self.fields[name]

    def at(self, name: str) -> ir.Value:
        """The current sample's bytes at reference field `name`."""
        return self.ref(self.slots[name])

    def var(self, init) -> ir.AllocaInstr:
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            slot = self.b.alloca(I64)
        self.b.store(init if isinstance(init, ir.Value) else self.c(init), slot)
        return slot

    def get(self, slot) -> ir.Value:
        return self.b.load(slot)

    def set(self, slot, value) -> None:
        self.b.store(value if isinstance(value, ir.Value) else self.c(value), slot)

    def add_to(self, slot, value) -> None:
        self.set(slot, self.b.add(self.get(slot), value))

    def count(self, k: int, value) -> None:
        """out[k] += value."""
        self.count_at(self.c(k), value)

    def count_at(self, index, value) -> None:
        p = self.b.gep(self.out, [index])
        self.b.store(self.b.add(self.b.load(p), value), p)

    def fail(self, code: int) -> None:
        self.b.store(self.c(code), self.b.gep(self.out, [self.c(0)]))

    # ---- arithmetic on i64
    def add(self, a, b): return self.b.add(a, b)
    def sub(self, a, b): return self.b.sub(a, b)
    def mul(self, a, b): return self.b.mul(a, b)
    def lt(self, a, b): return self.b.icmp_signed("<", a, b)
    def le(self, a, b): return self.b.icmp_signed("<=", a, b)
    def gt(self, a, b): return self.b.icmp_signed(">", a, b)
    def ge(self, a, b): return self.b.icmp_signed(">=", a, b)
    def eq(self, a, b): return self.b.icmp_signed("==", a, b)
    def ne(self, a, b): return self.b.icmp_signed("!=", a, b)
    def and_(self, a, b): return self.b.and_(a, b)
    def or_(self, a, b): return self.b.or_(a, b)
    def select(self, cond, a, b): return self.b.select(cond, a, b)
    def bool(self, cond): return self.b.zext(cond, I64)
    def neg(self, a): return self.b.neg(a)

    def abs(self, a):
        return self.select(self.lt(a, self.c(0)), self.neg(a), a)

    def min(self, a, b):
        return self.select(self.lt(a, b), a, b)

    def max(self, a, b):
        return self.select(self.gt(a, b), a, b)

    def rescale(self, v, shift):
        """R(v, shift) of isa/table.py: v << shift, or for shift < 0 (v + 2^(-shift-1)) >> -shift."""
        right = self.neg(shift)
        rounded = self.b.ashr(self.add(v, self.b.shl(self.c(1), self.sub(right, self.c(1)))), right)
        return self.select(self.ge(shift, self.c(0)), self.b.shl(v, self.max(shift, self.c(0))), rounded)

    # ---- memory
    def base(self, mem) -> ir.Value:
        """Memory `mem`'s bytes for the current sample."""
        stride = self.b.load(self.b.gep(self.strides, [mem]))
        return self.b.gep(self.b.load(self.b.gep(self.bases, [mem])), [self.mul(self.sample, stride)])

    def ref(self, k: int) -> ir.Value:
        """The place of the reference in args[k] (its memory) and args[k + 1] (its address)."""
        return self.b.gep(self.base(self.arg(k)), [self.arg(k + 1)])

    def load(self, ptr, index, nbytes: int) -> ir.Value:
        """Element `index` of a little-endian signed integer array of `nbytes`-byte elements at ptr."""
        p = self.b.bitcast(ptr, WIDTH[nbytes].as_pointer())
        return self.b.sext(self.b.load(self.b.gep(p, [index]), align=1), I64)

    def store(self, ptr, index, value, nbytes: int) -> None:
        p = self.b.bitcast(ptr, WIDTH[nbytes].as_pointer())
        self.b.store(self.b.trunc(value, WIDTH[nbytes]), self.b.gep(p, [index]), align=1)

    def fits(self, value, nbytes: int):
        top = (1 << (8 * nbytes - 1)) - 1
        return self.and_(self.ge(value, self.c(-top - 1)), self.le(value, self.c(top)))

    def spike(self, ptr, index) -> ir.Value:
        """Bit `index` of a bit-packed spike array (element i in bit i % 8 of byte i // 8)."""
        byte = self.b.zext(self.b.load(self.b.gep(ptr, [self.b.lshr(index, self.c(3))])), I64)
        return self.b.and_(self.b.lshr(byte, self.b.and_(index, self.c(7))), self.c(1))

    def element(self, ptr, index, fmt_bytes) -> ir.Value:
        """Element `index` of an array of format `fmt_bytes` (0: spikes, else signed integers of that size),
        the format a run-time value."""
        slot = self.var(0)
        for nbytes in (0, 1, 2, 4):
            with self.if_(self.eq(fmt_bytes, self.c(nbytes))):
                self.set(slot, self.spike(ptr, index) if nbytes == 0 else self.load(ptr, index, nbytes))
        return self.get(slot)

    def put(self, ptr, index, value, fmt_bytes) -> None:
        """Store `value` as element `index` of an integer array of `fmt_bytes` bytes (1, 2 or 4)."""
        for nbytes in (1, 2, 4):
            with self.if_(self.eq(fmt_bytes, self.c(nbytes))):
                self.store(ptr, index, value, nbytes)

    def fits_fmt(self, value, fmt_bytes):
        ok = self.var(0)
        for nbytes in (1, 2, 4):
            with self.if_(self.eq(fmt_bytes, self.c(nbytes))):
                self.set(ok, self.bool(self.fits(value, nbytes)))
        return self.ne(self.get(ok), self.c(0))

    # ---- control
    @contextmanager
    def range(self, stop, start=0):
        """for i in range(start, stop): yields i."""
        i = self.var(start if isinstance(start, ir.Value) else self.c(start))
        head, body, done = (self.fn.append_basic_block(n) for n in ("head", "body", "done"))
        self.b.branch(head)
        self.b.position_at_end(head)
        self.b.cbranch(self.lt(self.get(i), stop if isinstance(stop, ir.Value) else self.c(stop)), body, done)
        self.b.position_at_end(body)
        yield self.get(i)
        self.add_to(i, self.c(1))
        self.b.branch(head)
        self.b.position_at_end(done)

    @contextmanager
    def if_(self, cond):
        then, done = self.fn.append_basic_block("then"), self.fn.append_basic_block("endif")
        self.b.cbranch(cond, then, done)
        self.b.position_at_end(then)
        yield
        if not self.b.block.is_terminated:
            self.b.branch(done)
        self.b.position_at_end(done)

    @contextmanager
    def samples(self):
        """The kernel's body, once per sample."""
        with self.range(self.batch) as b:
            self.sample = b
            yield b

    def finish(self) -> None:
        self.b.ret_void()


@lru_cache(maxsize=1)
def _has_vnni() -> bool:
    """Whether the host has AVX-512 VNNI, and AVX512VL for its 128- and 256-bit forms (the kernels are compiled
    for the host CPU)."""
    _engine()
    return {"+avx512vnni", "+avx512vl"} <= set(llvm.get_host_cpu_features().flatten().split(","))


@lru_cache(maxsize=1)
def _is_x86() -> bool:
    """Whether the host is x86-64 (with SSE2 and, for 8 lanes, AVX2: the kernels are compiled for the host)."""
    _engine()
    features = llvm.get_host_cpu_features().flatten().split(",")
    return llvm.get_process_triple().startswith("x86_64") and "+avx2" in features


@lru_cache(maxsize=1)
def _engine():
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=3)


KERNELS = {}  # opcode -> builder(_Kernel)

#: Format fields are passed as their element's bytes (spikes 0); an instruction in a format no kernel takes
#: (spike times, log codes) runs its NumPy handler.
FORMAT_CODE = {"spike": 0, "i8": 1, "i16": 2, "i32": 4}


def layout(op: str) -> dict[str, int]:
    """Where each field of `op` sits in a kernel's args: a reference takes two slots (its memory's index in
    MEMORIES, its address), every other field one (an enum its choice's index, a format its FORMAT_CODE)."""
    slots, at = {}, 0
    for f in BY_NAME[op].fields:
        if f.kind == "mask":
            continue
        slots[f.name] = at
        at += 2 if f.kind == "ref" else 1
    return slots


def encode(instr) -> np.ndarray:
    """An instruction's args (`layout`), or None where a field holds what no kernel takes."""
    values = []
    for f in BY_NAME[instr.op].fields:
        v = instr[f.name]
        if f.kind == "mask":
            continue
        if f.kind == "ref":
            values += [MEMORIES.index(v.mem), v.addr]
        elif f.kind == "enum" and set(f.choices) <= set(FORMAT_CODE) | {TIME}:
            if v not in FORMAT_CODE:
                return None
            values.append(FORMAT_CODE[v])
        elif f.kind == "enum":
            values.append(f.choices.index(v))
        else:
            values.append(v)
    return np.array(values, dtype=np.int64)


def kernel(*ops: str):
    def register(build):
        for op in ops:
            KERNELS[op] = build
        return build
    return register


@lru_cache(maxsize=1)
def compiled() -> dict[str, ctypes.CFUNCTYPE]:
    """Every kernel, compiled once per process (or loaded from the object cache, `kernel_object`): opcode ->
    callable."""
    module = ir.Module("ttc_kernels")
    module.triple = llvm.get_process_triple()
    names = {}
    for op, build in KERNELS.items():
        name = f"k_{build.__name__.strip('_')}"
        if name not in names.values():
            k = _Kernel(module, name, op)
            build(k)
            k.finish()
        names[op] = name
    tm = _engine()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
    engine.add_object_file(llvm.ObjectFileRef.from_data(kernel_object(str(module), tm)))
    engine.finalize_object()
    _ENGINES.append(engine)  # the code lives as long as its engine
    return {op: CFUNC(engine.get_function_address(name)) for op, name in names.items()}


def cache_dir() -> Path:
    """Where compiled kernels are kept between processes: $TTC_CACHE_DIR, else ttc/ under $XDG_CACHE_HOME
    (~/.cache)."""
    if os.environ.get("TTC_CACHE_DIR"):
        return Path(os.environ["TTC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ttc"


def kernel_object(text: str, tm) -> bytes:
    """The object code of the kernels' LLVM IR `text` for target machine `tm`, optimised at -O3: from the cache
    when it holds it for this IR, target, CPU and LLVM (optimising and generating it takes 2 s, every fresh
    process), else made and kept there. A cached file holds its own digest, so a damaged one is made again,
    never loaded; a cache that cannot be written is only slower."""
    key = hashlib.sha256("\n".join((text, tm.triple, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(),
                                     ".".join(map(str, llvm.llvm_version_info)))).encode()).hexdigest()
    path = cache_dir() / f"kernels-{key[:32]}.o"
    try:
        blob = path.read_bytes()
        if hashlib.sha256(blob[32:]).digest() == blob[:32]:
            return blob[32:]
    except OSError:
        pass
    parsed = llvm.parse_assembly(text)
    parsed.verify()
    tuning = llvm.create_pipeline_tuning_options(speed_level=3)
    tuning.loop_interleaving = False  # the runs are short (taps x a tile's channels): one vector per step
    pb = llvm.create_pass_builder(tm, tuning)
    pb.getModulePassManager().run(parsed, pb)
    obj = tm.emit_object(parsed)
    try:  # written whole under a temporary name, then renamed: another process reads all of it or nothing
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(hashlib.sha256(obj).digest() + obj)
        os.replace(tmp, path)
    except OSError as e:
        log.info("the JIT's kernels are not kept for the next process: %s", e)
    return obj


_ENGINES: list = []


# ------------------------------------------------------------------------------------------ kernels
# out[0] is the error code; the counts each kernel adds start at out[1].

@kernel("load", "store")
def _copy(k: _Kernel) -> None:
    """rows of row_bytes from src to dst, each at its stride (a row read whole, then written)."""
    move = k.module.declare_intrinsic("llvm.memmove", [P8, P8, I64])
    with k.samples():
        src, dst, nbytes = k.at("src"), k.at("dst"), k.f("row_bytes")
        with k.range(k.f("rows")) as r:
            k.b.call(move, [k.b.gep(dst, [k.mul(r, k.f("dst_stride"))]), k.b.gep(src, [k.mul(r, k.f("src_stride"))]),
                            nbytes, ir.Constant(I1, 0)])


@kernel("vfill")
def _vfill(k: _Kernel) -> None:
    with k.samples():
        dst, value = k.at("dst"), k.f("value")
        with k.range(k.f("n")) as j:
            k.store(dst, j, value, 4)


@kernel("vbias")
def _vbias(k: _Kernel) -> None:
    with k.samples():
        dst, bias, plane = k.at("dst"), k.at("bias"), k.f("plane")
        with k.range(k.f("channels")) as c:
            b = k.load(bias, c, 4)
            with k.range(plane) as j:
                k.store(dst, k.add(k.mul(c, plane), j), b, 4)


@kernel("vacc")
def _vacc(k: _Kernel) -> None:
    """dst (+)= +-R(src, shift)."""
    with k.samples():
        src, dst, fmt_in, fmt_out = k.at("src"), k.at("dst"), k.f("src_fmt"), k.f("dst_fmt")
        sign = k.select(k.ne(k.f("neg"), k.c(0)), k.c(-1), k.c(1))
        with k.range(k.f("n")) as j:
            y = k.mul(k.rescale(k.element(src, j, fmt_in), k.f("shift")), sign)
            y = k.select(k.ne(k.f("accumulate"), k.c(0)), k.add(y, k.element(dst, j, fmt_out)), y)
            with k.if_(k.b.not_(k.fits_fmt(y, fmt_out))):
                k.fail(OVERFLOW)
            k.put(dst, j, y, fmt_out)


@kernel("pool")
def _pool(k: _Kernel) -> None:
    """max, sum or min over k x k windows (outside the input: the format's least value for a max of
    integers, else 0), to spikes (non-zero) or integers. The loops are made twice: for spikes (reading one
    is not a choice among formats: a spike pool is mostly reads) and for integers."""
    spike = k.c(FORMAT_CODE["spike"])
    spikes = k.eq(k.f("src_fmt"), spike)
    # a max of spikes to spikes (every spiking net's pool), rows short enough for a word: OR of rows
    by_rows = k.and_(k.and_(spikes, k.eq(k.f("dst_fmt"), spike)), k.and_(k.eq(k.f("mode"), k.c(0)), k.le(k.f("iw"), k.c(56))))
    with k.if_(by_rows):
        _spike_or_pool(k)
    with k.if_(k.and_(spikes, k.b.not_(by_rows))):
        _pool_from(k, lambda src, at: k.spike(src, at))
    with k.if_(k.b.not_(spikes)):
        _pool_from(k, lambda src, at: k.element(src, at, k.f("src_fmt")))


def _spike_or_pool(k: _Kernel) -> None:
    """A max pool of spikes as bit operations: per output row, the OR of the window's input rows (each
    iw <= 56 bits, read bytewise into a word), then per output whether its window's columns hold a bit (the
    padding holds none): what the element-wise loops compute, an output row at a time. Each output
    column's mask of input columns is made once per call (in scratch)."""
    ih, iw, oh, ow, size, s, pt, pl = (k.f(n) for n in ("ih", "iw", "oh", "ow", "k", "stride", "pt", "pl"))
    windows = k.b.bitcast(k.scratch, I64.as_pointer())
    with k.range(ow) as ox:
        left = k.sub(k.mul(ox, s), pl)
        kx0, kx1 = k.max(k.neg(left), k.c(0)), k.min(k.sub(iw, left), size)
        width = k.max(k.sub(kx1, kx0), k.c(0))
        window = k.b.shl(k.sub(k.b.shl(k.c(1), width), k.c(1)), k.max(k.add(left, kx0), k.c(0)))
        k.b.store(window, k.b.gep(windows, [ox]))
    with k.samples():
        src, dst = k.at("src"), k.at("dst")
        n_out = k.mul(k.f("channels"), k.mul(oh, ow))
        with k.range(k.b.ashr(k.add(n_out, k.c(7)), k.c(3))) as j:
            k.b.store(ir.Constant(I8, 0), k.b.gep(dst, [j]))
        with k.range(k.f("channels")) as c:
            with k.range(oh) as oy:
                top = k.sub(k.mul(oy, s), pt)
                ky0, ky1 = k.max(k.neg(top), k.c(0)), k.min(k.sub(ih, top), size)
                bits = k.var(0)
                with k.range(ky1, ky0) as ky:
                    first = k.mul(k.add(k.mul(c, ih), k.add(top, ky)), iw)  # the row's first bit
                    word = k.var(0)
                    with k.range(k.b.ashr(k.add(k.add(k.b.and_(first, k.c(7)), iw), k.c(7)), k.c(3))) as byte:
                        value = k.b.zext(k.b.load(k.b.gep(src, [k.add(k.b.ashr(first, k.c(3)), byte)])), I64)
                        k.set(word, k.or_(k.get(word), k.b.shl(value, k.mul(byte, k.c(8)))))
                    k.set(bits, k.or_(k.get(bits), k.b.lshr(k.get(word), k.b.and_(first, k.c(7)))))
                row = k.b.and_(k.get(bits), k.sub(k.b.shl(k.c(1), iw), k.c(1)))
                with k.range(ow) as ox:
                    window = k.b.load(k.b.gep(windows, [ox]))
                    out = k.add(k.mul(k.add(k.mul(c, oh), oy), ow), ox)
                    byte = k.b.gep(dst, [k.b.lshr(out, k.c(3))])
                    bit = k.b.trunc(k.b.shl(k.bool(k.ne(k.and_(row, window), k.c(0))), k.b.and_(out, k.c(7))), I8)
                    k.b.store(k.b.or_(k.b.load(byte), bit), byte)


def _pool_from(k: _Kernel, read) -> None:
    """The pool of a source whose element `at` is read(src, at)."""
    with k.samples():
        src, dst, fin, fout, mode = k.at("src"), k.at("dst"), k.f("src_fmt"), k.f("dst_fmt"), k.f("mode")
        ih, iw, oh, ow, size, s, pt, pl = (k.f(n) for n in ("ih", "iw", "oh", "ow", "k", "stride", "pt", "pl"))
        least = k.neg(k.b.shl(k.c(1), k.sub(k.mul(fin, k.c(8)), k.c(1))))
        fill = k.select(k.and_(k.eq(mode, k.c(0)), k.ne(fin, k.c(0))), least, k.c(0))
        n_out = k.mul(k.f("channels"), k.mul(oh, ow))
        with k.if_(k.eq(fout, k.c(0))):  # spikes: the bytes are set bit by bit
            with k.range(k.b.ashr(k.add(n_out, k.c(7)), k.c(3))) as j:
                k.b.store(ir.Constant(I8, 0), k.b.gep(dst, [j]))
        def pooled(a, x):
            return k.select(k.eq(mode, k.c(1)), k.add(a, x), k.select(k.eq(mode, k.c(0)), k.max(a, x), k.min(a, x)))

        start = k.select(k.eq(mode, k.c(0)), k.c(-(1 << 62)), k.select(k.eq(mode, k.c(2)), k.c(1 << 62), k.c(0)))
        with k.range(k.f("channels")) as c:
            with k.range(oh) as oy:
                top = k.sub(k.mul(oy, s), pt)  # the window's rows top + ky0 ... top + ky1 - 1 lie inside
                ky0, ky1 = k.max(k.neg(top), k.c(0)), k.min(k.sub(ih, top), size)
                with k.range(ow) as ox:
                    left = k.sub(k.mul(ox, s), pl)
                    kx0, kx1 = k.max(k.neg(left), k.c(0)), k.min(k.sub(iw, left), size)
                    # a window reaching outside holds `fill` (once is enough: max, min and a sum of 0s)
                    clipped = k.or_(k.or_(k.gt(ky0, k.c(0)), k.lt(ky1, size)), k.or_(k.gt(kx0, k.c(0)), k.lt(kx1, size)))
                    acc = k.var(k.select(clipped, pooled(start, fill), start))
                    with k.range(ky1, ky0) as ky:
                        row = k.add(k.mul(k.add(k.mul(c, ih), k.add(top, ky)), iw), left)
                        with k.range(kx1, kx0) as kx:
                            k.set(acc, pooled(k.get(acc), read(src, k.add(row, kx))))
                    out = k.add(k.mul(k.add(k.mul(c, oh), oy), ow), ox)
                    y = k.get(acc)
                    with k.if_(k.eq(fout, k.c(0))):
                        byte = k.b.gep(dst, [k.b.lshr(out, k.c(3))])
                        bit = k.b.trunc(k.b.shl(k.bool(k.ne(y, k.c(0))), k.b.and_(out, k.c(7))), I8)
                        k.b.store(k.b.or_(k.b.load(byte), bit), byte)
                    with k.if_(k.ne(fout, k.c(0))):
                        with k.if_(k.b.not_(k.fits_fmt(y, fout))):
                            k.fail(OVERFLOW)
                        k.put(dst, out, y, fout)


@kernel("nrn")
def _nrn(k: _Kernel) -> None:
    """One step of n neurons of one threshold (isa/neuron.py), the spikes (and with a band the active bits)
    bit-packed after them; out[1] += spikes, out[2] += active neurons. Two passes: the neurons (a loop that
    vectorizes, its spikes and active bits as bytes in scratch), then the packing (eight bytes into one by
    a multiply, the last few bit by bit)."""
    with k.samples():
        src, state, dst, n = k.at("src"), k.at("state"), k.at("dst"), k.f("n")
        theta, v_reset, dshift, in_shift = k.f("theta"), k.f("v_reset"), k.f("decay_shift"), k.f("in_shift")
        ge, reset, late_reset = k.ne(k.f("cmp"), k.c(0)), k.f("reset"), k.ne(k.f("order"), k.c(0))
        per_neuron, band = k.ne(k.f("per_neuron"), k.c(0)), k.b.shl(k.f("band"), k.f("band_exp"))
        nbytes = k.b.ashr(k.add(n, k.c(7)), k.c(3))
        fired_bytes, active_bytes = k.scratch, k.b.gep(k.scratch, [n])

        def fired(v):
            return k.bool(k.select(ge, k.ge(v, theta), k.gt(v, theta)))

        spikes, active, bad = k.var(0), k.var(0), k.var(0)
        with k.range(n) as i:
            u, x = k.load(state, i, 4), k.load(src, i, 4)
            mul = k.select(per_neuron, k.load(state, k.add(n, i), 4), k.f("decay_mul"))
            s = fired(u)

            def after_reset(v):
                hard = k.add(v, k.mul(k.sub(v_reset, v), s))
                return k.select(k.eq(reset, k.c(0)), hard, k.select(k.eq(reset, k.c(1)), k.sub(v, k.mul(theta, s)), v))

            def decayed(v):
                return k.rescale(k.mul(v, mul), k.neg(dshift))

            h = k.add(k.select(late_reset, after_reset(decayed(u)), decayed(after_reset(u))), k.rescale(x, in_shift))
            k.set(bad, k.or_(k.get(bad), k.bool(k.b.not_(k.fits(h, 4)))))
            k.store(state, i, h, 4)
            sh, act = fired(h), k.bool(k.lt(k.abs(k.sub(h, theta)), band))
            k.b.store(k.b.trunc(sh, I8), k.b.gep(fired_bytes, [i]))
            k.b.store(k.b.trunc(act, I8), k.b.gep(active_bytes, [i]))
            k.add_to(spikes, sh)
            k.add_to(active, act)
        with k.if_(k.ne(k.get(bad), k.c(0))):
            k.fail(OVERFLOW)
        k.count(1, k.get(spikes))
        with k.if_(k.ne(band, k.c(0))):
            k.count(2, k.get(active))
        for plane, bits in ((0, fired_bytes), (1, active_bytes)):
            with k.if_(k.or_(k.eq(k.c(plane), k.c(0)), k.ne(band, k.c(0)))):
                whole = k.b.ashr(n, k.c(3))
                eights = k.b.bitcast(bits, I64.as_pointer())
                with k.range(whole) as j:
                    # byte b of the eight (each 0 or 1) lands in bit 56 + b of the product
                    byte = k.b.lshr(k.mul(k.b.load(k.b.gep(eights, [j]), align=1), k.c(0x0102040810204080)), k.c(56))
                    k.b.store(k.b.trunc(byte, I8), k.b.gep(dst, [k.add(k.mul(k.c(plane), nbytes), j)]))
                with k.range(nbytes, whole) as j:
                    byte = k.var(0)
                    with k.range(8) as bit:
                        i = k.add(k.mul(j, k.c(8)), bit)
                        with k.if_(k.lt(i, n)):
                            k.set(byte, k.or_(k.get(byte), k.b.shl(k.b.zext(k.b.load(k.b.gep(bits, [i])), I64), bit)))
                    k.b.store(k.b.trunc(k.get(byte), I8), k.b.gep(dst, [k.add(k.mul(k.c(plane), nbytes), j)]))


def _lanes(k: _Kernel) -> ir.Value:
    """The output channels as the sums and transposed weights lay them out: padded to 4 or 8 where cout is that
    small, else to a multiple of 16 (the padding's weights zero), so that every run of adds is whole vectors
    (`LANES`), and a small tile (digits' 4 output channels) does not clear, add and store 16 lanes' sums."""
    cout = k.f("cout")
    wide = k.b.shl(k.b.ashr(k.add(cout, k.c(15)), k.c(4)), k.c(4))
    return k.select(k.le(cout, k.c(4)), k.c(4), k.select(k.le(cout, k.c(8)), k.c(8), wide))


#: the vector widths of the sums (`_lanes`): lanes 4 and 8 are one vector, else lanes // 16 vectors of 16
LANES = (4, 8, 16)


def _transposed_weights(k: _Kernel, wbytes):
    """Sample 0's weights [cout, cin, kh, kw] (every sample holds the same) into scratch as i32
    [cin, kh, kw, cout] with kx reversed (position kw-1-kx), so that a tap's weights for every output
    channel lie together (`_lanes` of them), and a row of taps lines up with the row of outputs one input
    reaches (stride 1); each tap's non-zero count (i64, by tap index), and the largest sum of |w| over an
    output channel's weights. Returns (weights, counts, largest row sum, the scratch after them, for the
    sums)."""
    cin, cout, kw, lanes = k.f("cin"), k.f("cout"), k.f("kw"), _lanes(k)
    taps = k.mul(k.f("kh"), kw)
    saved, k.sample = k.sample, k.c(0)
    w = k.at("wgt")
    k.sample = saved
    wt = k.b.bitcast(k.scratch, I32.as_pointer())
    n = k.mul(k.mul(cin, taps), lanes)
    nnz = k.b.bitcast(k.b.gep(k.scratch, [k.mul(n, k.c(4))]), I64.as_pointer())
    rowmax = k.var(0)
    with k.range(n) as j:
        k.b.store(ir.Constant(I32, 0), k.b.gep(wt, [j]))
    with k.range(k.mul(cin, taps)) as t:
        k.b.store(k.c(0), k.b.gep(nnz, [t]))
    with k.range(cout) as co:
        row = k.var(0)
        with k.range(k.mul(cin, taps)) as t:
            v = k.var(0)
            for nbytes in (1, 2):
                with k.if_(k.eq(wbytes, k.c(nbytes))):
                    k.set(v, k.load(w, k.add(k.mul(co, k.mul(cin, taps)), t), nbytes))
            x = k.get(v)
            kx = k.b.srem(t, kw)
            flipped = k.add(k.sub(t, kx), k.sub(k.sub(kw, k.c(1)), kx))
            k.b.store(k.b.trunc(x, I32), k.b.gep(wt, [k.add(k.mul(flipped, lanes), co)]))
            q = k.b.gep(nnz, [t])
            k.b.store(k.add(k.b.load(q), k.bool(k.ne(x, k.c(0)))), q)
            k.add_to(row, k.abs(x))
        k.set(rowmax, k.max(k.get(rowmax), k.get(row)))
    sums = k.b.gep(k.scratch, [k.add(k.mul(n, k.c(4)), k.mul(k.mul(cin, taps), k.c(8)))])
    return wt, nnz, k.get(rowmax), sums


def _run_function(k: _Kernel, wide: bool) -> ir.Function:
    """add_run(acc, w, n, value, lanes): acc[e] += value * w[e] for e < n, n a multiple of `lanes` (a run is
    whole taps of `_lanes`), acc and w not aliasing: written as vectors of min(lanes, 16), each at a tap's
    lanes (a loop left to the vectorizer did a run of 12, three taps of 4 lanes, one element at a time; vectors
    not on the lanes' grid load what a store of the spike before wrote in part, which stalls). One per module
    and sum width."""
    name = f"add_run_{64 if wide else 32}"
    if name in k.module.globals:
        return k.module.globals[name]
    acc_t = I64 if wide else I32
    fn = ir.Function(k.module, ir.FunctionType(ir.VoidType(), [acc_t.as_pointer(), I32.as_pointer(), I64, I64, I64]),
                     name)
    for arg in fn.args[:2]:
        arg.add_attribute("noalias")
    fn.attributes.add("alwaysinline")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    acc, w, n, value, lanes = fn.args
    factor = value if wide else b.trunc(value, I32)
    done = fn.append_basic_block("done")
    for width in LANES:
        loop, head, body, other = (fn.append_basic_block(f"{x}{width}") for x in ("loop", "head", "body", "other"))
        taken = b.icmp_signed("==", lanes, I64(width)) if width < 16 else b.icmp_signed(">=", lanes, I64(width))
        b.cbranch(taken, loop, other)
        b.position_at_end(loop)
        b.branch(head)
        b.position_at_end(head)
        e = b.phi(I64)
        e.add_incoming(I64(0), loop)
        b.cbranch(b.icmp_signed("<", e, n), body, done)
        b.position_at_end(body)
        vec_t, w_t = ir.VectorType(acc_t, width), ir.VectorType(I32, width)
        q = b.bitcast(b.gep(acc, [e]), vec_t.as_pointer())
        x = b.load(b.bitcast(b.gep(w, [e]), w_t.as_pointer()), align=4)
        x = b.sext(x, vec_t) if wide else x
        splat = b.shuffle_vector(b.insert_element(ir.Constant(vec_t, None), factor, I32(0)), ir.Constant(vec_t, None),
                                 ir.Constant(ir.VectorType(I32, width), [0] * width))
        b.store(b.add(b.load(q, align=4), b.mul(splat, x)), q, align=4)
        e.add_incoming(b.add(e, I64(width)), body)
        b.branch(head)
        b.position_at_end(other)
    b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def _add_run(k: _Kernel, acc, wt, acc_at, w_at, length, value, wide: bool) -> None:
    """acc[acc_at + e] += value * wt[w_at + e] for e < length (the inner loop: contiguous, vectorized)."""
    k.b.call(_run_function(k, wide), [k.b.gep(acc, [acc_at]), k.b.gep(wt, [w_at]), length, value, _lanes(k)])


def _scatter(k: _Kernel, wt, acc, ci, r, col, value, on_tap, wide: bool) -> None:
    """Input (ci, r, col) times `value` into every output it reaches: acc[(oy*ow + ox)*lanes + co] +=
    value * w[co, ci, ky, kx] for every in-bounds tap; `on_tap(tap index)` once per tap it reaches. With
    stride 1 a row of taps reaches a row of outputs: one run of (taps x cout) adds, and no division."""
    kh, kw, sh, sw = (k.f(n) for n in ("kh", "kw", "sh", "sw"))
    oh, ow, pt, pl, cout = k.f("oh"), k.f("ow"), k.f("pt"), k.f("pl"), _lanes(k)
    unit = k.and_(k.eq(sh, k.c(1)), k.eq(sw, k.c(1)))
    first = k.sub(k.add(col, pl), k.sub(kw, k.c(1)))  # stride 1: outputs ox = col + pl - kx, kx = kw-1 ... 0
    lo, hi = k.max(first, k.c(0)), k.min(k.add(col, pl), k.sub(ow, k.c(1)))
    with k.if_(unit):
        with k.if_(k.le(lo, hi)):
            with k.range(kh) as ky:
                oy = k.sub(k.add(r, pt), ky)
                row = k.mul(k.add(k.mul(ci, kh), ky), kw)  # the tap index of (ci, ky, 0)
                with k.if_(k.and_(k.ge(oy, k.c(0)), k.lt(oy, oh))):
                    _add_run(k, acc, wt, k.mul(k.add(k.mul(oy, ow), lo), cout),
                             k.mul(k.add(row, k.sub(lo, first)), cout), k.mul(k.add(k.sub(hi, lo), k.c(1)), cout),
                             value, wide)
                    with k.range(k.add(hi, k.c(1)), lo) as ox:
                        on_tap(k.add(row, k.sub(k.add(col, pl), ox)))
    with k.if_(k.b.not_(unit)):
        with k.range(kh) as ky:
            t = k.sub(k.add(r, pt), ky)  # oy * sh
            row = k.mul(k.add(k.mul(ci, kh), ky), kw)
            with k.if_(k.and_(k.ge(t, k.c(0)), k.eq(k.b.srem(t, sh), k.c(0)))):
                oy = k.b.sdiv(t, sh)
                with k.if_(k.lt(oy, oh)):
                    with k.range(kw) as kx:
                        u = k.sub(k.add(col, pl), kx)
                        with k.if_(k.and_(k.ge(u, k.c(0)), k.eq(k.b.srem(u, sw), k.c(0)))):
                            ox = k.b.sdiv(u, sw)
                            with k.if_(k.lt(ox, ow)):
                                flipped = k.add(row, k.sub(k.sub(kw, k.c(1)), kx))
                                _add_run(k, acc, wt, k.mul(k.add(k.mul(oy, ow), ox), cout), k.mul(flipped, cout),
                                         cout, value, wide)
                                on_tap(k.add(row, kx))


def _sums(k: _Kernel, sums, wide: bool):
    return k.b.bitcast(sums, (I64 if wide else I32).as_pointer())


def _clear(k: _Kernel, acc, n) -> None:
    with k.range(n) as j:
        q = k.b.gep(acc, [j])
        k.b.store(ir.Constant(q.type.pointee, 0), q)


def _both_widths(k: _Kernel, narrow, body) -> None:
    """body(wide) under i32 sums where `narrow` (the sums' bound fits them), else i64."""
    with k.if_(narrow):
        body(False)
    with k.if_(k.b.not_(narrow)):
        body(True)


#: What a conv's input costs added element by element or densely (`_Dense`), in cycles measured on the
#: benchmarks' tiles: a spike's add of one tap into 16 output channels, a spike's own overhead; a group of
#: channels of a tap multiply-added into 16 sums (one vector multiply-add), an input unpacked
EVENT_TAP, EVENT_SPIKE, DENSE_GROUP, DENSE_INPUT = 3, 50, 1, 6


def _plane_spikes(k: _Kernel, plane, n):
    """The spikes among the first n bits of a bit-packed plane (the bits after them are not its)."""
    count = k.var(0)
    with k.range(k.b.ashr(n, k.c(3))) as j:
        k.add_to(count, k.b.zext(k.b.call(_ctpop(k), [k.b.load(k.b.gep(plane, [j]))]), I64))
    with k.range(n, k.b.and_(n, k.c(~7))) as j:
        k.add_to(count, k.spike(plane, j))
    return k.get(count)


def _ctpop(k: _Kernel) -> ir.Function:
    return k.module.declare_intrinsic("llvm.ctpop", [I8])


class _Dense:
    """The dense form of a conv with i32 sums (an sconv plane where many inputs spike, a dconv of i16
    values): the input in a zero-padded copy laid out [row][column][channel], the weights in groups of
    channels [ky][kx][group][lane][channel in group], and every output's vectors of sums (`LANES`: 4, 8 or 16 lanes)
    accumulated in a register over every tap, a group of channels per vector multiply-add, exact where the
    sums' bound fits i32. A group is two channels as i16 (x86: pmaddwd, or vpdpwssd with AVX-512 VNNI), or
    with QUADS four as bytes, unsigned inputs (spikes) times signed weights (i8): vpdpbusd, which the
    kernels use where the host has AVX-512 VNNI. With `nnz` (an sconv), each input's fan-out (the
    non-zero weights of the taps it reaches) gives the adds the spike-driven form counts. Its pieces
    (packed weights, fan-outs) are made once per call, on the first input that takes it."""

    BLOCK = 8  # outputs whose sums are accumulated together
    PAIRS, QUADS = 2, 4

    def __init__(self, k: _Kernel, wt, nnz, after, group: int):
        self.k, self.group = k, group
        self.element = I16 if group == self.PAIRS else I8
        cin, ih, iw, oh, ow, kh, kw = (k.f(n) for n in ("cin", "ih", "iw", "oh", "ow", "kh", "kw"))
        self.wt, self.nnz, self.lanes = wt, nnz, _lanes(k)
        self.groups = k.b.sdiv(k.add(cin, k.c(group - 1)), k.c(group))
        self.channels = k.mul(self.groups, k.c(group))
        self.rows, self.cols = (k.add(k.mul(k.sub(o, k.c(1)), k.f(s)), kk) for o, s, kk in ((oh, "sh", kh), (ow, "sw", kw)))
        self.packed = k.b.bitcast(after, self.element.as_pointer())
        fan = k.b.gep(after, [k.mul(k.mul(k.mul(kh, kw), k.mul(self.channels, self.lanes)), k.c(self.element.width // 8))])
        self.fan = k.b.bitcast(fan, I64.as_pointer())
        rowok = k.b.gep(self.fan, [k.mul(cin, k.mul(ih, iw))])
        self.rowok, self.colok = rowok, k.b.gep(rowok, [k.mul(ih, kh)])
        self.corners = k.b.gep(self.colok, [k.mul(iw, kw)])
        self.dest = k.b.gep(self.corners, [k.mul(oh, ow)])
        x = k.b.gep(self.dest, [k.mul(cin, k.mul(ih, iw))])
        self.x = k.b.bitcast(x, self.element.as_pointer())
        self.ready = k.var(0)

    def cost(self, spikes):
        """(spike-driven, dense) costs of an input of which `spikes` are not 0."""
        k = self.k
        vectors = k.b.ashr(k.add(self.lanes, k.c(15)), k.c(4))
        taps = k.mul(k.f("kh"), k.f("kw"))
        event = k.mul(spikes, k.add(k.mul(k.mul(taps, vectors), k.c(EVENT_TAP)), k.c(EVENT_SPIKE)))
        outputs = k.mul(k.f("oh"), k.f("ow"))
        dense = k.add(k.mul(k.mul(k.mul(outputs, taps), k.mul(self.groups, vectors)), k.c(DENSE_GROUP)),
                      k.mul(k.mul(k.f("cin"), k.mul(k.f("ih"), k.f("iw"))), k.c(DENSE_INPUT)))
        return event, dense

    def prepare(self) -> None:
        k = self.k
        with k.if_(k.eq(k.get(self.ready), k.c(0))):
            k.set(self.ready, k.c(1))
            self._pack()
            if self.nnz is not None:
                self._fan_outs()
            ow, sh, sw = k.f("ow"), k.f("sh"), k.f("sw")
            with k.range(k.mul(k.f("oh"), ow)) as o:  # each output's top-left input in the padded copy
                corner = k.add(k.mul(k.mul(k.b.sdiv(o, ow), sh), self.cols), k.mul(k.b.srem(o, ow), sw))
                k.b.store(k.mul(corner, self.channels), k.b.gep(self.corners, [o]))
            size = k.mul(k.mul(self.rows, self.cols), self.channels)
            with k.range(k.add(size, k.c(1))) as j:
                k.b.store(ir.Constant(self.element, 0), k.b.gep(self.x, [j]))  # the padding stays 0
            self._destinations(size)

    def _destinations(self, trash) -> None:
        """dest[j]: where input j lies in the padded copy, or `trash` (the element after it) for an input
        no output reaches (a row beyond the padded rows, a column beyond the padded columns)."""
        k = self.k
        cin, ih, iw, pt, pl = (k.f(n) for n in ("cin", "ih", "iw", "pt", "pl"))
        with k.range(cin) as ci:
            with k.range(ih) as r:
                with k.range(iw) as col:
                    pr = k.add(r, pt)
                    inside = k.and_(k.and_(k.ge(pr, k.c(0)), k.lt(pr, self.rows)), k.lt(col, k.sub(self.cols, pl)))
                    to = k.add(k.mul(k.add(k.mul(pr, self.cols), k.add(pl, col)), self.channels), ci)
                    j = k.add(k.mul(k.add(k.mul(ci, ih), r), iw), col)
                    k.b.store(k.select(inside, to, trash), k.b.gep(self.dest, [j]))

    def _pack(self) -> None:
        k = self.k
        cin, kh, kw, lanes, group = k.f("cin"), k.f("kh"), k.f("kw"), self.lanes, k.c(self.group)
        with k.range(self.channels) as ci:
            real = k.min(ci, k.sub(cin, k.c(1)))  # (a padding channel's weights are 0: read within wt, dropped)
            with k.range(kh) as ky:
                with k.range(kw) as kx:
                    flipped = k.add(k.mul(k.add(k.mul(real, kh), ky), kw), k.sub(k.sub(kw, k.c(1)), kx))
                    to = k.mul(k.add(k.mul(k.add(k.mul(ky, kw), kx), self.groups), k.b.sdiv(ci, group)), lanes)
                    with k.range(lanes) as co:
                        w = k.b.load(k.b.gep(self.wt, [k.add(k.mul(flipped, lanes), co)]))
                        w = k.b.select(k.lt(ci, cin), k.b.trunc(w, self.element), ir.Constant(self.element, 0))
                        at = k.add(k.mul(k.add(to, co), group), k.b.srem(ci, group))
                        k.b.store(w, k.b.gep(self.packed, [at]))

    def _fan_outs(self) -> None:
        """fan[ci, r, col]: the sum of nnz over the taps input (ci, r, col) reaches; a tap (ky, kx) reaches an
        output where row r + pt - ky and column col + pl - kx are whole strides inside the outputs."""
        k = self.k
        cin, ih, iw, kh, kw = (k.f(n) for n in ("cin", "ih", "iw", "kh", "kw"))
        for table, n, size, pad, stride, outs in ((self.rowok, ih, kh, "pt", "sh", "oh"),
                                                  (self.colok, iw, kw, "pl", "sw", "ow")):
            with k.range(n) as r:
                with k.range(size) as t:
                    u = k.sub(k.add(r, k.f(pad)), t)
                    ok = k.and_(k.and_(k.ge(u, k.c(0)), k.eq(k.b.srem(u, k.f(stride)), k.c(0))),
                                k.lt(k.b.sdiv(u, k.f(stride)), k.f(outs)))
                    k.b.store(k.bool(ok), k.b.gep(table, [k.add(k.mul(r, size), t)]))
        with k.range(cin) as ci:
            with k.range(ih) as r:
                with k.range(iw) as col:
                    fan = k.var(0)
                    with k.range(kh) as ky:
                        with k.if_(k.ne(k.b.load(k.b.gep(self.rowok, [k.add(k.mul(r, kh), ky)])), k.c(0))):
                            with k.range(kw) as kx:
                                tap = k.add(k.mul(k.add(k.mul(ci, kh), ky), kw), kx)
                                reached = k.b.load(k.b.gep(self.colok, [k.add(k.mul(col, kw), kx)]))
                                k.add_to(fan, k.mul(reached, k.b.load(k.b.gep(self.nnz, [tap]))))
                    k.b.store(k.get(fan), k.b.gep(self.fan, [k.add(k.mul(k.add(k.mul(ci, ih), r), iw), col)]))

    def add(self, value, acc, adds=None, plane=None) -> None:
        """acc += the sums of an input: the spikes of `plane` (bit-packed, read a byte at a time, eight inputs
        from each), else `value` = (src, its format's FORMAT_CODE), values that fit the element (i16 with
        PAIRS); each input put where `dest` says; adds += its spike-driven adds (an sconv's)."""
        k = self.k
        n = k.mul(k.f("cin"), k.mul(k.f("ih"), k.f("iw")))

        def put(j, x, count=True) -> None:
            k.b.store(k.b.trunc(x, self.element), k.b.gep(self.x, [k.b.load(k.b.gep(self.dest, [j]))]))
            if adds is not None and count:
                k.add_to(adds, k.mul(x, k.b.load(k.b.gep(self.fan, [j]))))

        if plane is not None:
            eight = ir.VectorType(I64, 8)
            if adds is not None:  # a byte's fan-outs added under its bits as a mask, in a vector
                with k.b.goto_block(k.entry):
                    k.b.position_at_start(k.entry)
                    fans = k.b.alloca(eight)
                k.b.store(ir.Constant(eight, [0] * 8), fans)
            with k.range(k.b.ashr(n, k.c(3))) as byte:
                raw = k.b.load(k.b.gep(plane, [byte]))
                bits = k.b.zext(raw, I64)
                for e in range(8):
                    put(k.add(k.mul(byte, k.c(8)), k.c(e)), k.b.and_(k.b.lshr(bits, k.c(e)), k.c(1)), count=False)
                if adds is not None:
                    fan = k.b.load(k.b.bitcast(k.b.gep(self.fan, [k.mul(byte, k.c(8))]), eight.as_pointer()), align=8)
                    taken = k.b.select(k.b.bitcast(raw, ir.VectorType(I1, 8)), fan, ir.Constant(eight, [0] * 8))
                    k.b.store(k.b.add(k.b.load(fans), taken), fans)
            if adds is not None:
                total = k.b.load(fans)
                for e in range(8):
                    k.add_to(adds, k.b.extract_element(total, I32(e)))
            with k.range(n, k.b.and_(n, k.c(~7))) as j:
                put(j, k.spike(plane, j))
        else:  # elements of a format known at run time: a loop per format
            src, fmt = value
            for nbytes in (0, 1, 2, 4):
                with k.if_(k.eq(fmt, k.c(nbytes))):
                    with k.range(n) as j:
                        put(j, k.spike(src, j) if nbytes == 0 else k.load(src, j, nbytes))
        self._accumulate(acc)

    def _accumulate(self, acc) -> None:
        """Every output's sums += its taps' weights times their inputs: BLOCK outputs at a time, in row-major
        order across rows (each its own register of sums, sharing the weights' loads and keeping several
        multiply-adds in flight), then the last outputs one at a time."""
        k = self.k
        outputs = k.mul(k.f("oh"), k.f("ow"))
        whole = k.mul(k.b.sdiv(outputs, k.c(self.BLOCK)), k.c(self.BLOCK))
        for n in LANES:  # vectors as wide as the lanes (a multiple of 16: 16)
            with k.if_(k.eq(self.lanes, k.c(n)) if n < 16 else k.ge(self.lanes, k.c(n))):
                with k.range(k.b.sdiv(outputs, k.c(self.BLOCK))) as block:
                    self._outputs(acc, k.mul(block, k.c(self.BLOCK)), self.BLOCK, n)
                with k.range(outputs, whole) as first:
                    self._outputs(acc, first, 1, n)

    def _outputs(self, acc, first, count: int, n: int) -> None:
        """The sums of outputs first ... first + count - 1 (in row-major order), in vectors of n lanes."""
        k = self.k
        kh, kw = k.f("kh"), k.f("kw")
        group = self.group
        sums_t, weights_t = ir.VectorType(I32, n), ir.VectorType(self.element, group * n)
        channels, lanes = self.channels, self.lanes
        with k.b.goto_block(k.entry):
            k.b.position_at_start(k.entry)
            running = [k.b.alloca(sums_t) for _ in range(count)]
        corners = [k.b.load(k.b.gep(self.corners, [k.add(first, k.c(e))])) for e in range(count)]
        with k.range(k.b.sdiv(lanes, k.c(n))) as v:
            sums = [k.b.bitcast(k.b.gep(acc, [k.add(k.mul(k.add(first, k.c(e)), lanes), k.mul(v, k.c(n)))]),
                                sums_t.as_pointer()) for e in range(count)]
            for r, q in zip(running, sums):
                k.b.store(k.b.load(q, align=4), r)
            with k.range(kh) as ky:
                with k.range(kw) as kx:
                    tap = k.mul(k.add(k.mul(ky, self.cols), kx), channels)
                    xs = [k.b.bitcast(k.b.gep(self.x, [k.add(corner, tap)]), I32.as_pointer()) for corner in corners]
                    w = k.b.gep(self.packed, [k.mul(k.add(k.mul(k.mul(k.add(k.mul(ky, kw), kx), self.groups), lanes),
                                                          k.mul(v, k.c(n))), k.c(group))])
                    with k.range(self.groups) as q:
                        wq = k.b.bitcast(k.b.gep(w, [k.mul(k.mul(q, lanes), k.c(group))]), weights_t.as_pointer())
                        weights = k.b.load(wq, align=1)
                        for x, r in zip(xs, running):
                            inputs = k.b.load(k.b.gep(x, [q]), align=1)  # the group's channels, 4 bytes
                            splat = k.b.shuffle_vector(k.b.insert_element(ir.Constant(sums_t, None), inputs, I32(0)),
                                                       ir.Constant(sums_t, None), ir.Constant(sums_t, [0] * n))
                            k.b.store(self._multiply_add(k.b.load(r), k.b.bitcast(splat, weights_t), weights, n), r)
            for r, q in zip(running, sums):
                k.b.store(k.b.load(r), q, align=4)

    def _multiply_add(self, sums, inputs, weights, n: int):
        """sums[e] + the dot product of lane e's group of inputs (unsigned with QUADS) and weights, n lanes."""
        k = self.k
        if self.group == self.QUADS:  # (AVX-512 VNNI, with its 128- and 256-bit forms: AVX512VL)
            name = f"llvm.x86.avx512.vpdpbusd.{32 * n}"
            fn = k.module.globals.get(name) or ir.Function(k.module, ir.FunctionType(sums.type, [sums.type, inputs.type,
                                                                                               weights.type]), name)
            return k.b.call(fn, [sums, inputs, weights])
        if n < 16 and _is_x86():  # pmaddwd (SSE2, AVX2) named: the pattern below is not matched at these widths
            name = "llvm.x86.sse2.pmadd.wd" if n == 4 else "llvm.x86.avx2.pmadd.wd"
            fn = k.module.globals.get(name) or ir.Function(k.module, ir.FunctionType(sums.type, [inputs.type,
                                                                                               weights.type]), name)
            return k.b.add(sums, k.b.call(fn, [inputs, weights]))
        wide_t = ir.VectorType(I32, 2 * n)
        products = k.b.mul(k.b.sext(inputs, wide_t), k.b.sext(weights, wide_t))
        even, odd = (ir.Constant(sums.type, [2 * e + parity for e in range(n)]) for parity in (0, 1))
        return k.b.add(sums, k.b.add(k.b.shuffle_vector(products, products, even),
                                     k.b.shuffle_vector(products, products, odd)))


@kernel("sconv")
def _sconv(k: _Kernel) -> None:
    """Every spike adds the weights of the taps it reaches into the sums (a cascade's sums doubled before
    every plane after the first), then dst (+)= sums << shift; out[1 + p] += plane p's adds (the non-zero
    weights its spikes reached), and each sample's too (after the batch's counts). The sums are i32 where
    they cannot exceed it (a plane adds at most the largest row sum of |w|), else i64. A plane is added
    spike by spike (`_scatter`), or with i32 sums densely (`_Dense`) where that costs less: the same
    integers either way."""
    cin, ih, iw, oh, ow = (k.f(n) for n in ("cin", "ih", "iw", "oh", "ow"))
    wt, nnz, rowmax, scratch = _transposed_weights(k, k.f("wfmt"))
    n_in, n_out, planes = k.mul(cin, k.mul(ih, iw)), k.mul(_lanes(k), k.mul(oh, ow)), k.f("planes")
    cascade = k.ne(k.f("mode"), k.c(0))
    narrow = k.lt(k.mul(rowmax, k.sub(k.b.shl(k.c(1), planes), k.c(1))), k.c(1 << 31))
    i8 = k.eq(k.f("wfmt"), k.c(FORMAT_CODE["i8"]))
    forms = ([(_Dense.QUADS, i8), (_Dense.PAIRS, k.b.not_(i8))] if _has_vnni() else [(_Dense.PAIRS, ir.Constant(I1, 1))])
    after = k.b.gep(scratch, [k.mul(n_out, k.c(8))])
    dense = [(_Dense(k, wt, nnz, after, group), takes) for group, takes in forms]

    def body(wide: bool) -> None:
        acc = _sums(k, scratch, wide)
        with k.samples():
            src, dst = k.at("src"), k.at("dst")
            _clear(k, acc, n_out)
            with k.range(planes) as p:
                with k.if_(k.and_(k.gt(p, k.c(0)), cascade)):
                    with k.range(n_out) as j:
                        q = k.b.gep(acc, [j])
                        k.b.store(k.b.shl(k.b.load(q), ir.Constant(q.type.pointee, 1)), q)
                plane = k.b.gep(src, [k.mul(p, k.b.ashr(k.add(n_in, k.c(7)), k.c(3)))])
                adds, by_spike = k.var(0), k.var(1)
                if not wide:
                    spikes = _plane_spikes(k, plane, n_in)
                    for form, takes in dense:
                        event, whole = form.cost(spikes)
                        with k.if_(k.and_(takes, k.gt(event, whole))):
                            k.set(by_spike, 0)
                            form.prepare()
                            form.add(None, acc, adds, plane)
                with k.if_(k.ne(k.get(by_spike), k.c(0))):
                    with k.range(cin) as ci:
                        with k.range(ih) as r:
                            with k.range(iw) as col:
                                j = k.add(k.mul(k.add(k.mul(ci, ih), r), iw), col)
                                with k.if_(k.ne(k.spike(plane, j), k.c(0))):
                                    _scatter(k, wt, acc, ci, r, col, k.c(1),
                                             lambda tap: k.add_to(adds, k.b.load(k.b.gep(nnz, [tap]))), wide)
                k.count_at(k.add(p, k.c(1)), k.get(adds))
                sample_slot = k.add(k.mul(k.add(k.sample, k.c(1)), k.c(OUT_SLOTS)), k.add(p, k.c(1)))
                k.b.store(k.get(adds), k.b.gep(k.out, [sample_slot]))  # (set: the batch's slots alone are cleared)
            _store_sums(k, acc, dst, None)

    _both_widths(k, narrow, body)


def _store_sums(k: _Kernel, acc, dst, saturate) -> None:
    """dst[co, oy, ox] (+)= acc[(oy*ow + ox)*lanes + co] << shift, written as i32 (`saturate`: the dconv's
    rounding and saturation instead of the range check)."""
    cout, oh, ow = k.f("cout"), k.f("oh"), k.f("ow")
    accumulate = k.ne(k.f("accumulate"), k.c(0))
    bad = k.var(0)  # (a value out of range noted, not branched on, and said after the loops)
    whole = k.c(0)
    if saturate is None:
        whole = _store_vectors(k, acc, dst, accumulate, bad)
    with k.range(cout) as co:
        with k.range(k.mul(oh, ow), whole) as yx:
            out = k.add(k.mul(co, k.mul(oh, ow)), yx)
            y = k.b.load(k.b.gep(acc, [k.add(k.mul(yx, _lanes(k)), co)]))
            y = k.b.shl(y if y.type == I64 else k.b.sext(y, I64), k.f("shift"))
            if saturate is not None:
                y = saturate(y, lambda v: k.select(accumulate, k.add(v, k.load(dst, out, 4)), v))
            else:
                y = k.select(accumulate, k.add(y, k.load(dst, out, 4)), y)
                k.set(bad, k.or_(k.get(bad), k.bool(k.b.not_(k.fits(y, 4)))))
            k.store(dst, out, y, 4)
    with k.if_(k.ne(k.get(bad), k.c(0))):
        k.fail(OVERFLOW)


STORE_VECTOR = 8  # outputs of a channel stored together


def _store_vectors(k: _Kernel, acc, dst, accumulate, bad):
    """_store_sums without saturation for each channel's first outputs, STORE_VECTOR at a time: their sums
    read one by one (lanes apart) into a vector, then shifted, added, range-checked and stored as vectors
    (a scalar loop with a strided read did each output in about nine instructions). Returns how many
    outputs of each channel it stored."""
    n = STORE_VECTOR
    cout, outputs = k.f("cout"), k.mul(k.f("oh"), k.f("ow"))
    vec_t, out_t = ir.VectorType(I64, n), ir.VectorType(I32, n)

    def splat(v):
        return k.b.shuffle_vector(k.b.insert_element(ir.Constant(vec_t, None), v, I32(0)), ir.Constant(vec_t, None),
                                  ir.Constant(ir.VectorType(I32, n), [0] * n))

    shift, low, high = splat(k.f("shift")), splat(k.c(-(1 << 31))), splat(k.c((1 << 31) - 1))
    lanes = _lanes(k)
    with k.range(cout) as co:
        with k.range(k.b.sdiv(outputs, k.c(n))) as chunk:
            first = k.mul(chunk, k.c(n))
            y = ir.Constant(vec_t, None)
            for e in range(n):
                v = k.b.load(k.b.gep(acc, [k.add(k.mul(k.add(first, k.c(e)), lanes), co)]))
                y = k.b.insert_element(y, v if v.type == I64 else k.b.sext(v, I64), I32(e))
            y = k.b.shl(y, shift)
            at = k.b.bitcast(k.b.gep(dst, [k.mul(k.add(k.mul(co, outputs), first), k.c(4))]), out_t.as_pointer())
            y = k.b.select(accumulate, k.b.add(y, k.b.sext(k.b.load(at, align=1), vec_t)), y)
            inside = k.b.and_(k.b.icmp_signed(">=", y, low), k.b.icmp_signed("<=", y, high))
            all_inside = k.b.icmp_unsigned("==", k.b.bitcast(inside, ir.IntType(n)), ir.Constant(ir.IntType(n), (1 << n) - 1))
            k.set(bad, k.or_(k.get(bad), k.bool(k.b.not_(all_inside))))
            k.b.store(k.b.trunc(y, out_t), at, align=1)
    return k.mul(k.b.sdiv(outputs, k.c(n)), k.c(n))


@kernel("dconv")
def _dconv(k: _Kernel) -> None:
    """A forward conv of multi-bit values (not transposed, not skipping): every non-zero input times the
    weights of the taps it reaches into the sums, then as the NumPy handler: the sums must be exact below
    2^53 (else INEXACT); with sat_bits they must fit the accumulator (else ACCUMULATOR), are rounded by
    round_shift, added, saturated (out[1] += how many saturated); else added and range-checked. The sums
    are i32 where the input's largest |x| times the largest row sum of |w| fits it, else i64; with i32
    sums and inputs that fit i16, densely (`_Dense`) where that costs less."""
    cin, ih, iw, oh, ow = (k.f(n) for n in ("cin", "ih", "iw", "oh", "ow"))
    wt, _, rowmax, scratch = _transposed_weights(k, k.f("wfmt"))
    fmt, n_in = k.f("fmt"), k.mul(cin, k.mul(ih, iw))
    sat_bits = k.min(k.f("sat_bits"), k.c(32))
    top = k.sub(k.b.shl(k.c(1), k.sub(sat_bits, k.c(1))), k.c(1))

    def saturate(y, add_dst):
        with k.if_(k.ge(k.abs(y), k.c(1 << 47))):
            k.fail(ACCUMULATOR)
        v = add_dst(k.rescale(y, k.neg(k.f("round_shift"))))
        clipped = k.max(k.min(v, top), k.neg(top))
        k.count(1, k.bool(k.ne(clipped, v)))
        return clipped

    dense = _Dense(k, wt, None, k.b.gep(scratch, [k.mul(k.mul(_lanes(k), k.mul(oh, ow)), k.c(8))]), _Dense.PAIRS)
    with k.samples():
        src, dst = k.at("src"), k.at("dst")
        peak, nonzero = k.var(0), k.var(0)
        for nbytes in (0, 1, 2, 4):  # (a loop per format)
            with k.if_(k.eq(fmt, k.c(nbytes))):
                with k.range(n_in) as j:
                    x = k.spike(src, j) if nbytes == 0 else k.load(src, j, nbytes)
                    k.set(peak, k.max(k.get(peak), k.abs(x)))
                    k.add_to(nonzero, k.bool(k.ne(x, k.c(0))))
        bound = k.mul(k.get(peak), rowmax)
        with k.if_(k.ge(bound, k.c(1 << 53))):
            k.fail(INEXACT)

        def body(wide: bool) -> None:
            acc = _sums(k, scratch, wide)
            _clear(k, acc, k.mul(_lanes(k), k.mul(oh, ow)))
            by_input = k.c(1)
            if not wide:
                event, whole = dense.cost(k.get(nonzero))
                by_input = k.bool(k.or_(k.le(event, whole), k.ge(k.get(peak), k.c(1 << 15))))
                with k.if_(k.eq(by_input, k.c(0))):
                    dense.prepare()
                    dense.add((src, fmt), acc)
            with k.if_(k.ne(by_input, k.c(0))):
                with k.range(cin) as ci:
                    with k.range(ih) as r:
                        with k.range(iw) as col:
                            x = k.element(src, k.add(k.mul(k.add(k.mul(ci, ih), r), iw), col), fmt)
                            with k.if_(k.ne(x, k.c(0))):
                                _scatter(k, wt, acc, ci, r, col, x, lambda tap: None, wide)
            with k.if_(k.ne(k.f("sat_bits"), k.c(0))):
                _store_sums(k, acc, dst, saturate)
            with k.if_(k.eq(k.f("sat_bits"), k.c(0))):
                _store_sums(k, acc, dst, None)

        with k.if_(k.eq(k.b.load(k.out), k.c(0))):
            _both_widths(k, k.lt(bound, k.c(1 << 31)), body)
