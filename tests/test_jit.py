"""The JIT backend (ttc.simulator.jit) against the NumPy backend: the same output bits, the same counters,
cycles and energy per layer, on a model of every family ttc compiles, and the same errors."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import grid_inputs, small_conv_snn
from ttc import api
from ttc.compiler.train import TrainOptions
from ttc.demo import EXAMPLES
from ttc.frontends import modules as M
from ttc.isa.encoding import Instr, Ref
from ttc.isa.program import Program
from ttc.isa.table import elems_bytes
from ttc.runtime.run import machine_class, run
from ttc.runtime.train import Trainer
from ttc.simulator import native
from ttc.simulator.machine import SimError


def _mt(levels: int, mode: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(M.Conv2d(1, 4, 3, padding=1), M.MTNeuron(levels, mode, threshold=0.25, decay=0.5),
                         M.Conv2d(4, 4, 3, stride=2, padding=1), M.LIF(decay=0.5, threshold=0.5), M.Flatten(),
                         M.Linear(64, 10), M.TimeMean()).eval()


def _tt(variant: str) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(M.DirectEncoder(4), M.Conv2d(1, 4, 3, padding=1), M.BatchNorm2d(4),
                         M.MSBlock(4, 4, ranks=(2, 2), variant=variant), M.LIF(), M.AvgPool2d(8), M.Flatten(),
                         M.Linear(4, 10), M.TimeMean()).eval()


#: name: (model, input shape, compile options, input)
FAMILIES = {
    "conv-bn-maxpool-fixed-input": (lambda: small_conv_snn(), "4,N,1,8,8", {}, grid_inputs((4, 6, 1, 8, 8))),
    "event-input": (lambda: small_conv_snn(), "4,N,1,8,8", dict(input_encoding="spikes"),
                    (np.random.default_rng(1).random((4, 6, 1, 8, 8)) < 0.3).astype(np.float32)),
    "mt-parallel": (lambda: _mt(3, "parallel"), "4,N,1,8,8", {}, grid_inputs((4, 6, 1, 8, 8))),
    "mt-cascade": (lambda: _mt(2, "cascade"), "4,N,1,8,8", {}, grid_inputs((4, 6, 1, 8, 8))),
    "tt-stt-resnet": (lambda: _tt("stt"), "N,1,8,8", {}, grid_inputs((6, 1, 8, 8))),
    "tt-htt-resnet": (lambda: _tt("htt"), "N,1,8,8", {}, grid_inputs((6, 1, 8, 8))),
    "ttfs-cat-digits": (lambda: api.load_model(EXAMPLES / "cat_digits_ann.pt"), "N,1,8,8", {},
                        grid_inputs((6, 1, 8, 8))),
}


def _same(a, b) -> None:
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.outputs, b.outputs))
    assert a.counters == b.counters
    assert a.cycles == b.cycles and a.energy_pj == b.energy_pj
    assert [layer["counts"] for layer in a.layers] == [layer["counts"] for layer in b.layers]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_jit_equals_numpy_on_every_model_family(family):
    build, shape, options, x = FAMILIES[family]
    prog = api.compile_model(build(), shape, **options).program
    jit, numpy = run(prog, [x], "jit"), run(prog, [x], "numpy")
    _same(jit, numpy)
    assert jit.counters.get("spike", 0) + jit.counters.get("fire", 0) > 0


def test_the_jit_runs_a_training_step_with_numpy_handlers_where_it_has_no_kernel_and_agrees():
    """A training step's backward and update have no kernel yet: the JIT machine runs them with the NumPy
    handlers, in the same program as its kernels (the forward's)."""
    torch.manual_seed(0)
    net = nn.Sequential(M.Conv2d(1, 4, 3, padding=1, bias=False), M.LIF(decay=0.5, threshold=0.5), M.Flatten(),
                        M.Linear(256, 4, bias=False), M.TimeMean())
    step = api.compile_training(net, "4,N,1,8,8", train=TrainOptions(batch=4, band=0.5), input_bits=8,
                                input_frac=4).program
    x, labels = grid_inputs((4, 4, 1, 8, 8)), np.array([0, 1, 2, 3])
    trainers = [Trainer(step, 4, backend) for backend in ("jit", "numpy")]
    for _ in range(3):
        stats = [t.step(x, labels) for t in trainers]
        assert stats[0].counters == stats[1].counters and stats[0].cycles == stats[1].cycles
    for a, b in zip(trainers[0].weights().values(), trainers[1].weights().values()):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("batch", [1, 5])
def test_batches_run_alike(batch):
    build, shape, options, x = FAMILIES["conv-bn-maxpool-fixed-input"]
    prog = api.compile_model(build(), shape, **options).program
    _same(run(prog, [x[:, :batch]], "jit"), run(prog, [x[:, :batch]], "numpy"))


def _program(instrs: list[Instr]) -> Program:
    """A bare program on `sata`: the instructions, then halt."""
    from ttc.isa.hwconfig import load_hw
    return Program(code=[*instrs, Instr("halt", {})], data=b"", hw=load_hw("sata"),
                   meta=dict(dram_bytes=1 << 12, inputs=[], outputs=[], layers=[dict(name="all", path="", op="",
                                                                                      first_instr=0)]))


def test_the_jit_machine_is_the_numpy_machine_with_shorter_buffers():
    """JitMachine sets up Machine's state for its batch (it does not let Machine allocate the whole buffers):
    every attribute Machine has, each array as long as the batch, the memories holding the same bytes as far
    as the program reaches, and a batch too large for memory refused alike."""
    from ttc.simulator.jit import JitMachine, reach
    from ttc.simulator.machine import Machine
    prog = _program([Instr("vfill", dict(dst=Ref("psum", 8), n=4, value=3))])
    prog.data = bytes(range(40))
    jit, ref = JitMachine(prog, 3), Machine(prog, 3)
    assert set(vars(ref)) <= set(vars(jit))
    for name, value in vars(ref).items():
        if isinstance(value, np.ndarray):
            assert getattr(jit, name).shape == value.shape, name
        elif name != "mem":
            assert getattr(jit, name) == value, name
    for m, data in ref.mem.items():
        assert jit.mem[m].shape == (3, reach(prog).get(m, data.shape[1]))
        assert jit.mem[m].tobytes() == data[:, :jit.mem[m].shape[1]].tobytes()
    with pytest.raises(SimError) as refused:
        Machine(prog, 1 << 40)
    with pytest.raises(SimError) as also:
        JitMachine(prog, 1 << 40)
    assert str(also.value) == str(refused.value)


@pytest.mark.parametrize("backend", ["jit", "numpy"])
def test_a_released_machines_memories_serve_the_programs_next_machine_cleared(backend):
    prog = _program([Instr("vfill", dict(dst=Ref(m, 8), n=4, value=3)) for m in ("psum", "vmem", "ifmap")])
    prog.data = bytes(range(1, 41))
    first = machine_class(backend)(prog, 5)
    first.run()
    first.mem["vmem"][:] = 7
    kept = dict(first.mem)
    first.release()
    assert first.mem is None
    second = machine_class(backend)(prog, 5)
    assert all(second.mem[m] is kept[m] for m in kept)  # reused ...
    assert not any(a.any() for m, a in second.mem.items() if m != "dram")  # ... cleared
    assert second.mem["dram"][:, :40].tobytes() == prog.data * 5 and not second.mem["dram"][:, 40:].any()
    third = machine_class(backend)(prog, 5)  # nothing spare while the second machine holds them
    assert not any(third.mem[m] is kept[m] for m in kept)
    second.release()
    other = machine_class(backend)(prog, 4)  # another batch: new memories, and the spare ones dropped
    assert not any(other.mem[m] is kept[m] for m in kept) and "_spare_memories" not in prog.__dict__


def test_a_run_gives_its_machine_back_for_the_next_run():
    build, shape, options, x = FAMILIES["conv-bn-maxpool-fixed-input"]
    prog = api.compile_model(build(), shape, **options).program
    first = run(prog, [x])
    spare = prog._spare_memories
    second = run(prog, [x])
    assert prog._spare_memories is spare  # taken by the second run's machine, and given back
    _same(first, second)


def test_an_overflow_is_the_same_error_on_both_backends():
    big = [Instr("vfill", dict(dst=Ref("psum", 0), n=4, value=(1 << 30))),
           Instr("vacc", dict(dst=Ref("psum", 0), src=Ref("psum", 0), src_fmt="i32", dst_fmt="i32", n=4, shift=2,
                              accumulate=0))]
    errors = []
    for backend in ("jit", "numpy"):
        with pytest.raises(SimError) as e:
            machine_class(backend)(_program(big), 2).run()
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "value out of i32 range" in errors[0]


@pytest.mark.parametrize("backend", ["jit", "numpy"])
@pytest.mark.parametrize("family", ["event-input", "mt-cascade", "ttfs-cat-digits"])
def test_each_samples_energy_is_its_own_run(family, backend):
    """A batch's per-sample energy is what each sample costs run alone: the same cycles, and energy that
    differs only by its data-dependent actions (spike-driven adds, TTFS shift-adds)."""
    build, shape, options, x = FAMILIES[family]
    prog = api.compile_model(build(), shape, **options).program
    axis = 0 if shape.startswith("N") else 1
    whole = run(prog, [x], backend)
    alone = [run(prog, [np.take(x, [b], axis=axis)], backend).total_energy_pj for b in range(x.shape[axis])]
    assert whole.energy_pj_per_sample == pytest.approx(alone, rel=1e-12)
    spread = whole.stats()["per_sample"]
    assert spread["energy_pj"]["min"] < spread["energy_pj"]["max"]  # the samples' spikes differ
    assert spread["cycles"] == dict(mean=whole.cycles, min=whole.cycles, max=whole.cycles)


def test_a_data_set_runs_batch_by_batch_as_it_runs_whole():
    build, shape, options, x = FAMILIES["conv-bn-maxpool-fixed-input"]
    prog = api.compile_model(build(), shape, **options).program
    whole, batched = run(prog, [x]), run(prog, [x], batch=4)  # 6 samples: batches of 4 and 2
    assert batched.batch == whole.batch == 6
    assert batched.outputs[0].tobytes() == whole.outputs[0].tobytes()
    assert batched.counters == pytest.approx(whole.counters, rel=1e-12)
    assert batched.energy_pj == pytest.approx(whole.energy_pj, rel=1e-12)
    assert batched.energy_pj_per_sample == pytest.approx(whole.energy_pj_per_sample, rel=1e-12)
    for a, b in zip(batched.layers, whole.layers):
        assert a["counts"] == pytest.approx(b["counts"], rel=1e-12) and a["energy_pj"] == pytest.approx(b["energy_pj"], rel=1e-12)


def _random_conv(rng, op: str, density: float, cout_below: int = 40) -> tuple[Instr, dict]:
    """An sconv or a forward dconv of random shape (strides, padding, odd channels, i8 or i16 weights; an
    sconv's planes, a dconv's input format and saturation; cout below `cout_below`) and the memories it reads:
    inputs non-zero at `density` (an sconv's spikes), weights with zeros among them."""
    cin, cout, kh, kw, sh, sw = (int(rng.integers(1, hi)) for hi in (20, cout_below, 4, 4, 3, 3))
    ih, iw = (int(rng.integers(1, 10)) for _ in range(2))
    pt, pl = int(rng.integers(-1, kh)), int(rng.integers(0, kw))
    oh, ow = max(1, (ih + 2 * max(pt, 0) - kh) // sh + 1), max(1, (iw + 2 * pl - kw) // sw + 1)
    wfmt = ["i8", "i16"][int(rng.integers(2))]
    fields = dict(src=Ref("ifmap", 0), wgt=Ref("wgt", 0), dst=Ref("psum", 0), cin=cin, cout=cout, ih=ih, iw=iw,
                  oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, accumulate=int(rng.integers(2)), wfmt=wfmt,
                  shift=int(rng.integers(2)), group=0)
    n_in = cin * ih * iw
    if op == "sconv":
        planes = int(rng.integers(1, 4))
        fields.update(planes=planes, mode=["parallel", "cascade"][int(rng.integers(2))])
        src = np.packbits(rng.random(planes * ((n_in + 7) // 8) * 8) < density, bitorder="little")
    else:
        fmt = ["i8", "i16", "i32"][int(rng.integers(3))]
        fields.update(fmt=fmt, transposed=0, skip=0, sat_bits=int(rng.choice([0, 12])), round_shift=int(rng.integers(3)))
        top = {"i8": 127, "i16": 32767, "i32": 40000}[fmt]  # (i32 values beyond i16 too)
        values = rng.integers(-top, top + 1, n_in) * (rng.random(n_in) < density)
        src = values.astype(f"<i{int(fmt[1:]) // 8}").view(np.uint8)
    weights = rng.integers(-100, 100, cout * cin * kh * kw) * (rng.random(cout * cin * kh * kw) < 0.7)
    memories = dict(wgt=weights.astype(f"<i{1 if wfmt == 'i8' else 2}").view(np.uint8), ifmap=src,
                    psum=rng.integers(-1000, 1000, cout * oh * ow).astype("<i4").view(np.uint8))
    return Instr(op, fields), memories


@pytest.mark.parametrize("op", ["sconv", "dconv"])
@pytest.mark.parametrize("density", [0.05, 0.6, 1.0])
@pytest.mark.parametrize("cout_below", [40, 10])
def test_a_conv_of_any_shape_adds_as_numpy_does_sparse_or_dense(op, density, cout_below):
    """The conv kernels add a sparse input element by element and a dense one densely: both give the
    NumPy handler's sums, counts and errors, whatever the shape; a small tile's too (cout up to 9: its sums in 4
    or 8 lanes)."""
    rng = np.random.default_rng(int(density * 100) + cout_below)
    for _ in range(40):
        instr, memories = _random_conv(rng, op, density, cout_below)
        results = []
        for backend in ("jit", "numpy"):
            machine = machine_class(backend)(_program([instr]), 3)
            for mem, data in memories.items():
                machine.mem[mem][:, :data.size] = data
            machine.mem["ifmap"][1] = 0  # a sample without spikes
            try:
                machine.run()
                sums = machine.mem["psum"][:, :memories["psum"].size]
                results.append((sums.tobytes(), machine.counters, machine.sample_pj.tolist()))
            except SimError as e:
                results.append(str(e))
        assert results[0] == results[1], instr


@pytest.mark.parametrize("op", ["sconv", "dconv"])
@pytest.mark.parametrize("where", [3, 10])
def test_a_conv_sum_out_of_i32_range_is_the_same_error_on_both_backends(op, where):
    """A conv's output that leaves i32 when added to dst, among the outputs stored as vectors (3) or one by one
    (10, of 12 per channel): the NumPy handler's error on both backends."""
    fields = dict(src=Ref("ifmap", 0), wgt=Ref("wgt", 0), dst=Ref("psum", 0), cin=1, cout=2, ih=3, iw=4, oh=3, ow=4,
                  kh=1, kw=1, sh=1, sw=1, pt=0, pl=0, accumulate=1, wfmt="i8", shift=0, group=0)
    psum = np.zeros(2 * 12, dtype="<i4")
    psum[12 + where] = (1 << 31) - 1  # channel 1: + 1 (a spike) or + 100 leaves i32
    if op == "sconv":
        fields.update(planes=1, mode="parallel")
        src = np.packbits(np.ones(16, dtype=bool), bitorder="little")
    else:
        fields.update(fmt="i8", transposed=0, skip=0, sat_bits=0, round_shift=0)
        src = np.full(12, 100, dtype="<i1").view(np.uint8)
    memories = dict(wgt=np.array([1, 1], dtype="<i1").view(np.uint8), ifmap=src, psum=psum.view(np.uint8))
    errors = []
    for backend in ("jit", "numpy"):
        machine = machine_class(backend)(_program([Instr(op, fields)]), 2)
        for mem, data in memories.items():
            machine.mem[mem][:, :data.size] = data
        with pytest.raises(SimError) as e:
            machine.run()
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "overflow" in errors[0]


def test_a_pool_of_any_shape_is_numpys():
    """The pool kernel, on random windows (padding that cuts windows, or leaves some wholly outside), modes
    and formats: the NumPy handler's values, counts and errors (a sum that overflows its format)."""
    rng = np.random.default_rng(3)
    formats = ["spike", "i8", "i16", "i32"]
    for case in range(240):
        size, stride = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        channels, ih, iw = (int(rng.integers(1, 7)) for _ in range(3))
        src_fmt, dst_fmt = (formats[int(rng.integers(4))] for _ in range(2))  # (integers to spikes: non-zero)
        mode = ["max", "sum", "min"][int(rng.integers(3))]
        if case % 2:  # a max of spikes (the kernel's bitwise form; rows of up to 56 bits, and longer ones)
            src_fmt = dst_fmt = "spike"
            mode, iw = "max", int(rng.integers(1, 64))
        pt, pl = int(rng.integers(-1, size + 1)), int(rng.integers(0, size + 1))
        oh, ow = max(1, (ih + 2 * max(pt, 0) - size) // stride + 1), max(1, (iw + 2 * pl - size) // stride + 1)
        instr = Instr("pool", dict(src=Ref("ifmap", 0), dst=Ref("ofmap", 0), mode=mode,
                                   src_fmt=src_fmt, dst_fmt=dst_fmt, channels=channels, ih=ih, iw=iw, oh=oh, ow=ow,
                                   k=size, stride=stride, pt=pt, pl=pl))
        n = channels * ih * iw
        data = (np.packbits(rng.random(-(-n // 8) * 8) < 0.5, bitorder="little") if src_fmt == "spike" else
                rng.integers(-128, 128, n).astype(f"<i{int(src_fmt[1:]) // 8}").view(np.uint8))
        results = []
        for backend in ("jit", "numpy"):
            machine = machine_class(backend)(_program([instr]), 2)
            machine.mem["ifmap"][:, :data.size] = data
            try:
                machine.run()
                results.append((machine.mem["ofmap"][:, :elems_bytes(dst_fmt, channels * oh * ow)].tobytes(),
                                machine.counters))
            except SimError as e:
                results.append(str(e))
        assert results[0] == results[1], instr


def test_compiled_kernels_are_kept_for_the_next_process_and_a_damaged_copy_is_made_again(tmp_path, monkeypatch):
    import llvmlite.binding as llvm

    monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path / "cache"))
    text = 'define i64 @twice(i64 %x) {\n  %y = add i64 %x, %x\n  ret i64 %y\n}\n'
    tm = native._engine()
    made = native.kernel_object(text, tm)
    [kept] = (tmp_path / "cache").iterdir()
    parse = llvm.parse_assembly
    monkeypatch.setattr(llvm, "parse_assembly", lambda *a: pytest.fail("compiled again, not taken from the cache"))
    assert native.kernel_object(text, tm) == made
    kept.write_bytes(kept.read_bytes()[:-1] + b"\0")  # damaged: made again, not loaded
    monkeypatch.setattr(llvm, "parse_assembly", parse)
    assert native.kernel_object(text, tm) == made
    assert kept.read_bytes().endswith(made)
    monkeypatch.setenv("TTC_CACHE_DIR", str(kept))  # a file where the directory should be: no cache, still works
    assert native.kernel_object(text, tm) == made
