"""NIR in and out (the Neuromorphic Intermediate Representation, the `nir` package).

Import: a NIR graph becomes a `NIRNetwork`, a torch module of ttc's own multi-step layers
(ttc.frontends.modules) that the torch.fx frontend compiles like any other model; so a network and its
NIR export compile to the same program. NIR's neurons are continuous-time ODEs; ttc runs them with the
forward-Euler step `dt` (NIR files do not record it; snnTorch and SpikingJelly write theirs with
dt = 1e-4 s, ttc's default):

    LIF      tau dv/dt = (v_leak - v) + r I      ->  decay = 1 - dt/tau, input_gain = r dt/tau, charge = v_leak dt/tau
    IF       dv/dt = r I                          ->  decay = 1,          input_gain = r dt
    CubaLIF  as LIF, with the current I = w_in S when tau_syn = dt (no synaptic memory); else refused
    Threshold z = [x > threshold]                 ->  a LIF with decay 0 (no memory)

each spiking when v > v_threshold (strict) and then set to v_reset (hard reset, the reset NIR has), the
membrane starting at v_reset. Every parameter must be one value for the whole layer. `Scale` nodes and
the k^2 of a `SumPool2d` (an average pool times its area) are folded into the next conv or linear layer's
weights, or into the next neuron's input gain. docs/nir.md has the whole mapping and what is
refused: every refusal is a `NIRError` naming the node and its NIR type.

Export (`to_nir`): a traced ttc IR graph (batch norm folded) of convs, linear layers, average pools,
flattens and hard-reset LIF/IF neurons becomes a NIR graph with the inverse mapping.
"""
from __future__ import annotations

import keyword
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ttc.compiler import ir
from ttc.isa.errors import InternalError, UserError

from . import modules as M

DEFAULT_DT = 1e-4
"""The Euler step in seconds: snnTorch's and SpikingJelly's NIR exporters both assume 1e-4."""


class NIRError(UserError, ValueError):
    """A NIR file or graph ttc cannot read, or a model ttc cannot write as NIR."""


def _nir():
    try:
        import nir
    except ImportError:  # a declared dependency (extra 'thirdparty'), but say what to install
        raise NIRError("reading or writing NIR needs the 'nir' package: pip install nir") from None
    return nir


# ----------------------------------------------------------------------------------- import

class NIRNetwork(nn.Module):
    """A NIR graph as a multi-step module: forward takes [T, B, *input shape] and returns what reaches
    each Output node (a tuple when there are several), every node applied at every step in the graph's
    topological order. Edges into one node add up, as NIR defines."""

    def __init__(self, layers: dict[str, nn.Module], order: list[tuple[str, tuple[str, ...]]], input_name: str,
                 outputs: list[tuple[str, ...]], input_shape: tuple[int, ...]):
        super().__init__()
        self.node = nn.ModuleDict(layers)  # keys: the NIR node names, made valid attribute names
        self.order, self.input_name, self.outputs = order, input_name, outputs
        self.input_shape = input_shape

    def forward(self, x):
        env = {self.input_name: x}

        def gather(sources):
            total = env[sources[0]]
            for s in sources[1:]:
                total = total + env[s]
            return total

        for key, sources in self.order:
            env[key] = self.node[key](gather(sources))
        results = [gather(sources) for sources in self.outputs]
        return results[0] if len(results) == 1 else tuple(results)


@dataclass
class _Value:
    """What flows along an edge while building: the layers whose outputs add up to it (their keys; one,
    unless edges meet), its per-sample shape, and a factor still to apply (from Scale and SumPool2d
    nodes): a scalar, or one value per channel ([C,H,W]) or feature ([F])."""

    sources: tuple[str, ...]
    shape: tuple[int, ...]
    scale: np.ndarray


def _uniform(node_name: str, node, field: str) -> float:
    """The one value a per-neuron parameter array holds (ttc's neuron layers share their parameters)."""
    values = np.unique(np.asarray(getattr(node, field), dtype=np.float64))
    if values.size != 1:
        raise NIRError(f"node {node_name!r} ({type(node).__name__}): {field} takes {values.size} different values; "
                       "ttc's neurons share one value per layer")
    return float(values[0])


def _snap(x: float) -> float:
    """x as float32, snapped to the nearest multiple of 2^-16 when within a millionth of it. NIR keeps time
    constants, not decays: an exporter's float32 arithmetic (tau = dt / (1 - beta), r = tau / dt) leaves
    a decay of 0.5 or a gain of 1 a few float32 ulps off, and ttc's hardware decay has 16 bits."""
    grid = round(x * 65536) / 65536
    return float(np.float32(grid if abs(x - grid) <= 1e-6 * max(1.0, abs(x)) else x))


def _pair(node_name, node, value, what) -> tuple[int, int]:
    a = np.asarray(value).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2 or np.any(a != np.round(a)):
        raise NIRError(f"node {node_name!r} ({type(node).__name__}): {what} {value!r} is not one or two integers")
    return int(a[0]), int(a[1])


class _Builder:
    def __init__(self, graph, dt: float):
        self.graph, self.dt = graph, dt
        self.layers: dict[str, nn.Module] = {}
        self.order: list[tuple[str, tuple[str, ...]]] = []
        self.keys: dict[str, str] = {"": "input"}  # "input" is reserved: NIRNetwork's name for the model's input

    def fail(self, name, node, why) -> NIRError:
        return NIRError(f"node {name!r} ({type(node).__name__}): {why}")

    def key(self, name: str) -> str:
        """A ModuleDict key for NIR node `name` (no dots, no keyword, unique), shown in ttc's messages as `node.<key>`."""
        key = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "_"
        while key in self.keys.values() or keyword.iskeyword(key):  # torch.fx writes code with the key ('if')
            key += "_"
        self.keys[name] = key
        return key

    def add(self, name, module: nn.Module, sources: tuple[str, ...]) -> str:
        key = self.key(name)
        self.layers[key] = module
        self.order.append((key, sources))
        return key

    # ---- the graph's shape: one Input, no cycles
    def topological(self) -> list[str]:
        nodes, edges = self.graph.nodes, [(str(a), str(b)) for a, b in self.graph.edges]
        for a, b in edges:
            for end in (a, b):
                if end not in nodes:
                    raise NIRError(f"edge ({a!r}, {b!r}) names node {end!r}, which the graph does not have")
        if len(set(edges)) != len(edges):  # it would add the same input twice
            raise NIRError(f"the graph repeats edges {sorted({e for e in edges if edges.count(e) > 1})}")
        self.preds = {n: [a for a, b in edges if b == n] for n in nodes}
        waiting = {n: len(self.preds[n]) for n in nodes}
        ready = [n for n in nodes if waiting[n] == 0]
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for a, b in edges:
                if a == n:
                    waiting[b] -= 1
                    if waiting[b] == 0:
                        ready.append(b)
        if len(order) != len(nodes):
            cycle = sorted(n for n in nodes if n not in order)
            raise NIRError(f"the graph has a cycle through nodes {', '.join(map(repr, cycle))} (a recurrent layer); "
                           "ttc compiles feed-forward networks")
        return order

    def build(self) -> NIRNetwork:
        nir = _nir()
        order = self.topological()
        inputs = [n for n in order if isinstance(self.graph.nodes[n], nir.Input)]
        outputs = [n for n in order if isinstance(self.graph.nodes[n], nir.Output)]
        if len(inputs) != 1 or not outputs:
            raise NIRError(f"the graph has {len(inputs)} Input and {len(outputs)} Output nodes; ttc compiles graphs "
                           "with one Input and at least one Output")
        values: dict[str, _Value] = {}
        results = []
        for name in order:
            node = self.graph.nodes[name]
            if isinstance(node, nir.Input):
                values[name] = _Value(("input",), self.input_shape(name, node), np.float64(1.0))
                continue
            if not self.preds[name]:
                raise self.fail(name, node, "has no incoming edge")
            x = self.gather(name, node, [values[p] for p in self.preds[name]])
            if isinstance(node, nir.Output):
                if np.any(x.scale != 1.0):
                    raise self.fail(name, node, "is reached by a Scale or SumPool2d factor that no layer follows to take it")
                results.append(x.sources)
                continue
            values[name] = self.convert(name, node, x)
        input_shape = values[inputs[0]].shape
        return NIRNetwork(self.layers, self.order, "input", results, input_shape)

    def gather(self, name, node, ins: list[_Value]) -> _Value:
        """The sum of the values on the edges into `name` (NIR adds them)."""
        shapes = {v.shape for v in ins}
        if len(shapes) != 1:
            raise self.fail(name, node, f"adds inputs of different shapes {sorted(shapes)}")
        if any(np.shape(v.scale) != np.shape(ins[0].scale) or np.any(v.scale != ins[0].scale) for v in ins):
            raise self.fail(name, node, "adds inputs carrying different Scale factors")
        return _Value(tuple(k for v in ins for k in v.sources), ins[0].shape, ins[0].scale)

    def input_shape(self, name, node) -> tuple[int, ...]:
        """The per-sample shape of the Input: [F] or [C,H,W], after dropping a leading batch axis of 1
        ([1,F] or [1,C,H,W], as nirtorch writes it without ignore_dims)."""
        shape = tuple(int(d) for d in np.asarray(node.input_type["input"]).reshape(-1))
        if len(shape) in (2, 4) and shape[0] == 1:
            shape = shape[1:]
        if len(shape) not in (1, 3):
            raise self.fail(name, node, f"input shape {list(shape)}: ttc takes [F] or [C,H,W] per sample "
                            "(optionally after a batch axis of 1)")
        return shape

    # ---- one node
    def convert(self, name, node, x: _Value) -> _Value:
        nir = _nir()
        for cls, method in ((nir.Affine, self.linear), (nir.Linear, self.linear), (nir.Conv2d, self.conv),
                            (nir.LIF, self.neuron), (nir.IF, self.neuron), (nir.CubaLIF, self.neuron),
                            (nir.Threshold, self.neuron), (nir.Flatten, self.flatten), (nir.AvgPool2d, self.pool),
                            (nir.SumPool2d, self.pool), (nir.Scale, self.scale)):
            if type(node) is cls:
                return method(name, node, x)
        raise self.fail(name, node, f"ttc does not compile NIR {type(node).__name__} nodes (it compiles Input, Output, "
                        "Affine, Linear, Conv2d, LIF, IF, CubaLIF, Threshold, Flatten, AvgPool2d, SumPool2d, Scale)")

    def linear(self, name, node, x) -> _Value:
        w = np.asarray(node.weight, dtype=np.float64)
        if w.ndim != 2:
            raise self.fail(name, node, f"weight of shape {list(w.shape)}: ttc's linear layers take [out, in] weights")
        if x.shape != (w.shape[1],):
            raise self.fail(name, node, f"takes {w.shape[1]} features but is given a value of shape {list(x.shape)} "
                            "(a Flatten is missing?)")
        w = w * np.broadcast_to(x.scale, (w.shape[1],))[None, :]  # y = W (s * x) = (W diag s) x
        bias = np.asarray(node.bias, dtype=np.float64) if isinstance(node, _nir().Affine) else None
        layer = M.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        _set(layer, w, bias)
        return _Value((self.add(name, layer, x.sources),), (w.shape[0],), np.float64(1.0))

    def conv(self, name, node, x) -> _Value:
        w = np.asarray(node.weight, dtype=np.float64)
        if w.ndim != 4 or len(x.shape) != 3:
            raise self.fail(name, node, f"a 2-d convolution of [C,H,W] values with [Cout,Cin,kh,kw] weights, got a value "
                            f"of shape {list(x.shape)} and weights {list(w.shape)}")
        if int(node.groups) != 1:
            raise self.fail(name, node, f"grouped convolution (groups={node.groups}) is not supported")
        if _pair(name, node, node.dilation, "dilation") != (1, 1):
            raise self.fail(name, node, f"dilated convolution (dilation={node.dilation}) is not supported")
        if x.shape[0] != w.shape[1]:
            raise self.fail(name, node, f"weights take {w.shape[1]} channels, the input has {x.shape[0]}")
        kernel, stride = w.shape[2:], _pair(name, node, node.stride, "stride")
        if isinstance(node.padding, str):
            if node.padding == "valid":
                padding = (0, 0)
            elif stride == (1, 1) and all(k % 2 == 1 for k in kernel):
                padding = (kernel[0] // 2, kernel[1] // 2)
            else:
                raise self.fail(name, node, "padding 'same' with an even kernel or a stride is not a symmetric zero padding")
        else:
            padding = _pair(name, node, node.padding, "padding")
        w = w * _per_channel(x.scale, x.shape[0])[None, :, None, None]  # zero padding: scaling commutes
        bias = np.asarray(node.bias, dtype=np.float64) if node.bias is not None else np.zeros(w.shape[0])
        layer = M.Conv2d(w.shape[1], w.shape[0], tuple(kernel), stride, padding, bias=True)
        _set(layer, w, bias)
        out = tuple(ir.conv_out(x.shape[1 + i], kernel[i], stride[i], padding[i]) for i in range(2))
        if min(out) <= 0:
            raise self.fail(name, node, f"kernel {kernel[0]}x{kernel[1]} does not fit the input {list(x.shape)}")
        return _Value((self.add(name, layer, x.sources),), (w.shape[0], *out), np.float64(1.0))

    def neuron(self, name, node, x) -> _Value:
        nir, dt = _nir(), self.dt
        scale = np.unique(np.asarray(x.scale))
        if scale.size != 1:
            raise self.fail(name, node, "is given values scaled differently per channel (a Scale node); ttc's neurons "
                            "have one input gain: put the Scale before a conv or linear layer")
        p = lambda field: _uniform(name, node, field)  # noqa: E731
        if isinstance(node, nir.Threshold):  # decay 0: the membrane is the input, the reset value never read
            theta = p("threshold")
            decay, gain, charge, v_reset = 0.0, 1.0, 0.0, min(0.0, theta)
        elif isinstance(node, nir.IF):
            decay, gain, charge, theta, v_reset = 1.0, p("r") * dt, 0.0, p("v_threshold"), p("v_reset")
        else:
            tau = p("tau_mem") if isinstance(node, nir.CubaLIF) else p("tau")
            if not tau >= dt:
                raise self.fail(name, node, f"membrane time constant {tau:g} s is below the step dt = {dt:g} s (a negative "
                                "decay 1 - dt/tau): pass the dt the graph was written with (--nir-dt)")
            decay, gain, charge = 1.0 - dt / tau, p("r") * dt / tau, p("v_leak") * dt / tau
            theta, v_reset = p("v_threshold"), p("v_reset")
            if isinstance(node, nir.CubaLIF):
                # I_t = (1 - dt/tau_syn) I_{t-1} + (dt/tau_syn) w_in S_t, the current updated before the membrane
                # (snnTorch's Synaptic); ttc's neurons hold no current, so only alpha = 0 is representable.
                tau_syn = p("tau_syn")
                alpha = 1.0 - dt / tau_syn
                if abs(alpha) > 1e-6:
                    raise self.fail(name, node, f"synaptic current decay 1 - dt/tau_syn = {alpha:g} (tau_syn {tau_syn:g} s, "
                                    f"dt {dt:g} s): ttc's neurons have no synaptic current state, so only tau_syn = dt "
                                    "(a current that is just its input) is representable")
                gain *= p("w_in") * dt / tau_syn
        gain *= float(scale[0])
        if v_reset > theta:
            raise self.fail(name, node, f"v_reset {v_reset:g} is above v_threshold {theta:g}: the neuron would fire "
                            "from its start (its membrane starts at v_reset)")
        module = M.LIF(decay=_snap(decay), threshold=float(np.float32(theta)), reset="hard",
                       v_reset=float(np.float32(v_reset)), cmp="gt", input_gain=_snap(gain), charge=_snap(charge))
        return _Value((self.add(name, module, x.sources),), x.shape, np.float64(1.0))

    def flatten(self, name, node, x) -> _Value:
        rank = len(x.shape)
        # start_dim counts axes of the node's own input type, which may carry the batch axis of the Input
        declared = node.input_type.get("input") if isinstance(node.input_type, dict) else None
        batched = declared is not None and np.asarray(declared).size == rank + 1
        start, end = int(node.start_dim) - (1 if batched else 0), int(node.end_dim)
        end = end if end >= 0 else end + rank + (1 if batched else 0)
        end -= 1 if batched and int(node.end_dim) >= 0 else 0
        if start != 0 or end != rank - 1:
            raise self.fail(name, node, f"flattens axes {node.start_dim}..{node.end_dim} of a {list(x.shape)} value; ttc "
                            "flattens all the axes of a sample")
        scale = x.scale if np.ndim(x.scale) == 0 else np.repeat(_per_channel(x.scale, x.shape[0]), int(np.prod(x.shape[1:])))
        return _Value((self.add(name, M.Flatten(), x.sources),), (int(np.prod(x.shape)),), scale)

    def pool(self, name, node, x) -> _Value:
        kernel, stride = _pair(name, node, node.kernel_size, "kernel_size"), _pair(name, node, node.stride, "stride")
        if len(x.shape) != 3:
            raise self.fail(name, node, f"pools [C,H,W] values, not {list(x.shape)}")
        if _pair(name, node, node.padding, "padding") != (0, 0):
            raise self.fail(name, node, "padded pooling is not supported")
        if kernel[0] != kernel[1] or stride[0] != stride[1]:
            raise self.fail(name, node, f"kernel {kernel} and stride {stride}: ttc pools with square windows")
        k, s = kernel[0], stride[0]
        out = tuple((d - k) // s + 1 for d in x.shape[1:])
        if min(out) <= 0:
            raise self.fail(name, node, f"window {k} does not fit the input {list(x.shape)}")
        scale = x.scale * (k * k if isinstance(node, _nir().SumPool2d) else 1)  # sum = k^2 * average
        return _Value((self.add(name, M.AvgPool2d(k, s), x.sources),), (x.shape[0], *out), scale)

    def scale(self, name, node, x) -> _Value:
        """No layer: the factor travels to the next conv, linear layer or neuron (see `_Value`)."""
        s = np.asarray(node.scale, dtype=np.float64)
        if s.size == 1:
            factor = np.float64(s.reshape(-1)[0])
        elif s.shape == x.shape and len(x.shape) == 1:
            factor = s
        elif s.shape == x.shape and np.all(s == s[:, :1, :1]):
            factor = s[:, 0, 0]
        else:
            raise self.fail(name, node, f"scale of shape {list(s.shape)} on a value of shape {list(x.shape)}: ttc folds one "
                            "factor per channel or feature into the next layer")
        # the values themselves pass through: this node's users read its sources, with the larger factor
        return _Value(x.sources, x.shape, x.scale * factor)


def _per_channel(scale, channels: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(scale, dtype=np.float64), (channels,))


def _set(layer: nn.Module, w: np.ndarray, bias: np.ndarray | None) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.astype(np.float32)))
        if bias is not None:
            layer.bias.copy_(torch.from_numpy(bias.astype(np.float32)))


def from_nir(graph, dt: float = DEFAULT_DT) -> NIRNetwork:
    """The NIR graph `graph` (a nir.NIRGraph) as a module of ttc's layers, its neurons stepped with `dt`."""
    if not dt > 0:
        raise NIRError(f"the NIR time step dt must be positive, got {dt}")
    if not isinstance(graph, _nir().NIRGraph):
        raise NIRError(f"expected a NIR graph, got a {type(graph).__name__}")
    for name, node in graph.nodes.items():
        if isinstance(node, _nir().NIRGraph):
            raise NIRError(f"node {name!r} (NIRGraph) is a subgraph (snnTorch writes recurrent layers so); ttc compiles "
                           "flat feed-forward graphs")
    return _Builder(graph, dt).build()


def check_input_shape(model: NIRNetwork, input_shape: list) -> None:
    """The compile's input shape ([T, 'N', ...], ttc.frontends.trace.parse_input_shape) against the graph's Input."""
    step = tuple(input_shape[2:]) if input_shape[0] != "N" else tuple(input_shape[1:])
    if step != model.input_shape:
        raise NIRError(f"the graph's Input takes samples of shape {list(model.input_shape)}, the input shape given has "
                       f"{list(step)} (write it as T,N,{','.join(map(str, model.input_shape))})")


def write_nir(graph, path: str | Path) -> None:
    _nir().write(path, graph)


def read_nir(path: str | Path, dt: float = DEFAULT_DT) -> NIRNetwork:
    path = Path(path)
    if not path.is_file():
        raise NIRError(f"{path}: no such file")
    try:
        # nir's own type check refuses graphs whose Input carries a batch axis (nirtorch writes them so);
        # ttc checks every shape itself while building (NIRError naming the node)
        graph = _nir().read(path, type_check=False)
    except NIRError:
        raise
    except Exception as e:  # h5py and nir raise many types for a file that is not NIR
        raise NIRError(f"{path}: not a readable NIR file ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    try:
        return from_nir(graph, dt)
    except NIRError as e:
        raise NIRError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------- export

def _refuse(op: ir.Op, why: str) -> NIRError:
    return NIRError(f"layer {op.path or op.name!r} ({op.opname}): {why}")


def _neuron_node(op: ir.Neuron, shape: tuple[int, ...], dt: float):
    """The NIR neuron whose Euler step `dt` is `op` (the inverse of the import mapping)."""
    nir = _nir()
    if op.levels != 1:
        raise _refuse(op, "a multi-threshold neuron has no NIR form")
    if op.reset != "hard" or op.order != "reset_decay":
        raise _refuse(op, f"reset {op.reset!r} (order {op.order}): NIR's neurons reset to v_reset after a spike, so only "
                      "hard-reset neurons (ttc LIF reset='hard', snnTorch reset_mechanism='zero') export")
    if op.cmp != "gt":
        raise _refuse(op, "fires on u >= threshold; NIR's neurons fire on u > v_threshold")
    if op.v_init != op.v_reset:
        raise _refuse(op, f"starts at {op.v_init}, not at v_reset {op.v_reset}, where ttc starts a NIR neuron")
    if isinstance(op.decay, np.ndarray):
        raise _refuse(op, "decays per channel are not exported (ttc writes one tau per layer)")
    full = lambda v: np.full(shape, v, dtype=np.float32)  # noqa: E731  NIR keeps one value per neuron
    if op.decay == 1.0:
        if op.charge != 0.0:
            raise _refuse(op, "a constant charge without leak has no NIR form (IF has no v_leak)")
        return nir.IF(r=full(op.input_gain / dt), v_threshold=full(op.theta), v_reset=full(op.v_reset))
    tau = dt / (1.0 - op.decay)
    return nir.LIF(tau=full(tau), r=full(op.input_gain * tau / dt), v_leak=full(op.charge * tau / dt),
                   v_threshold=full(op.theta), v_reset=full(op.v_reset))


def to_nir(graph: ir.Graph, dt: float = DEFAULT_DT):
    """The traced float IR `graph` (batch norm folded) as a nir.NIRGraph: one Input of the per-step shape
    (a static input repeated over time is given once a step), Conv2d, Affine or Linear, AvgPool2d, Flatten,
    LIF or IF, and one Output per model output. Anything else is a NIRError naming the layer."""
    nir = _nir()
    if not dt > 0:
        raise NIRError(f"the NIR time step dt must be positive, got {dt}")
    nodes, edges, names = {}, [], {}
    for op in graph.ops:
        shape = tuple(op.type.shape)
        if isinstance(op, ir.Input):
            if op.index != 0 or "input" in nodes:
                raise _refuse(op, "NIR export takes models with one input")
            nodes["input"] = nir.Input(input_type={"input": np.array(shape)})
            names[op.name] = "input"
            continue
        if isinstance(op, ir.Repeat):  # direct coding: the NIR graph is fed the same input at every step
            names[op.name] = names[op.inputs[0]]
            continue
        x = graph.op(op.inputs[0]).type
        if isinstance(op, ir.Conv2d):
            node = nir.Conv2d(input_shape=tuple(x.shape[1:]), weight=op.weight.copy(), stride=tuple(op.stride),
                              padding=tuple(op.padding), dilation=(1, 1), groups=1,
                              bias=op.bias.copy() if op.bias is not None else np.zeros(op.weight.shape[0], np.float32))
        elif isinstance(op, ir.Linear):
            node = nir.Affine(weight=op.weight.copy(), bias=op.bias.copy()) if op.bias is not None \
                else nir.Linear(weight=op.weight.copy())
        elif isinstance(op, ir.AvgPool) and op.divisor is None:
            node = nir.AvgPool2d(kernel_size=np.array([op.kernel] * 2), stride=np.array([op.stride] * 2),
                                 padding=np.array([0, 0]))
        elif isinstance(op, ir.Flatten):
            node = nir.Flatten(input_type={"input": np.array(x.shape)}, start_dim=0, end_dim=-1)
        elif isinstance(op, ir.Neuron):
            node = _neuron_node(op, shape, dt)
        elif isinstance(op, ir.MaxPool):
            raise _refuse(op, "NIR has no max pooling")
        elif isinstance(op, ir.TimeReduce):
            raise _refuse(op, f"a {op.mode} over time: NIR graphs run one step at a time and have no reduction over "
                          "time (export the network without it and reduce the outputs yourself)")
        else:
            raise _refuse(op, "ttc exports convs, linear layers, average pools, flattens and LIF/IF neurons to NIR")
        if x.time is None:
            raise _refuse(op, "applied to a static value; NIR layers run at every time step")
        name = op.path.replace(".", "_") if op.path else op.name
        while name in nodes:
            name += "_"
        nodes[name], names[op.name] = node, name
        edges.append((names[op.inputs[0]], name))
    for i, out in enumerate(graph.outputs):
        name = "output" if len(graph.outputs) == 1 else f"output{i}"
        nodes[name] = nir.Output(output_type={"output": np.array(graph.op(out).type.shape)})
        edges.append((names[out], name))
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"writer": "ttc", "dt": dt})
    except (ValueError, AssertionError) as e:  # nir's own type check: a bug in the mapping above, not bad input
        raise InternalError(f"the NIR graph ttc built does not type-check: {str(e).splitlines()[0]}") from None
