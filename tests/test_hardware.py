"""The hardware model: presets, energy by action and by layer, leakage over the timeline, reports."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
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


def assert_perfetto_nesting(trace: list[dict]) -> None:
    """Complete slices on one track must nest or be apart (Perfetto cannot draw partial overlaps);
    async begin/end events must pair up."""
    by_track: dict = {}
    for e in trace:
        if e["ph"] == "X":
            by_track.setdefault(e["tid"], []).append((e["ts"], -(e["ts"] + e["dur"])))
    for tid, slices in by_track.items():
        open_ends: list[float] = []
        for start, neg_end in sorted(slices):
            end = -neg_end
            while open_ends and open_ends[-1] <= start + 1e-9:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1] + 1e-9, f"track {tid}: a slice at {start} overlaps its parent"
            open_ends.append(end)
    begins = sorted((e["cat"], e["id"]) for e in trace if e["ph"] == "b")
    assert begins == sorted((e["cat"], e["id"]) for e in trace if e["ph"] == "e")


def test_report_table_trace_and_pictures(tmp_path, model, x):
    from ttc.runtime.report import format_table, write_report

    program = api.compile_model(model, "4,N,1,8,8").program
    result = api.simulate(program, x)
    rep = write_report(program, result, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(rep))
    assert sum(r["cycles"] for r in rep["layers"]) == rep["cycles_per_inference"]
    for r in rep["layers"]:
        assert 0 < r["roofline_utilisation"] <= 1 and r["energy_pj"] > 0
    assert rep["layers"][0]["macs"] > 0 and rep["layers"][-1]["spike_adds"] > 0
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    slices = [e for e in trace if e["ph"] == "X"]
    assert len(slices) == len(program.code) - 1  # every instruction but halt: on its queue, or DMA on the DRAM track
    ends = [e["ts"] + e["dur"] for e in slices] + [e["ts"] for e in trace if e["ph"] == "e"]
    assert max(ends) == pytest.approx(result.cycles / program.hw.frequency_mhz)
    assert_perfetto_nesting(trace)
    named = {e["tid"]: e["args"]["name"] for e in trace if e["ph"] == "M"}
    assert {e["tid"] for e in trace if e["ph"] != "M"} == set(named)  # no empty track
    assert {"dram", "layers", "load"} <= set(named.values())
    assert sum(e["ph"] == "b" and e["cat"] == "layer" for e in trace) == len(program.meta["layers"])
    for png in ("energy.png", "timeline.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep["layers"][0]["layer"] in format_table(rep)
    counted = {c["path"]: c for c in rep["counts"]["model"]["layers"]}  # the compiler's static counts
    measured = {r["layer"]: r for r in rep["layers"]}
    for path, c in counted.items():  # per inference the simulator adds only where spikes fire: at most T x the count
        assert c["macs"] == c["adds"] + c["muls"]
        assert measured[path]["spike_adds"] <= c["adds"] * x.shape[0] and measured[path]["macs"] <= c["muls"] * x.shape[0]
    assert measured["5"]["spike_adds"] > 0 and measured["0"]["macs"] > 0
    assert rep["counts"]["factorised"] is None and "model:" in format_table(rep)
    # where the energy figures come from, in the JSON and on the terminal; a repriced run names its own
    source = rep["provenance"]["hardware"]["energy_source"]
    assert source == program.hw.energy_source and "CACTI 7 at 28 nm" in source
    assert f"energy figures (sata): {source}" in format_table(rep).splitlines()
    repriced = dataclasses.replace(program, hw=load_hw("horowitz45"))
    rep45 = write_report(repriced, api.simulate(repriced, x), tmp_path / "horowitz45")
    assert json.loads((tmp_path / "horowitz45" / "report.json").read_text())["provenance"]["hardware"]["energy_source"] == rep45["provenance"]["hardware"]["energy_source"]
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


def test_parameters_and_spike_driven_adds_equal_neurobench_and_macs_differ_as_documented():
    """docs/counting.md: NeuroBench's ParameterCount is ttc's `params`; its Effective_ACs (for layers
    whose inputs are all 0/1, every non-zero input times the non-zero weights it reaches) are ttc's
    spike-driven adds, `spike_add`. Its Effective_MACs count the same on multi-bit inputs (non-zero
    inputs only), where ttc's `mac` counts every in-bounds tap the machine multiplies: computed here
    by both definitions."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ParameterCount
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import TorchModel
    from torch.utils.data import DataLoader, TensorDataset

    net = dyadic_(nn.Sequential(
        M.Conv2d(1, 6, 3, padding=1), M.LIF(decay=0.5, threshold=0.25), M.MaxPool2d(2),
        M.Conv2d(6, 8, 3, padding=1), M.LIF(decay=0.5, threshold=0.25), M.Flatten(), M.Linear(128, 10),
        M.TimeMean()), 9, span=3)  # exactly representable: the float model spikes as the machine does
    x = grid_inputs((4, 32, 1, 8, 8), seed=9)
    data = DataLoader(TensorDataset(torch.from_numpy(x).transpose(0, 1), torch.zeros(32)), batch_size=16)
    results = Benchmark(TorchModel(_BatchFirst(net)), data, [], [], [[ParameterCount], [SynapticOperations]]).run(quiet=True)
    compiled = api.compile_model(net, "4,N,1,8,8")
    result = api.simulate(compiled.program, x)
    assert compiled.counts["model"]["total"]["params"] == results["ParameterCount"]
    assert result.counters["spike_add"] > 1000
    assert result.counters["spike_add"] == results["SynapticOperations"]["Effective_ACs"]
    # the first layer reads multi-bit pixels: NeuroBench counts non-zero pixels x the non-zero weights
    # they reach, ttc every in-bounds tap it multiplies (zero pixels included)
    pixels = torch.from_numpy(x).reshape(-1, 1, 8, 8)
    taps = F.conv2d((pixels != 0).float(), (net[0].weight != 0).float(), padding=1).sum() / x.shape[1]
    assert results["SynapticOperations"]["Effective_MACs"] == float(taps)
    dense = F.conv2d(torch.ones_like(pixels), torch.ones_like(net[0].weight), padding=1).sum() / x.shape[1]
    assert result.counters["mac"] == float(dense) > float(taps)


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
            assert row["shift_adds"] > 0 and row["spike_adds"] == row["macs"] == 0  # the TTFS column
        assert {i.op for i in code} & {"sconv", "dconv"} == set()  # TTFS layers run on tconv alone
    assert tconv_layers == 4  # three convs and the classifier


def test_energy_plot_colours_are_fixed_and_100_layers_stay_readable(tmp_path):
    """A component has one colour whatever it ranks (leakage was blue under one preset and orange under
    another); 100 layers are drawn as at most MAX_BARS groups, in a picture of bounded width."""
    import struct

    from ttc.runtime import report as R

    assert R.component_colour("leakage") == R.component_colour("leakage") != R.component_colour("dram")
    layers = [dict(layer=f"l{k}", energy_pj_by_component={"leakage": 5.0 + k, "dram": 100.0 - k}) for k in range(100)]
    groups = R._groups([row["layer"] for row in layers])
    assert len(groups) <= R.MAX_BARS and sorted(k for _, ks in groups for k in ks) == list(range(100))
    rep = dict(layers=layers, provenance=dict(hardware=dict(name="sata")))
    R.plot_energy(rep, tmp_path / "e.png")
    width, height = struct.unpack(">II", (tmp_path / "e.png").read_bytes()[16:24])
    assert width <= 16 * 120 and height < width
