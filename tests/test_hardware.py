"""The hardware model: presets, energy by action and by layer, leakage over the timeline."""
import pytest

from conftest import grid_inputs, small_conv_snn
from ttc import api
from ttc.isa.hwconfig import ENERGY_ACTIONS, PRESET_DIR, HwConfigError, parse_hw, presets


@pytest.fixture(scope="module")
def model():
    return small_conv_snn(seed=2)


@pytest.fixture(scope="module")
def x():
    return grid_inputs((4, 8, 1, 8, 8), seed=2)


@pytest.mark.parametrize("preset", ["sata", "horowitz45"])
def test_every_preset_runs_bit_exact_and_prices_every_action(preset, model, x):
    assert preset in presets()
    compiled = api.compile_model(model, "4,N,1,8,8", hw=preset)
    result = api.simulate(compiled.program, x)
    assert result.outputs[0].tobytes() == api.reference(compiled, x)[0].tobytes()
    hw = compiled.program.hw
    arithmetic = sum(result.counters.get(a, 0) * hw.energy_pj[a] for a in ENERGY_ACTIONS)
    priced = sum(result.energy_pj.get(unit, 0) for unit in ("pe", "neuron", "vector"))
    assert priced == pytest.approx(arithmetic)
    assert result.counters["add8"] == result.counters["spike_add"] > 0
    leak_w = sum(b.leakage_mw for b in hw.buffers.values()) * 1e-3
    assert result.energy_pj["leakage"] == pytest.approx(leak_w * result.cycles / (hw.frequency_mhz * 1e6) * 1e12)


def test_layers_partition_time_and_energy(model, x):
    result = api.simulate(api.compile_model(model, "4,N,1,8,8").program, x)
    assert sum(layer["counts"]["cycles"] for layer in result.layers) == result.cycles
    for component, total in result.energy_pj.items():
        assert sum(layer["energy_pj"].get(component, 0) for layer in result.layers) == pytest.approx(total)
    conv = result.layers[0]
    assert conv["op"] == "conv2d+neuron_q" and conv["counts"]["mac"] > 0 and conv["counts"]["spike"] > 0


def test_presets_differ_only_in_prices(model, x):
    runs = {p: api.simulate(api.compile_model(model, "4,N,1,8,8", hw=p).program, x) for p in ("sata", "horowitz45")}
    assert runs["sata"].cycles == runs["horowitz45"].cycles
    assert runs["sata"].counters == runs["horowitz45"].counters
    assert runs["sata"].energy_pj["dram"] != runs["horowitz45"].energy_pj["dram"]


def test_pe_groups_must_divide_the_array():
    toml = (PRESET_DIR / "sata.toml").read_text()
    with pytest.raises(HwConfigError, match="groups = 3 must divide"):
        parse_hw(toml.replace("groups = 2", "groups = 3"), "t")
