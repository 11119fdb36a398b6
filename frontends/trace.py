"""torch.fx frontend: trace a PyTorch SNN and lower it to ttc's IR.

The model is traced symbolically with every layer and neuron module as a leaf. The fx graph is then
evaluated over abstract values that know about time, so that both styles of SNN code lower to the
same multi-step IR:

* multi-step code (ttc's modules, SpikingJelly with step_mode='m') passes whole sequences
  [T, B, ...] between layers: each leaf becomes one IR op;
* time-loop code (snnTorch, SpikingJelly step_mode='s') unrolls a Python loop over `x[t]`; every
  per-step call of the same module on step t of the same sequence is one IR op, checked to be applied
  at every step in order, and `torch.stack` of the T steps gives back the sequence.

Glue code that builds a sequence by mutation, `seq = torch.zeros(T, N, ...)` then `seq[t] = x` for
every t (TT-SNN's ResNet_CIFAR), traces because ttc's proxies record item assignment as an
`operator.setitem` node; the evaluation below is in program order, so it sees the buffer filled step
by step, and a buffer that holds the same static input at every step becomes a `repeat` (direct
coding). Values no output depends on are dropped at the end.

Anything the frontend does not understand is an `UnsupportedModel` error naming the module's
qualified path in the model and its type.
"""
from __future__ import annotations

import operator
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import fx, nn

from ttc.compiler import ir
from ttc.isa.errors import UserError


class UnsupportedModel(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Val:
    """A whole IR value: a time series, or a static tensor."""

    name: str


@dataclass(frozen=True)
class Step:
    """Time step t of the IR time series `name` (what `x[t]` gives inside a time loop)."""

    name: str
    t: int


@dataclass(frozen=True)
class State:
    """The membrane of neuron op `neuron` after step t (snnTorch's explicit `mem`)."""

    neuron: str
    t: int


class _ZeroState:
    def __repr__(self):
        return "<zero state>"


ZERO_STATE = _ZeroState()


_LIBRARIES = ("torch", "spikingjelly", "snntorch")


class _Batch:
    """The batch size, which ttc leaves open: what `x.size(1)` of a [T, B, ...] input gives. T * B is
    `BatchTimes(T)`, the leading size of a sequence folded into a batch."""

    def __repr__(self):
        return "N"

    def __mul__(self, k):
        if isinstance(k, int) and not isinstance(k, bool):
            return BatchTimes(k)
        return NotImplemented

    __rmul__ = __mul__


@dataclass(frozen=True)
class BatchTimes:
    steps: int


BATCH = _Batch()


@dataclass(frozen=True)
class Folded:
    """A sequence [T, B, ...] folded to [T*B, ...] (SpikingJelly's SeqToANNContainer does it by hand:
    `x.flatten(0, 1)`, `x.view(T * B, ...)`), which single-step stateless layers apply to step by step."""

    name: str


@dataclass
class Blank:
    """A `torch.zeros(T, N, ...)` buffer being filled step by step (`steps[t]`: the value stored at t)."""

    shape: tuple
    steps: dict
    value: "Val | None" = None


@dataclass(frozen=True)
class Unsqueezed:
    """A static input given a leading axis of one (`x.unsqueeze(0)`), which a repeat over T makes direct coding."""

    name: str


class _MutableProxy(fx.Proxy):
    """A proxy that records `proxy[index] = value` as an operator.setitem node (fx's own raises), and
    whose shape is known at trace time where the tracer knows it (the model's input): so that Python
    code that loops over `range(x.shape[0])` or sizes a buffer by `x.size(0)` traces."""

    def __setitem__(self, index, value):
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    @property
    def shape(self):
        return self.size() if self.node.meta.get("ttc_shape") is not None else self.__getattr__("shape")

    def size(self, dim=None):
        """The known sizes as constants, but the open batch size as a traced `x.size(dim)`: a call
        with it (`torch.zeros(T, x.size(1), ...)`, `x.view(T * B, ...)`) is then traced, not run."""
        known = self.node.meta.get("ttc_shape")
        if known is None:
            return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})
        sizes = tuple(self.tracer.create_proxy("call_method", "size", (self, i), {}) if d is BATCH else d
                      for i, d in enumerate(known))
        return sizes if dim is None else sizes[dim]

    def dim(self):
        known = self.node.meta.get("ttc_shape")
        return len(known) if known is not None else self.tracer.create_proxy("call_method", "dim", (self,), {})

    @property
    def ndim(self):
        known = self.node.meta.get("ttc_shape")
        return len(known) if known is not None else self.__getattr__("ndim")

    def __len__(self):
        known = self.node.meta.get("ttc_shape")
        if known is None:
            raise UnsupportedModel("len() of a value other than the model's input while tracing")
        return known[0]


# Frames inside these directories are torch's or this file's, never the user's model code.
_NOT_USER_CODE = (os.path.dirname(torch.__file__) + os.sep, __file__)


class _Tracer(fx.Tracer):
    """fx's tracer with every layer a leaf, item assignment recorded, and each node's source location.

    fx's own `record_stack_traces` captures the stack through CapturedTraceback and symbolises it, which
    imports torch._dynamo and torch._inductor: about 1.5 s, most of the compile time of a small model.
    Error messages need one thing from the stack, the line of the user's code that made the node, and
    walking the Python frames to it costs microseconds."""

    def __init__(self, input_shape: tuple = ()):
        super().__init__()
        self.input_shape = input_shape  # the sizes of the model's input, BATCH for the batch axis

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(_NOT_USER_CODE):
            frame = frame.f_back
        if frame is not None:  # the innermost frame of the user's code: the line that made the node
            code = frame.f_code
            node.meta["ttc_location"] = f'File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}'
        return node

    def proxy(self, node: fx.Node) -> fx.Proxy:
        if node.op == "placeholder" and self.input_shape:
            node.meta["ttc_shape"] = self.input_shape
        return _MutableProxy(node, self)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        """Known layers, and every layer of torch.nn, SpikingJelly and snnTorch, so that one ttc
        cannot compile is named as a module instead of failing somewhere inside its code; but a
        library class that composes known layers (SpikingJelly's zoo blocks) is traced into, as a
        user's own block would be."""
        from .module_maps import handler_for  # module_maps builds on this file's classes

        if handler_for(m) is not None:
            return True
        library = type(m).__module__.split(".")[0] in _LIBRARIES
        container = isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
        return (library and not container and not _composes_known_layers(m)) or super().is_leaf_module(m, qualname)


def _composes_known_layers(m: nn.Module) -> bool:
    """Does `m` hold layers ttc knows (directly or in containers), not just helpers (a neuron's
    surrogate function)?"""
    from .module_maps import handler_for

    return any(handler_for(c) is not None or _composes_known_layers(c) for c in m.children())


def parse_input_shape(spec: str | Sequence) -> list:
    """'4,N,1,8,8' -> [4, 'N', 1, 8, 8]; the batch axis is N, at position 1 (time first) or 0 (static)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    shape = []
    for item in items:
        item = str(item).strip()
        if item.upper() == "N":
            shape.append("N")
        elif item.isdigit() and int(item) > 0:
            shape.append(int(item))
        else:
            raise UnsupportedModel(f"input shape {spec!r}: {item!r} is neither a positive size nor N")
    if shape.count("N") != 1 or shape.index("N") not in (0, 1):
        raise UnsupportedModel(f"input shape {spec!r}: write the batch axis as N, first (static input) or second (after time)")
    return shape


def input_type(shape: list) -> ir.TensorType:
    if shape[0] == "N":
        return ir.TensorType(ir.F32, tuple(shape[1:]))
    return ir.TensorType(ir.F32, tuple(shape[2:]), time=shape[0])


class Lowering:
    """Evaluates an fx graph over abstract values, emitting IR ops into `graph`."""

    def __init__(self, gm: fx.GraphModule, graph: ir.Graph, steps: int | None):
        self.gm = gm
        self.graph = graph
        self.steps = steps
        self.memo: dict[tuple, str] = {}
        self.visits: dict[str, list[int]] = {}
        self.modules = dict(gm.named_modules())
        self.single_pass = False  # a static model (TTFS) that runs as one step: see `one_step`

    def one_step(self, path: str, x):
        """A static input entering a TTFS network becomes a one-step sequence: the network runs once per
        sample (its spikes' times are inside each layer's window), so torch.nn layers on [B, ...] apply
        to that step, and the outputs are the step's values (`trace` sums the one step away)."""
        if isinstance(x, Val) and self.type_of(x).time is None:
            if self.steps not in (None, 1):
                raise UnsupportedModel(f"module {path!r}: a static input in a {self.steps}-step model")
            self.single_pass, self.steps = True, 1
            return Val(self.emit(ir.Repeat, f"{path}.step", (x.name,), steps=1))
        return x

    # ---- emitting ops
    def emit(self, cls, path: str, inputs: Sequence[str], **attrs) -> str:
        name = self.graph.fresh(path.replace("/", ".") or cls.opname)
        op = cls(name=name, inputs=tuple(inputs), path=path, **attrs)
        try:
            op.type = op.infer([self.graph.op(i).type for i in inputs])
        except ir.IRError as e:
            raise UnsupportedModel(f"module {path!r}: {e}") from None
        self.graph.append(op)
        return name

    def type_of(self, v) -> ir.TensorType:
        return self.graph.op(v.name).type

    def per_step(self, path: str, module: nn.Module, x, multi: bool, build: Callable[[str], str]):
        """Apply a layer to a sequence (multi-step) or to one step inside a time loop."""
        if isinstance(x, Val) and self.type_of(x).time is None and self.calls[path] > 1:
            x, multi = self.every_step(path, x), False
        if isinstance(x, Val):
            if self.type_of(x).time is None:
                raise UnsupportedModel(f"module {path!r} ({_qual(module)}) is applied to a static tensor; "
                                       "repeat it over time first (direct coding)")
            if not multi and not self.single_pass:
                raise UnsupportedModel(f"module {path!r} ({_qual(module)}) is a single-step layer applied to a "
                                       "whole [T, B, ...] sequence; use a multi-step layer (ttc.frontends.modules, "
                                       "or SpikingJelly with step_mode='m')")
            return Val(build(x.name))
        if isinstance(x, Step):
            if multi:
                raise UnsupportedModel(f"module {path!r} ({_qual(module)}) is multi-step but is given one time step")
            key = (path, x.name)
            if key not in self.memo:
                self.memo[key] = build(x.name)
                self.visits[self.memo[key]] = []
            self.visit(path, self.memo[key], x.t)
            return Step(self.memo[key], x.t)
        raise UnsupportedModel(f"module {path!r} ({_qual(module)}) is applied to {x!r}, not a tensor of the model")

    def every_step(self, path: str, x: Val) -> Step:
        """A static input given to a single-step layer at every step of a time loop (snnTorch's tutorials
        feed the image to the first layer each step) is direct coding: this call's step of its repeat."""
        steps = self.calls[path]
        if self.steps not in (None, steps):
            raise UnsupportedModel(f"module {path!r} is called {steps} times on a static input in a {self.steps}-step model")
        self.steps = steps
        if ("repeat", x.name) not in self.memo:
            self.memo[("repeat", x.name)] = self.emit(ir.Repeat, f"{self.graph.op(x.name).path or x.name}.repeat",
                                                      (x.name,), steps=steps)
        repeated = self.memo[("repeat", x.name)]
        return Step(repeated, len(self.visits.get(self.memo.get((path, repeated)), [])))

    def folded(self, path: str, module: nn.Module, handler, x: Folded) -> Folded:
        """A layer on a sequence folded into the batch: a stateless one is the same layer on every step
        (a neuron would see T*B independent samples, not T steps, so it is refused)."""
        from .module_maps import _STATELESS, _as_multi_step

        if handler not in _STATELESS:
            raise UnsupportedModel(f"module {path!r} ({_qual(module)}) is applied to a sequence folded into the "
                                   "batch ([T*B, ...]); unfold it to [T, B, ...] before stateful layers")
        return Folded(_as_multi_step(self, path, module, Val(x.name), handler).name)

    def visit(self, path: str, name: str, t: int) -> None:
        seen = self.visits[name]
        if t != len(seen):
            raise UnsupportedModel(f"module {path!r} is applied at time step {t} after steps {seen}: ttc needs "
                                   "every layer applied at every step, in order")
        seen.append(t)

    def check_all_steps(self) -> None:
        for name, seen in self.visits.items():
            if len(seen) != self.steps:
                op = self.graph.op(name)
                raise UnsupportedModel(f"module {op.path!r} is applied at steps {seen} of {self.steps}: "
                                       "ttc needs every layer applied at every time step")

    # ---- evaluating the fx graph
    def run(self, input_types: list[ir.TensorType]):
        env: dict[fx.Node, object] = {}
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(input_types):
            raise UnsupportedModel(f"forward takes {len(placeholders)} inputs; ttc compiles models with one tensor input")
        self.calls = Counter(node.target for node in self.gm.graph.nodes if node.op == "call_module")
        for index, (node, typ) in enumerate(zip(placeholders, input_types)):
            env[node] = Val(self.emit(ir.Input, node.target, (), index=index, declared=typ))
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                continue
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node.target is not operator.setitem:
                args, kwargs = self.filled(node, args), self.filled(node, kwargs)
            if node.op == "output":
                self.check_all_steps()
                return args[0]
            if node.op == "get_attr":
                env[node] = self.constant(node)
            elif node.op == "call_module":
                from .module_maps import handler_for

                module = self.modules[node.target]
                handler = handler_for(module)
                if handler is None:
                    raise UnsupportedModel(f"unsupported module {node.target!r} of type {_qual(module)}")
                try:
                    if args and isinstance(args[0], Folded):
                        env[node] = self.folded(node.target, module, handler, args[0])
                    else:
                        env[node] = handler(self, node.target, module, *args, **kwargs)
                except AttributeError as e:
                    lacking = _lacking(node.target, module, e)
                    if lacking is None:
                        raise
                    raise lacking from e
            else:
                env[node] = self.call(node, args, kwargs)
        raise UnsupportedModel("the traced model has no output")

    def filled(self, node: fx.Node, value):
        """`value` with every Blank buffer replaced by the sequence it was filled with."""
        if isinstance(value, (tuple, list)):
            return type(value)(self.filled(node, v) for v in value)
        if isinstance(value, dict):
            return {k: self.filled(node, v) for k, v in value.items()}
        if not isinstance(value, Blank):
            return value
        if value.value is None:
            steps = value.shape[0]
            sources = {value.steps.get(t) for t in range(steps)}
            if len(sources) != 1 or None in sources:
                raise UnsupportedModel(f"a torch.zeros buffer used at {_where(node)} is not filled with one static "
                                       f"input at each of its {steps} steps ({sorted(value.steps)} filled)")
            (source,) = sources
            self.steps = self.steps or steps
            value.value = Val(self.emit(ir.Repeat, _path(node, "repeat"), (source,), steps=steps))
        return value.value

    def constant(self, node: fx.Node):
        value = self.gm
        for part in node.target.split("."):
            value = getattr(value, part)
        if isinstance(value, torch.Tensor) and not value.any():
            return ZERO_STATE
        raise UnsupportedModel(f"tensor constant {node.target!r} used as data ({_where(node)}); ttc compiles layers, not free tensors")

    def call(self, node: fx.Node, args, kwargs):
        fn = node.target
        name = fn if isinstance(fn, str) else getattr(fn, "__name__", str(fn))
        if node.op == "call_method":
            fn = _METHODS.get(fn)
        else:
            fn = _FUNCTIONS.get(fn)
        if fn is None:
            raise UnsupportedModel(f"unsupported {'method' if node.op == 'call_method' else 'function'} "
                                   f"{name!r} at {_where(node)}")
        return fn(self, node, *args, **kwargs)


def _lacking(path: str, module: nn.Module, e: AttributeError) -> UnsupportedModel | None:
    """An AttributeError while a module is lowered: if the module itself lacks the attribute (a state
    unpickled from a damaged file, or a class of another version), a user error naming it; else None
    (a bug in the handler, which stays an internal error)."""
    missing = re.search(r"'(\w+)' object has no attribute '(\w+)'", str(e))
    if missing and missing.group(1) == type(module).__name__ and not hasattr(module, missing.group(2)):
        return UnsupportedModel(f"module {path!r} ({_qual(module)}) has no attribute {missing.group(2)!r}, which "
                                "ttc reads: a damaged model file, or a model saved by another version of its class")
    return None


def _qual(module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _where(node: fx.Node) -> str:
    """The module path and the user's source line of a traced call (the innermost frame outside torch)."""
    stack = node.meta.get("nn_module_stack")
    path = repr(list(stack)[-1]) if stack else "the top-level forward"
    line = node.meta.get("ttc_location", "")
    return f"{path}{' (' + line + ')' if line else ''}"


# ------------------------------------------------------------------- functions inside forward

def _getitem(lw: Lowering, node, x, index):
    """x[t]: step t of a sequence (inside a time loop); items of tuples."""
    if isinstance(x, (tuple, list)):
        return x[index]
    if isinstance(x, Val) and isinstance(index, int):
        typ = lw.type_of(x)
        if typ.time is None:
            raise UnsupportedModel(f"indexing a static tensor at {_where(node)}")
        t = index + typ.time if index < 0 else index
        if not 0 <= t < typ.time:
            raise UnsupportedModel(f"time index {index} out of range at {_where(node)}")
        return Step(x.name, t)
    raise UnsupportedModel(f"unsupported indexing {index!r} at {_where(node)}: only x[t] over time is understood")


def _stack(lw: Lowering, node, items, dim=0):
    """torch.stack of the T per-step results (or membranes) of one layer, in order: the sequence."""
    items = list(items)
    if dim != 0 or not items:
        raise UnsupportedModel(f"torch.stack must stack the time steps along dim 0 ({_where(node)})")
    if all(isinstance(i, State) for i in items):
        neuron = items[0].neuron
        if [(i.neuron, i.t) for i in items] != [(neuron, t) for t in range(len(items))]:
            raise UnsupportedModel(f"torch.stack of membranes that are not steps 0..T-1 of one neuron layer ({_where(node)})")
        return Val(lw.emit(ir.Membrane, f"{lw.graph.op(neuron).path}.mem", (neuron,)))
    if all(isinstance(i, Step) for i in items):
        name = items[0].name
        if [(i.name, i.t) for i in items] == [(name, t) for t in range(lw.type_of(Val(name)).time)]:
            return Val(name)
    raise UnsupportedModel(f"torch.stack of values that are not the T steps of one layer, in order ({_where(node)})")


def _flatten(lw: Lowering, node, x, start_dim=0, end_dim=-1):
    """flatten of each step (start_dim 2 of [T, B, ...], 1 of one step); flatten(0, 1) folds time into the batch."""
    if isinstance(x, Val) and lw.type_of(x).time is not None and (start_dim, end_dim) == (0, 1):
        return Folded(x.name)
    if isinstance(x, Folded) and start_dim == 1 and end_dim == -1:  # [T*B, ...] -> [T*B, -1]: each step flattened
        return Folded(lw.emit(ir.Flatten, _path(node, "flatten"), (x.name,)))
    if end_dim != -1:
        raise UnsupportedModel(f"flatten with end_dim={end_dim} at {_where(node)}")
    path = _path(node, "flatten")  # the same path at every step of a time loop: one op for all steps
    if isinstance(x, Val) and start_dim == 2:
        return Val(lw.emit(ir.Flatten, path, (x.name,)))
    if isinstance(x, Step) and start_dim == 1:
        return lw.per_step(path, node, x, False, lambda v: lw.emit(ir.Flatten, path, (v,)))
    raise UnsupportedModel(f"flatten(start_dim={start_dim}) at {_where(node)}: ttc flattens all but the time and "
                           "batch axes ([T,B,...]: start_dim=2; one step [B,...]: start_dim=1)")


def _reduce(mode):
    def reduce(lw: Lowering, node, x, dim=None, keepdim=False, **kw):
        """mean / sum over time (dim 0 of [T, N, ...])."""
        if kw or keepdim or dim not in (0, (0,), [0]) or not isinstance(x, Val) or lw.type_of(x).time is None:
            raise UnsupportedModel(f"{mode} at {_where(node)}: only the {mode} over time (dim 0 of [T,B,...]) is supported")
        return Val(lw.emit(ir.TimeReduce, _path(node, mode), (x.name,), mode=mode))
    return reduce


def _path(node: fx.Node, what: str) -> str:
    """Where a function call sits in the model: the enclosing module's path and what it computes."""
    stack = node.meta.get("nn_module_stack")
    prefix = list(stack)[-1] if stack else ""
    return f"{prefix}.{what}" if prefix else what


def _add(lw: Lowering, node, a, b):
    """a + b of two whole values: a residual add."""
    if isinstance(a, Val) and isinstance(b, Val):
        return Val(lw.emit(ir.Add, _path(node, "add"), (a.name, b.name)))
    raise UnsupportedModel(f"unsupported add at {_where(node)}: ttc adds two whole tensors of the model (a residual)")


def _zeros(lw: Lowering, node, *size, **kw):
    """torch.zeros(T, N, ...) filled step by step with one static input (buf[t] = x): direct coding."""
    dims = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
    if len(dims) < 3 or dims[1] is not BATCH or not all(isinstance(d, int) and d > 0 for d in dims[:1] + dims[2:]):
        raise UnsupportedModel(f"torch.zeros{dims} at {_where(node)}: ttc understands zeros(T, N, ...) buffers "
                               "filled step by step")
    return Blank(dims, {})


def _setitem(lw: Lowering, node, target, index, value):
    """buf[t] = x on a torch.zeros(T, N, ...) buffer."""
    if not isinstance(target, Blank) or not isinstance(index, int) or not 0 <= index < target.shape[0]:
        raise UnsupportedModel(f"unsupported item assignment at {_where(node)}: ttc understands buf[t] = x on a "
                               "torch.zeros(T, N, ...) buffer")
    if not isinstance(value, Val) or lw.type_of(value).time is not None or lw.type_of(value).shape != target.shape[2:]:
        raise UnsupportedModel(f"item assignment at {_where(node)}: buf[t] must be set to a static input of shape "
                               f"{list(target.shape[2:])}")
    target.steps[index] = value.name


def _size(lw: Lowering, node, x, dim=None):
    """x.size() / x.shape: constants (the batch stays open)."""
    if not isinstance(x, (Val, Folded)):
        raise UnsupportedModel(f"size() of {x!r} at {_where(node)}")
    typ = lw.type_of(Val(x.name))
    if isinstance(x, Folded):
        sizes = (BatchTimes(typ.time), *typ.shape)
    else:
        sizes = (BATCH, *typ.shape) if typ.time is None else (typ.time, BATCH, *typ.shape)
    return sizes if dim is None else sizes[dim]


def _view(lw: Lowering, node, x, *shape):
    """view/reshape to [T, N, -1] (flatten each step), to [T*N, ...] and back (time folded into the batch)."""
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    if isinstance(x, (Val, Folded)) and shape:
        typ = lw.type_of(Val(x.name))
        rest = tuple(shape[1:]) if shape[0] in (-1, BatchTimes(typ.time)) else tuple(shape[2:])
        if isinstance(x, Val) and typ.time is not None and shape[0] in (-1, BatchTimes(typ.time)) and rest == typ.shape:
            return Folded(x.name)  # [T, B, ...] -> [T*B, ...]
        if isinstance(x, Folded) and shape[:2] in ((typ.time, BATCH), (typ.time, -1)) and rest == typ.shape:
            return Val(x.name)  # [T*B, ...] -> [T, B, ...]
    if isinstance(x, Val) and lw.type_of(x).time is not None and len(shape) == 3 and shape[:2] == (lw.type_of(x).time, BATCH) \
            and shape[2] in (-1, lw.type_of(x).numel):
        return Val(lw.emit(ir.Flatten, _path(node, "flatten"), (x.name,)))
    raise UnsupportedModel(f"view/reshape to {shape} at {_where(node)}: ttc understands flattening a [T, N, ...] "
                           "sequence to [T, N, -1]")


def _global_pool(lw: Lowering, node, x, output_size):
    """adaptive_avg_pool3d(x, (None, 1, 1)) of a [T, N, C, H, W] sequence: the mean over each H x W plane."""
    if isinstance(x, Val) and tuple(output_size) == (None, 1, 1):
        typ = lw.type_of(x)
        if typ.time is not None and len(typ.shape) == 3 and typ.shape[1] == typ.shape[2]:
            k = typ.shape[1]
            return Val(lw.emit(ir.AvgPool, _path(node, "avgpool"), (x.name,), kernel=k, stride=k))
    raise UnsupportedModel(f"adaptive_avg_pool3d(output_size={output_size}) at {_where(node)}: ttc understands the "
                           "global average (None, 1, 1) of square [T, N, C, H, W] planes")


def _getattr(lw: Lowering, node, x, attr, *default):
    """What a forward asks of a tensor to build others: its shape, device, dtype (one of the model's
    values: ttc runs on its own device, in its own formats)."""
    if isinstance(x, (Val, Folded)):
        if attr == "shape":
            return _size(lw, node, x)
        if attr == "device":
            return torch.device("cpu")
        if attr == "dtype":
            return torch.float32
        if attr == "ndim":
            return len(_size(lw, node, x))
    raise UnsupportedModel(f"unsupported attribute {attr!r} of {x!r} at {_where(node)}")


def _unsqueeze(lw: Lowering, node, x, dim):
    """x.unsqueeze(0) of a static input, then repeated over time."""
    if isinstance(x, Val) and lw.type_of(x).time is None and dim == 0:
        return Unsqueezed(x.name)
    raise UnsupportedModel(f"unsqueeze({dim}) at {_where(node)}: ttc understands x.unsqueeze(0) of a static input, "
                           "repeated over time (direct coding)")


def _repeat(expand: bool):
    def repeat(lw: Lowering, node, x, *sizes):
        """x.unsqueeze(0).repeat(T, 1, ...) (or .expand(T, -1, ...)): the static input at every step."""
        sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
        keep = -1 if expand else 1
        if isinstance(x, Unsqueezed) and sizes and isinstance(sizes[0], int) and sizes[0] > 0 \
                and len(sizes) == 2 + len(lw.type_of(Val(x.name)).shape) and all(s in (keep, 1) or s is BATCH for s in sizes[1:]):
            if lw.steps not in (None, sizes[0]):
                raise UnsupportedModel(f"repeat over {sizes[0]} steps at {_where(node)} in a {lw.steps}-step model")
            lw.steps = sizes[0]
            return Val(lw.emit(ir.Repeat, _path(node, "repeat"), (x.name,), steps=sizes[0]))
        raise UnsupportedModel(f"{'expand' if expand else 'repeat'}{sizes} at {_where(node)}: ttc understands "
                               f"x.unsqueeze(0).{'expand' if expand else 'repeat'}(T, {keep}, ...) of a static input")
    return repeat


def _truediv(lw: Lowering, node, x, divisor):
    """sum over time / T is the mean over time."""
    op = lw.graph.op(x.name) if isinstance(x, Val) else None
    if isinstance(op, ir.TimeReduce) and op.mode == "sum" and divisor == lw.graph.op(op.inputs[0]).type.time:
        return Val(lw.emit(ir.TimeReduce, _path(node, "mean"), op.inputs, mode="mean"))
    raise UnsupportedModel(f"unsupported division at {_where(node)}: ttc understands a sum over time divided by T")


def _unflatten(lw: Lowering, node, x, dim, sizes):
    """[T*B, ...].unflatten(0, (T, B)) (or (T, -1)): the folded sequence again."""
    if isinstance(x, Folded) and dim == 0 and len(sizes) == 2:
        return _view(lw, node, x, *sizes, *lw.type_of(Val(x.name)).shape)
    raise UnsupportedModel(f"unflatten({dim}, {sizes}) at {_where(node)}: ttc understands unfolding a [T*B, ...] "
                           "sequence with unflatten(0, (T, B))")


def _cat(lw: Lowering, node, items, dim=0):
    """torch.cat of two values along the channels (dim 2 of [T, N, C, ...], 1 of one step [N, C, ...])."""
    items = list(items)
    if len(items) == 2 and all(isinstance(i, Val) for i in items) and dim == 2:
        return Val(lw.emit(ir.Concat, _path(node, "cat"), tuple(i.name for i in items)))
    if len(items) == 2 and all(isinstance(i, Step) for i in items) and dim == 1 and items[0].t == items[1].t:
        path = _path(node, "cat")
        key = (path, items[0].name, items[1].name)
        if key not in lw.memo:
            lw.memo[key] = lw.emit(ir.Concat, path, (items[0].name, items[1].name))
            lw.visits[lw.memo[key]] = []
        lw.visit(path, lw.memo[key], items[0].t)
        return Step(lw.memo[key], items[0].t)
    raise UnsupportedModel(f"torch.cat at {_where(node)}: ttc concatenates two values along the channels "
                           "(dim=2 of [T, N, C, ...], dim=1 of one step)")


def _mul(lw: Lowering, node, a, b):
    """T * N: the size of a sequence folded into the batch."""
    if BATCH in (a, b) and isinstance(b if a is BATCH else a, int):
        return BATCH * (b if a is BATCH else a)
    raise UnsupportedModel(f"unsupported multiplication at {_where(node)}: ttc understands T * B, a folded sequence's size")


_FUNCTIONS = {operator.getitem: _getitem, torch.stack: _stack, torch.flatten: _flatten,
              torch.mean: _reduce("mean"), torch.sum: _reduce("sum"), operator.add: _add, torch.add: _add,
              torch.zeros: _zeros, operator.setitem: _setitem, operator.truediv: _truediv, operator.mul: _mul,
              torch.reshape: _view, torch.cat: _cat, torch.concat: _cat,
              torch.nn.functional.adaptive_avg_pool3d: _global_pool, getattr: _getattr, torch.unsqueeze: _unsqueeze}
_METHODS = {"flatten": _flatten, "mean": _reduce("mean"), "sum": _reduce("sum"), "size": _size, "view": _view,
            "reshape": _view, "unflatten": _unflatten, "unsqueeze": _unsqueeze, "repeat": _repeat(expand=False), "expand": _repeat(expand=True)}


# ----------------------------------------------------------------------------- entry point

def trace(model: nn.Module, input_shape, name: str = "model") -> ir.Graph:
    """Lower `model` (in eval mode) to an IR graph for inputs of `input_shape` (see parse_input_shape)."""
    shape = parse_input_shape(input_shape)
    model = model.eval()
    try:
        gm = fx.GraphModule(model, _Tracer(tuple(BATCH if d == "N" else d for d in shape)).trace(model))
    except UnsupportedModel:
        raise
    except Exception as e:  # fx raises many types for untraceable Python; say what and where
        raise UnsupportedModel(f"cannot trace the model with torch.fx: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    typ = input_type(shape)
    graph = ir.Graph(name)
    lowering = Lowering(gm, graph, typ.time)
    result = lowering.run([typ])
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    for r in results:
        if not isinstance(r, Val):
            raise UnsupportedModel(f"forward returns {r!r}: ttc returns whole tensors (a sequence, or a reduction over time)")
    if lowering.single_pass:
        results = [Val(lowering.emit(ir.TimeReduce, f"{graph.op(r.name).path}.out", (r.name,), mode="sum"))
                   for r in results]
    graph.outputs = [r.name for r in results]
    return _without_dead_values(graph).verify()


def _without_dead_values(graph: ir.Graph) -> ir.Graph:
    live = set(graph.outputs)
    for op in reversed(graph.ops):
        if op.name in live:
            live.update(op.inputs)
    graph.keep(lambda op: op.name in live or isinstance(op, ir.Input))
    return graph


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()
