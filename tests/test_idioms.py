"""Models written the way SpikingJelly's and snnTorch's tutorials write them (issue 17): static inputs
repeated over time with unsqueeze/repeat or a torch.zeros buffer sized from the input, Python loops
over x.shape[0], dropout, adaptive pooling. Each compiles and runs bit-exact against the quantized
reference; dyadic ones equal the float model bit for bit; a refusal names the user's own source line."""
import pytest
import snntorch as snn
from snntorch import utils
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from spikingjelly.activation_based.model import ms_resnet, parametric_lif_net
from torch import nn

from conftest import grid_inputs
from test_end_to_end import bits_equal, dyadic_
from test_thirdparty import with_bn_stats
from ttc import api
from ttc.frontends.trace import UnsupportedModel
from ttc.isa.errors import TtcError

T = 4


class CSNN(nn.Module):
    """SpikingJelly's conv_fashion_mnist tutorial network (shrunk): a static image repeated over T steps
    by unsqueeze/repeat, IF neurons with a surrogate, dropout before the classifier, firing rate out."""

    def __init__(self, channels=4):
        super().__init__()
        self.T = T
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, channels, kernel_size=3, padding=1, bias=False), layer.BatchNorm2d(channels),
            neuron.IFNode(surrogate_function=surrogate.ATan()), layer.MaxPool2d(2, 2), layer.Flatten(),
            layer.Dropout(0.5), layer.Linear(channels * 4 * 4, 10, bias=False),
            neuron.IFNode(surrogate_function=surrogate.ATan()))
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x):
        x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # [N, C, H, W] -> [T, N, C, H, W]
        return self.conv_fc(x_seq).mean(0)


class ExpandedInput(CSNN):
    def forward(self, x):
        return self.conv_fc(x.unsqueeze(0).expand(self.T, -1, -1, -1, -1)).mean(0)


class ZerosLikeInput(nn.Module):
    """A sequence buffer sized and placed from the input (`x.size()[0]`, `device=x.device`), filled per step."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), neuron.LIFNode(tau=2.0), layer.Flatten(),
                                 layer.Linear(256, 10), neuron.IFNode())
        functional.set_step_mode(self, "m")

    def forward(self, x):
        seq = torch.zeros(T, x.size()[0], *x.shape[1:], device=x.device, dtype=x.dtype)
        for t in range(T):
            seq[t] = x
        return self.net(seq).mean(0)


class LoopOverShape(nn.Module):
    """Single-step SpikingJelly layers driven by a loop over the input's time axis, `range(x.shape[0])`."""

    def __init__(self):
        super().__init__()
        self.conv = layer.Conv2d(1, 4, 3, padding=1)
        self.sn = neuron.LIFNode(tau=2.0, v_threshold=0.5)
        self.fc = layer.Linear(256, 10)
        self.out = neuron.IFNode(v_reset=None)

    def forward(self, x):
        out = []
        for t in range(x.shape[0]):
            out.append(self.out(self.fc(self.sn(self.conv(x[t])).flatten(1))))
        return torch.stack(out).mean(0)


class AdaptivePooled(nn.Module):
    """The zoo's classifier head: AdaptiveAvgPool2d((1, 1)) (and a 2x2 adaptive max pool) before flatten."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(layer.Conv2d(1, 8, 3, padding=1), neuron.IFNode(), layer.AdaptiveAvgPool2d((2, 2)),
                                 neuron.IFNode(v_threshold=0.25), layer.Dropout2d(0.2), layer.AdaptiveAvgPool2d(1),
                                 layer.Flatten(), layer.Linear(8, 10))
        functional.set_step_mode(self, "m")

    def forward(self, x):
        return self.net(x).mean(0)


class SnnTorchTutorial5(nn.Module):
    """snnTorch tutorial 5 as written: the static input fed to the first layer at every step of the loop,
    spike and membrane records stacked."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(64, 32), snn.Leaky(beta=0.875)
        self.fc2, self.lif2 = nn.Linear(32, 10), snn.Leaky(beta=0.875)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for step in range(T):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


class FoldedIntoBatch(nn.Module):
    """Time folded into the batch by hand around single-step torch layers (`x.view(T * B, ...)`,
    `flatten(0, 1)`, `unflatten`), SpikingJelly's containers, and a residual add feeding SpikingJelly's
    default LIF (decay_input: its 1/tau gain has no conv of its own to fold into) and a PLIF."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.sn1 = neuron.LIFNode(tau=2.0, step_mode="m")
        self.block = layer.MultiStepContainer(nn.Conv2d(4, 4, 3, padding=1), neuron.IFNode())
        self.conv2 = layer.SeqToANNContainer(nn.Conv2d(4, 4, 3, padding=1))
        self.sn2 = neuron.LIFNode(tau=2.0, step_mode="m")
        self.sn3 = neuron.ParametricLIFNode(init_tau=2.0, step_mode="m")
        self.fc = layer.Linear(256, 10, step_mode="m")

    def forward(self, x):
        T, B = x.shape[0], x.shape[1]
        y = self.conv(x.view(T * B, 1, 8, 8)).view(T, B, 4, 8, 8)
        s = self.sn1(y)
        r = self.sn2(self.conv2(self.block(s)) + y)  # a residual add into a decay_input LIF
        r = self.sn3(r + r)
        return self.fc(r.flatten(0, 1).flatten(1).unflatten(0, (T, B))).mean(0)


class SnnTorchInitHidden(nn.Module):
    """snnTorch's init_hidden=True style: a Sequential called on x[step], hidden states reset first."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=0.5, init_hidden=True), nn.Flatten(),
                                 nn.Linear(256, 10), snn.Leaky(beta=0.5, init_hidden=True, output=True))

    def forward(self, x):
        utils.reset(self.net)
        spk_rec = []
        for step in range(x.size(0)):
            spk_out, mem_out = self.net(x[step])
            spk_rec.append(spk_out)
        return torch.stack(spk_rec)


class TwoBranches(nn.Module):
    """torch.cat of two branches along the channels, multi-step (dim 2) and in a snnTorch loop (dim 1)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), neuron.IFNode())
        self.b = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), neuron.LIFNode(tau=2.0))
        self.c = nn.Sequential(layer.Conv2d(8, 4, 3, padding=1), neuron.IFNode())
        functional.set_step_mode(self, "m")
        self.d, self.lif_d = nn.Conv2d(4, 4, 3, padding=1), snn.Leaky(beta=0.5)
        self.e, self.lif_e = nn.Conv2d(4, 4, 3, padding=1), snn.Leaky(beta=0.5)
        self.fc, self.lif_fc = nn.Linear(8 * 64, 10), snn.Leaky(beta=0.5)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], dim=2))
        mem_d, mem_e, mem_fc = self.lif_d.init_leaky(), self.lif_e.init_leaky(), self.lif_fc.init_leaky()
        out = []
        for t in range(T):
            d, mem_d = self.lif_d(self.d(y[t]), mem_d)
            e, mem_e = self.lif_e(self.e(y[t]), mem_e)
            spk, mem_fc = self.lif_fc(self.fc(torch.cat((d, e), 1).flatten(1)), mem_fc)
            out.append(spk)
        return torch.stack(out).sum(0)


class PaddedPools(nn.Module):
    """Padded and ceil-mode max pools, of spikes and of a conv's signed sums (the ResNet stem's
    MaxPool2d(3, 2, 1) after batch norm): every window holds an input, so the padding never wins."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            layer.Conv2d(1, 4, 3, padding=1), neuron.IFNode(), layer.MaxPool2d(3, 2, 1),  # 8x8 -> 4x4
            layer.Conv2d(4, 4, 3, padding=1), layer.MaxPool2d(3, 2, 1, ceil_mode=True),  # 4x4 -> 3x3
            neuron.IFNode(), layer.Flatten(), layer.Linear(36, 10))
        functional.set_step_mode(self, "m")

    def forward(self, x):
        return self.net(x).mean(0)


class PerChannelThresholds(nn.Module):
    """snnTorch neurons with a threshold per channel (a [C, 1, 1] tensor after a conv, [F] after a linear)."""

    def __init__(self):
        super().__init__()
        self.conv, self.lif1 = nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=0.5, threshold=torch.tensor(
            [0.25, 0.5, 1.0, 2.0]).reshape(4, 1, 1))
        self.fc, self.lif2 = nn.Linear(256, 10), snn.Leaky(beta=0.5, threshold=torch.tensor([0.5, 1.0] * 5),
                                                           reset_mechanism="zero")

    def forward(self, x):
        mem1, mem2, out = self.lif1.init_leaky(), self.lif2.init_leaky(), []
        for t in range(T):
            spk1, mem1 = self.lif1(self.conv(x[t]), mem1)
            spk2, mem2 = self.lif2(self.fc(spk1.flatten(1)), mem2)
            out.append(spk2)
        return torch.stack(out)


class PerChannelDecays(nn.Module):
    """snnTorch neurons with a beta per channel ([C, 1, 1] after a conv, [F] after a linear, one of them 1,
    one 0), beside thresholds per channel; a second conv's neurons take theirs unfused, after a max pool."""

    def __init__(self):
        super().__init__()
        self.conv, self.lif1 = nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(
            beta=torch.tensor([0.5, 0.75, 0.25, 1.0]).reshape(4, 1, 1),
            threshold=torch.tensor([0.25, 0.5, 1.0, 2.0]).reshape(4, 1, 1))
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.lif2 = snn.Leaky(beta=torch.tensor([0.875, 0.5, 0.0, 0.625]).reshape(4, 1, 1))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64, 10)
        self.lif3 = snn.Leaky(beta=torch.tensor([0.5, 0.75, 0.25, 0.125, 1.0] * 2), threshold=torch.tensor([0.5, 1.0] * 5),
                              reset_mechanism="zero")

    def forward(self, x):
        mem1, mem2, mem3, out = self.lif1.init_leaky(), self.lif2.init_leaky(), self.lif3.init_leaky(), []
        for t in range(T):
            spk1, mem1 = self.lif1(self.conv(x[t]), mem1)
            spk2, mem2 = self.lif2(self.pool(self.conv2(spk1)), mem2)
            spk3, mem3 = self.lif3(self.fc(spk2.flatten(1)), mem3)
            out.append(spk3)
        return torch.stack(out)


NETS = {  # name: (model, input shape of one run, exactly representable: weights dyadic, no batch norm)
    "sj-tutorial-unsqueeze-repeat": (lambda: dyadic_(CSNN(), 1), (100, 1, 8, 8), False),
    "unsqueeze-expand": (lambda: dyadic_(ExpandedInput(), 2), (100, 1, 8, 8), False),
    "zeros-sized-from-input": (lambda: dyadic_(ZerosLikeInput(), 3), (100, 1, 8, 8), True),
    "loop-over-x-shape": (lambda: dyadic_(LoopOverShape(), 4), (T, 100, 1, 8, 8), True),
    "adaptive-pooling": (lambda: dyadic_(AdaptivePooled(), 5), (T, 100, 1, 8, 8), True),
    "snntorch-tutorial-5-static-input": (lambda: dyadic_(SnnTorchTutorial5(), 6), (100, 64), True),
    "time-folding-containers-residual-lif": (lambda: dyadic_(FoldedIntoBatch(), 7), (T, 100, 1, 8, 8), True),
    "snntorch-init-hidden": (lambda: dyadic_(SnnTorchInitHidden(), 8), (T, 100, 1, 8, 8), True),
    "channel-cat-of-branches": (lambda: dyadic_(TwoBranches(), 11), (T, 100, 1, 8, 8), True),
    "padded-and-ceil-mode-max-pools": (lambda: dyadic_(PaddedPools(), 12), (T, 100, 1, 8, 8), True),
    "snntorch-thresholds-per-channel": (lambda: dyadic_(PerChannelThresholds(), 14), (T, 100, 1, 8, 8), True),
    "snntorch-beta-per-channel": (lambda: dyadic_(PerChannelDecays(), 15), (T, 100, 1, 8, 8), True),
    # SpikingJelly's model zoo (its spiking_resnet, sew_resnet and spiking_vgg modules cannot be imported
    # beside torch 2.13: they import torchvision.models.utils, which torchvision no longer has)
    "sj-zoo-ms-resnet": (lambda: zoo_ms_resnet(), (100, 1, 16, 16), False),
    "sj-zoo-mnistnet-voting": (lambda: zoo_mnistnet(), (2, 20, 1, 28, 28), False),
}


def zoo_ms_resnet():
    """The zoo's MS-ResNet (membrane shortcuts, TT-SNN's base network), shrunk, with its stem's padded
    max pool: its blocks are library classes composing known layers, traced into; its input check
    reads x.ndim."""
    torch.manual_seed(9)
    net = ms_resnet.MSResNet(T=2, in_channels=1, num_classes=10, layers=(1, 1, 1), base_channels=4, stem_kernel_size=3,
                             stem_stride=1, stem_pool=True, spiking_neuron=neuron.LIFNode)
    return with_bn_stats(net, 9)


def zoo_mnistnet():
    """parametric_lif_net.MNISTNet with few channels: dropout, and a VotingLayer over 100 outputs."""
    torch.manual_seed(10)
    net = parametric_lif_net.MNISTNet(channels=2, spiking_neuron=neuron.IFNode, v_threshold=0.0625)
    functional.set_step_mode(net, "m")
    return with_bn_stats(net, 10)


def _spec(shape):
    batch = 0 if len(shape) in (2, 4) else 1  # static inputs: [N, F] or [N, C, H, W]
    return ",".join("N" if i == batch else str(d) for i, d in enumerate(shape))


@pytest.mark.parametrize("name", NETS)
def test_tutorial_idiom_compiles_bit_exact(name):
    make, shape, exact = NETS[name]
    model = make()
    compiled = api.compile_model(model, _spec(shape))
    x = grid_inputs(shape, seed=7)
    sim, ref, flt = api.simulate(compiled.program, x).outputs, api.reference(compiled, x), api.run_float(model, x)
    for s, r, f in zip(sim, ref, flt):
        assert bits_equal(s, r)
        if exact:
            assert bits_equal(s, f.astype(s.dtype)), "exactly representable: the float model's outputs, bit for bit"
        else:  # batch norm's 1/sqrt(var + eps) is rounded: quantization keeps the float model's decisions
            assert (s.argmax(-1) == f.argmax(-1)).mean() >= 0.8
    assert sim[0].std() > 0, "a constant output tests nothing"


def test_decays_per_channel_are_loaded_tile_by_tile_under_small_buffers():
    """1 KiB of vmem holds 128 states and their decays: each layer runs in several tiles, each loading its own
    block of decays beside its states; the outputs stay the float model's, bit for bit."""
    from test_plan import SMALL

    model = dyadic_(PerChannelDecays(), 15)
    compiled = api.compile_model(model, _spec((T, 100, 1, 8, 8)), SMALL)
    x = grid_inputs((T, 100, 1, 8, 8), seed=7)
    sim, ref, flt = api.simulate(compiled.program, x).outputs, api.reference(compiled, x), api.run_float(model, x)
    assert bits_equal(sim[0], ref[0]) and bits_equal(sim[0], flt[0].astype(sim[0].dtype))
    code = compiled.program.code
    nrn = [i for i in code if i.op == "nrn"]
    assert nrn and all(i["per_neuron"] == 1 and i["decay_mul"] == 0 for i in nrn)
    decay_loads = [i for i in code if i.op == "load" and i["dst"].mem == "vmem"]
    tiles = {i["n"] for i in nrn}
    assert len(decay_loads) > 3 and max(tiles) <= 128, "several tiles, each with its decays"
    for load in decay_loads:  # an i32 per neuron, just after the tile's i32 states: as many bytes as the states
        assert load["dst"].addr == load["rows"] * load["row_bytes"]


def test_a_refused_call_names_the_users_source_line():
    class Unknown(CSNN):
        def forward(self, x):
            return self.conv_fc(x.unsqueeze(1).repeat(1, T, 1, 1, 1)).mean(0)  # time on the wrong axis

    with pytest.raises(UnsupportedModel, match=r"unsqueeze\(1\) at .*test_idioms\.py\", line \d+, in forward"):
        api.compile_model(Unknown(), "N,1,8,8")


def test_a_neuron_without_a_conv_of_its_own_takes_its_gain_but_not_a_charge():
    """SpikingJelly's LIF with v_reset != 0 adds v_reset/tau every step: the hardware neuron only adds
    its input, and after an add there is no conv to carry the constant."""

    class ChargedAfterAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer.Conv2d(1, 4, 3, padding=1, step_mode="m")
            self.sn = neuron.LIFNode(tau=2.0, v_reset=0.25, step_mode="m")

        def forward(self, x):
            y = self.conv(x)
            return self.sn(y + y).mean(0)

    with pytest.raises(TtcError, match="sn.*v_reset"):
        api.compile_model(ChargedAfterAdd().eval(), "4,N,1,8,8")


def test_a_beta_per_channel_compiles_and_one_per_pixel_is_refused_by_name_and_leaks_no_warning(recwarn):
    """A learnt beta per feature of a linear layer (not dyadic: quantized, noted) compiles and runs bit-exact
    against the reference; a beta that varies over H and W is not one per channel, and says so."""

    class PerNeuronBeta(nn.Module):
        def __init__(self, beta, conv=False):
            super().__init__()
            self.layer = nn.Conv2d(1, 2, 3, padding=1) if conv else nn.Linear(64, 10)
            self.lif = snn.Leaky(beta=beta, learn_beta=True)

        def forward(self, x):
            mem, out = self.lif.init_leaky(), []
            for t in range(T):
                spk, mem = self.lif(self.layer(x[t]) if isinstance(self.layer, nn.Conv2d)
                                    else self.layer(x[t].flatten(1)), mem)
                out.append(spk)
            return torch.stack(out)

    model = PerNeuronBeta(torch.linspace(0.5, 0.9, 10)).eval()
    compiled = api.compile_model(model, "4,N,1,8,8")
    x = grid_inputs((T, 20, 1, 8, 8), seed=3)
    assert bits_equal(api.simulate(compiled.program, x).outputs[0], api.reference(compiled, x)[0])
    assert compiled.program.meta["decay"]["lif"]["error"] < 2.0 ** -16  # 0.5 + 0.4k/9 rounded to 16 bits
    with pytest.raises(UnsupportedModel, match=r"'lif' \(snntorch.*Leaky\): a beta per neuron \(2, 8, 8\) that is not one "
                                               "per channel"):
        api.compile_model(PerNeuronBeta(torch.rand(2, 8, 8), conv=True).eval(), "4,N,1,8,8")
    assert not [w for w in recwarn if issubclass(w.category, UserWarning) and "scalar" in str(w.message)]


def test_docs_frontends_md_is_what_the_module_maps_say():
    from pathlib import Path

    from ttc.frontends import docs

    assert (Path(__file__).parent.parent / "docs" / "frontends.md").read_text() == docs.render()


def test_sj_zoo_sew_resnet_compiles_bit_exact(monkeypatch):
    """SpikingJelly's SEW-ResNet (7x7 stride-2 stem, padded max pool, ADD connections, zoo blocks traced
    into). Its module imports torchvision only to download pretrained weights, and the torchvision that
    spikingjelly pulls from PyPI cannot be imported beside torch 2.13 ("operator torchvision::nms does
    not exist"): the test gives that one import a stand-in, as nothing here downloads weights."""
    import sys
    import types

    stand_in = types.ModuleType("torchvision._internally_replaced_utils")
    stand_in.load_state_dict_from_url = None
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", None)  # `torchvision.models.utils`: ImportError
    monkeypatch.setitem(sys.modules, "torchvision._internally_replaced_utils", stand_in)
    from spikingjelly.activation_based.model import sew_resnet

    torch.manual_seed(13)
    net = sew_resnet.SEWResNet(sew_resnet.BasicBlock, [1, 1, 1, 1], num_classes=10, cnf="ADD", spiking_neuron=neuron.IFNode)
    functional.set_step_mode(net, "m")
    compiled = api.compile_model(net.eval(), "2,N,3,16,16")
    x = grid_inputs((2, 8, 3, 16, 16), seed=13)
    sim, ref = api.simulate(compiled.program, x).outputs[0], api.reference(compiled, x)[0]
    assert bits_equal(sim, ref) and sim.std() > 0
