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


def test_decays_per_channel_print_and_parse_back_in_float_and_quantized_graphs():
    """A neuron's float32 decays per channel, and neuron_q's int32 multipliers and their DRAM address."""
    from test_idioms import PerChannelDecays
    from ttc import api

    model = PerChannelDecays()
    for graph in (trace(model, "4,N,1,8,8"), api.compile_model(model, "4,N,1,8,8").graph):
        text = print_graph(graph)
        assert "decay = array<f32[4]>" in text or "decay_mul = array<i32[4]>" in text
        assert print_graph(parse_graph(text).verify()) == text


def test_a_decay_per_channel_must_have_one_value_per_channel_in_0_1():
    x = ir.Input(name="x", declared=ir.TensorType(ir.F32, (3,), 2))
    for decay in (np.array([0.5, 0.25], np.float32), np.array([0.5, 1.5, 0.0], np.float32)):
        n = ir.Neuron(name="n", inputs=("x",), theta=1.0, decay=decay)
        with pytest.raises(ir.IRError, match="decay"):
            ir.Graph("g", [x, n], ["n"]).infer_types()


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


TWO_LAYERS = """graph @g {
  %x = input {index = 0} : seq2<f32[2]>
  %a = linear(%x) {weight = array<f32[2,2]>[1.0, 0.0, 0.0, 1.0]} : seq2<f32[2]>
  %b = linear(%a) {weight = array<f32[1,2]>[1.0, 2.0]} : seq2<f32[1]>
  return %b
}
"""


def test_def_use_api_keeps_users_and_names_current():
    g = parse_graph(TWO_LAYERS)
    a, b = g.op("a"), g.op("b")
    assert g.users("x") == [a] and g.users("a") == [b] and g.only_user("a") is b and g.only_user("b") is None
    doubled = ir.Linear(name="a2", inputs=("x",), weight=np.full((2, 2), 2.0, np.float32))
    g.replace_op(a, [doubled])  # a new name: the readers of %a now read %a2
    assert b.inputs == ("a2",) and g.users("a2") == [b] and not g.has("a") and g.op("a2") is doubled
    scale = ir.Linear(name="s", inputs=("x",), weight=np.eye(2, dtype=np.float32))
    g.insert_before(doubled, scale)
    g.set_inputs(doubled, ("s",))
    assert [o.name for o in g.ops] == ["x", "s", "a2", "b"] and g.users("s") == [doubled]
    g.infer_types().verify()
    with pytest.raises(ir.IRError, match="still read"):
        g.erase(scale)
    g.replace_all_uses_with("b", "a2")  # the output moves too
    assert g.outputs == ["a2"] and g.users("b") == []
    g.erase(b)
    assert not g.has("b") and g.fresh("b") == "b" and g.fresh("s") == "s_1"


def test_verify_catches_a_change_made_behind_the_def_use_api():
    g = parse_graph(TWO_LAYERS)
    g.users("a")  # the index is built
    g.op("b").inputs = ("x",)  # not through set_inputs: the user index is stale
    with pytest.raises(ir.IRError, match="behind the def-use API"):
        g.verify()


def test_a_fusion_must_name_the_only_reader():
    text = TWO_LAYERS.replace("""%b = linear(%a) {weight = array<f32[1,2]>[1.0, 2.0]}""",
                              """%b = linear(%a) {weight = array<f32[1,2]>[1.0, 2.0], fused = "x"}""")
    with pytest.raises(ir.IRError, match=r"%b \(linear\): is fused with %x, which is not its only reader"):
        parse_graph(text)
