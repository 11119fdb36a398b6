"""Event (spike) inputs: `input_encoding = spikes` declares the model input as 0/1 events (DVS-style
[T, N, 2, H, W] frames), stored bit-packed and read by spike-driven layers (sconv: adds, no multiplies)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from test_end_to_end import bits_equal, dyadic_
from test_hardware import _BatchFirst
from ttc import api
from ttc.cli import main as ttc_main
from ttc.compiler.ir import IRError
from ttc.compiler.passes import OptionError
from ttc.frontends import modules as M
from ttc.isa.asm import disassemble
from ttc.isa.io import InputError

SHAPE = "4,N,2,8,8"  # T = 4 steps of 2-polarity 8x8 event frames


def dvs_net(seed: int = 0) -> nn.Module:
    """Conv + LIF on ON/OFF event frames, pooled into a linear readout; dyadic weights (k/16), so the
    quantized model is the float model exactly."""
    torch.manual_seed(seed)
    return dyadic_(nn.Sequential(
        M.Conv2d(2, 4, 3, padding=1), M.LIF(decay=0.5, threshold=0.25), M.MaxPool2d(2), M.Flatten(),
        M.Linear(64, 10), M.TimeMean()), seed, span=4)


def events(batch: int, seed: int = 0, density: float = 0.2) -> np.ndarray:
    """Random DVS-style [T, N, 2, 8, 8] frames: each pixel and polarity fires with probability `density`."""
    return (np.random.default_rng(seed).random((4, batch, 2, 8, 8)) < density).astype(np.float32)


@pytest.fixture(scope="module")
def net():
    return dvs_net()


@pytest.fixture(scope="module")
def compiled(net):
    return api.compile_model(net, SHAPE, input_encoding="spikes")


def test_event_input_is_a_bit_packed_spike_value_and_runs_bit_exact(net, compiled):
    x = events(6, seed=1)
    (inp,) = compiled.graph.inputs
    assert str(inp.type) == "seq4<spike[2,8,8]>"
    io = compiled.program.meta["inputs"][0]
    assert io["fmt"] == "spike" and io["step_bytes"] == 2 * 8 * 8 // 8  # one bit per event
    sim = api.simulate(compiled.program, x).outputs[0]
    assert bits_equal(sim, api.reference(compiled, x)[0])
    assert bits_equal(sim, api.run_float(net, x)[0])  # dyadic weights: the float model spikes as the machine does
    # the same events as fixed-point values give the same outputs: only the encoding (and cost) differs
    fixed = api.compile_model(net, SHAPE)
    assert bits_equal(api.simulate(fixed.program, x).outputs[0], sim)


def test_first_layer_of_event_input_adds_and_never_multiplies(net, compiled):
    x = events(4, seed=2)
    fixed = api.compile_model(net, SHAPE)
    first = {}
    for name, c in (("spikes", compiled), ("fixed", fixed)):
        layer = c.counts["model"]["layers"][0]
        assert layer["path"] == "0" and layer["macs"] == 4 * 2 * 3 * 3 * 8 * 8
        first[name] = (layer, api.simulate(c.program, x).layers[0])
    static, run = first["spikes"]
    assert static["adds"] == static["macs"] and static["muls"] == 0
    assert run["op"].startswith("conv2d") and run["counts"]["spike_add"] > 0
    assert run["counts"].get("mac", 0) == 0 and not any(run["counts"].get(m, 0) for m in ("mul8", "mul16", "mul32"))
    # spike-driven adds = input events times the non-zero weights they reach (inside the padded frame)
    w = torch.from_numpy((net[0].weight.detach().numpy() != 0).astype(np.float32))
    reach = torch.nn.functional.conv_transpose2d(torch.ones(1, 4, 8, 8), w, padding=1)[0]  # [2, 8, 8]
    assert run["counts"]["spike_add"] * x.shape[1] == float((torch.from_numpy(x) * reach).sum())
    static, run = first["fixed"]  # before: the same layer priced as dense multiplies
    assert static["muls"] == static["macs"] and static["adds"] == 0
    assert run["counts"]["mac"] > 0 and run["counts"].get("spike_add", 0) == 0




def test_spike_driven_adds_of_event_input_equal_neurobench_effective_acs(net, compiled):
    """NeuroBench counts effective ACs for layers whose every input is 0/1: on event frames, the first
    layer too. The first layer alone and the whole model agree with the simulator's spike-driven adds."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import TorchModel
    from torch.utils.data import DataLoader, TensorDataset

    x = events(16, seed=3)
    data = DataLoader(TensorDataset(torch.from_numpy(x).transpose(0, 1), torch.zeros(16)), batch_size=8)

    def effective_acs(model):
        result = Benchmark(TorchModel(_BatchFirst(model)), data, [], [], [[], [SynapticOperations]]).run(quiet=True)
        return result["SynapticOperations"]["Effective_ACs"]

    result = api.simulate(compiled.program, x)
    first_layer = nn.Sequential(net[0], M.TimeMean())  # the conv on the events, nothing else counted
    assert result.layers[0]["counts"]["spike_add"] == effective_acs(first_layer) > 0
    assert result.counters["spike_add"] == effective_acs(net) > result.layers[0]["counts"]["spike_add"]


def test_non_binary_event_input_is_refused_naming_the_first_offender(compiled):
    x = events(2, seed=4)
    x[1, 0, 1, 2, 3] = 0.5
    x[3, 1, 0, 0, 0] = 2.0
    for run in (lambda: api.simulate(compiled.program, x), lambda: api.reference(compiled, x)):
        with pytest.raises(InputError, match=r"element \[1, 0, 1, 2, 3\] is 0\.5 \(2 of 1024 elements are neither 0 nor 1\)"):
            run()
    nearly_one = events(1).astype(np.float64)
    nearly_one[0, 0, 0, 0, 0] = 1 + 1e-12  # would round to 1.0 in float32: refused, not rounded
    with pytest.raises(InputError, match=r"element \[0, 0, 0, 0, 0\]"):
        api.simulate(compiled.program, nearly_one)
    booleans = events(1, seed=5).astype(bool)  # a bool array is events too
    assert bits_equal(api.simulate(compiled.program, booleans).outputs[0],
                      api.simulate(compiled.program, booleans.astype(np.float32)).outputs[0])


def test_cli_records_the_encoding_and_refuses_non_binary_input(tmp_path, net, capsys):
    torch.save(net, tmp_path / "m.pt")
    prog = tmp_path / "p.bin"
    assert ttc_main(["compile", str(tmp_path / "m.pt"), "-o", str(prog), "--input-shape", SHAPE,
                     "--input-encoding", "spikes"]) == 0
    capsys.readouterr()
    assert ttc_main(["inspect", str(prog)]) == 0
    out = capsys.readouterr().out
    assert "'input_encoding': 'spikes'" in out and "as spikes (0/1 events, bit-packed)" in out
    from ttc.isa.program import Program

    assert '"input_encoding":"spikes"' in disassemble(Program.load(prog)).replace(" ", "")
    np.save(tmp_path / "good.npy", events(3, seed=6))
    assert ttc_main(["run", "--sim", str(prog), "--input", str(tmp_path / "good.npy"), "--check", str(tmp_path / "m.pt"),
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["check"]["reference_bit_exact"] and report["check"]["float"][0]["bit_exact"]
    bad = events(3, seed=6)
    bad[0, 2, 1, 7, 7] = 0.25
    np.save(tmp_path / "bad.npy", bad)
    r = subprocess.run([sys.executable, "-m", "ttc.cli", "run", "--sim", str(prog), "--input", str(tmp_path / "bad.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"ttc: error: {tmp_path / 'bad.npy'}: input 'input' was compiled as spikes (input_encoding = spikes) and takes only 0 and 1, "
        "but element [0, 2, 1, 7, 7] is 0.25 (1 of 1536 elements are neither 0 nor 1)"]


def test_spike_encoding_refuses_bad_options_and_inputs_no_layer_can_read_as_spikes():
    with pytest.raises(OptionError, match="unknown input encoding 'rate'"):
        api.compile_model(dvs_net(), SHAPE, input_encoding="rate")
    neuron_first = nn.Sequential(M.LIF(decay=0.5, threshold=0.5), M.Flatten(), M.Linear(128, 4), M.TimeMean())
    with pytest.raises(IRError, match="reads the model input, declared as spikes"):
        api.compile_model(neuron_first, SHAPE, input_encoding="spikes")



def test_static_event_frame_and_rate_coded_snntorch_input_run_spike_driven():
    """Two other ways spikes come in: one static frame repeated over time (direct coding: the packed
    frame is read at every step), and a snnTorch time loop over rate-coded spike trains (`x[t]`)."""
    from test_thirdparty import SnnTorchConv

    static = dyadic_(nn.Sequential(M.DirectEncoder(3), M.Conv2d(2, 4, 3, padding=1), M.LIF(decay=0.5, threshold=0.25),
                                   M.AvgPool2d(2), M.Flatten(), M.Linear(64, 5), M.TimeMean()), 3)
    torch.manual_seed(8)
    looped = SnnTorchConv().eval()
    for model, shape, x in ((static, "N,2,8,8", events(5, seed=7)[0]), (looped, "4,N,1,8,8", events(5, seed=8)[:, :, :1])):
        compiled = api.compile_model(model, shape, input_encoding="spikes")
        assert compiled.counts["model"]["layers"][0]["muls"] == 0
        result = api.simulate(compiled.program, x)
        assert bits_equal(result.outputs[0], api.reference(compiled, x)[0])
        first = result.layers[0]["counts"]  # the first conv, on the input's events
        assert first["spike_add"] > 0 and not any(first.get(m, 0) for m in ("mac", "mul8", "mul16", "mul32"))
        if model is static:  # dyadic weights: exact end to end
            assert bits_equal(result.outputs[0], api.run_float(model, x)[0])
