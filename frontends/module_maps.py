"""Module maps: how each known layer or neuron module lowers to IR ops.

One handler per kind of layer, shared by ttc's modules, torch.nn and SpikingJelly's wrappers (which
subclass torch.nn's layers); neurons have one handler per library because their equations differ
(see ttc.compiler.ir.Neuron). SpikingJelly and snnTorch are never imported here: a model that uses
them has imported them already when it was built or unpickled.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from ttc.compiler import ir

from . import modules as ttc
from . import ttfs
from .trace import ZERO_STATE, Lowering, State, Step, UnsupportedModel, Val, _qual, to_numpy


_RUN_MULTI_STEP: set[int] = set()  # ids of the modules a container runs over whole sequences


def is_multi_step(m: nn.Module) -> bool:
    """ttc's modules and the official TT-SNN layers work on [T, B, ...]; SpikingJelly's say so with
    step_mode; torch.nn's do not; a SpikingJelly container runs its children over whole sequences."""
    if type(m).__module__ == ttc.__name__ or type(m).__name__ in _TT_SNN or id(m) in _RUN_MULTI_STEP:
        return True
    return getattr(m, "step_mode", "s") == "m"


def _require(cond: bool, path: str, m: nn.Module, what: str) -> None:
    if not cond:
        raise UnsupportedModel(f"module {path!r} ({_qual(m)}): {what}")


def _int_pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(e) for e in v)


def _padding(m: nn.Conv2d) -> tuple[int, int]:
    """Explicit padding, with 'same' (stride 1, odd kernels) made explicit."""
    if m.padding == "same":
        return tuple(k // 2 for k in m.kernel_size)
    return _int_pair(m.padding)


def _square(path, m, v, name) -> int:
    a, b = _int_pair(v)
    _require(a == b, path, m, f"non-square {name} {v} is not supported")
    return a


def _bias(m) -> object:
    return None if m.bias is None else to_numpy(m.bias)


def _weight(m) -> object:
    """The weights the layer computes with: a CAT-trained layer's are on the 5-bit log grid."""
    return to_numpy(ttfs.log_quantize(m.weight) if isinstance(m, (ttfs.LogConv2d, ttfs.LogLinear)) else m.weight)


def conv2d(lw: Lowering, path, m: nn.Conv2d, x):
    """conv2d: a 2-D convolution (zero padding, groups 1, no dilation), per step."""
    _require(m.groups == 1, path, m, f"grouped convolution (groups={m.groups}) is not supported")
    _require(_int_pair(m.dilation) == (1, 1), path, m, "dilated convolution is not supported")
    _require(m.padding_mode == "zeros" and m.padding != "valid", path, m, "only explicit zero padding is supported")
    return lw.per_step(path, m, x, is_multi_step(m), lambda v: lw.emit(
        ir.Conv2d, path, (v,), weight=_weight(m), bias=_bias(m),
        stride=_int_pair(m.stride), padding=_padding(m)))


def linear(lw: Lowering, path, m: nn.Linear, x):
    """torch's Linear acts on the last axis, so on a [T, B, F] sequence it is multi-step as it stands.
    A linear readout of a mean over time is the mean over time of the readout (exactly:
    W mean(x) + b = mean(W x + b)), which is how ttc computes it."""
    if isinstance(x, Val) and isinstance(lw.graph.op(x.name), ir.TimeReduce) and lw.graph.op(x.name).mode == "mean":
        steps = Val(lw.graph.op(x.name).inputs[0])
        return Val(lw.emit(ir.TimeReduce, f"{path}.mean", (linear(lw, path, m, steps).name,), mode="mean"))
    multi = is_multi_step(m) or isinstance(x, Val)
    return lw.per_step(path, m, x, multi, lambda v: lw.emit(
        ir.Linear, path, (v,), weight=_weight(m), bias=_bias(m)))


def batchnorm(lw: Lowering, path, m: nn.modules.batchnorm._BatchNorm, x):
    """batchnorm with running statistics, per step (folded into the conv before it)."""
    multi = is_multi_step(m)
    if type(m).__name__ in _TT_SNN:  # TT-SNN's batch_norm_2d: a BatchNorm3d over [B, C, T, H, W], in `bn`
        path, m = f"{path}.bn", m.bn
    _require(m.track_running_stats and m.running_mean is not None, path, m, "batchnorm without running statistics")
    weight = to_numpy(m.weight) if m.affine else None
    bias = to_numpy(m.bias) if m.affine else None
    mean, var = to_numpy(m.running_mean), to_numpy(m.running_var)
    return lw.per_step(path, m, x, multi, lambda v: lw.emit(
        ir.BatchNorm, path, (v,), weight=weight if weight is not None else mean * 0 + 1,
        bias=bias if bias is not None else mean * 0, mean=mean, var=var, eps=float(m.eps)))


def pool(lw: Lowering, path, m, x):
    """max_pool / avg_pool: square kernel and stride; a max pool may be padded and in ceil mode (of
    spikes: the ResNet stem's MaxPool2d(3, 2, 1)), an average pool neither."""
    k = _square(path, m, m.kernel_size, "kernel")
    s = _square(path, m, m.stride if m.stride is not None else m.kernel_size, "stride")
    if isinstance(m, nn.MaxPool2d):
        _require(_int_pair(m.dilation) == (1, 1), path, m, "dilated max pooling is not supported")
        pad = _square(path, m, m.padding, "padding")
        return lw.per_step(path, m, x, is_multi_step(m), lambda v: lw.emit(
            ir.MaxPool, path, (v,), kernel=k, stride=s, padding=pad, ceil_mode=bool(m.ceil_mode)))
    _require(_int_pair(m.padding) == (0, 0) and not m.ceil_mode, path, m, "padded or ceil-mode average pooling is not supported")
    _require(m.divisor_override is None, path, m, "divisor_override is not supported")
    return lw.per_step(path, m, x, is_multi_step(m), lambda v: lw.emit(ir.AvgPool, path, (v,), kernel=k, stride=s))


def adaptive_pool(lw: Lowering, path, m, x):
    """Adaptive average or max pooling to an output size that divides the input: a pooling whose kernel
    and stride are input / output (SpikingJelly's zoo ends in AdaptiveAvgPool2d((1, 1)))."""
    out = _int_pair(m.output_size) if m.output_size is not None and None not in _int_pair(m.output_size) else None
    _require(out is not None, path, m, f"output size {m.output_size} must be given on both axes")
    cls = ir.MaxPool if isinstance(m, nn.AdaptiveMaxPool2d) else ir.AvgPool

    def build(v):
        _, h, w = lw.graph.op(v).type.shape
        _require(h % out[0] == 0 and w % out[1] == 0 and h // out[0] == w // out[1], path, m,
                 f"output size {out} does not divide the {h}x{w} input into square windows")
        return lw.emit(cls, path, (v,), kernel=h // out[0], stride=h // out[0])

    return lw.per_step(path, m, x, is_multi_step(m), build)


def voting(lw: Lowering, path, m, x):
    """SpikingJelly's VotingLayer: the mean of each group of `voting_size` consecutive features, a linear
    layer of block weights 1/voting_size (exact where voting_size is a power of two)."""
    v = int(m.voting_size)

    def build(name):
        (features,) = lw.graph.op(name).type.shape
        _require(features % v == 0, path, m, f"{features} features are not groups of voting_size {v}")
        weight = np.kron(np.eye(features // v, dtype=np.float32), np.full((1, v), 1.0 / v, dtype=np.float32))
        return lw.emit(ir.Linear, path, (name,), weight=weight, bias=None)

    return lw.per_step(path, m, x, is_multi_step(m) or isinstance(x, Val), build)


def flatten(lw: Lowering, path, m, x):
    """flatten of each step's [C, H, W] (never the time or batch axis)."""
    multi = is_multi_step(m)
    if isinstance(m, nn.Flatten):
        _require(m.end_dim == -1, path, m, "flatten with end_dim != -1")
        # SpikingJelly's multi-step Flatten counts dims of one step; a bare nn.Flatten on [T,B,...] does not.
        start = m.start_dim + (1 if multi else 0)
        if isinstance(x, Val) and not multi and m.start_dim == 2:
            multi, start = True, 2
        _require(start == 2 if multi else start == 1, path, m, f"flatten(start_dim={m.start_dim}) would merge the batch or time axis")
    return lw.per_step(path, m, x, multi, lambda v: lw.emit(ir.Flatten, path, (v,)))


def identity(lw: Lowering, path, m, x):
    """nothing: the identity at inference (dropout included)."""
    return x


def direct_encoder(lw: Lowering, path, m: ttc.DirectEncoder, x):
    """repeat: the static input at each of T steps (direct coding)."""
    _require(isinstance(x, Val) and lw.type_of(x).time is None, path, m, "direct encoding of a value that is not a static input")
    lw.steps = m.steps
    return Val(lw.emit(ir.Repeat, path, (x.name,), steps=int(m.steps)))


def time_mean(lw: Lowering, path, m, x):
    """time_reduce mean: the mean over the T steps."""
    _require(isinstance(x, Val), path, m, "TimeMean needs the whole sequence")
    return Val(lw.emit(ir.TimeReduce, path, (x.name,), mode="mean"))


def seq_to_ann(lw: Lowering, path, m, x):
    """SpikingJelly's SeqToANNContainer: its children are single-step layers run on every step."""
    for name, child in m.named_children():
        handler = handler_for(child)
        if handler not in _STATELESS:
            raise UnsupportedModel(f"unsupported module {path}.{name!r} of type {_qual(child)} in a SeqToANNContainer")
        _require(isinstance(x, Val), path, m, "SeqToANNContainer needs the whole sequence")
        x = _as_multi_step(lw, f"{path}.{name}", child, x, handler)
    return x


def multi_step_container(lw: Lowering, path, m, x):
    """SpikingJelly's MultiStepContainer and StepModeContainer: their children run over every step of
    the sequence (one step at a time, or folded into the batch when stateless): as multi-step layers."""
    _require(isinstance(x, Val), path, m, "a multi-step container needs the whole sequence")
    for name, child in m.named_children():
        handler = handler_for(child)
        if handler is None:
            raise UnsupportedModel(f"unsupported module {path}.{name!r} of type {_qual(child)}")
        x = _as_multi_step(lw, f"{path}.{name}", child, x, handler)
    return x


def _as_multi_step(lw, path, child, x, handler):
    _RUN_MULTI_STEP.add(id(child))
    try:
        return handler(lw, path, child, x)
    finally:
        _RUN_MULTI_STEP.discard(id(child))


# ------------------------------------------------------------------------------------ neurons

def _neuron(lw: Lowering, path, m, x, multi: bool, **params):
    return lw.per_step(path, m, x, multi, lambda v: lw.emit(ir.Neuron, path, (v,), **params))


def ttc_lif(lw: Lowering, path, m: ttc.LIF, x):
    """neuron: h = decay * R(u) + x; spike = [h cmp threshold]; R resets (hard to v_reset, subtract, none)."""
    return _neuron(lw, path, m, x, True, theta=float(m.threshold), decay=float(m.decay), v_reset=float(m.v_reset),
                   v_init=float(m.v_init), reset=m.reset, order="reset_decay", cmp=m.cmp,
                   input_gain=float(m.input_gain), charge=float(m.charge))


def ttc_mt_neuron(lw: Lowering, path, m: ttc.MTNeuron, x):
    """neuron with K thresholds (MT-SNN, parallel or cascade; docs/mt.md). Its output, y = theta * level,
    is the planes with amplitude theta (fold-spike-amplitude)."""
    decay = float(torch.as_tensor(m.decay).detach())  # a PLIF's trained decay, or the constant
    return _neuron(lw, path, m, x, True, theta=float(m.threshold), decay=decay, reset="subtract",
                   order="reset_decay", cmp=m.cmp, levels=m.levels, mode=m.mode, amplitude=float(m.threshold))


def spikingjelly_node(lw: Lowering, path, m, x):
    """SpikingJelly LIFNode / IFNode / ParametricLIFNode:
    H = V + (X - (V - V_reset)) / tau (decay_input) or V - (V - V_reset) / tau + X; IF: H = V + X;
    spike = [H >= V_th]; V = V_reset where spiking (hard) or V - V_th (v_reset=None, soft)."""
    name = type(m).__name__
    neuron_mod = sys.modules["spikingjelly.activation_based.neuron"]
    v_reset = m.v_reset
    if isinstance(m, neuron_mod.ParametricLIFNode):
        k = float(m.w.detach().sigmoid())  # 1/tau, as the module computes it
    elif isinstance(m, neuron_mod.LIFNode):
        k = 1.0 / float(m.tau)
    elif isinstance(m, neuron_mod.IFNode):
        k = None
    else:
        raise UnsupportedModel(f"unsupported module {path!r} of type {_qual(m)}")
    vr = 0.0 if v_reset is None else float(v_reset)
    if k is None:
        decay, gain, charge = 1.0, 1.0, 0.0
    else:
        decay, charge = 1.0 - k, vr * k
        gain = k if getattr(m, "decay_input", True) else 1.0
    _require(name in ("LIFNode", "IFNode", "ParametricLIFNode"), path, m, "unsupported SpikingJelly neuron subclass")
    return _neuron(lw, path, m, x, is_multi_step(m), theta=float(m.v_threshold), decay=decay, v_reset=vr, v_init=vr,
                   reset="subtract" if v_reset is None else "hard", order="reset_decay", cmp="ge",
                   input_gain=gain, charge=charge)


def _per_channel(path, m, name: str, value) -> float | np.ndarray:
    """A neuron parameter as one value, or as one per channel (a tensor of C values, or [C, 1, 1])."""
    values = torch.as_tensor(value).detach()
    if bool((values == values.flatten()[0]).all()):
        return float(values.flatten()[0])
    _require(values.ndim == 1 or all(d == 1 for d in values.shape[1:]), path, m,
             f"a {name} per neuron {tuple(values.shape)} that is not one per channel is not supported")
    return values.flatten().float().numpy()


def snntorch_leaky(lw: Lowering, path, m, x, mem=None):
    """snnTorch Leaky: U[t] = beta*U[t-1] + X[t] - R[t]*theta (subtract), with R[t] = [U[t-1] > theta];
    'zero' sets U[t-1] to 0 where R[t]; spike = [U[t] > theta]. beta (clamped to [0, 1]) one value, or
    one per channel (each neuron decays by its channel's); theta one value, or one per channel (folded
    into the layer feeding it)."""
    _require(not m.inhibition, path, m, "inhibition is not supported")
    _require(not m.state_quant, path, m, "state_quant is not supported (ttc quantizes the state itself)")
    _require(float(m.graded_spikes_factor) == 1.0, path, m, "graded spikes are not supported")
    _require(m.reset_delay, path, m, "reset_delay=False is not supported")
    mechanism = m.reset_mechanism
    beta, theta = _per_channel(path, m, "beta", m.beta), _per_channel(path, m, "threshold", m.threshold)
    decay = np.clip(beta, 0.0, 1.0) if isinstance(beta, np.ndarray) else min(max(beta, 0.0), 1.0)  # a float stays one
    params = dict(theta=theta, decay=decay, v_reset=0.0, v_init=0.0,
                  cmp="gt", reset={"subtract": "subtract", "zero": "hard", "none": "none"}[mechanism],
                  order="decay_reset" if mechanism == "subtract" else "reset_decay")
    explicit = not m.init_hidden
    if not isinstance(x, Step):
        raise UnsupportedModel(f"module {path!r} ({_qual(m)}) must be called on x[t] inside a time loop")
    if explicit and mem is not None and mem is not ZERO_STATE:
        key = (path, x.name)
        expected = State(lw.memo.get(key), x.t - 1)
        if mem != expected:
            raise UnsupportedModel(f"module {path!r}: at step {x.t} the membrane passed in is not the one it "
                                   f"returned at step {x.t - 1}")
    elif explicit and x.t != 0:
        raise UnsupportedModel(f"module {path!r}: a fresh membrane is passed in at step {x.t}; ttc runs the "
                               "state through all time steps")
    spikes = _neuron(lw, path, m, x, False, **params)
    if explicit or m.output:
        return spikes, State(spikes.name, spikes.t)
    return spikes


def _core(path, m, name, kernel, padding) -> object:
    core = getattr(m, name, None)
    where = f"{path}.{name}"
    _require(isinstance(core, nn.Conv2d), path, m, f"has no nn.Conv2d {name}")
    _require(tuple(core.kernel_size) == kernel and _padding(core) == padding and _int_pair(core.stride) == (1, 1)
             and core.groups == 1 and _int_pair(core.dilation) == (1, 1) and core.bias is None, where, core,
             f"a tensor-train core must be a {kernel[0]}x{kernel[1]} conv with stride 1, padding {padding} and no bias")
    return to_numpy(core.weight)


def _tt_conv(lw: Lowering, path, m, x, variant: str) -> Val:
    cores = dict(g1=_core(path, m, "first_layer", (1, 1), (0, 0)), g2=_core(path, m, "second_layer", (3, 1), (1, 0)),
                 g3=_core(path, m, "third_layer", (1, 3), (0, 1)), g4=_core(path, m, "fourth_layer", (1, 1), (0, 0)))
    return lw.per_step(path, m, x, True, lambda v: lw.emit(ir.TTConv2d, path, (v,), variant=variant, **cores))


def tt_conv(lw: Lowering, path, m: ttc.TTConv2d, x):
    """tt_conv2d: a tensor-train conv of four cores (stt, ptt or htt); tt-schedule picks how it runs."""
    return _tt_conv(lw, path, m, x, m.variant)


def tt_snn_conv(lw: Lowering, path, m, x):
    """TT-SNN's STT_/PTT_/HTT_Snn_Conv2d: the cores, then a 2x2 max pool where the channels change;
    HTT runs PTT at steps 0 and 1 and G4 * G1 at steps 2 and 3 (and nothing after: 4 steps only)."""
    variant = type(m).__name__[:3].lower()
    _require(getattr(m, "kernel_size", 3) in (3, (3, 3)) and getattr(m, "padding", 1) in (1, (1, 1)), path, m,
             "a tensor-train conv stands for a 3x3 conv with padding 1")
    if variant == "htt" and isinstance(x, Val):
        steps = lw.type_of(x).time
        _require(steps == 4, path, m, f"HTT_Snn_Conv2d computes 4 time steps (PTT at 0-1, G4*G1 at 2-3), not {steps}")
    y = _tt_conv(lw, path, m, x, variant)
    if m.in_channels != m.out_channels:
        y = lw.per_step(f"{path}.pool", m, y, True, lambda v: lw.emit(ir.MaxPool, f"{path}.pool", (v,), kernel=2, stride=2))
    return y


def tt_snn_neuron(lw: Lowering, path, m, x):
    """TT-SNN's mem_update: mem = x[0], then mem = mem * decay * (1 - spike) + x[t]; spike = [mem > thresh]
    with the module-level constants of its file (0.25 and 0.5 in the published code)."""
    constants = sys.modules.get(type(m).__module__)
    theta, decay = (float(getattr(constants, k, d)) for k, d in (("thresh", 0.5), ("decay", 0.25)))
    return _neuron(lw, path, m, x, True, theta=theta, decay=decay, v_reset=0.0, v_init=0.0, reset="hard",
                   order="reset_decay", cmp="gt")


# ---------------------------------------------------------------------------------------- TTFS

def _fire(lw: Lowering, path, m, x, window: int):
    return lw.per_step(path, m, x, True, lambda v: lw.emit(ir.Fire, path, (v,), window=int(window)))


def cat_activation(lw: Lowering, path, m, x):
    """CATActivation and a converted network's TTFSEncoder: values onto the TTFS grid (spike times)."""
    return _fire(lw, path, m, lw.one_step(path, x), m.window)


def ttfs_layer(lw: Lowering, path, m: ttfs.TTFSLinear, x):
    """A converted layer: the conv or linear of the values its codes stand for, fired unless a readout."""
    weight, bias = to_numpy(m.weight_values()), None if m.bias is None else to_numpy(m.bias)
    if isinstance(m, ttfs.TTFSConv2d):
        build = lambda v: lw.emit(ir.Conv2d, path, (v,), weight=weight, bias=bias, stride=m.stride, padding=m.padding)
    else:
        build = lambda v: lw.emit(ir.Linear, path, (v,), weight=weight, bias=bias)
    y = lw.per_step(path, m, x, True, build)
    return y if m.out_window is None else _fire(lw, f"{path}.fire", m, y, m.out_window)


def ttfs_pool(lw: Lowering, path, m, x):
    """TTFSMaxPool2d (the earliest spike), TTFSAvgPool2d (the average, fired again)."""
    cls = ir.MaxPool if isinstance(m, ttfs.TTFSMaxPool2d) else ir.AvgPool
    y = lw.per_step(path, m, x, True, lambda v: lw.emit(cls, path, (v,), kernel=m.kernel_size, stride=m.stride))
    return y if cls is ir.MaxPool else _fire(lw, f"{path}.fire", m, y, m.out_window)


_STATELESS = (conv2d, linear, batchnorm, pool, adaptive_pool, flatten, identity, voting)

#: The official TT-SNN layers (github donghyunli/TT-SNN, models/MS_ResNet_TT.py), recognised by class name.
_TT_SNN = {"mem_update": tt_snn_neuron, "Snn_Conv2d": conv2d, "batch_norm_2d": batchnorm, "batch_norm_2d1": batchnorm,
           "STT_Snn_Conv2d": tt_snn_conv, "PTT_Snn_Conv2d": tt_snn_conv, "HTT_Snn_Conv2d": tt_snn_conv}


#: ttc's, TTFS and torch.nn layers and the handler of each, in the order they are tried.
_BY_CLASS = (
    (ttc.LIF, ttc_lif), (ttc.MTNeuron, ttc_mt_neuron), (ttc.TTConv2d, tt_conv), (ttc.DirectEncoder, direct_encoder),
    ((ttfs.CATActivation, ttfs.TTFSEncoder), cat_activation), (ttfs.TTFSLinear, ttfs_layer),
    ((ttfs.TTFSMaxPool2d, ttfs.TTFSAvgPool2d), ttfs_pool), (ttc.TimeMean, time_mean), (ttc.Flatten, flatten),
    (nn.Conv2d, conv2d), (nn.Linear, linear), ((nn.BatchNorm2d, nn.BatchNorm1d), batchnorm),
    ((nn.MaxPool2d, nn.AvgPool2d), pool), ((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), adaptive_pool),
    (nn.Flatten, flatten), ((nn.Identity, nn.Dropout, nn.Dropout2d), identity),
)


#: SpikingJelly's and snnTorch's classes (looked up in the library's module, if the model imported it),
#: in the order they are tried; snnTorch neurons other than Leaky are known and refused.
_BY_LIBRARY_CLASS = (
    ("spikingjelly.activation_based.neuron", ("LIFNode", "IFNode", "ParametricLIFNode", "BaseNode"), spikingjelly_node),
    ("spikingjelly.activation_based.layer", ("SeqToANNContainer",), seq_to_ann),
    ("spikingjelly.activation_based.layer", ("MultiStepContainer", "StepModeContainer"), multi_step_container),
    ("spikingjelly.activation_based.layer", ("Dropout", "Dropout2d"), identity),
    ("spikingjelly.activation_based.layer", ("VotingLayer",), voting),
    ("snntorch", ("Leaky",), snntorch_leaky),
    ("snntorch", ("SpikingNeuron",), None),
)


def handler_for(m: nn.Module):
    """The handler that lowers module `m`, or None if ttc does not know it."""
    if type(m).__name__ in _TT_SNN:
        return _TT_SNN[type(m).__name__]
    for classes, handler in _BY_CLASS:
        if isinstance(m, classes):
            return handler
    for module, names, handler in _BY_LIBRARY_CLASS:
        library = sys.modules.get(module)
        if library is not None and isinstance(m, tuple(getattr(library, n) for n in names)):
            return handler
    return None
