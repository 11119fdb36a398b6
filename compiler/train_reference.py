"""The integer training reference (docs/training.md): what a training-step program computes, in PyTorch
on int64, from the quantized graph (with its tapes) and the formats the compiler chose (`ttc.compiler.
train.plan_formats`, recorded in the program's metadata). It is the training counterpart of the
quantized reference: the simulator must equal it bit for bit on the loss gradient, every weight gradient
and the weights after every step. The arithmetic is isa/train.py's, the same functions the simulator calls.

`float_gradients` is the check above it: float64 autograd of the same network (weights, inputs, decays
and thresholds the integers stand for; the spike's gradient the rectangular surrogate, 1 inside the
band; the reset detached). Where no format rounds, the integer gradients equal it exactly.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from ttc.isa.neuron import step as neuron_step
from ttc.isa.table import rescale
from ttc.isa.train import backward_step, pool_backward, saturate, sgd

from .ir import Graph
from .reference import evaluate
from .train import GRAD_BITS, ce_gradient


def _traces(x: torch.Tensor, neuron, shift: int) -> torch.Tensor:
    """trace[t] = D(trace[t-1]) + R(x[t], shift): the machine's neuron step with no reset and a threshold no
    state reaches, as the trace form's `nrn` runs it."""
    state, rows = torch.zeros_like(x[0]), []
    for step in range(x.shape[0]):
        _, state = neuron_step(state, x[step], theta=(1 << 31) - 1, v_reset=0, decay_mul=neuron.decay_mul,
                               decay_shift=neuron.decay_shift, in_shift=shift, cmp="gt", reset="none",
                               order="reset_decay", levels=1, mode="parallel")
        rows.append(state)
    return torch.stack(rows)


def _images(v: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    """A value [T, B, ...] as [T, B, C, H, W] (a linear layer's features: C x 1 x 1)."""
    return v.reshape(v.shape[0], v.shape[1], channels, h, w)


class TrainingReference:
    """The weights and biases of the trained layers (int64, by op name) and a step that updates them."""

    def __init__(self, graph: Graph, train: dict):
        self.graph, self.train = copy.deepcopy(graph), train
        self.layers = train["layers"]
        self.weights = {r["name"]: torch.from_numpy(self.graph.op(r["name"]).weight.astype(np.int64))
                        for r in self.layers}
        self.biases = {r["name"]: torch.from_numpy(self.graph.op(r["name"]).bias.astype(np.int64))
                       for r in self.layers if r["bias"]}

    def gradients(self, x: np.ndarray, labels: np.ndarray) -> dict:
        """One batch's forward and backward at today's weights: {"out", "e", "dw": {layer: weights' shape},
        "gh": {layer: [T, B, ...] the gradients of its sums}}."""
        g, t = self.graph, self.train
        for r in self.layers:
            g.op(r["name"]).weight = self.weights[r["name"]].numpy().astype(f"<i{int(r['wfmt'][1:]) // 8}")
            if r["bias"]:
                g.op(r["name"]).bias = self.biases[r["name"]].numpy().astype(np.int32)
        env = evaluate(g, [x])
        out = env[g.outputs[0]].long()
        if t["options"]["loss"] == "ce":  # the host's gradient (the same function ttc train calls)
            e = torch.from_numpy(ce_gradient(out.numpy(), labels, t["steps"], t["out_frac"])[0])
        else:
            target = torch.zeros_like(out)
            target[torch.arange(len(labels)), torch.from_numpy(labels)] = t["steps"] << t["out_frac"]
            e = out - target
        steps, batch = t["steps"], len(labels)
        below = None  # the gradient the layer above gave this one's output: [T or 1, B, ...]
        dw, db, grads = {}, {}, {}
        for r in reversed(self.layers):
            op = g.op(r["name"])
            x_in = _images(env[op.inputs[0]].long(), r["cin"], r["ih"], r["iw"])  # [T, B, C, H, W]
            if below is not None:  # through a flatten: this layer's output's shape (pooled)
                top = (r["pool_oh"], r["pool_ow"]) if r["pool"] else (r["oh"], r["ow"])
                below = below.reshape(below.shape[0], batch, r["cout"], *top)
            if r["readout"]:
                gh = e.reshape(1, batch, -1, 1, 1)
            elif r["neuron"] is not None:
                neuron = g.op(r["neuron"])
                tape, spikes = (_images(env[v].long(), r["cout"], r["oh"], r["ow"]) for v in (r["tape"], r["neuron"]))
                if r["pool"]:  # routed back through the max pool, step by step
                    below = torch.stack([torch.from_numpy(pool_backward(
                        spikes[step].numpy(), below[step if below.shape[0] > 1 else 0].numpy(), r["pool_k"],
                        r["pool_stride"], r["pool_pad"], r["pool_pad"])) for step in range(steps)])

                def walk(decay_mul):  # nbwd over t = T-1 ... 0 (decay_mul 0: D[t], nothing carried)
                    state, rows = torch.zeros_like(tape[0]), []
                    for step in range(steps - 1, -1, -1):
                        state, _ = saturate(backward_step(
                            state, below[step if below.shape[0] > 1 else 0], tape[step], spikes[step],
                            decay_mul=decay_mul, decay_shift=neuron.decay_shift,
                            gate="spike" if neuron.reset == "hard" else "none", src_shift=r["src_shift"]), GRAD_BITS)
                        rows.append(state)
                    return torch.stack(rows[::-1])
                gh = walk(neuron.decay_mul)
            else:
                gh = below
            grads[r["name"]] = gh
            full = gh.expand(steps, *gh.shape[1:])
            if r["form"] == "trace":  # SSGD: the input traces against D (the same gradient, rounded elsewhere)
                full, x_in = walk(0), _traces(x_in, neuron, r["trace_shift"])
            # wgrad, one instruction per sample's step, each rounded: the forward's windows of x against g_h
            cols = F.unfold(x_in.flatten(0, 1).double(), (r["kh"], r["kw"]), padding=(r["pt"], r["pl"]),
                            stride=(r["sh"], r["sw"])).long()
            per_step = torch.einsum("nol,nkl->nok", full.flatten(0, 1).flatten(2), cols)
            dw[r["name"]] = rescale(per_step, r["wgrad_shift"]).sum(0).reshape(self.weights[r["name"]].shape)
            if r["bias"]:  # one wgrad of a plane of ones per sample's step
                sums = gh.expand(steps, *gh.shape[1:]).flatten(3).sum(3)
                db[r["name"]] = rescale(sums, r["db_shift"]).sum((0, 1))
            if r["input_grad"]:
                w = self.weights[r["name"]].reshape(r["cout"], r["cin"], r["kh"], r["kw"]).double()
                scaled = rescale(gh, r["pre_shift"])
                stride = (r["sh"], r["sw"])
                extra = tuple(n - ((o - 1) * s - 2 * p + k) for n, o, s, p, k in
                              ((r["ih"], r["oh"], r["sh"], r["pt"], r["kh"]), (r["iw"], r["ow"], r["sw"], r["pl"], r["kw"])))
                gx = F.conv_transpose2d(scaled.flatten(0, 1).double(), w, stride=stride, padding=(r["pt"], r["pl"]),
                                        output_padding=extra)
                below, _ = saturate(gx.round().long().reshape(gh.shape[0], batch, r["cin"], r["ih"], r["iw"]), GRAD_BITS)
        return dict(out=out, e=e, dw=dw, db=db, gh=grads)

    def step(self, x: np.ndarray, labels: np.ndarray) -> dict:
        """gradients(), then the update: the weights become sat(w - R(dW, sgd_shift))."""
        result = self.gradients(x, labels)
        for r in self.layers:
            w, _ = sgd(self.weights[r["name"]], result["dw"][r["name"]], r["sgd_shift"], int(r["wfmt"][1:]))
            self.weights[r["name"]] = w
            if r["bias"]:
                b, _ = sgd(self.biases[r["name"]], result["db"][r["name"]], r["bias_sgd_shift"], r["bias_bits"])
                self.biases[r["name"]] = b
        return result


class RectSpike(torch.autograd.Function):
    """H(v) forward (v > 0, or v >= 0), the rectangle |v| < band backward: the training step's surrogate."""

    @staticmethod
    def forward(ctx, v, band, inclusive):
        ctx.save_for_backward(v)
        ctx.band = band
        return (v >= 0 if inclusive else v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * (v.abs() < ctx.band).to(grad.dtype), None, None


def float_neuron(z: torch.Tensor, decay: float, theta: float, band: float, reset: str, v_reset: float = 0.0,
                 v_init: float = 0.0, order: str = "reset_decay", cmp: str = "gt") -> torch.Tensor:
    """The spikes [T, ...] of float neurons driven by z [T, ...], differentiable as the training step is: the
    rectangular surrogate (`RectSpike`) and the reset detached (ttc.compiler.ir.Neuron's equations)."""
    u, s, spikes = torch.full_like(z[0], v_init), torch.zeros_like(z[0]), []
    for step in range(z.shape[0]):
        fired = s.detach()
        def after_reset(v):
            return v * (1 - fired) + v_reset * fired if reset == "hard" else v - theta * fired if reset == "subtract" else v
        u = decay * after_reset(u) if order == "reset_decay" else after_reset(decay * u)
        u = u + z[step]
        s = RectSpike.apply(u - theta, band, cmp == "ge")
        spikes.append(s)
    return torch.stack(spikes)


def float_gradients(graph: Graph, train: dict, x: np.ndarray, labels: np.ndarray,
                    weights: dict[str, torch.Tensor], biases: dict[str, torch.Tensor] | None = None) -> dict:
    """dL/dW of every trained layer (and dL/db, keyed `name.bias`) by float64 autograd, for L = 1/2 sum
    (output - one-hot)^2 times (T / 2^ceil(log2 T))^2 (the loss whose gradient the machine's e is): the
    network the integers stand for, each layer's input in float, in the fracs of the quantized graph."""
    steps = train["steps"]
    h_in = None
    params = {}
    for k, r in enumerate(train["layers"]):
        op = graph.op(r["name"])
        w = (weights[r["name"]].double() * 2.0 ** -r["weight_frac"]).requires_grad_(True)
        params[r["name"]] = w
        b = None
        if r["bias"]:
            b = (biases[r["name"]].double() * 2.0 ** -r["bias_frac"]).requires_grad_(True)
            params[f"{r['name']}.bias"] = b
        if k == 0:
            xin = graph.op(op.inputs[0])
            env = evaluate(graph, [x])
            h_in = env[xin.name] * 2.0 ** -xin.type.dtype.frac
        x_img = h_in.reshape(*h_in.shape[:2], r["cin"], r["ih"], r["iw"])
        w4 = w.reshape(r["cout"], r["cin"], r["kh"], r["kw"])
        z = F.conv2d(x_img.flatten(0, 1), w4, b, stride=(r["sh"], r["sw"]), padding=(r["pt"], r["pl"]))
        z = z.reshape(*h_in.shape[:2], r["cout"], r["oh"], r["ow"])
        if r["readout"]:
            out = z.flatten(2).sum(0) / steps
            break
        if r["neuron"] is None:
            h_in = z
            continue
        n = graph.op(r["neuron"])
        frac = graph.op(op.name).type.dtype.frac + n.in_shift
        h_in = float_neuron(z, n.decay_mul / (1 << n.decay_shift), n.theta * 2.0 ** -frac, n.band * 2.0 ** -frac,
                            n.reset, n.v_reset * 2.0 ** -frac, n.v_init * 2.0 ** -frac, n.order, n.cmp)
        if r["pool"]:
            pool = graph.op(r["pool"])
            pooled = F.max_pool2d(h_in.flatten(0, 1), pool.kernel, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)
            h_in = pooled.reshape(*h_in.shape[:2], *pooled.shape[1:])
    target = torch.zeros_like(out)
    target[torch.arange(len(labels)), torch.from_numpy(labels)] = 1.0
    scale = (steps / 2 ** math.ceil(math.log2(steps))) ** 2
    loss = 0.5 * scale * ((out - target) ** 2).sum()
    loss.backward()
    return {name: w.grad for name, w in params.items()}
