"""The integer training reference (docs/training.md): what a training-step program computes, in PyTorch
on int64, from the quantized graph (with its tapes) and the formats the compiler chose (`ttc.compiler.
train.plan_formats`, recorded in the program's metadata). It is the training counterpart of the
quantized reference: the simulator must equal it bit for bit on the loss gradient, every weight gradient
and the weights after every step. The arithmetic is isa/train.py's, the same functions the simulator calls.

The check above it is float64 autograd of the same network (`ttc.compiler.train_float`): where no
format rounds, the integer gradients equal it exactly.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from ttc.isa.neuron import step as neuron_step
from ttc.isa.table import rescale
from ttc.isa.train import average_backward, backward_step, pool_backward, saturate, sgd

from .ir import Graph
from .reference import evaluate
from .train import GRAD_BITS, ce_gradient


def _accumulate(terms: torch.Tensor) -> torch.Tensor:
    """A weight-gradient accumulator after the step's wgrads, t = T-1 ... 0, each adding its samples' terms
    ([T, B, ...], summed exactly) and saturating to 32 bits."""
    acc = torch.zeros_like(terms[0, 0])
    for step in range(terms.shape[0] - 1, -1, -1):
        acc, _ = saturate(acc + terms[step].sum(0), 32)
    return acc


def _walk(below: torch.Tensor, tape: torch.Tensor, spikes: torch.Tensor, neuron, decay_mul: int,
          src_shift: int) -> torch.Tensor:
    """nbwd over t = T-1 ... 0 (decay_mul 0: D[t], nothing carried): the membrane gradients [T, B, ...] from the
    spikes' gradients `below` ([T or 1, B, ...]), saturating as nbwd does."""
    state, rows = torch.zeros_like(tape[0]), []
    for step in range(tape.shape[0] - 1, -1, -1):
        state, _ = saturate(backward_step(state, below[step if below.shape[0] > 1 else 0].reshape(state.shape),
                                          tape[step], spikes[step], decay_mul=decay_mul, decay_shift=neuron.decay_shift,
                                          gate="spike" if neuron.reset == "hard" else "none", src_shift=src_shift),
                            GRAD_BITS)
        rows.append(state)
    return torch.stack(rows[::-1])


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


class _Dram:
    """Gradients by their DRAM places, step by step as the machine lays them out (step s of a value of n
    elements per sample at its address + 4 n s), so that a part of a time concatenation, or a time slice, is
    read in place."""

    def __init__(self):
        self.at: dict[int, torch.Tensor] = {}

    def store(self, addr: int, v: torch.Tensor) -> None:
        """v: [steps, B, ...]."""
        n = v[0, 0].numel()
        for step in range(v.shape[0]):
            self.at[addr + 4 * n * step] = v[step]

    def load(self, addr: int, steps: int, n: int) -> torch.Tensor:
        """[steps, B, n]."""
        return torch.stack([self.at[addr + 4 * n * step].reshape(-1, n) for step in range(steps)])


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
        """One batch's forward and backward at today's weights: {"out", "e", "dw", "db": {layer: ...}, "gh": {layer:
        [T or 1, B, ...] the gradients of its sums}}. The backward walks the program's nodes in order, each
        reading and writing gradients by their DRAM place, as the machine does."""
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
        dram = _Dram()
        dram.store(t["loss_grad"], e.unsqueeze(0))
        dw, db, grads = {}, {}, {}
        for node in t["nodes"]:
            if node["kind"] == "layer":
                self._layer(node, env, dram, dw, db, grads, len(labels))
            elif node["kind"] == "neuron":
                n = g.op(node["name"])
                below = dram.load(node["grad_in"], node["grad_in_steps"], node["n"])
                tape, spikes = env[node["tape"]].long().flatten(2), env[node["name"]].long().flatten(2)
                dram.store(node["grad_out"], _walk(below, tape, spikes, n, n.decay_mul, node["src_shift"]))
            elif node["kind"] == "avgpool":
                gy = dram.load(node["grad_in"], node["grad_in_steps"], node["channels"] * node["oh"] * node["ow"])
                gy = gy.reshape(-1, len(labels), node["channels"], node["oh"], node["ow"])
                dram.store(node["grad_out"], torch.stack([torch.from_numpy(average_backward(
                    step.numpy(), (node["ih"], node["iw"]), node["k"], node["stride"], 0, 0)) for step in gy]))
            else:  # a sum of the gradients several readers gave one value, each over its steps of it
                total = torch.zeros(node["steps"], len(labels), node["n"], dtype=torch.int64)
                for addr, steps, shift, start, stop in node["parts"]:
                    part = rescale(dram.load(addr, steps, node["n"]), shift)
                    span = slice(start, stop) if node["steps"] > 1 else slice(0, 1)
                    total[span] += part.expand(span.stop - span.start, *part.shape[1:])
                dram.store(node["out"], total)
        return dict(out=out, e=e, dw=dw, db=db, gh=grads)

    def _layer(self, r: dict, env: dict, dram: _Dram, dw: dict, db: dict, grads: dict, batch: int) -> None:
        """A trained layer's backward (BackwardPlan's arithmetic)."""
        g = self.graph
        op = g.op(r["name"])
        steps = op.type.time
        x_in = _images(env[op.inputs[0]].long(), r["cin"], r["ih"], r["iw"])  # [T, B, C, H, W]
        top = (r["pool_oh"], r["pool_ow"]) if r["pool"] else (r["oh"], r["ow"])
        below = dram.load(r["grad_in"], r["grad_in_steps"], r["cout"] * top[0] * top[1]).reshape(-1, batch, r["cout"], *top)
        neuron = g.op(r["neuron"]) if r["neuron"] else None
        if neuron is not None:
            tape, spikes = (_images(env[v].long(), r["cout"], r["oh"], r["ow"]) for v in (r["tape"], r["neuron"]))
            if r["pool"]:  # routed back through the max pool, step by step
                below = torch.stack([torch.from_numpy(pool_backward(
                    spikes[step].numpy(), below[step if below.shape[0] > 1 else 0].numpy(), r["pool_k"],
                    r["pool_stride"], r["pool_pad"], r["pool_pad"])) for step in range(steps)])
            gh = _walk(below, tape, spikes, neuron, neuron.decay_mul, r["src_shift"])
        else:
            gh = below
        grads[r["name"]] = gh
        full = gh.expand(steps, *gh.shape[1:])
        if r["form"] == "trace":  # SSGD: the input traces against D (the same gradient, rounded elsewhere)
            full, x_in = _walk(below, tape, spikes, neuron, 0, r["src_shift"]), _traces(x_in, neuron, r["trace_shift"])
        # wgrad, one instruction per sample's step, each rounded: the forward's windows of x against g_h
        cols = F.unfold(x_in.flatten(0, 1).double(), (r["kh"], r["kw"]), padding=(r["pt"], r["pl"]),
                        stride=(r["sh"], r["sw"])).long()
        per_step = torch.einsum("nol,nkl->nok", full.flatten(0, 1).flatten(2), cols).reshape(steps, batch, -1)
        dw[r["name"]] = _accumulate(rescale(per_step, r["wgrad_shift"])).reshape(self.weights[r["name"]].shape)
        if r["bias"]:  # one wgrad of a plane of ones per sample's step
            db[r["name"]] = _accumulate(rescale(full.flatten(3).sum(3), r["db_shift"]))
        if r["input_grad"]:
            w = self.weights[r["name"]].reshape(r["cout"], r["cin"], r["kh"], r["kw"]).double()
            scaled = rescale(gh, r["pre_shift"])
            extra = tuple(n - ((o - 1) * s - 2 * p + k) for n, o, s, p, k in
                          ((r["ih"], r["oh"], r["sh"], r["pt"], r["kh"]), (r["iw"], r["ow"], r["sw"], r["pl"], r["kw"])))
            gx = F.conv_transpose2d(scaled.flatten(0, 1).double(), w, stride=(r["sh"], r["sw"]), padding=(r["pt"], r["pl"]),
                                    output_padding=extra)
            gx = rescale(gx.round().long(), r["post_shift"]).reshape(gh.shape[0], batch, r["cin"], r["ih"], r["iw"])
            gx, _ = saturate(gx, GRAD_BITS)
            dram.store(r["grad_out"], gx)

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
