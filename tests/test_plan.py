"""One plan per layer: codegen emits exactly the plan's walk, the cost model prices that same walk, and
the shortcuts the cost model takes (steps priced once per key, repeats of the timeline skipped) change nothing."""
import dataclasses
from collections import Counter

import pytest
import torch

from ttc import api
from ttc.compiler import cost
from ttc.compiler.plan import Step, Stretch, layer_plan
from ttc.demo import CAT_MODEL, MT_MODEL
from ttc.demo import MODEL as DIGITS_MODEL
from ttc.digits import build_mt_digits_snn, build_tt_digits_snn
from ttc.isa.hwconfig import load_hw
from ttc.models import vgg_snn

SMALL = dataclasses.replace(load_hw("sata"), name="small", buffers={
    k: dataclasses.replace(b, kib={"wgt": 1, "ifmap": 0.5, "ofmap": 0.5, "psum": 1, "vmem": 1}[k])
    for k, b in load_hw("sata").buffers.items()})


def _compiled():
    torch.manual_seed(0)
    yield api.compile_model(api.load_model(DIGITS_MODEL), "4,N,1,8,8", SMALL)  # conv, pool, linear + reduce, tiles
    yield api.compile_model(api.load_model(CAT_MODEL), "N,1,8,8")  # TTFS: fire alone and fused, min pools
    yield api.compile_model(api.load_model(MT_MODEL), "1,N,1,8,8", SMALL)  # MT planes in and out
    yield api.compile_model(build_mt_digits_snn(3, "cascade"), "1,N,1,8,8")
    yield api.compile_model(build_tt_digits_snn("htt", 4).eval(), "4,N,1,8,8")  # slices, adds, rescales, concat
    from test_idioms import PerChannelDecays

    yield api.compile_model(PerChannelDecays(), "4,N,1,8,8", SMALL)  # decays per channel, loaded tile by tile


COMPILED = list(_compiled())


@pytest.mark.parametrize("compiled", COMPILED, ids=lambda c: c.program.meta["layers"][1]["op"])
def test_codegen_emits_exactly_each_layers_walk(compiled):
    graph, prog = compiled.graph, compiled.program
    plans = [p for p in (layer_plan(graph, op, prog.hw, placed=True) for op in graph.ops) if p is not None]
    layers = prog.meta["layers"]
    assert [p.head.name for p in plans] == [layer["name"] for layer in layers]  # one layer per plan
    bounds = [layer["first_instr"] for layer in layers] + [len(prog.code) - 1]  # the last instruction is halt
    for plan, lo, hi in zip(plans, bounds, bounds[1:]):
        walked = [_untokened(i) for step in plan.walk() for i in step.instrs]
        assert walked == [_untokened(i) for i in prog.code[lo:hi]], plan.head.name


def _untokened(instr) -> tuple:
    """An instruction without its dependency tokens (placed after the walk)."""
    return instr.op, {k: v for k, v in instr.args.items() if k not in ("wait", "signal")}


def _price(plan, unique_keys: bool = False, skip: bool = True, monkeypatch=None):
    if unique_keys:
        steps = list(plan.walk())
        monkeypatch.setattr(plan, "stretches", lambda: iter(
            Stretch((k,), [], lambda k=k, s=s: iter([Step((k,) + s.work, s.place, lambda: s.instrs)]))
            for k, s in enumerate(steps)))
    cycles, energy, dram = cost.PricedWalk(plan).price(skip)
    monkeypatch.undo()
    return cycles, dict(energy), dram


def test_pricing_once_per_key_and_skipping_repeats_change_no_figure(monkeypatch):
    """A key that missed some difference between steps, or a skip from a timeline state that was not
    periodic, would price differently from scheduling every step on its own."""
    compiled = api.compile_model(vgg_snn(widths=(16, 32), pool_after=(0, 1)), "4,N,3,32,32", SMALL)
    priced = 0
    for c in [compiled] + COMPILED:
        graph, hw = c.graph, c.program.hw
        for op in graph.ops:
            plan = layer_plan(graph, op, hw)
            if plan is None:
                continue
            cycles, energy, dram = _price(plan, monkeypatch=monkeypatch)
            alone = _price(plan, unique_keys=True, skip=False, monkeypatch=monkeypatch)
            assert alone == (cycles, pytest.approx(energy, rel=1e-12), dram), plan.head.name
            priced += 1
    assert priced > 30


def test_stretches_seen_before_are_not_walked_again_and_change_no_key():
    """The cost model takes a stretch's keys and slot turns from an earlier stretch of the same signature;
    a signature that missed something a step depends on would give other keys than the walk."""
    compiled = api.compile_model(vgg_snn(widths=(16, 32), pool_after=(0, 1)), "4,N,3,32,32", SMALL)
    shortcuts = 0
    for c in [compiled] + COMPILED:
        for op in c.graph.ops:
            plan = layer_plan(c.graph, op, c.program.hw)
            if plan is None:
                continue
            walk = cost.PricedWalk(plan)
            busy = walk.bound()
            steps = list(plan.walk())
            assert walk.keys == [s.key for s in steps], plan.head.name
            assert busy == max(sum((cost.step_busy(plan, s.instrs) for s in steps), Counter()).values())
            shortcuts += len(list(plan.stretches())) - len(walk.stretch_seen)
    assert shortcuts > 100
