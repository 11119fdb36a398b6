"""The IR verifies itself and its text form round-trips."""
import numpy as np
import pytest

from ttc.compiler import ir
from ttc.compiler.ir_text import parse_graph, print_graph
from ttc.frontends.trace import trace


def test_print_parse_print_is_identity_on_traced_and_compiled_graphs(conv_snn):
    from ttc import api

    for graph in (trace(conv_snn, "4,N,1,8,8"), api.compile_model(conv_snn, "4,N,1,8,8").graph):
        text = print_graph(graph)
        assert print_graph(parse_graph(text)) == text


def test_float32_arrays_round_trip_exactly():
    w = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    g = ir.Graph("g", [ir.Input(name="x", declared=ir.TensorType(ir.F32, (2,), 2)),
                       ir.Linear(name="l", inputs=("x",), weight=w)], ["l"]).infer_types().verify()
    back = parse_graph(print_graph(g)).op("l").weight
    assert back.dtype == np.float32 and back.tobytes() == w.tobytes()


def test_verifier_rejects_a_wrong_type():
    text = """graph @g {
  %x = input {index = 0} : seq2<f32[2]>
  %l = linear(%x) {weight = array<f32[1,2]>[1.0, 2.0]} : seq2<f32[3]>
  return %l
}
"""
    with pytest.raises(ir.IRError, match=r"%l \(linear\): type seq2<f32\[3\]> but its operands give seq2<f32\[1\]>"):
        parse_graph(text)


def test_verifier_rejects_use_before_definition_and_bad_shapes():
    with pytest.raises(ir.IRError, match="before it is defined"):
        ir.Graph("g", [ir.Linear(name="l", inputs=("x",), weight=np.zeros((1, 2), np.float32))], ["l"]).infer_types()
    with pytest.raises(ir.IRError, match="input has 3 channels, weights expect 1"):
        ir.Graph("g", [ir.Input(name="x", declared=ir.TensorType(ir.F32, (3, 4, 4), 2)),
                       ir.Conv2d(name="c", inputs=("x",), weight=np.zeros((2, 1, 3, 3), np.float32))], ["c"]).infer_types()


def test_quantized_mean_may_only_feed_outputs():
    text = """graph @g {
  %x = input {index = 0} : seq2<fix16.8[2]>
  %r = time_reduce(%x) {mode = "mean"} : fix32.8[2]
  %f = flatten(%x) : seq2<fix16.8[2]>
  return %r
}
"""
    parse_graph(text)
    bad = text.replace("%f = flatten(%x)", "%f = flatten(%r)")
    with pytest.raises(ir.IRError):
        parse_graph(bad)
