"""NIR in and out (ttc.frontends.nir): graphs exported by snnTorch and written by hand compile and run
bit-exact against the quantized reference and, where exactly representable, against the NIR equations
and the PyTorch original; what ttc cannot compile is named by node and type; ttc's export reads back
with nir.read and imports into snnTorch with the same spikes."""
import json
import warnings

import nir
import numpy as np
import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import utils as snn_utils
from snntorch.export_nir import export_to_nir
from snntorch.import_nir import import_from_nir
from torch import nn

from conftest import grid_inputs
from test_end_to_end import bits_equal, dyadic_
from ttc import api
from ttc.cli import main
from ttc.frontends import modules as M
from ttc.frontends.load import load_model
from ttc.frontends.nir import NIRError, from_nir
from ttc.frontends.trace import UnsupportedModel
from ttc.isa.encoding import encode_all

STEPS = 4
DT = 2.0 ** -13
"""The hand-written graphs' Euler step: a power of two, so that their time constants (dt / (1 - decay)) and
resistances are exact in float32 and the NIR equations evaluate exactly (snnTorch's 1e-4 is not)."""


def same_program(a, b) -> bool:
    return encode_all(a.program.code) == encode_all(b.program.code) and a.program.data == b.program.data


def checked(model: nn.Module, shape, seed: int):
    """Compile `model`, run it on the simulator; assert it equals the quantized reference bit for bit.
    Returns (compiled, inputs, simulator outputs, float outputs)."""
    spec = ",".join("N" if i == 1 else str(d) for i, d in enumerate(shape))
    compiled = api.compile_model(model, spec)
    x = grid_inputs(shape, seed=seed)
    sim = api.simulate(compiled.program, x).outputs
    ref = api.reference(compiled, x)
    assert all(bits_equal(s, r) for s, r in zip(sim, ref))
    return compiled, x, sim, api.run_float(model, x)


# ------------------------------------------------------------------------------- snnTorch export

class SnnTorchLoop(nn.Module):
    """A snnTorch network (init_hidden neurons, as export_to_nir wants them) stepped through time:
    [T, B, 1, 8, 8] -> the last layer's spikes [T, B, 10]."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.stack([self.net(x[t])[0] for t in range(STEPS)])


def snntorch_conv_fc(per_neuron: bool, seed: int = 31) -> nn.Sequential:
    """conv -> Leaky -> avg pool -> flatten -> fc -> Leaky, zero reset (NIR's reset), dyadic weights.
    `per_neuron`: beta and threshold as arrays of the layer's shape, which export_to_nir of snnTorch
    1.0.0 needs to type-check its graph (with scalars it fails: 'type mismatch ... -> 1.input: []')."""
    def leaky(shape, beta, threshold, **kw):
        if per_neuron:
            beta, threshold = torch.full(shape, beta), torch.full(shape, threshold)
        return snn.Leaky(beta=beta, threshold=threshold, init_hidden=True, reset_mechanism="zero", **kw)

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), leaky((4, 8, 8), 0.5, 0.5), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(64, 10), leaky((10,), 0.75, 0.25, output=True))
    dyadic_(net, seed)
    with torch.no_grad():  # positive biases: every layer spikes
        net[0].bias.abs_()
        net[4].bias.abs_()
    return net


def run_snntorch(net: nn.Module, x: np.ndarray) -> np.ndarray:
    snn_utils.reset(net)
    with torch.no_grad():
        return SnnTorchLoop(net)(torch.from_numpy(x)).numpy()


def test_snntorch_export_compiles_bit_exact_equals_pytorch_and_gives_the_same_program(tmp_path):
    net = snntorch_conv_fc(per_neuron=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nirtorch's deprecation notice
        graph = export_to_nir(net, torch.rand(1, 1, 8, 8), ignore_dims=[0])
    nir.write(tmp_path / "snn.nir", graph)
    from_file = load_model(tmp_path / "snn.nir")
    compiled, x, sim, flt = checked(from_file, (STEPS, 64, 1, 8, 8), seed=32)
    assert bits_equal(sim[0], flt[0])
    assert bits_equal(sim[0], run_snntorch(net, x))  # exactly representable: the simulator is snnTorch
    assert 0 < sim[0].mean() < 1
    # the same network compiled from PyTorch (ttc's snnTorch frontend) is the same program
    assert same_program(compiled, api.compile_model(SnnTorchLoop(net), "4,N,1,8,8"))


def test_snntorch_per_neuron_parameters_must_hold_one_value_per_channel():
    net = snntorch_conv_fc(per_neuron=True)
    net[1].beta = torch.linspace(0.25, 0.75, 4 * 8 * 8).reshape(4, 8, 8)
    with pytest.raises(UnsupportedModel, match=r"'net.1' .*a beta per neuron \(4, 8, 8\) that is not one per channel"):
        api.compile_model(SnnTorchLoop(net), "4,N,1,8,8")


def test_graph_with_a_batch_axis_and_scalar_parameters_reads_the_same():
    """nirtorch's extraction without ignore_dims: Input [1, 1, 8, 8], LIF parameters of shape []."""
    from snntorch.export_nir import _extract_snntorch_module
    import nirtorch

    net = snntorch_conv_fc(per_neuron=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = nirtorch.extract_nir_graph(net, _extract_snntorch_module, torch.rand(1, 1, 8, 8))
    assert list(graph.nodes["input"].input_type["input"]) == [1, 1, 8, 8]
    module = from_nir(graph)
    assert module.input_shape == (1, 8, 8)
    x = grid_inputs((STEPS, 16, 1, 8, 8), seed=33)
    assert bits_equal(api.run_float(module, x)[0], run_snntorch(net, x))


# ------------------------------------------------------------------------ hand-written graphs

def _lif_step(v, x, decay, gain, charge, theta, v_reset):
    """One forward-Euler step of a NIR LIF/IF as ttc defines it (docs/nir.md), in float64."""
    v = decay * v + gain * x + charge
    z = (v > theta).astype(np.float64)
    return np.where(z > 0, v_reset, v), z


def nir_reference(graph, x: np.ndarray, dt: float = DT) -> np.ndarray:
    """The NIR equations evaluated directly (not through ttc's modules) on [T, B, ...]: a sequential
    graph, one node after another, every neuron with its own state."""
    order, node = ["input"], "input"
    while not isinstance(graph.nodes[node], nir.Output):
        node = next(b for a, b in graph.edges if a == node)
        order.append(node)
    state = {}
    outs = []
    for t in range(x.shape[0]):
        v = x[t].astype(np.float64)
        for name in order[1:-1]:
            n = graph.nodes[name]
            if isinstance(n, nir.Affine):
                v = v @ n.weight.T + n.bias
            elif isinstance(n, nir.Linear):
                v = v @ n.weight.T
            elif isinstance(n, nir.Conv2d):
                v = F.conv2d(torch.from_numpy(v), torch.from_numpy(n.weight.astype(np.float64)),
                             torch.from_numpy(n.bias.astype(np.float64)), n.stride, n.padding).numpy()
            elif isinstance(n, nir.Flatten):
                v = v.reshape(v.shape[0], -1)
            elif isinstance(n, (nir.AvgPool2d, nir.SumPool2d)):
                k = int(np.asarray(n.kernel_size).reshape(-1)[0])
                v = F.avg_pool2d(torch.from_numpy(v), k).numpy() * (k * k if isinstance(n, nir.SumPool2d) else 1)
            elif isinstance(n, nir.Scale):
                v = v * n.scale
            elif isinstance(n, nir.Threshold):
                v = (v > n.threshold).astype(np.float64)
            else:
                p = {f: float(np.unique(getattr(n, f))[0]) for f in ("v_threshold", "v_reset")}
                if isinstance(n, nir.IF):
                    decay, gain, charge = 1.0, float(n.r.flat[0]) * dt, 0.0
                else:
                    tau = float((n.tau_mem if isinstance(n, nir.CubaLIF) else n.tau).flat[0])
                    decay, gain, charge = 1 - dt / tau, float(n.r.flat[0]) * dt / tau, float(n.v_leak.flat[0]) * dt / tau
                    if isinstance(n, nir.CubaLIF):  # tau_syn = dt: the current is w_in times the input
                        gain *= float(n.w_in.flat[0])
                mem = state.get(name, np.full(v.shape, p["v_reset"]))
                state[name], v = _lif_step(mem, v, decay, gain, charge, p["v_threshold"], p["v_reset"])
        outs.append(v)
    return np.stack(outs).astype(np.float32)


def full(shape, value):
    return np.full(shape, value, dtype=np.float32)


def dyadic(shape, seed, span=6, denominator=16):
    return (np.random.default_rng(seed).integers(-span, span + 1, size=shape) / denominator).astype(np.float32)


def lif(shape, decay, theta, gain=1.0, leak_charge=0.0, v_reset=0.0):
    tau = DT / (1 - decay)
    return nir.LIF(tau=full(shape, tau), r=full(shape, gain * tau / DT), v_leak=full(shape, leak_charge * tau / DT),
                   v_threshold=full(shape, theta), v_reset=full(shape, v_reset))


def conv(cin, cout, seed, stride=1, padding=1):
    return nir.Conv2d(input_shape=None, weight=dyadic((cout, cin, 3, 3), seed), stride=stride, padding=padding,
                      dilation=1, groups=1, bias=np.abs(dyadic((cout,), seed + 1)))


def flatten():
    return nir.Flatten(input_type=None, start_dim=0, end_dim=-1)


HAND_WRITTEN = {
    # Affine + LIF with an input gain of 1/2 and a leak voltage (a constant charge of 1/16 a step)
    "affine-lif-gain-leak": ((64,), lambda: [
        nir.Affine(weight=dyadic((16, 64), 1), bias=dyadic((16,), 2)), lif((16,), 0.5, 0.25, gain=0.5, leak_charge=0.0625)]),
    # Linear (no bias) + IF resetting below zero, fed a batch axis in the Input
    "linear-if-batch-axis": ((1, 64), lambda: [
        nir.Linear(weight=dyadic((16, 64), 3)),
        nir.IF(r=full((16,), 1 / DT), v_threshold=full((16,), 0.5), v_reset=full((16,), -0.25))]),
    # Conv2d + CubaLIF (tau_syn = dt: no synaptic memory; w_in 1/2) + SumPool2d + Flatten + Scale + Affine
    "conv-cubalif-sumpool-scale": ((1, 8, 8), lambda: [
        conv(1, 4, 4),
        nir.CubaLIF(tau_syn=full((4, 8, 8), DT), tau_mem=full((4, 8, 8), 4 * DT), r=full((4, 8, 8), 4.0),
                    v_leak=full((4, 8, 8), 0.0), v_threshold=full((4, 8, 8), 0.25), w_in=full((4, 8, 8), 0.5)),
        nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        flatten(), nir.Scale(scale=np.where(np.arange(64) % 2 == 1, 0.25, 1.0).astype(np.float32)), nir.Affine(weight=dyadic((10, 64), 5), bias=dyadic((10,), 6)),
        lif((10,), 0.75, 0.5)]),
    # Conv2d + Threshold (stateless) + AvgPool2d + Flatten + Affine + Threshold
    "conv-threshold-avgpool": ((1, 8, 8), lambda: [
        conv(1, 4, 7, stride=1, padding=1), nir.Threshold(threshold=full((4, 8, 8), 0.25)),
        nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        flatten(), nir.Affine(weight=dyadic((10, 64), 8), bias=dyadic((10,), 9)), nir.Threshold(threshold=full((10,), 0.0))]),
}


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_hand_written_graph_equals_the_nir_equations_and_the_quantized_reference(name, tmp_path):
    input_shape, nodes = HAND_WRITTEN[name]
    # nir's type check refuses an Input with a batch axis; ttc reads such graphs (nirtorch writes them)
    graph = nir.NIRGraph.from_list([nir.Input(input_type={"input": np.array(input_shape)}), *nodes()],
                                   type_check=len(input_shape) in (1, 3))
    nir.write(tmp_path / f"{name}.nir", graph)
    model = load_model(tmp_path / f"{name}.nir", nir_dt=DT)
    sample = input_shape[1:] if len(input_shape) in (2, 4) else input_shape
    _, x, sim, flt = checked(model, (STEPS, 32, *sample), seed=41)
    expected = nir_reference(graph, x)
    assert bits_equal(flt[0], expected)  # ttc's reading of the graph is the NIR equations
    assert bits_equal(sim[0], expected)  # all exactly representable: so is the program
    assert 0 < sim[0].mean() < 1


# -------------------------------------------------------------------------------- refusals

def _graph(*nodes):
    return nir.NIRGraph.from_list([nir.Input(input_type={"input": np.array([8])}), *nodes], type_check=False)


@pytest.mark.parametrize("node,words", [
    (nir.LI(tau=full((8,), 2 * DT), r=full((8,), 1.0), v_leak=full((8,), 0.0)), ["'li'", "(LI)", "does not compile"]),
    (nir.Delay(delay=full((8,), 1.0)), ["'delay'", "(Delay)"]),
    (nir.CubaLIF(tau_syn=full((8,), 2e-4), tau_mem=full((8,), 2e-4), r=full((8,), 2.0), v_leak=full((8,), 0.0),
                 v_threshold=full((8,), 1.0)), ["'cubalif'", "(CubaLIF)", "synaptic current"]),
    (nir.LIF(tau=full((8,), 2e-4), r=full((8,), 2.0), v_leak=full((8,), 0.0), v_threshold=np.arange(8.0) + 1),
     ["'lif'", "(LIF)", "v_threshold takes 8 different values"]),
    (nir.LIF(tau=full((8,), 5e-5), r=full((8,), 2.0), v_leak=full((8,), 0.0), v_threshold=full((8,), 1.0)),
     ["'lif'", "below the step dt"]),
])
def test_what_ttc_cannot_compile_is_named_by_node_and_type(node, words):
    with pytest.raises(NIRError) as err:
        from_nir(_graph(nir.Affine(weight=dyadic((8, 8), 1), bias=dyadic((8,), 2)), node))
    for w in words:
        assert w in str(err.value)


def test_a_recurrent_graph_is_refused():
    nodes = {"input": nir.Input(input_type={"input": np.array([8])}), "fc": nir.Linear(weight=dyadic((8, 8), 1)),
             "lif": lif((8,), 0.5, 0.5), "output": nir.Output(output_type={"output": np.array([8])})}
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "fc"), ("lif", "output")]
    with pytest.raises(NIRError, match="cycle through nodes 'fc', 'lif'"):
        from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))


def test_cli_names_an_unsupported_node_in_one_line(tmp_path, capsys):
    path = tmp_path / "li.nir"
    nir.write(path, _graph(nir.LI(tau=full((8,), 2e-4), r=full((8,), 1.0), v_leak=full((8,), 0.0))))
    assert main(["compile", str(path), "-o", str(tmp_path / "p.bin"), "--input-shape", "4,N,8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ttc: error: ") and "node 'li' (LI)" in err[0]
    nir.write(tmp_path / "fc.nir", _graph(nir.Affine(weight=dyadic((8, 8), 1), bias=dyadic((8,), 2)), lif((8,), 0.5, 0.5)))
    assert main(["compile", str(tmp_path / "fc.nir"), "-o", str(tmp_path / "p.bin"), "--input-shape", "4,N,1,8,8"]) == 1
    assert "takes samples of shape [8]" in capsys.readouterr().err
    (tmp_path / "junk.nir").write_bytes(b"not hdf5")
    assert main(["compile", str(tmp_path / "junk.nir"), "-o", str(tmp_path / "p.bin"), "--input-shape", "4,N,8"]) == 1
    assert "not a readable NIR file" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- export

def ttc_conv_fc(seed: int = 51) -> nn.Sequential:
    net = dyadic_(nn.Sequential(M.Conv2d(1, 4, 3, padding=1), M.LIF(decay=0.5, threshold=0.5), M.AvgPool2d(2),
                                M.Flatten(), M.Linear(64, 10), M.LIF(decay=0.75, threshold=0.25)), seed)
    with torch.no_grad():
        net[0].bias.abs_()
        net[4].bias.abs_()
    return net


def test_export_reads_back_with_nir_and_compiles_to_the_same_program(tmp_path):
    net = ttc_conv_fc()
    torch.save(net, tmp_path / "m.pt")
    out = tmp_path / "m.nir"
    assert main(["export", "--nir", str(tmp_path / "m.pt"), "-o", str(out), "--input-shape", "4,N,1,8,8"]) == 0
    graph = nir.read(out)
    kinds = {k: type(n).__name__ for k, n in graph.nodes.items()}
    assert sorted(kinds.values()) == ["Affine", "AvgPool2d", "Conv2d", "Flatten", "Input", "LIF", "LIF", "Output"]
    assert np.array_equal(graph.nodes["0"].weight, net[0].weight.detach().numpy())
    assert np.array_equal(graph.nodes["4"].bias, net[4].bias.detach().numpy())
    first = graph.nodes["1"]  # decay 0.5 with snnTorch's dt = 1e-4: tau = 2e-4, r = tau/dt (input gain 1)
    assert first.tau.shape == (4, 8, 8) and np.allclose(first.tau, 2e-4) and np.allclose(first.r, 2.0)
    assert np.all(first.v_leak == 0) and np.all(first.v_threshold == 0.5) and np.all(first.v_reset == 0)
    # read back: the same float function and the same program; compile + run --check from the .nir
    back = load_model(out)
    x = grid_inputs((STEPS, 16, 1, 8, 8), seed=52)
    assert bits_equal(api.run_float(back, x)[0], api.run_float(net, x)[0])
    assert same_program(api.compile_file(out, "4,N,1,8,8"), api.compile_model(net, "4,N,1,8,8"))
    assert main(["compile", str(out), "-o", str(tmp_path / "p.bin"), "--input-shape", "4,N,1,8,8"]) == 0
    assert main(["run", "--sim", str(tmp_path / "p.bin"), "--check", str(out)]) == 0


def test_export_imports_into_snntorch_with_the_same_spikes():
    net = ttc_conv_fc(53)
    graph = nir.NIRGraph.from_dict(api.export_nir(net, "4,N,1,8,8").to_dict())  # as nir.read would give it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imported = import_from_nir(graph)
    x = grid_inputs((STEPS, 6, 1, 8, 8), seed=54)
    expected = api.run_float(net, x)[0]
    # snnTorch's importer writes Flatten(start_dim=0) (NIR's axes, without the batch), so it runs one sample
    # at a time; its init_hidden neurons are reset before each
    spikes = []
    with torch.no_grad():
        for b in range(x.shape[1]):
            snn_utils.reset(imported)
            spikes.append(torch.stack([imported(torch.from_numpy(x[t, b]))[0] for t in range(STEPS)]))
    got = torch.stack(spikes, 1).numpy()
    assert bits_equal(got, expected) and 0 < expected.mean() < 1


@pytest.mark.parametrize("layers,words", [
    ([M.Linear(64, 8), M.LIF(0.5, 0.5, reset="subtract")], "reset 'subtract'"),
    ([M.Linear(64, 8), M.LIF(0.5, 0.5, cmp="ge")], "u >= threshold"),
    ([M.Linear(64, 8), M.LIF(0.5, 0.5), M.TimeMean()], "no reduction over time"),
])
def test_export_refuses_what_nir_cannot_say(layers, words):
    with pytest.raises(NIRError, match=words):
        api.export_nir(nn.Sequential(M.Flatten(), *layers), "4,N,1,8,8")
    with pytest.raises(NIRError, match="no max pooling"):
        api.export_nir(nn.Sequential(M.Conv2d(1, 2, 3), M.MaxPool2d(2)), "4,N,1,8,8")


def test_the_step_dt_is_recorded_so_run_check_reads_the_graph_as_compiled(tmp_path, capsys):
    input_shape, nodes = HAND_WRITTEN["affine-lif-gain-leak"]
    path, prog = tmp_path / "g.nir", tmp_path / "g.bin"
    nir.write(path, nir.NIRGraph.from_list([nir.Input(input_type={"input": np.array(input_shape)}), *nodes()]))
    assert main(["compile", str(path), "-o", str(prog), "--input-shape", "4,N,64", "--nir-dt", str(DT)]) == 0
    np.save(tmp_path / "x.npy", grid_inputs((STEPS, 32, 64), seed=61))
    capsys.readouterr()
    assert main(["run", "--sim", str(prog), "--input", str(tmp_path / "x.npy"), "--check", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["check"]["reference_bit_exact"] and report["check"]["float"][0]["bit_exact"]
