"""The hardware model: presets, energy by action and by layer, leakage over the timeline, reports."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import grid_inputs, small_conv_snn
from test_end_to_end import dyadic_
from ttc import api
from ttc.frontends import modules as M
from ttc.isa.errors import InternalError
from ttc.isa.hwconfig import COUNTER_NAMES, ENERGY_ACTIONS, PRESET_DIR, HwConfigError, load_hw, parse_hw, presets


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


def test_every_counter_is_declared_and_an_undeclared_one_is_refused(model, x, monkeypatch):
    from ttc.simulator import machine

    program = api.compile_model(model, "4,N,1,8,8").program
    result = api.simulate(program, x)
    for counts in [result.counters] + [layer["counts"] for layer in result.layers]:
        assert set(counts) <= COUNTER_NAMES
    assert {"plane0_add", "mac", "dram_read_bytes", "psum_write_bytes"} <= set(result.counters)
    monkeypatch.setitem(machine.HANDLERS, "halt", lambda m, i: m.event.actions.update(spikes=1))
    with pytest.raises(InternalError, match="counts spikes, which ttc.isa.hwconfig does not declare"):
        api.simulate(program, x)


def test_pe_groups_must_divide_the_array():
    toml = (PRESET_DIR / "sata.toml").read_text()
    with pytest.raises(HwConfigError, match="groups = 3 must divide"):
        parse_hw(toml.replace("groups = 2", "groups = 3"), "t")


def test_report_table_trace_and_pictures(tmp_path, model, x):
    from ttc.runtime.report import format_table, write_report

    program = api.compile_model(model, "4,N,1,8,8").program
    result = api.simulate(program, x)
    rep = write_report(program, result, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(rep))
    assert sum(r["cycles"] for r in rep["layers"]) == rep["cycles"]
    for r in rep["layers"]:
        assert 0 < r["roofline_utilisation"] <= 1 and r["energy_pj"] > 0
    assert rep["layers"][0]["macs"] > 0 and rep["layers"][-1]["spike_adds"] > 0
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    slices = [e for e in trace if e["ph"] == "X"]
    assert len(slices) == len(program.code) - 1  # every instruction but halt
    assert max(e["ts"] + e["dur"] for e in slices) == pytest.approx(result.cycles / program.hw.frequency_mhz)
    for png in ("energy.png", "timeline.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep["layers"][0]["layer"] in format_table(rep)
    counted = {c["path"]: c for c in rep["counts"]["model"]["layers"]}  # the compiler's static counts
    measured = {r["source"]: r for r in rep["layers"]}
    for path, c in counted.items():  # per inference the simulator adds only where spikes fire: at most T x the count
        assert c["macs"] == c["adds"] + c["muls"]
        assert measured[path]["spike_adds"] <= c["adds"] * x.shape[0] and measured[path]["macs"] <= c["muls"] * x.shape[0]
    assert measured["5"]["spike_adds"] > 0 and measured["0"]["macs"] > 0
    assert rep["counts"]["factorised"] is None and "model:" in format_table(rep)
    # where the energy figures come from, in the JSON and on the terminal; a repriced run names its own
    assert rep["energy_source"] == program.hw.energy_source and "CACTI 7 at 28 nm" in rep["energy_source"]
    assert f"energy figures (sata): {rep['energy_source']}" in format_table(rep).splitlines()
    repriced = dataclasses.replace(program, hw=load_hw("horowitz45"))
    rep45 = write_report(repriced, api.simulate(repriced, x), tmp_path / "horowitz45")
    assert json.loads((tmp_path / "horowitz45" / "report.json").read_text())["energy_source"] == rep45["energy_source"]
    assert "leakage: CACTI 7 at 28 nm, borrowed from the sata preset" in format_table(rep45)


def test_cli_report_and_repricing_with_another_config(tmp_path, model):
    torch.save(model, tmp_path / "m.pt")
    run = lambda *a: subprocess.run([sys.executable, "-m", "ttc.cli", *map(str, a)], capture_output=True, text=True)
    assert run("compile", tmp_path / "m.pt", "-o", tmp_path / "p.bin", "--input-shape", "4,N,1,8,8").returncode == 0
    r = run("run", "--sim", tmp_path / "p.bin", "--report", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert "roofline" in r.stdout and (tmp_path / "rep" / "timeline.png").is_file()
    stats = {hw: json.loads(run("run", "--sim", tmp_path / "p.bin", "--json", *hw).stdout) for hw in ((), ("--hw", "horowitz45"))}
    plain, repriced = stats[()], stats[("--hw", "horowitz45")]
    assert plain["cycles_per_inference"] == repriced["cycles_per_inference"]
    assert plain["energy_pj_by_component"]["dram"] != repriced["energy_pj_by_component"]["dram"]


class _BatchFirst(nn.Module):
    """NeuroBench feeds [batch, time, ...]; ttc's modules take [time, batch, ...]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.transpose(0, 1))


def test_spike_driven_adds_equal_neurobench_effective_acs():
    """NeuroBench's SynapticOperations counts, for layers whose inputs are all 0/1, every non-zero
    input times the non-zero weights it reaches: ttc's spike-driven adds. (Its effective MACs count
    non-zero inputs, ttc's MACs every in-bounds tap, so those differ by definition.)"""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import TorchModel
    from torch.utils.data import DataLoader, TensorDataset

    net = dyadic_(nn.Sequential(
        M.Conv2d(1, 6, 3, padding=1), M.LIF(decay=0.5, threshold=0.25), M.MaxPool2d(2),
        M.Conv2d(6, 8, 3, padding=1), M.LIF(decay=0.5, threshold=0.25), M.Flatten(), M.Linear(128, 10),
        M.TimeMean()), 9, span=3)  # exactly representable: the float model spikes as the machine does
    x = grid_inputs((4, 32, 1, 8, 8), seed=9)
    data = DataLoader(TensorDataset(torch.from_numpy(x).transpose(0, 1), torch.zeros(32)), batch_size=16)
    results = Benchmark(TorchModel(_BatchFirst(net)), data, [], [], [[], [SynapticOperations]]).run(quiet=True)
    result = api.simulate(api.compile_model(net, "4,N,1,8,8").program, x)
    assert result.counters["spike_add"] > 1000
    assert result.counters["spike_add"] == results["SynapticOperations"]["Effective_ACs"]


def test_ttfs_report_counts_the_pe_work_of_tconv_layers():
    """A TTFS conv or linear (`tconv`) keeps the PE array busy: its layers report PE utilisation, from
    the ISA table's PE work, and their roofline includes that work."""
    from ttc.demo import CAT_MODEL
    from ttc.digits import load_digits_split
    from ttc.isa.table import BY_NAME
    from ttc.runtime.report import layer_table

    program = api.compile_file(CAT_MODEL, "N,1,8,8").program
    rows = layer_table(program, api.simulate(program, load_digits_split()[2][0][:4]))
    firsts = [layer["first_instr"] for layer in program.meta["layers"]] + [len(program.code)]
    tconv_layers = 0
    for row, first, last in zip(rows, firsts, firsts[1:]):
        code = program.code[first:last]
        work = sum(BY_NAME[i.op].pe_work(i.args) for i in code if i.op == "tconv")
        if work:
            tconv_layers += 1
            assert row["pe_utilisation"] == pytest.approx(work / program.hw.pes / row["cycles"])
            assert 0 < row["pe_utilisation"] <= row["roofline_utilisation"] <= 1
        assert {i.op for i in code} & {"sconv", "dconv"} == set()  # TTFS layers run on tconv alone
    assert tconv_layers == 4  # three convs and the classifier
