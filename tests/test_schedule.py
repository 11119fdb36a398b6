"""Queues, dependency tokens and the timeline: overlap is real, and a missing token is caught."""
import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import grid_inputs, small_conv_snn
from ttc import api
from ttc.isa import table
from ttc.isa.encoding import Instr
from ttc.isa.footprint import RangeMap
from ttc.simulator.machine import SimError
from ttc.simulator.timeline import ScheduleError


@pytest.fixture(scope="module")
def compiled():
    return api.compile_model(small_conv_snn(seed=1), "4,N,1,8,8")


def _run(program, backend=None):
    return api.simulate(program, grid_inputs((4, 2, 1, 8, 8), seed=1), backend)


def _replace(program, index, **args):
    code = list(program.code)
    code[index] = Instr(code[index].op, {**code[index].args, **args})
    return dataclasses.replace(program, code=code)


def test_queues_overlap_and_cycles_lie_between_the_busiest_unit_and_the_serial_sum(compiled):
    program = compiled.program
    result = _run(program)
    serial = sum(table.BY_NAME[i.op].cycles(program.hw, i.args) + (program.hw.dram_latency_cycles if i.op in ("load", "store") else 0)
                 for i in program.code)
    busiest = max(v for k, v in result.cycles_by_unit.items())
    assert busiest <= result.cycles < serial
    used = {table.BY_NAME[i.op].queue(i.args) for i in program.code if i.op != "halt"}
    assert {"load", "store", "pe0", "pe1", "neuron", "vector"} <= used  # sata splits its array in two groups


def test_every_token_given_is_taken(compiled):
    given_ = sum(len(i["signal"]) for i in compiled.program.code if i.op != "halt")
    taken = sum(len(i["wait"]) for i in compiled.program.code if i.op != "halt")
    assert given_ == taken > 0


def test_a_missing_token_is_a_race_naming_both_instructions(compiled):
    """Remove a load -> conv token: the hazard check names both, every time, even where the conv's other
    waits would happen to keep it after the load in time (that holds for these durations only: on an array
    that skips, the durations depend on the data)."""
    code = compiled.program.code
    races, tried = 0, [k for k, i in enumerate(code) if i.op in ("sconv", "dconv") and "load" in i["wait"]][:12]
    for j in tried:
        queue = table.BY_NAME[code[j].op].queue(code[j].args)
        i = max(k for k in range(j) if code[k].op == "load" and queue in code[k]["signal"])
        broken = _replace(_replace(compiled.program, j, wait=tuple(q for q in code[j]["wait"] if q != "load")),
                          i, signal=tuple(q for q in code[i]["signal"] if q != queue))
        try:
            _run(broken)
        except ScheduleError as e:
            assert re.search(rf"race on .*instruction {j} .*instruction {i} \(load", str(e)), str(e)
            races += 1
    assert races == len(tried) > 0


def test_a_wait_without_a_signal_deadlocks_and_an_untaken_token_is_reported(compiled):
    code = compiled.program.code
    j = next(k for k, i in enumerate(code) if i["wait"] if i.op != "halt")
    with pytest.raises(ScheduleError, match="deadlock"):
        _run(_replace(compiled.program, j, wait=tuple(table.QUEUES)))
    with pytest.raises(ScheduleError, match="never taken"):
        _run(_replace(compiled.program, 0, signal=("pe3",)))  # sata has two PE groups: pe3 never waits


def test_handlers_stay_inside_the_declared_footprint(compiled, monkeypatch):
    op = table.BY_NAME["vfill"]
    monkeypatch.setitem(table.BY_NAME, "vfill", dataclasses.replace(op, footprint=lambda a: [("dst", "w", 4)]))
    with pytest.raises(SimError, match="outside its declared footprint"):  # the NumPy handlers check it
        _run(compiled.program, "numpy")


class _SmallPages(RangeMap):
    PAGE_BITS = 3  # runs across pages, in a test's few bytes


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 5)), max_size=30))
def test_range_map_equals_a_plain_array(updates):
    for ranges in (RangeMap(0), _SmallPages(0)):
        plain = [0] * 48
        for a, b, v in updates:
            lo, hi = min(a, b), max(a, b)
            ranges.update(lo, hi, lambda old: old + v)
            plain[lo:hi] = [p + v for p in plain[lo:hi]]
            for p, (starts, values) in ranges.pages.items():
                assert starts == sorted(set(starts)) and starts[0] == p << ranges.PAGE_BITS
                assert all(x != y for x, y in zip(values, values[1:]))
            for x in range(0, 43, 3):
                assert ranges.runs(x, x + 5) == [plain[x]] + [plain[k] for k in range(x + 1, x + 5)
                                                              if plain[k] != plain[k - 1]]
