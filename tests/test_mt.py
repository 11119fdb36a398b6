"""Multi-threshold neurons (MT-SNN, docs/mt.md): the machine's rule (ttc.isa.mt) against the float module,
networks of K = 1..4 thresholds in both modes compiled and simulated bit for bit, the spike-driven adds
of every plane against a PyTorch-hook count, PLIF decays, the committed digits example, and errors."""
import numpy as np
import pytest
import torch
from torch import nn

from ttc import api
from ttc.compiler.ir import IRError
from ttc.demo import MT_MODEL
from ttc.digits import load_digits_split
from ttc.frontends import modules as M
from ttc.frontends.trace import UnsupportedModel
from ttc.isa import asm
from ttc.isa.mt import code_planes, fire, level_code, max_code, thresholds
from ttc.isa.program import Program

CASES = [(k, mode) for mode in ("parallel", "cascade") for k in (1, 2, 3, 4)]


@pytest.mark.parametrize("levels,mode", CASES)
@pytest.mark.parametrize("cmp", ["gt", "ge"])
def test_the_machines_thresholds_equal_the_float_neuron(levels, mode, cmp):
    """On integers u (a threshold of 2^4 in units of 1), the machine's planes stand for exactly what the
    float module emits for u / 2^4, every edge included; the level codes round-trip through the planes."""
    theta = 16
    u = torch.arange(-8, 5 * theta, dtype=torch.int64)
    planes, y = fire(u, theta, levels, mode, cmp)
    neuron = M.MTNeuron(levels, mode, threshold=1.0, cmp=cmp)
    assert torch.equal(y.double() / theta, neuron.fire(u.double() / theta))
    q = level_code(planes, mode)
    assert int(q.max()) == max_code(levels, mode) and int(q.min()) == 0
    assert all(torch.equal(a.long(), b.long()) for a, b in zip(code_planes(q, levels, mode), planes))
    scale = 1 if mode == "parallel" else 2 ** (levels - 1)
    assert torch.equal(y * scale, q * (theta if mode == "parallel" else theta // scale * scale))
    assert thresholds(theta, levels, mode) == ([theta * k for k in range(1, levels + 1)] if mode == "parallel"
                                               else [theta >> k for k in range(levels)])


def _on_grid(net: nn.Module, frac: int = 6) -> nn.Module:
    """Weights drawn mostly positive (so every layer spikes) and rounded to k/2^frac: every value the
    float model computes is then exact in float32 and in the machine's integers, so the quantized
    reference equals the float model bit for bit."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight.uniform_(-0.4, 1.0) * 2 / m.weight[0].numel() ** 0.5
                m.weight.copy_(torch.round(w * 2 ** frac) / 2 ** frac)
    return net


def _mt_net(levels: int, mode: str, seed: int = 0) -> nn.Sequential:
    """conv (on the image) -> MT -> strided conv of the planes -> MT (PLIF base) -> linear readout, no biases."""
    torch.manual_seed(seed)
    return _on_grid(nn.Sequential(
        M.Conv2d(1, 8, 3, padding=1, bias=False), M.MTNeuron(levels, mode, threshold=0.5, decay=0.5),
        M.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        M.MTNeuron(levels, mode, threshold=1.0, decay=0.5, learn_decay=True),
        M.Flatten(), M.Linear(256, 10, bias=False), M.TimeMean()))


class _Residual(nn.Module):
    """Two convs of the same planes added, then an MT neuron of its own (not fused with a conv)."""

    def __init__(self, levels, mode):
        super().__init__()
        self.a, self.b = M.Conv2d(8, 8, 3, padding=1, bias=False), M.Conv2d(8, 8, 1, bias=False)
        self.neuron = M.MTNeuron(levels, mode, threshold=0.5, decay=0.25)

    def forward(self, x):
        return self.neuron(self.a(x) + self.b(x))


def _digits(steps: int, n: int) -> np.ndarray:
    return load_digits_split(steps)[2][:, :n] * 2  # k/8: on the input's grid, and firing several levels


@pytest.mark.parametrize("levels,mode", CASES)
def test_mt_networks_are_bit_exact_and_count_each_planes_adds_as_pytorch_does(levels, mode):
    """Issue 7: the simulator equals the quantized reference (and, the model being on the grid, the float
    model) on every input; per layer and plane, the spike-driven adds equal a PyTorch-hook count of
    (spike in that plane, non-zero weight) pairs, and a cascade doubles its sums once per later plane."""
    torch.manual_seed(levels)
    net = _on_grid(nn.Sequential(M.Conv2d(1, 8, 3, padding=1, bias=False), M.MTNeuron(levels, mode, threshold=0.5),
                                 _Residual(levels, mode), *list(_mt_net(levels, mode, seed=levels))[2:]))
    x = _digits(2, 12)
    compiled = api.compile_model(net, "2,N,1,8,8")
    result = api.simulate(compiled.program, x)
    assert result.outputs[0].tobytes() == api.reference(compiled, x)[0].tobytes() == api.run_float(net, x)[0].tobytes()

    hooked = []

    def count(module, inputs, output):
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module is not net[0]:
            theta = 0.5 if module in (net[2].a, net[2].b, net[3]) else 1.0
            q = inputs[0] / theta * (2 ** (levels - 1) if mode == "cascade" else 1)
            assert torch.equal(q, q.round())
            mask = (module.weight != 0).double()
            reach = lambda s: (nn.functional.conv2d(s.flatten(0, 1), mask, stride=module.stride, padding=module.padding)
                               if isinstance(module, nn.Conv2d) else nn.functional.linear(s, mask))
            hooked.append([int(reach(p.double()).sum()) for p in code_planes(q.long(), levels, mode)])

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    batch = x.shape[1]
    layers = [layer["counts"] for layer in result.layers if "conv" in layer["op"] or "linear" in layer["op"]][1:]
    machine = [[round(c.get(f"plane{p}_add", 0) * batch) for p in range(levels)] for c in layers]
    assert sorted(machine) == sorted(hooked) and sum(map(sum, hooked)) > 0  # (the residual's two convs are one layer each)
    for c in layers:
        shifts = [c.get(f"plane{p}_shift", 0) for p in range(1, levels)]
        assert (all(s > 0 and s == shifts[0] for s in shifts) if mode == "cascade" else not any(shifts))
    spikes = [layer["counts"]["spike"] for layer in result.layers if "neuron" in layer["op"]]
    assert len(spikes) == 3 and all(s > 0 for s in spikes)
    prog = compiled.program
    assert asm.assemble(asm.disassemble(prog)).to_bytes() == prog.to_bytes() == Program.from_bytes(prog.to_bytes()).to_bytes()


def test_a_plif_decay_that_is_not_dyadic_is_quantised_and_its_error_noted():
    net = _mt_net(2, "parallel")
    with torch.no_grad():
        net[3].decay_logit.fill_(0.3)  # as a trained PLIF leaves it: sigmoid(0.3) = 0.5744...
    x = _digits(3, 4)
    compiled = api.compile_model(net, "3,N,1,8,8")
    note = compiled.graph.notes["decay"]["3"]
    assert note["decay"] == pytest.approx(float(torch.sigmoid(torch.tensor(0.3)))) and 0 < note["error"] < 2 ** -16
    assert "2" not in compiled.graph.notes["decay"]  # 0.5 runs exactly
    assert api.simulate(compiled.program, x).outputs[0].tobytes() == api.reference(compiled, x)[0].tobytes()


def test_the_committed_mt_digits_example_is_bit_exact_and_agrees_with_its_float_model():
    x, y = load_digits_split(1)[2:]
    model = api.load_model(MT_MODEL)  # MTNeuron loads without --trust-model
    compiled = api.compile_model(model, "1,N,1,8,8")
    sim = api.simulate(compiled.program, x).outputs[0]
    assert sim.tobytes() == api.reference(compiled, x)[0].tobytes()
    flt = api.run_float(model, x)[0]
    assert (sim.argmax(1) == y).mean() >= 0.95 and (flt.argmax(1) == sim.argmax(1)).mean() >= 0.98
    assert [layer["op"] for layer in compiled.program.meta["layers"]] == ["conv2d+neuron_q", "conv2d+neuron_q",
                                                                          "linear+time_reduce"]


def test_mt_spikes_feed_only_layers_and_bad_neurons_are_named():
    pooled = nn.Sequential(M.Conv2d(1, 4, 3, padding=1), M.MTNeuron(2, "parallel"), M.MaxPool2d(2), M.Flatten(),
                           M.Linear(64, 10), M.TimeMean())
    with pytest.raises(UnsupportedModel, match=r"module '2'.*maxpool.*reads multi-threshold spikes \(mt2p\)"):
        api.compile_model(pooled, "2,N,1,8,8")
    weighted = nn.Sequential(M.Conv2d(1, 4, 3, padding=1), M.MTNeuron(1, "parallel", threshold=0.5), M.MaxPool2d(2),
                             M.Flatten(), M.Linear(64, 10), M.TimeMean())
    with pytest.raises(IRError, match=r"maxpool, from '2'.*stand for 0.5 times their level.*only a conv or linear"):
        api.compile_model(weighted, "2,N,1,8,8")
    returned = nn.Sequential(M.Conv2d(1, 4, 3, padding=1), M.MTNeuron(3, "cascade", threshold=1.0))
    with pytest.raises(IRError, match="'1'.*returns multi-threshold spike planes"):
        api.compile_model(returned, "2,N,1,8,8")
    with pytest.raises(ValueError, match="levels 1..4"):
        M.MTNeuron(5, "parallel")
    with pytest.raises(ValueError, match="mode 'parallel' or 'cascade'"):
        M.MTNeuron(2, "serial")
