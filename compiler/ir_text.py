"""Text form of the IR: `print_graph` and `parse_graph` are inverses (print -> parse -> print is the
identity). Example:

    graph @net {
      %x = input {index = 0} : seq4<f32[1,8,8]>
      %c = conv2d(%x) {path = "0", weight = array<f32[2,1,1,1]>[0.5, -0.25], bias = none,
                       stride = [1, 1], padding = [0, 0], weight_frac = none} : seq4<f32[2,8,8]>
      return %c
    }

(one op a line; wrapped here). Arrays print every element: float32 in shortest round-trip form.
"""
from __future__ import annotations

import json
import types
import typing
from dataclasses import fields

import lark
import numpy as np

from .ir import OPS, DType, Graph, Input, IRError, Op, TensorType, spikes, ttfs

_ARRAY_DTYPES = {"f32": np.float32, "i8": np.int8, "i16": np.int16, "i32": np.int32, "u8": np.uint8}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _ARRAY_DTYPES.items()}


def _value(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        if not np.isfinite(v):
            raise IRError(f"cannot print non-finite attribute {v}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_value(e) for e in v) + "]"
    if isinstance(v, np.ndarray):
        name = _DTYPE_NAMES.get(v.dtype)
        if name is None:
            raise IRError(f"arrays of {v.dtype} have no text form")
        if name == "f32" and not np.isfinite(v).all():
            raise IRError("cannot print an array with non-finite values")
        flat = v.reshape(-1)
        body = ", ".join(str(e) for e in (flat if name == "f32" else flat.tolist()))
        return f"array<{name}[{','.join(map(str, v.shape))}]>[{body}]"
    raise IRError(f"attribute value {v!r} has no text form")


def print_op(op: Op) -> str:
    attrs = {"path": op.path} if op.path else {}
    defaults = {f.name: f.default for f in fields(op)}
    attrs.update({k: v for k, v in op.attrs().items()
                  if not (isinstance(op, Input) and k == "declared") and not (v is None and defaults[k] is None)})
    operands = f"({', '.join('%' + i for i in op.inputs)})" if op.inputs else ""
    body = ", ".join(f"{k} = {_value(v)}" for k, v in attrs.items())
    return f"%{op.name} = {op.opname}{operands} {{{body}}} : {op.type}"


def print_graph(g: Graph) -> str:
    lines = [f"graph @{g.name} {{"]
    lines += ["  " + print_op(o) for o in g.ops]
    lines.append("  return " + ", ".join("%" + o for o in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


_GRAMMAR = r"""
start: "graph" "@" NAME "{" op* ret "}"
op: VALUE "=" NAME operands? ("{" [attr ("," attr)*] "}")? ":" type
operands: "(" [VALUE ("," VALUE)*] ")"
attr: NAME "=" value
?value: INT -> int | FLOAT -> float | STRING -> string | "none" -> none | "true" -> true
      | "false" -> false | "[" [value ("," value)*] "]" -> list | "array" "<" ELEM "[" [INT ("," INT)*] "]" ">" ARRAYBODY -> array
type: SEQ "<" tensor ">" | tensor
tensor: ELEM "[" [INT ("," INT)*] "]"
ret: "return" VALUE ("," VALUE)*
SEQ: /seq[0-9]+/
ELEM: /f32|spike|i8|i16|i32|u8|fix[0-9]+\.-?[0-9]+|ttfs[0-9]+|mt[0-9]+[pc]/
VALUE: /%[A-Za-z0-9_.]+/
NAME: /[A-Za-z_][A-Za-z0-9_.]*/
INT: /-?[0-9]+/
FLOAT: /-?([0-9]+\.[0-9]*([eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|inf|nan)/
ARRAYBODY: /\[[^\]]*\]/
STRING: /"([^"\\]|\\.)*"/
COMMENT: /\/\/[^\n]*/
%import common.WS
%ignore WS
%ignore COMMENT
"""

_PARSER = lark.Lark(_GRAMMAR, parser="lalr")


def _dtype(tok: str) -> DType:
    if tok.startswith("fix"):
        bits, frac = tok[3:].split(".")
        return DType("fix", int(bits), int(frac))
    if tok.startswith("ttfs"):
        return ttfs(int(tok[4:]))
    if tok.startswith("mt"):
        return spikes(int(tok[2:-1]), "cascade" if tok[-1] == "c" else "parallel")
    return DType(tok)


def _ints(children) -> tuple[int, ...]:
    return tuple(int(c) for c in children if c is not None)


def _type(tree: lark.Tree) -> TensorType:
    if len(tree.children) == 2:
        seq, tensor = tree.children
        time = int(seq[3:])
    else:
        (tensor,) = tree.children
        time = None
    elem, *dims = tensor.children
    return TensorType(_dtype(elem), _ints(dims), time)


def _attr_value(tree):
    kind = tree.data
    if kind == "int":
        return int(tree.children[0])
    if kind == "float":
        return float(tree.children[0])
    if kind == "string":
        try:
            return json.loads(tree.children[0])
        except ValueError as e:  # the grammar's string token admits what JSON does not (control characters)
            raise IRError(f"string attribute {str(tree.children[0])[:40]}: {e}") from None
    if kind in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[kind]
    if kind == "list":
        return tuple(_attr_value(c) for c in tree.children if c is not None)
    elem, *rest = tree.children
    shape, body = _ints(rest[:-1]), rest[-1][1:-1].strip()
    dtype = _ARRAY_DTYPES.get(str(elem))
    if dtype is None:
        raise IRError(f"arrays of {elem} have no text form")
    try:
        flat = np.array([dtype(e) for e in body.split(",")] if body else [], dtype=dtype)
    except (ValueError, OverflowError) as e:  # an element that is no number, or out of the element type's range
        raise IRError(f"array<{elem}[{','.join(map(str, shape))}]>: {e}") from None
    if flat.size != int(np.prod(shape)):
        raise IRError(f"array of shape {shape} lists {flat.size} values")
    return flat.reshape(shape)


def _conforms(value, hint) -> bool:
    """Whether a parsed attribute value has the type the op's dataclass field declares (the hints
    ttc's ops use: int, float, str, bool, None, np.ndarray, tuples, unions of them)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint is float:  # an int is a fine float; bool is an int in Python but no number in the IR
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(args) == len(value) and all(_conforms(v, h) for v, h in zip(value, args))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this checker does not know: the op's own checks decide


def _check_attrs(cls, attrs: dict, where: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in attrs.items():
        if key in hints and not _conforms(value, hints[key]):
            shown = repr(value) if not isinstance(value, np.ndarray) else f"an array of {value.dtype}"
            raise IRError(f"{where}: attribute {key} = {shown:.60} is not a {typing.get_type_hints(cls)[key]}"
                          .replace("typing.", "").replace("numpy.ndarray", "array"))


def parse_graph(text: str, where: str = "IR text") -> Graph:
    """The graph `text` prints (print_graph), verified; every error names `where` (the file it came from)."""
    try:
        return _parse_graph(text)
    except IRError as e:
        raise IRError(f"{where}: {e}") from None


def _parse_graph(text: str) -> Graph:
    try:
        tree = _PARSER.parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise IRError(f"line {e.line}, column {e.column}: syntax error") from None
    name, *ops, ret = tree.children
    g = Graph(str(name))
    for node in ops:
        value, opname, *rest = node.children
        operands = ()
        if rest and isinstance(rest[0], lark.Tree) and rest[0].data == "operands":
            operands = tuple(str(v)[1:] for v in rest[0].children if v is not None)
            rest = rest[1:]
        *attr_nodes, type_node = rest
        attrs = {}
        for a in attr_nodes:
            if a is None:
                continue
            key, val = a.children
            attrs[str(key)] = _attr_value(val)
        cls = OPS.get(str(opname))
        if cls is None:
            raise IRError(f"unknown op {opname!r} defining {value}")
        _check_attrs(cls, attrs, f"{value} = {opname}")
        typ = _type(type_node)
        if cls is Input:
            attrs["declared"] = typ
        try:
            op = cls(name=str(value)[1:], inputs=operands, type=typ, **attrs)
        except TypeError as e:
            raise IRError(f"{value} = {opname}: {e}") from None
        g.append(op)
    g.outputs = [str(v)[1:] for v in ret.children]
    return g.verify()
