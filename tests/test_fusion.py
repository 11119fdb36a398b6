"""Fusion across layers (the fuse pass's `fusion` option): a conv that runs the residual add after it, and the
neuron that reads the sum, computes every output bit the unfused program does and moves fewer DRAM bytes
(test_tiling holds the cost model of such layers to the simulator)."""
import numpy as np
import pytest

from ttc import api
from ttc.cli import explain
from ttc.models import tt_resnet

SIZE = 8


def _events(steps: int, batch: int = 3, density: float = 0.2) -> np.ndarray:
    return (np.random.default_rng(1).random((steps, batch, 2, SIZE, SIZE)) < density).astype(np.float32)


MODELS = {  # name: (MS-ResNet-18 at 8x8 on events, time steps)
    "dense": (lambda: tt_resnet(depth=18, ranks=None, in_channels=2, size=SIZE, classes=4, steps=None), 2),
    "stt": (lambda: tt_resnet(depth=18, ranks=[3] * 16, variant="stt", in_channels=2, size=SIZE, classes=4, steps=None), 2),
    "ptt": (lambda: tt_resnet(depth=18, ranks=[3] * 16, variant="ptt", in_channels=2, size=SIZE, classes=4, steps=None), 2),
    "htt": (lambda: tt_resnet(depth=18, ranks=[3] * 16, variant="htt", in_channels=2, size=SIZE, classes=4, steps=None), 4),
}


@pytest.mark.parametrize("name", MODELS)
def test_fused_residual_adds_change_no_output_bit_and_move_fewer_bytes(name):
    build, steps = MODELS[name]
    net, x = build(), _events(steps)
    shape = f"{steps},N,2,{SIZE},{SIZE}"
    fused, unfused = (api.compile_model(net, shape, "sata", input_encoding="spikes", fusion=f) for f in ("all", "neuron"))
    fused_kinds, unfused_kinds = ([layer["op"] for layer in c.program.meta["layers"]] for c in (fused, unfused))
    assert "conv2d+add+neuron_q" in fused_kinds and not any("+add" in k for k in unfused_kinds)
    assert fused_kinds.count("add") < unfused_kinds.count("add")
    runs = [api.simulate(c.program, x) for c in (fused, unfused)]
    reference = api.reference(fused, x)[0]
    assert runs[0].outputs[0].tobytes() == runs[1].outputs[0].tobytes() == reference.tobytes()
    moved = [r.counters["dram_read_bytes"] + r.counters["dram_write_bytes"] for r in runs]
    assert moved[0] < moved[1] and runs[0].cycles < runs[1].cycles


def test_a_training_step_keeps_its_adds_as_layers():
    """(Its backward walks each add as a layer; test_train holds such steps to the training reference.)"""
    from test_train import _ms_resnet
    from ttc.compiler.train import TrainOptions

    compiled = api.compile_training(_ms_resnet("stt"), "N,1,8,8", train=TrainOptions(batch=2), input_bits=8, input_frac=4)
    assert compiled.program.meta["options"]["fusion"] == "neuron"
    kinds = [layer["op"] for layer in compiled.program.meta["layers"]]
    assert kinds.count("add") == 2 and not any("+add" in k for k in kinds)


@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_each_pool_or_add_is_fused_where_the_cost_model_prices_it_lower_and_explained(objective):
    build, steps = MODELS["stt"]
    compiled = api.compile_model(build(), f"{steps},N,2,{SIZE},{SIZE}", "sata", input_encoding="spikes",
                                 objective=objective)
    notes, graph = compiled.program.meta["fusion"], compiled.graph
    assert {"add+neuron_q", "maxpool"} <= {n["kind"] for n in notes.values()}
    for conv, note in notes.items():
        fused, apart = (note[w]["cycles"] if objective == "latency" else note[w]["energy_pj"] for w in ("fused", "apart"))
        assert note["chosen"] == ("fused" if fused < apart else "apart") and note["objective"] == objective
        assert graph.op(conv).fused == (note["consumer"] if note["chosen"] == "fused" else None)
    text = explain(compiled.program.meta)
    for conv, note in notes.items():
        assert f"{conv} + {note['kind']} %{note['consumer']}: {note['chosen']} (best {objective})" in text
