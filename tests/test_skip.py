"""The array's skip modes (`[array] skip`): the PE work each sample's spikes leave, its own timeline, the
same figures on both backends and run alone, and the config key."""
import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_jit import FAMILIES, _same
from test_train import B, T, _batches, _net
from ttc import api
from ttc.compiler.train import TrainOptions
from ttc.frontends import modules as M
from ttc.isa.hwconfig import PRESET_DIR, HwConfig, HwConfigError, load_hw, parse_hw
from ttc.isa.program import Program
from ttc.runtime.run import run
from ttc.runtime.train import Trainer
from ttc.simulator.machine import row_work


def _hw(mode: str) -> HwConfig:
    return dataclasses.replace(load_hw("sata"), pe_skip=mode)


def test_the_skip_key_takes_its_modes_only_and_travels_in_prog_bin():
    text = (PRESET_DIR / "sata.toml").read_text()
    assert parse_hw(text, "sata").pe_skip == "none"
    event = parse_hw(text.replace("frequency_mhz = 400", 'frequency_mhz = 400\nskip = "event"'), "event.toml")
    assert event.pe_skip == "event" and HwConfig.from_json(event.to_json()).pe_skip == "event"
    with pytest.raises(HwConfigError, match=r"\[array\]: skip must be one of none, tile, event, got 'zeros'"):
        parse_hw(text.replace("frequency_mhz = 400", 'frequency_mhz = 400\nskip = "zeros"'), "bad.toml")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3),
       st.integers(-1, 2), st.integers(0, 2), st.integers(0, 2 ** 31))
def test_row_work_counts_the_pairs_that_read_a_spiking_row(oh, ow, kh, kw, sh, sw, pt, pl, seed):
    """Against every (output, tap) pair one by one: it counts when the input row it reads (of its channel and
    plane) has a spike in a column some output reads."""
    rng = np.random.default_rng(seed)
    ih, iw, cin, cout, batch = rng.integers(1, 7), rng.integers(1, 7), 2, 3, 2
    active = rng.random((batch, cin, ih, iw)) < 0.2
    i = dict(oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, ih=ih, iw=iw, cout=cout)
    read = {ox * sw + kx - pl for ox in range(ow) for kx in range(kw)}
    want = []
    for b in range(batch):
        pairs = 0
        for oy, ox, c, ky, kx in itertools.product(range(oh), range(ow), range(cin), range(kh), range(kw)):
            y = oy * sh + ky - pt
            if 0 <= y < ih and any(active[b, c, y, x] for x in range(iw) if x in read):
                pairs += cout
        want.append(pairs)
    assert list(row_work(active, i)) == want


@pytest.mark.parametrize("family", ["event-input", "mt-cascade", "ttfs-cat-digits", "tt-stt-resnet"])
def test_a_skipping_array_times_each_sample_by_its_spikes_alike_on_both_backends(family):
    """Under tile and event: the outputs are the dense machine's; both backends give the same cycles and
    energy, each sample's as run alone; the PE queues work less than on the dense array, event least."""
    build, shape, options, x = FAMILIES[family]
    axis = 0 if shape.startswith("N") else 1
    model = build()
    busy = {}
    for mode in ("none", "tile", "event"):
        compiled = api.compile_model(model, shape, _hw(mode), **options)
        jit, numpy_ = (run(compiled.program, [x], backend) for backend in ("jit", "numpy"))
        _same(jit, numpy_)
        assert np.array_equal(jit.cycles_per_sample, numpy_.cycles_per_sample)
        assert np.array_equal(jit.energy_pj_per_sample, numpy_.energy_pj_per_sample)
        assert all(np.array_equal(s, r) for s, r in zip(jit.outputs, api.reference(compiled, x)))
        alone = [run(compiled.program, [np.take(x, [b], axis=axis)]) for b in range(x.shape[axis])]
        assert list(jit.cycles_per_sample) == [a.cycles for a in alone]
        assert jit.energy_pj_per_sample == pytest.approx([a.total_energy_pj for a in alone], rel=1e-12)
        assert jit.cycles == pytest.approx(jit.cycles_per_sample.mean())
        busy[mode] = sum(c for unit, c in jit.cycles_by_unit.items() if unit.startswith("pe"))
        if mode == "event" and family != "tt-stt-resnet":  # (the TT block's tiny convs hide behind its transfers)
            spread = jit.stats()["per_sample"]["cycles"]
            assert spread["min"] < spread["max"]  # the samples' spikes differ, and so do their times
    assert busy["event"] < busy["tile"] < busy["none"]


def test_a_skipping_config_survives_prog_bin_and_an_empty_input_takes_the_least_time():
    build, shape, options, x = FAMILIES["event-input"]
    prog = api.compile_model(build(), shape, _hw("event"), **options).program
    again = Program.from_bytes(prog.to_bytes(), "prog.bin")
    assert again.hw.pe_skip == "event"
    silent = run(again, [np.zeros_like(x[:, :1])])
    busy = run(again, [np.ones_like(x[:, :1])])
    assert silent.cycles < busy.cycles
    assert silent.counters.get("spike_add", 0) < busy.counters["spike_add"]


def test_training_steps_on_a_skipping_array_are_timed_by_their_spikes():
    """A training step's phases take each step's samples' own times: fewer forward cycles on an event array."""
    net = _net((64, 64, 4), lambda: M.LIF(decay=0.5, threshold=0.5))
    x, labels = next(_batches(1, 64, 4, seed=5))
    cycles = {}
    for mode in ("none", "event"):
        step = api.compile_training(net, f"{T},N,64", _hw(mode), train=TrainOptions(batch=B), input_encoding="spikes")
        cycles[mode] = [Trainer(step.program, B).step(x, labels).cycles["forward"] for _ in range(2)]
    assert cycles["none"][0] == cycles["none"][1]
    assert 0 < cycles["event"][0] < cycles["none"][0]
