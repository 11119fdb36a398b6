"""The fuzzer (ttc.fuzz) and what it found: a short deterministic campaign that must find nothing, the
harness's own verdicts (so that the campaign can fail), and one regression test per failure signature
the long campaigns found, each with its reproducer (a literal edit of a real artefact, or a file under
tests/fuzz_regressions/) and the UserError it now gets."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ttc.fuzz import engine, mutators
from ttc.fuzz.seeds import seeds
from ttc.fuzz.targets import Target, targets
from ttc.isa.asm import AsmError, assemble
from ttc.isa.errors import UserError
from ttc.isa.files import decode_text
from ttc.isa.hwconfig import HwConfigError, PRESET_DIR, parse_hw
from ttc.isa.limits import MAX_JSON_DEPTH, json_depth, load_json
from ttc.isa.meta import MetaError, check_meta
from ttc.isa.program import Program, ProgramError
from ttc.compiler.ir import IRError
from ttc.compiler.ir_text import parse_graph

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"


@pytest.fixture(scope="module")
def pool():
    return seeds()


def test_short_campaign_finds_nothing(pool, monkeypatch):
    """The deterministic campaign `make test` runs: 120 mutated inputs per target (a few seconds; `make fuzz` runs the long one) from seed 0."""
    monkeypatch.setenv("TTC_MEMORY_LIMIT", engine.FUZZ_MEMORY_LIMIT)
    stats = engine.campaign(targets(), pool, inputs=120, seed=0, time_limit=10.0)
    assert stats.inputs == {name: 120 for name in ("program", "asm", "ir", "hw", "model", "cli")}
    failures = {k: f"{f.message}\n{f.traceback[-1500:]}" for k, f in stats.failures.items()}
    assert failures == {}


# ------------------------------------------------------------------------------ the harness's verdicts

def _target(run) -> Target:
    return Target("t", run, lambda rng, blob, pool: blob)


def test_an_escaping_exception_is_a_failure_keyed_by_type_and_frame():
    def reads_a_missing_key(blob):
        return {}[blob]

    _, error, _ = engine.run_one(_target(reads_a_missing_key), b"x", 5.0)
    assert isinstance(error, KeyError)
    assert engine.signature(error) == ("KeyError", "tests/test_fuzz.py:reads_a_missing_key")


def test_a_ttc_error_is_a_pass():
    def refuses(blob):
        raise ProgramError("fuzz.bin: bad")

    assert engine.run_one(_target(refuses), b"", 5.0)[1] is None


def test_an_input_over_the_time_limit_is_a_failure():
    def spins(blob):
        while True:
            pass

    seconds, error, _ = engine.run_one(_target(spins), b"", 0.2)
    assert isinstance(error, engine.FuzzTimeout) and 0.2 <= seconds < 5


def test_writing_a_file_is_a_failure(tmp_path):
    engine._WriteWatch.install()
    _, error, written = engine.run_one(_target(lambda blob: (tmp_path / "x").write_bytes(blob)), b"", 5.0)
    assert error is None and "open(" in written and "x" in written


def test_workers_run_every_input_and_their_findings_merge(pool):
    """`--jobs 2`: the chunks run in two spawned workers; the counts add up, a failure found in two
    chunks counts twice and keeps the first chunk's reproducer."""
    stats = engine.campaign({"hw": targets()["hw"]}, pool, inputs=120, seed=0, jobs=2)
    assert stats.inputs == {"hw": 120} and stats.failures == {} and stats.seconds["hw"] > 0
    first, second = (engine.Stats(inputs={"t": 50}, seconds={"t": 1.0}, failures={
        ("t", "KeyError", "x.py:f"): engine.Failure("t", ("KeyError", "x.py:f"), "m", "", blob)}) for blob in (b"1", b"2"))
    total = engine.Stats()
    assert engine.merge(total, first) == [("t", "KeyError", "x.py:f")] and engine.merge(total, second) == []
    failure = total.failures[("t", "KeyError", "x.py:f")]
    assert total.inputs == {"t": 100} and failure.count == 2 and failure.reproducer == b"1"


def test_repacked_programs_pass_the_checksums(pool):
    for blob in pool["program"]:
        assert mutators.pack_program(mutators.unpack_program(blob)) == blob


# ------------------------------------------------------------------------------ JSON and metadata, by hypothesis

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=30)


def _depth(value) -> int:
    if isinstance(value, (list, dict)):
        items = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in items), default=0)
    return 0


@given(json_values)
def test_json_depth_agrees_with_the_value(value):
    assert json_depth(json.dumps(value)) == _depth(value)


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_check_meta_raises_only_meta_errors(value):
    """Any JSON value as the metadata, or as any of its fields, gives a MetaError or passes."""
    base = json.loads(Program.from_bytes(seeds()["program"][0]).meta_json())
    for meta in (value, {**base, "inputs": [value]}, {**base, "layers": [value]}, {**base, "outputs": value},
                 {**base, "inputs": [{**base["inputs"][0], "shape": value}]}):
        try:
            check_meta(meta, 100, 0)
        except MetaError:
            pass


def test_deep_json_is_refused_before_parsing():
    with pytest.raises(UserError, match=f"nests deeper than {MAX_JSON_DEPTH} levels"):
        load_json("[" * 100_000 + "]" * 100_000, "x.bin", "metadata")
    with pytest.raises(UserError, match="NaN is not a JSON number"):
        load_json('{"a": NaN}', "x.bin", "metadata")


# ------------------------------------------------------------------------------ regressions: prog.bin

def _edited(blob: bytes, meta=None, hw=None) -> bytes:
    bodies = mutators.unpack_program(blob)
    for name, edit in (("meta", meta), ("hw", hw)):
        if edit is not None:
            doc = json.loads(bodies[name])
            edit(doc)
            bodies[name] = json.dumps(doc).encode()
    return mutators.pack_program(bodies)


def _set(path, value):
    def edit(doc):
        for k in path[:-1]:
            doc = doc[k]
        if value is KeyError:
            del doc[path[-1]]
        else:
            doc[path[-1]] = value
    return edit


# (meta edit or None, hw edit or None, the message); each row was a failure signature of the campaign
PROGRAM_CASES = [
    (_set(("inputs", 0, "path"), KeyError), None, r"inputs\[0\]: 'path' is a required property"),  # KeyError runtime/run.py
    (_set(("outputs", 0, "step_stride"), KeyError), None, r"outputs\[0\]: 'step_stride' is a required property"),  # KeyError _read_output
    (_set(("layers", 0, "first_instr"), KeyError), None, r"layers\[0\]: 'first_instr' is a required property"),  # KeyError energy.py
    (_set(("layers", 1, "first_instr"), "7"), None, r"layers\[1\].first_instr: '7' is not of type 'integer'"),  # layer_of
    (_set(("layers",), [True]), None, r"layers\[0\]: True is not of type 'object'"),  # TypeError energy.py
    (_set(("inputs", 0, "frac"), [1]), None, r"inputs\[0\].frac: \[1\] is not of type 'integer'"),  # TypeError io._scaled
    (_set(("inputs",), 5), None, "inputs: 5 is not of type 'array'"),
    (_set(("counts", "model", "total", "macs"), "x"), None,  # ValueError in report.format_counts (cli target)
     r"counts.model.total.macs: 'x' is not of type 'number'"),
    (_set(("options", "input_shape"), 4), None, "options.input_shape: 4 is not of type 'string'"),  # run --check
    (_set(("inputs", 0, "addr"), 1.0), None, r"inputs\[0\].addr: 1.0 is not of type 'integer'"),  # a float index  # TypeError program.validate
    (_set(("inputs", 0, "step_bytes"), 1), None, r"inputs\[0\].step_bytes = 1, but shape"),
    (_set(("dram_bytes",), 1 << 50), None, "more than the memory limit"),  # NumPy: maximum dimension exceeded
    (_set(("inputs",), [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
     None, "nests deeper than"),  # RecursionError json/decoder.py (here just past the limit)
    (None, _set(("buffers", "wgt", "leakage_mw"), {}), "leakage_mw must be a number"),  # TypeError leakage_pj
    (None, _set(("dram_latency_cycles",), "9"), "latency_cycles must be an integer"),  # TypeError timeline
    (None, _set(("buffers", "psum", "write_pj"), KeyError), "missing key 'write_pj'"),  # TypeError Buffer()
]


@pytest.mark.parametrize("meta, hw, message", [c for c in PROGRAM_CASES if c[2]])
def test_bad_program_metadata_is_one_program_error(pool, monkeypatch, meta, hw, message):
    monkeypatch.setenv("TTC_MEMORY_LIMIT", "256M")
    blob = _edited(pool["program"][0], meta, hw)
    with pytest.raises(ProgramError, match=message) as info:
        Program.from_bytes(blob, "fuzz.bin")
    assert str(info.value).startswith("fuzz.bin: ")


def test_hw_json_that_is_not_an_object(pool):
    bodies = mutators.unpack_program(pool["program"][0])
    bodies["hw"] = b"7"
    with pytest.raises(ProgramError, match="hardware config: must be an object, got 7"):  # AttributeError from_json
        Program.from_bytes(mutators.pack_program(bodies), "fuzz.bin")


@pytest.mark.parametrize("name, message", [
    ("program-ttfs-weight-code", "not a 5-bit log code"),  # ValueError isa/ttfs.py code_exponents
    ("program-conv-zero-width", "each must be at least 1"),  # RuntimeError in torch's conv2d
    ("program-conv-no-output-channels", "each must be at least 1"),  # RuntimeError in torch's conv2d (cout=0)
    ("program-conv-no-planes", "each must be at least 1"),  # ValueError in np.concatenate (planes=0)
    ("program-input-without-path", r"inputs\[0\]: 'path' is a required property"),  # KeyError in runtime/run.py
    ("program-huge-dram", "kib must be at most"),  # ValueError NumPy: maximum dimension exceeded (a 2^63 KiB buffer)
])
def test_program_reproducers(monkeypatch, name, message):
    monkeypatch.setenv("TTC_MEMORY_LIMIT", "256M")
    blob = gzip.decompress((REGRESSIONS / f"{name}.gz").read_bytes())
    with pytest.raises(UserError, match=message):
        targets()["program"].run(blob)


def test_an_instruction_reaching_beyond_its_memory_is_refused_before_it_computes(monkeypatch):
    """A dconv whose output would lie 398 MB past psum's end used to be computed for over 10 s (campaign 4)
    before its write was refused: its footprint is checked first, so its handler never runs."""
    from ttc.simulator import machine
    monkeypatch.setenv("TTC_MEMORY_LIMIT", "256M")
    monkeypatch.setitem(machine.HANDLERS, "dconv", lambda m, i: pytest.fail("the dconv handler ran"))
    blob = gzip.decompress((REGRESSIONS / "program-conv-output-beyond-psum.gz").read_bytes())
    with pytest.raises(UserError, match=r"instruction 5 \(dconv\): psum\[0x0\]\+398570240 lies beyond the 32768 bytes of psum"):
        targets()["program"].run(blob)


def test_a_copy_of_many_rows_beyond_its_buffer_is_refused_before_it_runs(monkeypatch):
    """A load of 65535 rows took over 10 s (each row's footprint check scanned every row's region; that
    check now bisects): its footprint is checked against ifmap first, so the handler never runs."""
    from ttc.simulator import machine
    monkeypatch.setenv("TTC_MEMORY_LIMIT", "256M")
    monkeypatch.setitem(machine.HANDLERS, "load", lambda m, i: pytest.fail("the load handler ran") if m.pc == 119 else None)
    blob = gzip.decompress((REGRESSIONS / "program-copy-65535-rows.gz").read_bytes())
    with pytest.raises(UserError, match=r"instruction 119 \(load\): ifmap\[0x0\]\+524280 lies beyond"):
        targets()["program"].run(blob)


def test_a_copy_of_many_rows_checks_each_access_by_one_bisection(monkeypatch):
    """What the 5 s bound on the 65535-row load stood for, without a clock: a strided copy that fits checks
    each row's access against its footprint by one bisection of the regions, sorted once per memory and
    mode (the check once scanned every row's region for every row: quadratic)."""
    from ttc.isa.encoding import Instr, Ref
    from ttc.simulator import machine

    rows = 20_000
    prog = Program.from_bytes(seeds()["program"][0])
    load = Instr("load", dict(dst=Ref("ifmap", 0), src=Ref("dram", 0), rows=rows, row_bytes=4, src_stride=8,
                              dst_stride=0))
    copy = Program(code=[load, Instr("halt", {})], data=prog.data,
                   meta={**prog.meta, "dram_bytes": max(prog.meta["dram_bytes"], 8 * rows)}, hw=prog.hw)
    calls = {"bisect": 0, "sorted": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(machine, "bisect_right", counted("bisect", machine.bisect_right))
    monkeypatch.setattr(machine, "sorted", counted("sorted", sorted), raising=False)
    m = machine.Machine(copy, 1)
    m.run()
    assert calls == {"bisect": 2 * rows, "sorted": 2}  # a read and a write per row; dram's and ifmap's index
    assert m.counters["dram_read_bytes"] == 4 * rows


# ------------------------------------------------------------------------------ regressions: text and models

def test_assembly_that_is_not_utf8():
    with pytest.raises(UserError, match=r"fuzz.s: not UTF-8 text \(byte 0xff at offset 5, line 2\)"):
        decode_text(b".ttc\n\xff", "fuzz.s")


def test_assembly_with_a_bad_hw_line(pool):
    text = pool["asm"][0].decode().replace('"write_pj":', '"written_pj":', 1)
    with pytest.raises(AsmError, match="unknown key 'written_pj'"):  # TypeError Buffer() missing write_pj
        assemble(text, "fuzz.s")


IR = """graph @net {
  %x = input {index = 0} : seq4<f32[1,8,8]>
  %c = conv2d(%x) {path = "0", weight = WEIGHT, bias = none, stride = STRIDE, padding = [0, 0], weight_frac = none} : seq4<f32[2,8,8]>
  return %c
}"""


@pytest.mark.parametrize("weight, stride, message", [
    ("array<i8[2,1,1,1]>[1, -99999999]", "[1, 1]", "out of bounds for int8"),  # OverflowError ir_text
    ("array<i8[2,1,1,1]>[1, ]", "[1, 1]", "invalid literal for int"),  # ValueError ir_text
    ("array<f32[2,1,1,1]>[1, 2]", "[1, [2]]", r"attribute stride = \(1, \(2,\)\) is not a tuple\[int, int\]"),  # TypeError ir._accumulator
    ("array<f32[2,1,1,1]>[1, 2]", "[0, 1]", r"stride \(0, 1\).*a kernel and a stride are at least 1"),  # ZeroDivisionError conv_out
])
def test_bad_ir_text_is_one_ir_error_naming_the_file(weight, stride, message):
    with pytest.raises(IRError, match=f"^model.ir: .*{message}"):
        parse_graph(IR.replace("WEIGHT", weight).replace("STRIDE", stride), "model.ir")


def test_a_pool_of_stride_zero():
    """ZeroDivisionError in isa/table.py conv_out (campaign 5): a maxpool's stride edited to 0."""
    text = gzip.decompress((REGRESSIONS / "ir-pool-stride-zero.gz").read_bytes()).decode()
    with pytest.raises(IRError, match=r"fuzz.ir: %3 \(maxpool, from '3'\): kernel \(2,\), stride \(0,\)"):
        parse_graph(text, "fuzz.ir")


def test_ir_string_with_a_control_character():
    text = IR.replace("WEIGHT", "array<f32[2,1,1,1]>[1, 2]").replace("STRIDE", "[1, 1]").replace('path = "0"', 'path = "\x01"')
    with pytest.raises(IRError, match="string attribute .*Invalid control character"):  # JSONDecodeError ir_text
        parse_graph(text)


def test_buffer_of_huge_size():
    text = (PRESET_DIR / "sata.toml").read_text()
    head, _, tail = text.partition("[buffers.wgt]")
    tail = tail.replace("kib = ", "kib = 1e308 #", 1)
    with pytest.raises(HwConfigError, match=r"\[buffers.wgt\]: kib must be at most"):  # OverflowError Buffer.bytes
        parse_hw(head + "[buffers.wgt]" + tail, "fuzz.toml")


@pytest.mark.parametrize("name", ["model-damaged-module-state", "model-zip-version", "model-persistent-id",
                                  "model-submodule-table"])
def test_model_reproducers(tmp_path, name):
    """AttributeError in Module.__getattr__, NotImplementedError in zipfile, AssertionError in torch.load,
    TypeError in Module.__setattr__ (a module whose _modules the damaged pickle made an int)."""
    model = targets()["model"]
    model.prepare(gzip.decompress((REGRESSIONS / f"{name}.gz").read_bytes()))
    with pytest.raises(UserError, match="fuzz.pt: "):
        model.run(b"")


# ------------------------------------------------------------------------------ regressions: the command line

@pytest.fixture
def command_line(pool, monkeypatch):
    """The cli target: `ttc` run in-process on a file written into a fresh directory (ttc.fuzz.cli)."""
    monkeypatch.setenv("TTC_MEMORY_LIMIT", engine.FUZZ_MEMORY_LIMIT)
    return targets()["cli"].run


def _refused(command_line, blob: bytes, argv) -> str:
    """Hand `blob` to the command `argv` (INPUT standing for its file): it must fail as a user error, in
    one line naming the file, leaving nothing behind (CliTarget.judge); the line."""
    command_line.prepare(blob)
    f = str(command_line.file)
    status, err = command_line.judge([f if a == "INPUT" else a for a in argv])
    assert status == 1
    return err.strip()


def test_a_damaged_npy_header_is_not_an_array(command_line):
    """TokenError from NumPy's header parser (`ttc run --input`): any error NumPy's reader raises is refused."""
    blob = gzip.decompress((REGRESSIONS / "cli-npy-header.gz").read_bytes())
    line = _refused(command_line, blob, ["run", "--sim", command_line.demo_bin, "--input", "INPUT", "--output", "o.npy"])
    assert "input.npy: not a .npy array (TokenError" in line


def test_an_npy_header_asking_for_4_tib_allocates_nothing(command_line):
    """The file is mapped, not read: a header promising more than the file holds is refused as such."""
    import io
    import numpy as np
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)})
    line = _refused(command_line, buffer.getvalue(), ["run", "--sim", command_line.demo_bin, "--input", "INPUT"])
    assert "input.npy: not a .npy array (ValueError: mmap length is greater than file size)" in line


def test_an_input_of_the_wrong_shape_names_its_file(command_line):
    import io
    import numpy as np
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 1, 8, 8), np.float32))
    line = _refused(command_line, buffer.getvalue(), ["run", "--sim", command_line.demo_bin, "--input", "INPUT"])
    assert line.startswith("ttc: error: ") and "input.npy: input 'input' has shape (1, 1, 8, 8)" in line


def test_a_model_that_cannot_be_compiled_names_its_file(command_line):
    from ttc import demo
    line = _refused(command_line, demo.CAT_MODEL.read_bytes(), ["compile", "INPUT", "--input-shape", "4,N,1,8,8", "-o", "o.bin"])
    assert "input.pt: module '1' (ttc.frontends.ttfs.LogConv2d) is a single-step layer" in line


def test_a_program_the_simulator_refuses_names_its_file(command_line):
    blob = gzip.decompress((REGRESSIONS / "program-conv-zero-width.gz").read_bytes())
    line = _refused(command_line, blob, ["run", "--sim", "INPUT", "--output", "o.npy", "--report", "r"])
    assert "input.bin: instruction" in line and "each must be at least 1" in line


def test_a_damaged_check_model_fails_before_anything_is_written(command_line):
    """`run --check` with a model that cannot be loaded used to write the report first."""
    blob = gzip.decompress((REGRESSIONS / "model-persistent-id.gz").read_bytes())
    line = _refused(command_line, blob, ["run", "--sim", command_line.demo_bin, "--check", "INPUT",
                                         "--output", "o.npy", "--report", "r"])
    assert "input.pt: not a loadable model" in line


@pytest.mark.parametrize("name, message", [
    # AttributeError in Module.__getattr__ while tracing: a BatchNorm2d whose state lost its settings
    ("cli-bn-lacks-settings", r"input.pt: holds a damaged module '5' \(BatchNorm2d\): it lacks track_running_stats, affine"),
    # ValueError (math domain error) in quantize.weight_scale: weights of 1e38 overflow float32 once batch norm folds in
    ("cli-infinite-weights", r"input.pt: %3 \(conv2d, from '3'\): has a weight holding NaN or infinite values"),
    # AttributeError in Module.__getattr__ from the MT neuron's handler: ttc's own class, whose state lost an attribute
    ("cli-mt-neuron-lacks-threshold", r"input.pt: module '5' \(ttc.frontends.modules.MTNeuron\) has no attribute 'threshold'"),
])
def test_a_damaged_model_fails_to_compile_in_one_line(command_line, name, message):
    import re
    shape = "1,N,1,8,8" if "mt-neuron" in name else "4,N,1,8,8"
    line = _refused(command_line, gzip.decompress((REGRESSIONS / f"{name}.gz").read_bytes()),
                    ["compile", "INPUT", "--input-shape", shape, "-o", "o.bin"])
    assert re.search(message, line), line


def test_a_hardware_config_too_small_for_the_program_names_both(command_line):
    """`run --hw` with a config whose weight buffer is smaller than the program's: the message named
    only the program (the cli target's FileNotNamed)."""
    blob = gzip.decompress((REGRESSIONS / "cli-hw-too-small.gz").read_bytes())
    line = _refused(command_line, blob, ["run", "--sim", command_line.demo_bin, "--hw", "INPUT"])
    assert "demo.bin on " in line and "input.toml: instruction 39 (load): wgt[0x0]+576 lies beyond the 512 bytes of wgt" in line
