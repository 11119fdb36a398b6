"""Token placement (`ttc.compiler.sync`) against its definition, byte by byte: random programs of
strided loads and stores, fills and vector copies on small memories (page boundaries, overlapping
rows, operands overlapping each other, barriers), and the compiled digits demo."""
from __future__ import annotations

import random

import pytest

from ttc import api
from ttc.compiler import sync
from ttc.demo import MODEL
from ttc.isa.encoding import Instr, Ref
from ttc.isa.footprint import regions
from ttc.isa.table import BY_NAME, QUEUES


def reference_tokens(code: list[Instr], barriers=()) -> list[tuple[set, set]]:
    """The module docstring's definition, one dict entry per byte: (waits, signals) per instruction."""
    writer: dict = {}  # (mem, byte) -> (queue, index)
    readers: dict = {}  # (mem, byte) -> {queue: index} since the last write
    last_on, fence, unfenced, synced = {}, {}, set(), {}
    out = [(set(), set()) for _ in code]
    for j, instr in enumerate(code):
        if instr.op == "halt":
            continue
        queue = BY_NAME[instr.op].queue(instr.args)
        deps = {}
        if j in barriers:
            fence, unfenced = dict(last_on), set(QUEUES)
        if queue in unfenced:
            unfenced.discard(queue)
            deps.update({q: i for q, i in fence.items() if q != queue})
        touched = regions(instr)
        for r in touched:
            for a in range(r.lo, r.hi):
                producers = ([writer[r.mem, a]] if (r.mem, a) in writer else [])
                producers += list(readers.get((r.mem, a), {}).items()) if "w" in r.mode else []
                for q, i in producers:
                    if q != queue:
                        deps[q] = max(deps.get(q, -1), i)
        for q, i in deps.items():
            if i > synced.get((q, queue), -1):
                out[i][1].add(queue)
                out[j][0].add(q)
                synced[(q, queue)] = i
        last_on[queue] = j
        for r in touched:
            for a in range(r.lo, r.hi):
                if "w" in r.mode:
                    writer[r.mem, a], readers[r.mem, a] = (queue, j), {}
                else:
                    readers.setdefault((r.mem, a), {})[queue] = j
    return out


def random_program(rng: random.Random, n: int, span: int, tiles: bool = False) -> list[Instr]:
    def addr(limit=span):
        return rng.randrange(0, limit)

    code = []
    for _ in range(n):
        kind = rng.choice(("load", "store", "vfill", "vacc"))
        rows, row_bytes = rng.randint(1, 6), rng.randint(1, 40)
        strides = {"src_stride": rng.choice((row_bytes, row_bytes + rng.randint(1, 50), max(1, row_bytes - 3))),
                   "dst_stride": rng.choice((row_bytes, row_bytes + rng.randint(1, 50), max(1, row_bytes - 3)))}
        if tiles:
            kind = rng.choice(("load", "store"))
        if tiles or rng.random() < 0.5:  # row tiles: rows of a few bytes at one stride, interleaved or not
            row_bytes = rng.randint(1, 8)
            strides = {"src_stride": 24, "dst_stride": rng.choice((24, row_bytes))}
        mem = rng.choice(("ifmap", "ofmap"))
        if kind == "load":
            code.append(Instr("load", {"dst": Ref(mem, addr()), "src": Ref("dram", addr()), "rows": rows,
                                       "row_bytes": row_bytes, **strides}))
        elif kind == "store":
            code.append(Instr("store", {"dst": Ref("dram", addr()), "src": Ref(mem, addr()), "rows": rows,
                                        "row_bytes": row_bytes, **strides}))
        elif kind == "vfill":
            code.append(Instr("vfill", {"dst": Ref(mem, addr()), "n": rng.randint(1, 30), "value": 0}))
        else:  # src and dst may overlap: the read-everything-first path
            code.append(Instr("vacc", {"dst": Ref(mem, addr()), "src": Ref(rng.choice(("ifmap", "ofmap")), addr()),
                                       "src_fmt": "i8", "dst_fmt": "i32", "n": rng.randint(1, 30), "shift": 0,
                                       "accumulate": rng.randint(0, 1)}))
    return code + [Instr("halt", {})]


@pytest.mark.parametrize("seed", range(24))
def test_tokens_follow_the_byte_by_byte_definition(seed, monkeypatch):
    monkeypatch.setattr(sync, "PAGE_BITS", 5)  # pages of 32 bytes: most ranges cross one
    monkeypatch.setattr(sync, "PAGE", 32)
    rng = random.Random(seed)
    code = random_program(rng, 400, span=rng.choice((64, 300, 3000)))
    barriers = sorted(rng.sample(range(1, len(code)), 4)) if seed % 2 else []
    placed = sync.place_tokens(code, barriers)
    want = reference_tokens(code, set(barriers))
    for j, (instr, (waits, signals)) in enumerate(zip(placed, want)):
        if instr.op == "halt":
            assert instr is code[j]
            continue
        assert (set(instr["wait"]), set(instr["signal"])) == (waits, signals), j
        assert instr == Instr(code[j].op, {**code[j].args, "wait": tuple(waits), "signal": tuple(signals)})


def test_the_digits_program_gets_the_tokens_of_the_definition():
    compiled = api.compile_file(MODEL, "4,N,1,8,8")
    bare = [i if i.op == "halt" else Instr(i.op, {**i.args, "wait": (), "signal": ()}) for i in compiled.program.code]
    captured = {}
    real = sync.place_tokens

    def spy(code, barriers=()):
        captured["barriers"] = list(barriers)
        return real(code, barriers)

    from ttc.compiler import codegen
    codegen.place_tokens, saved = spy, codegen.place_tokens
    try:
        api.compile_file(MODEL, "4,N,1,8,8")
    finally:
        codegen.place_tokens = saved
    want = reference_tokens(bare, set(captured["barriers"]))
    got = [(set(i["wait"]), set(i["signal"])) for i in compiled.program.code if i.op != "halt"]
    assert got == [w for i, w in zip(bare, want) if i.op != "halt"]


@pytest.mark.parametrize("seed", range(8))
def test_row_tiles_that_touch_get_tokens_and_those_that_do_not_get_none(seed, monkeypatch):
    """Loads and stores of rows at one stride: interleaved, touching by a byte, or overlapping."""
    monkeypatch.setattr(sync, "PAGE_BITS", 6)
    monkeypatch.setattr(sync, "PAGE", 64)
    rng = random.Random(seed)
    code = random_program(rng, 300, span=120, tiles=True)
    barriers = sorted(rng.sample(range(1, len(code)), 3)) if seed % 2 else []
    placed = sync.place_tokens(code, barriers)
    want = reference_tokens(code, set(barriers))
    assert [(set(i["wait"]), set(i["signal"])) for i in placed if i.op != "halt"] == want[:-1]


@pytest.mark.parametrize("offset, waits", [(7, {"store"}), (8, set()), (23, {"store"}), (24, {"store"})])
def test_a_load_waits_for_a_store_of_interleaved_rows_only_where_they_share_a_byte(offset, waits):
    store = Instr("store", {"dst": Ref("dram", 0), "src": Ref("ofmap", 0), "rows": 4, "row_bytes": 8,
                            "src_stride": 8, "dst_stride": 24})
    load = Instr("load", {"dst": Ref("ifmap", 0), "src": Ref("dram", offset), "rows": 4, "row_bytes": 8,
                          "src_stride": 24, "dst_stride": 8})
    placed = sync.place_tokens([store, load, Instr("halt", {})])
    assert set(placed[1]["wait"]) == waits and set(placed[0]["signal"]) == ({"load"} if waits else set())
