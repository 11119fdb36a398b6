"""Fusion across layers (the fuse pass's `fusion` option): a conv that runs the max pool of its sums, the residual
add after it and the neuron that reads the sum, or a conv made inside its 1x1 consumer's layer (a TT layer's
last cores), computes every output bit the unfused program does and moves fewer DRAM bytes (test_tiling holds
the cost model of such layers to the simulator)."""
import functools

import numpy as np
import pytest

from ttc import api
from ttc.cli import explain
from ttc.models import tt_resnet

SIZE = 8


def _events(steps: int, batch: int = 3, density: float = 0.2) -> np.ndarray:
    return (np.random.default_rng(1).random((steps, batch, 2, SIZE, SIZE)) < density).astype(np.float32)


MODELS = {  # name: (MS-ResNet-18 at 8x8 on events, time steps); stt: adds, pools and cores made in G4's layer
    "stt": (lambda: tt_resnet(depth=18, ranks=[3] * 16, variant="stt", in_channels=2, size=SIZE, classes=4, steps=None), 2),
    "ptt": (lambda: tt_resnet(depth=18, ranks=[3] * 16, variant="ptt", in_channels=2, size=SIZE, classes=4, steps=None), 2),
    "htt": (lambda: tt_resnet(depth=18, ranks=[3] * 16, variant="htt", in_channels=2, size=SIZE, classes=4, steps=None), 4),
}


@functools.cache
def compiled(name: str, fusion: str):
    build, steps = MODELS[name]
    return api.compile_model(build(), f"{steps},N,2,{SIZE},{SIZE}", "sata", input_encoding="spikes", fusion=fusion)


@pytest.mark.parametrize("name", MODELS)
def test_fusion_changes_no_output_bit_and_moves_fewer_bytes(name):
    x = _events(MODELS[name][1])
    fused, unfused = compiled(name, "all"), compiled(name, "neuron")
    fused_kinds, unfused_kinds = ([layer["op"] for layer in c.program.meta["layers"]] for c in (fused, unfused))
    assert "conv2d+add+neuron_q" in fused_kinds and not any("+add" in k for k in unfused_kinds)
    assert fused_kinds.count("add") < unfused_kinds.count("add")
    runs = [api.simulate(c.program, x) for c in (fused, unfused)]
    reference = api.reference(fused, x)[0]
    assert runs[0].outputs[0].tobytes() == runs[1].outputs[0].tobytes() == reference.tobytes()
    moved = [r.counters["dram_read_bytes"] + r.counters["dram_write_bytes"] for r in runs]
    assert moved[0] < moved[1] and runs[0].cycles < runs[1].cycles


def test_each_fusion_is_taken_where_the_cost_model_prices_it_lower_and_explained():
    program, graph = compiled("stt", "all").program, compiled("stt", "all").graph
    notes = program.meta["fusion"]
    assert {"add+neuron_q", "maxpool", "conv2d"} <= {n["kind"] for n in notes.values()}
    for conv, note in notes.items():
        if "unavailable" in note["fused"]:  # no tile of the fused layer fits
            assert note["chosen"] == "apart"
            continue
        assert note["chosen"] == ("fused" if note["fused"]["cycles"] < note["apart"]["cycles"] else "apart")
        assert graph.op(conv).fused == (note["consumer"] if note["chosen"] == "fused" else None)
    assert any(n["chosen"] == "fused" and n["kind"] == "conv2d" for n in notes.values())  # a TT core made in G4's layer
    assert "conv2d+conv2d+" in " ".join(layer["op"] for layer in program.meta["layers"])
    text = explain(program.meta)
    for conv, note in notes.items():
        assert f"{conv} + {note['kind']} %{note['consumer']}: {note['chosen']} (best latency)" in text


def test_a_training_step_keeps_its_adds_as_layers():
    """(Its backward walks each add as a layer; test_train holds such steps to the training reference.)"""
    from test_train import _ms_resnet
    from ttc.compiler.train import TrainOptions

    compiled = api.compile_training(_ms_resnet("stt"), "N,1,8,8", train=TrainOptions(batch=2), input_bits=8, input_frac=4)
    assert compiled.program.meta["options"]["fusion"] == "neuron"
    kinds = [layer["op"] for layer in compiled.program.meta["layers"]]
    assert kinds.count("add") == 2 and not any("+add" in k for k in kinds)
