"""TT-SNN end to end: every contraction plan of every tensor-train layer is bit-exact, the plan the
compiler picks is within 5 % of the best one measured, and models built from the official TT-SNN
classes compile unchanged."""
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

import tt_snn_classes as official
from ttc import api
from ttc.compiler.ir import IRError
from ttc.compiler.ir_text import parse_graph, print_graph
from ttc.compiler.passes.tt_schedule import OBJECTIVES, PLANS
from ttc.compiler.reference import evaluate
from ttc.frontends import modules as M
from ttc.frontends.trace import UnsupportedModel
from ttc.models import spiking_statistics

VARIANTS = ("stt", "ptt", "htt")
STEPS = 4
SHAPE = f"{STEPS},N,2,8,8"
CORE_BITS = 4  # narrow enough that every contracted kernel fits 16 bits: all plans are available


def ms_resnet(variant: str, seed: int = 0) -> nn.Sequential:
    """Two MS-ResNet blocks (one keeps the shape, one halves it with a max pool and a 1x1 shortcut)."""
    torch.manual_seed(seed)
    net = nn.Sequential(M.Conv2d(2, 8, 3, padding=1, bias=False), M.BatchNorm2d(8),
                        M.MSBlock(8, 8, 1, (4, 4), variant), M.MSBlock(8, 16, 2, (4, 6), variant),
                        M.LIF(), M.AvgPool2d(4), M.Flatten(), M.Linear(16, 10), M.TimeMean())
    return spiking_statistics(net, seed + 1)


def event_input(batch: int = 4) -> np.ndarray:
    return (np.random.default_rng(0).random((STEPS, batch, 2, 8, 8)) < 0.3).astype(np.float32)


def per_tt_layer(compiled, result) -> dict[str, tuple[float, float]]:
    """Simulated cycles and energy of each TT layer: the program layers its plan became."""
    tts = set(compiled.graph.notes["schedule"])
    out = defaultdict(lambda: [0.0, 0.0])
    for layer in result.layers:
        if layer["source"] in tts:
            out[layer["source"]][0] += layer["counts"]["cycles"]
            out[layer["source"]][1] += sum(layer["energy_pj"].values())
    return {k: tuple(v) for k, v in out.items()}


@pytest.fixture(scope="module", params=VARIANTS)
def every_plan(request):
    """variant -> plan -> (compiled, simulated result, reference outputs)."""
    net, x = ms_resnet(request.param), event_input()
    runs = {}
    for plan in PLANS:
        compiled = api.compile_model(net, SHAPE, schedule=plan, tt_core_bits=CORE_BITS)
        runs[plan] = (compiled, api.simulate(compiled.program, x), api.reference(compiled, x))
    return request.param, net, x, runs


def test_every_plan_of_every_tt_layer_is_bit_exact(every_plan):
    variant, _, x, runs = every_plan
    for plan, (compiled, result, ref) in runs.items():
        notes = compiled.graph.notes["schedule"]
        assert len(notes) == 4 and {n["chosen"] for n in notes.values()} == {plan}
        assert all(n["variant"] == variant for n in notes.values())
        assert result.outputs[0].tobytes() == ref[0].tobytes(), (variant, plan)
        text = print_graph(compiled.graph)  # the scheduled, tiled IR prints and parses back
        assert print_graph(parse_graph(text)) == text
        # the rewritten graph computes what the tensor-train layers define, value for value
        scheduled, quantized = evaluate(compiled.graph, [x]), evaluate(compiled.quantized, [x])
        for name in notes:
            tt_name = next(o.name for o in compiled.quantized.ops if o.path == name)
            assert torch.equal(scheduled[tt_name], quantized[tt_name]), (variant, plan, name)
    assert runs["dense"][1].counters["spike_add"] > runs["cores"][1].counters["spike_add"]
    assert runs["cores"][1].counters["mac"] > runs["dense"][1].counters["mac"]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_chosen_plan_is_within_five_percent_of_the_best_measured(every_plan, objective):
    variant, net, x, runs = every_plan
    measured = {plan: per_tt_layer(compiled, result) for plan, (compiled, result, _) in runs.items()}
    chosen = api.compile_model(net, SHAPE, objective=objective, tt_core_bits=CORE_BITS).graph.notes["schedule"]

    def score(cycles_energy):
        cycles, energy = cycles_energy
        return {"latency": cycles, "energy": energy, "edp": cycles * energy}[objective]

    for path, note in chosen.items():
        best = min(score(measured[plan][path]) for plan in PLANS)
        assert score(measured[note["chosen"]][path]) <= 1.05 * best, (variant, objective, path, note["chosen"], measured)


def _official_resnet(tt) -> nn.Module:
    torch.manual_seed(0)
    net = official.ResNet_CIFAR(tt, [1, 1, 1, 1], [4] * 8, 10, widths=(4, 4, 8, 16, 32))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_var.fill_(0.25)
            m.bias.data.uniform_(-0.1, 0.3)
    return net.eval()


@pytest.mark.parametrize("tt", [official.STT_Snn_Conv2d, official.PTT_Snn_Conv2d, official.HTT_Snn_Conv2d],
                         ids=["STT", "PTT", "HTT"])
def test_a_resnet_of_the_official_tt_snn_classes_compiles_bit_exact(tt):
    net = _official_resnet(tt)
    x = np.random.default_rng(1).random((4, 3, 16, 16)).astype(np.float32)
    compiled = api.compile_model(net, "N,3,16,16", input_frac=14, tt_core_bits=CORE_BITS)
    notes = compiled.graph.notes["schedule"]
    assert len(notes) == 8 and {n["variant"] for n in notes.values()} == {tt.__name__[:3].lower()}
    sim, ref = api.simulate(compiled.program, x).outputs[0], api.reference(compiled, x)[0]
    assert sim.tobytes() == ref.tobytes()
    flt = net(torch.from_numpy(x)).detach().numpy()
    assert np.abs(sim - flt).max() < 0.25 * np.abs(flt).max()  # quantized, not the same function


def test_official_htt_runs_four_steps_only(monkeypatch):
    monkeypatch.setattr(official, "time_window", 6)
    with pytest.raises(UnsupportedModel, match="HTT_Snn_Conv2d computes 4 time steps .* not 6"):
        api.compile_model(_official_resnet(official.HTT_Snn_Conv2d), "N,3,16,16")


def test_a_dense_kernel_beyond_16_bits_is_an_unavailable_plan():
    net = ms_resnet("stt")
    notes = api.compile_model(net, SHAPE, tt_core_bits=8).graph.notes["schedule"]
    unavailable = [n["plans"]["dense"] for n in notes.values() if not n["plans"]["dense"]["available"]]
    assert unavailable and "beyond 16-bit weights" in unavailable[0]["why"]
    with pytest.raises(IRError, match="plan 'dense' is unavailable: the dense kernel reaches"):
        api.compile_model(net, SHAPE, tt_core_bits=8, schedule="dense")


def test_a_negative_batchnorm_scale_after_a_max_pool_does_not_fold():
    net = ms_resnet("stt")
    bn = net[3].residual[3]
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(net[3].residual[2], nn.MaxPool2d)
    bn.weight.data[1] = -0.5
    with pytest.raises(IRError, match="after a max pool: a scale that is not positive"):
        api.compile_model(net, SHAPE)
