"""Tiling to the buffers of a hardware config, and the cost model that chooses the tiles: results never
depend on tiling, and the model predicts every layer's cycles and energy within 5% of the simulator."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import grid_inputs
from ttc import api
from ttc.compiler.cost import graph_costs, input_densities, input_rows
from ttc.compiler.ir import Conv2d, IRError
from ttc.compiler.reference import evaluate
from ttc.compiler.tiling import CONV_FIELD_MAX, Block, row_tiles
from ttc.demo import CAT_MODEL, MT_MODEL
from ttc.demo import MODEL as DIGITS_MODEL
from ttc.digits import build_mt_digits_snn, load_digits_split
from ttc.frontends import modules as M
from ttc.isa.errors import InternalError
from ttc.isa.hwconfig import load_hw
from ttc.models import tt_resnet, vgg_snn
from ttc.simulator.machine import _window

SHAPE = "{},N,3,32,32"


def with_buffers(hw, name: str, **kib):
    return dataclasses.replace(hw, name=name, buffers={k: dataclasses.replace(b, kib=kib.get(k, b.kib))
                                                       for k, b in hw.buffers.items()})


def compile_and_check(model, time: int, hw, batch: int = 2, seed: int = 0):
    x = grid_inputs((time, batch, 3, 32, 32), seed)
    compiled = api.compile_model(model, SHAPE.format(time), hw)
    result = api.simulate(compiled.program, x)
    for sim, ref in zip(result.outputs, api.reference(compiled, x)):
        assert np.array_equal(sim, ref)
    return compiled, result, x


def test_vgg_larger_than_the_buffers_is_bit_exact_under_both_presets():
    model = vgg_snn()  # 3-64-128-256-256-512 at 3x32x32: membranes of its first layer alone are 256 KiB
    for preset in ("sata", "horowitz45"):
        compiled, result, _ = compile_and_check(model, 2, load_hw(preset), batch=1)
        tiles = {op.name: op.tile for op in compiled.graph.ops if isinstance(op, Conv2d)}
        assert any(rows < op.type.shape[1] for op in compiled.graph.ops if isinstance(op, Conv2d)
                   for _, rows, _ in [op.tile]), tiles  # some layer is cut into row tiles
        assert result.cycles > 0


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kib=st.fixed_dictionaries({b: st.sampled_from([0.5, 1, 2, 3, 6]) for b in ("ifmap", "ofmap", "psum", "vmem")}),
       wgt=st.sampled_from([1, 2, 5, 16]), seed=st.integers(0, 3))
def test_results_never_depend_on_tiling(kib, wgt, seed):
    """Small random buffers force channel, row and input-channel tiles, single and double buffering;
    the outputs equal the quantized reference (which knows nothing of tiles) bit for bit."""
    hw = with_buffers(load_hw("sata"), "random-small", wgt=wgt, **kib)
    model = vgg_snn(widths=(16, 32, 64), pool_after=(0, 1, 2), seed=seed)
    compiled, _, _ = compile_and_check(model, 2, hw, seed=seed)
    assert max(len(c.args) for c in compiled.program.code) > 0


def test_small_buffers_force_every_kind_of_tile():
    hw = with_buffers(load_hw("sata"), "tiny", wgt=1, ifmap=0.5, ofmap=0.5, psum=1, vmem=1)
    compiled, _, _ = compile_and_check(vgg_snn(widths=(16, 32, 64), pool_after=(0, 1, 2)), 2, hw)
    convs = [op for op in compiled.graph.ops if isinstance(op, Conv2d)]
    assert any(op.tile[0] < op.type.shape[0] for op in convs)  # output-channel tiles
    assert any(op.tile[1] < op.type.shape[1] for op in convs)  # row tiles
    assert any(op.tile[2] < op.weight.shape[1] for op in convs)  # input-channel tiles (partial sums accumulate)


def test_a_layer_no_tiling_fits_names_layer_buffer_and_sizes():
    hw = with_buffers(load_hw("sata"), "too-small", wgt=8 / 1024)
    with pytest.raises(IRError, match=r"%\w+ \(conv2d, from '0'\): its smallest tile .* needs \d+ bytes of the wgt "
                                      r"buffer, which holds 8 bytes in hardware config 'too-small'"):
        api.compile_model(vgg_snn(widths=(16,), pool_after=()), SHAPE.format(2), hw)


def test_row_tiles_start_input_blocks_on_bytes():
    # 3x3 conv, padding 1, 4-wide spike rows: rows start on a byte every 2 rows
    tiles = row_tiles(oh=8, rows=3, ih=8, k=3, s=1, pad=1, unit=2)
    assert [(t.y0, t.y1) for t in tiles] == [(0, 3), (3, 6), (6, 8)]
    assert all(t.r0 % 2 == 0 for t in tiles)
    for t in tiles:  # output row y reads input rows y-1 .. y+1, at local row y*1 + i - pt
        assert t.r0 - t.pt == t.y0 - 1 and t.r1 >= min(8, t.y1 + 1)
    assert tiles[2].pt == -1  # loaded from row 4 (on a byte), the tile needs rows from 5: one row skipped
    with pytest.raises(InternalError, match="does not start or end on a byte"):
        Block("spike", (4, 3, 3), 1, 2, 0, 3).run


def test_a_negative_top_padding_skips_loaded_rows():
    x = np.arange(2 * 7 * 3).reshape(1, 2, 7, 3)
    geometry = dict(oh=2, ow=3, pt=-2)
    assert np.array_equal(_window(x, geometry, 3, 1, 1, 1, 0), x[:, :, 2:6, :])
    assert np.array_equal(_window(x, {**geometry, "pt": 1}, 3, 1, 1, 1, 0)[:, :, 0], np.zeros((1, 2, 3)))


def _cost_vs_simulator(compiled, result, x):
    values = evaluate(compiled.graph, [x])
    costs = graph_costs(compiled.graph, compiled.program.hw, input_densities(compiled.graph, values),
                        input_rows(compiled.graph, values))
    rows = []
    for layer in result.layers:
        cost = costs[layer["name"]]
        cycles, energy = layer["counts"]["cycles"], sum(layer["energy_pj"].values())
        rows.append((layer["name"], cost.cycles / cycles - 1, cost.total_pj / energy - 1))
    return rows


@pytest.mark.parametrize("hw", ["sata", "horowitz45", "small", "sata-skip-tile", "sata-skip-event"])
def test_cost_model_is_within_five_percent_of_the_simulator_on_every_layer(hw):
    """(On an array that skips, the spike-driven convs' cycles at the densities and spike-row shares measured.)"""
    config = with_buffers(load_hw("sata"), "small", wgt=4, ifmap=2, ofmap=1, psum=2, vmem=2) if hw == "small" else \
        dataclasses.replace(load_hw("sata"), pe_skip=hw.rsplit("-", 1)[1]) if "skip" in hw else load_hw(hw)
    x = load_digits_split()[2][:, :4]
    digits = api.compile_model(api.load_model(DIGITS_MODEL), "4,N,1,8,8", config)
    checks = _cost_vs_simulator(digits, api.simulate(digits.program, x), x)
    cifar = vgg_snn(widths=(32, 64, 128, 128), pool_after=(1, 2, 3))
    checks += _cost_vs_simulator(*compile_and_check(cifar, 2, config, batch=1))
    ttfs = api.compile_model(api.load_model(CAT_MODEL), "N,1,8,8", config)  # tconv and tfire
    checks += _cost_vs_simulator(ttfs, api.simulate(ttfs.program, x[0]), x[0])
    torch.manual_seed(0)
    for model in (api.load_model(MT_MODEL), build_mt_digits_snn(3, "cascade")):  # spike planes in and out
        mt = api.compile_model(model, "1,N,1,8,8", config)
        checks += _cost_vs_simulator(mt, api.simulate(mt.program, x[:1]), x[:1])
    from test_idioms import PerChannelDecays

    decays = api.compile_model(PerChannelDecays(), "4,N,1,8,8", config)  # nrn reading its decays per neuron
    checks += _cost_vs_simulator(decays, api.simulate(decays.program, x), x)
    events = (np.random.default_rng(0).random((2, 1, 2, 8, 8)) < 0.2).astype(np.float32)
    resnet = api.compile_model(tt_resnet(18, [3] * 16, "stt", in_channels=2, size=8, classes=4, steps=None), "2,N,2,8,8",
                               config, input_encoding="spikes")  # TT cores; convs that run the residual add and a neuron
    assert any(layer["op"] == "conv2d+add+neuron_q" for layer in resnet.program.meta["layers"])
    checks += _cost_vs_simulator(resnet, api.simulate(resnet.program, events), events)
    assert len(checks) >= 28
    for name, cycles_error, energy_error in checks:
        assert abs(cycles_error) <= 0.05 and abs(energy_error) <= 0.05, (name, cycles_error, energy_error)


def test_a_fan_in_beyond_the_cin_field_is_taken_in_tiles():
    """76,800 inputs do not fit sconv's 16-bit `cin`: the tile search keeps every tile encodable."""
    torch.manual_seed(0)
    net = nn.Sequential(M.Conv2d(1, 300, 1), M.LIF(), M.Flatten(), M.Linear(300 * 16 * 16, 3), M.TimeMean()).eval()
    compiled = api.compile_model(net, "2,N,1,16,16")
    linear = next(o for o in compiled.graph.ops if o.opname == "linear")
    assert linear.weight.shape[1] > CONV_FIELD_MAX["cin"] >= linear.tile[2]
    x = grid_inputs((2, 2, 1, 16, 16))
    assert api.simulate(compiled.program, x).outputs[0].tobytes() == api.reference(compiled, x)[0].tobytes()
