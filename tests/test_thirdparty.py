"""Third-party models: SpikingJelly (multi-step and single-step) and snnTorch (time loops) compile and
run bit-exact against the quantized reference; exactly representable ones equal PyTorch bit for bit;
what ttc cannot compile is named by path and type."""
import pytest
import snntorch as snn
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from conftest import grid_inputs
from test_end_to_end import bits_equal, dyadic_
from ttc import api
from ttc.frontends.trace import UnsupportedModel

SHAPE = (4, 100, 1, 8, 8)


def with_bn_stats(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


class TimeMeanOf(nn.Module):
    """A SpikingJelly-style net whose forward ends in a mean over time."""

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x).mean(0)


def sj_conv_net(node, seed=0):
    torch.manual_seed(seed)
    net = TimeMeanOf(
        layer.Conv2d(1, 6, 3, padding=1, bias=False), layer.BatchNorm2d(6), node(), layer.MaxPool2d(2),
        layer.Conv2d(6, 8, 3, padding=1), node(), layer.AvgPool2d(2), layer.Flatten(), layer.Linear(32, 10))
    functional.set_step_mode(net, "m")
    return with_bn_stats(net, seed)


class SJSingleStep(nn.Module):
    """Single-step SpikingJelly layers driven by a Python time loop."""

    def __init__(self, steps=4):
        super().__init__()
        self.steps = steps
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.lif = neuron.LIFNode(tau=2.0, v_threshold=0.25)
        self.fc = nn.Linear(6 * 64, 10)
        self.out = neuron.IFNode(v_threshold=0.125, v_reset=None)

    def forward(self, x):
        rec = []
        for t in range(self.steps):
            rec.append(self.out(self.fc(self.lif(self.conv(x[t])).flatten(1))))
        return torch.stack(rec).mean(0)


class SnnTorchFC(nn.Module):
    """The snnTorch tutorial pattern: explicit membranes, spike and membrane records."""

    def __init__(self, reset="subtract", beta=0.9, threshold=1.0, steps=4):
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(64, 32)
        self.lif1 = snn.Leaky(beta=beta, threshold=threshold, reset_mechanism=reset)
        self.fc2 = nn.Linear(32, 10)
        self.lif2 = snn.Leaky(beta=beta, threshold=threshold, reset_mechanism=reset)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk_rec, mem_rec = [], []
        for t in range(self.steps):
            spk1, mem1 = self.lif1(self.fc1(x[t].flatten(1)), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


class SnnTorchConv(nn.Module):
    def __init__(self, steps=4):
        super().__init__()
        self.steps = steps
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.lif1 = snn.Leaky(beta=0.5, threshold=0.5, reset_mechanism="zero")
        self.fc = nn.Linear(8 * 16, 10)
        self.lif2 = snn.Leaky(beta=0.5, threshold=0.5)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        out = []
        for t in range(self.steps):
            spk1, mem1 = self.lif1(self.pool(self.conv(x[t])), mem1)
            spk2, mem2 = self.lif2(self.fc(spk1.flatten(1)), mem2)
            out.append(spk2)
        return torch.stack(out).sum(0)


NETS = {
    "sj-lif-hard": lambda: sj_conv_net(lambda: neuron.LIFNode(tau=2.0, v_threshold=0.5), 1),
    "sj-lif-soft-no-decay-input": lambda: sj_conv_net(
        lambda: neuron.LIFNode(tau=4.0, decay_input=False, v_reset=None, v_threshold=0.5), 2),
    "sj-if": lambda: sj_conv_net(lambda: neuron.IFNode(v_threshold=1.0), 3),
    "sj-plif": lambda: sj_conv_net(lambda: neuron.ParametricLIFNode(init_tau=2.0, v_threshold=0.5), 4),
    "sj-single-step-loop": lambda: torch.manual_seed(5) and SJSingleStep().eval(),
    "snntorch-fc-subtract": lambda: torch.manual_seed(6) and SnnTorchFC("subtract").eval(),
    "snntorch-fc-zero": lambda: torch.manual_seed(7) and SnnTorchFC("zero", beta=0.8, threshold=0.5).eval(),
    "snntorch-conv": lambda: torch.manual_seed(8) and SnnTorchConv().eval(),
}


def _spec(shape):
    return ",".join("N" if i == 1 else str(d) for i, d in enumerate(shape))


@pytest.mark.parametrize("name", NETS)
def test_simulator_equals_quantized_reference_on_100_inputs(name):
    model = NETS[name]()
    compiled = api.compile_model(model, _spec(SHAPE))
    x = grid_inputs(SHAPE, seed=11)
    sim = api.simulate(compiled.program, x).outputs
    ref = api.reference(compiled, x)
    flt = api.run_float(model, x)
    assert len(sim) == len(ref) == len(flt)
    for s, r, f in zip(sim, ref, flt):
        assert bits_equal(s, r)
        assert s.shape == f.shape
    assert sim[0].std() > 0, "a constant output tests nothing"
    if sim[0].ndim == 2 and sim[0].shape[1] == 10:  # logits: quantization keeps the float model's decisions
        assert (sim[0].argmax(1) == flt[0].argmax(1)).mean() >= 0.8


def test_exact_spikingjelly_model_equals_pytorch_bit_for_bit():
    net = TimeMeanOf(layer.Conv2d(1, 4, 3, padding=1), neuron.LIFNode(tau=2.0, v_threshold=0.5),
                     layer.MaxPool2d(2), layer.Flatten(), layer.Linear(64, 10),
                     neuron.IFNode(v_threshold=0.25, v_reset=None))
    functional.set_step_mode(net, "m")
    dyadic_(net, 21)
    x = grid_inputs(SHAPE, seed=21)
    compiled = api.compile_model(net, _spec(SHAPE))
    sim = api.simulate(compiled.program, x).outputs[0]
    assert bits_equal(sim, api.run_float(net, x)[0])
    assert sim.std() > 0


def test_exact_snntorch_model_equals_pytorch_bit_for_bit_on_spikes_and_membranes():
    torch.manual_seed(22)
    net = dyadic_(SnnTorchFC("subtract", beta=0.5, threshold=0.5), 22)
    x = grid_inputs(SHAPE, seed=22)
    compiled = api.compile_model(net, _spec(SHAPE))
    sim = api.simulate(compiled.program, x).outputs
    flt = api.run_float(net, x)
    assert bits_equal(sim[0], flt[0]) and bits_equal(sim[1], flt[1])
    assert sim[0].sum() > 0 and sim[1].std() > 0


class Wrapped(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 16))
        self.body.add_module("act", act)

    def forward(self, x):
        return self.body(x.flatten(2))


@pytest.mark.parametrize("act,type_name", [
    (nn.GELU(), "torch.nn.modules.activation.GELU"),
    (neuron.QIFNode(), "spikingjelly.activation_based.neuron.QIFNode"),
    (snn.Synaptic(alpha=0.5, beta=0.5), "snntorch._neurons.synaptic.Synaptic"),
])
def test_unsupported_modules_are_named_by_path_and_type(act, type_name):
    if hasattr(act, "step_mode"):
        act.step_mode = "m"
    with pytest.raises(UnsupportedModel) as err:
        api.compile_model(Wrapped(act), "4,N,1,8,8")
    assert "body.act" in str(err.value) and type_name.rsplit(".", 1)[1] in str(err.value)
