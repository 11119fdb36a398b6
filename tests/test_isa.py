"""The ISA table drives encoding, assembly and docs; prog.bin rejects every kind of damage."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ttc import api
from ttc.isa import asm, docs, encoding, table
from ttc.isa.errors import InternalError
from ttc.isa.encoding import EncodingError, Instr, Ref
from ttc.isa.hwconfig import HwConfigError, load_hw, parse_hw, presets
from ttc.isa.program import Program, ProgramError

ROOT = Path(__file__).resolve().parent.parent


def _sample(op: table.Opcode, salt: int) -> Instr:
    args = {}
    for k, f in enumerate(op.fields):
        if f.kind == "ref":
            args[f.name] = Ref(f.choices[(salt + k) % len(f.choices)], (salt * 977 + k * 31) % (1 << 20))
        elif f.kind == "enum":
            args[f.name] = f.choices[(salt + k) % len(f.choices)]
        elif f.kind == "mask":
            args[f.name] = tuple(c for i, c in enumerate(f.choices) if (salt * 37 + k) >> i & 1)
        elif f.kind == "u":
            args[f.name] = (salt * 7919 + k) % (1 << f.bits)
        else:
            args[f.name] = ((salt * 7919 + k) % (1 << f.bits)) - (1 << (f.bits - 1))
    return Instr(op.name, args)


@pytest.mark.parametrize("op", table.INSTRUCTIONS, ids=lambda o: o.name)
def test_encode_decode_every_opcode(op):
    for salt in range(25):
        instr = _sample(op, salt)
        raw = encoding.encode(instr)
        assert len(raw) == table.WORD_BYTES
        assert encoding.decode(raw) == instr
        assert raw[0] == op.code


def test_field_range_and_memory_are_checked():
    op = table.BY_NAME["vfill"]
    good = _sample(op, 1)
    with pytest.raises(EncodingError, match="does not fit"):
        Instr("vfill", {**good.args, "n": 1 << 24})
    with pytest.raises(EncodingError, match="not allowed"):
        Instr("vfill", {**good.args, "dst": Ref("dram", 0)})
    with pytest.raises(EncodingError, match="unknown opcode"):
        encoding.decode(bytes([0xEE]) + bytes(31))
    with pytest.raises(EncodingError, match="is not a set of"):
        Instr("vfill", {**good.args, "wait": ("pe0", "bogus")})
    with pytest.raises(EncodingError, match="expected a tuple of names"):
        Instr("vfill", {**good.args, "signal": 3})


def test_docs_isa_md_is_generated_from_the_table():
    assert (ROOT / "docs" / "isa.md").read_text() == docs.render()


def test_presets_load_and_bad_configs_are_rejected():
    assert "sata" in presets()
    hw = load_hw("sata")
    assert (hw.pe_rows, hw.pe_cols, hw.buffers["wgt"].bytes) == (8, 16, 144 * 1024)
    text = (ROOT / "isa" / "presets" / "sata.toml").read_text()
    with pytest.raises(HwConfigError, match="unknown key 'bogus'"):
        parse_hw(text.replace("[array]\n", "[array]\nbogus = 1\n"), "t")
    with pytest.raises(HwConfigError, match="must not be negative"):
        parse_hw(text.replace("read_pj = 28.6", "read_pj = -1.0"), "t")
    with pytest.raises(HwConfigError, match="too small"):
        parse_hw(text.replace("kib = 144", "kib = 0.01"), "t")
    with pytest.raises(HwConfigError, match="no hardware preset"):
        load_hw("no-such-preset")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    from conftest import small_conv_snn

    return api.compile_model(small_conv_snn(), "4,N,1,8,8").program


def test_asm_bin_asm_is_identity(program):
    text = asm.disassemble(program)
    again = asm.assemble(text)
    assert again.to_bytes() == program.to_bytes()
    assert asm.disassemble(again) == text
    assert Program.from_bytes(program.to_bytes()).to_bytes() == program.to_bytes()


def test_asm_syntax_errors_name_the_line(program):
    lines = asm.disassemble(program).splitlines()
    code_at = lines.index(".code") + 2
    lines[code_at] = lines[code_at].replace("load", "lode", 1)
    with pytest.raises(asm.AsmError, match=f":{code_at + 1}:"):
        asm.assemble("\n".join(lines) + "\n", "p.s")


def test_prog_bin_is_deterministic(conv_snn):
    a = api.compile_model(conv_snn, "4,N,1,8,8").program.to_bytes()
    b = api.compile_model(conv_snn, "4,N,1,8,8").program.to_bytes()
    assert a == b


def test_damaged_prog_bin_says_what_is_wrong(program):
    blob = program.to_bytes()
    with pytest.raises(ProgramError, match="truncated"):
        Program.from_bytes(blob[: len(blob) // 2])
    with pytest.raises(ProgramError, match="not a ttc program"):
        Program.from_bytes(b"XXXX" + blob[4:])
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x40
    with pytest.raises(ProgramError, match="corrupted"):
        Program.from_bytes(bytes(flipped))
    with pytest.raises(ProgramError, match="ISA version"):
        Program.from_bytes(blob[:10] + (99).to_bytes(2, "little") + blob[12:])


def test_program_validation_catches_bad_metadata(program):
    broken = dataclasses.replace(program, meta={**program.meta, "dram_bytes": 16})
    with pytest.raises(ProgramError, match="exceeds DRAM size"):
        Program.from_bytes(broken.to_bytes())


@pytest.mark.parametrize("op", table.INSTRUCTIONS, ids=lambda o: o.name)
def test_every_opcode_declares_its_cycles_and_pe_work(op):
    """Every opcode has a cycle count; a PE instruction's cycles are its dense work (times its spike
    planes) over one group's PEs, and nothing else declares PE work."""
    hw = load_hw("sata")
    for salt in range(25):
        args = _sample(op, salt).args
        cycles = op.cycles(hw, args)
        assert isinstance(cycles, int) and cycles >= 0
        if op.unit == "pe":
            group_pes = hw.pes // hw.pe_groups
            assert cycles == -(-op.pe_work(args) * args.get("planes", 1) // group_pes)
        else:
            assert op.pe_work is None
        if op.name == "halt":
            assert cycles == 0


def test_the_table_check_rejects_an_opcode_without_cycles_or_with_misplaced_pe_work():
    vfill, sconv = table.BY_NAME["vfill"], table.BY_NAME["sconv"]
    table._check_table(table.INSTRUCTIONS)
    for broken, message in ((dataclasses.replace(vfill, cycles=None), "declares no cycles"),
                            (dataclasses.replace(sconv, pe_work=None), "PE work"),
                            (dataclasses.replace(vfill, pe_work=sconv.pe_work), "PE work")):
        others = tuple(op for op in table.INSTRUCTIONS if op.name != broken.name)
        with pytest.raises(InternalError, match=message):
            table._check_table(others + (broken,))


def test_the_timeline_spends_the_tables_cycles_on_every_instruction(program):
    """Each instruction's span is its table cycles (plus the DRAM latency for a transfer), and each
    queue is busy for the sum of its instructions' cycles."""
    hw = program.hw
    result = api.simulate(program, np.zeros((4, 2, 1, 8, 8), np.float32))
    assert [s.index for s in result.spans] == list(range(len(program.code) - 1))  # every instruction but halt
    busy = {}
    for span in result.spans:
        instr = program.code[span.index]
        op = table.BY_NAME[instr.op]
        cycles = op.cycles(hw, instr.args)
        latency = hw.dram_latency_cycles if instr.op in ("load", "store") else 0
        assert span.end - span.start == cycles + latency, instr
        busy[span.queue] = busy.get(span.queue, 0) + cycles
    assert {q: n for q, n in result.cycles_by_unit.items() if q != "dram"} == busy
    assert result.cycles_by_unit["dram"] == busy["load"] + busy["store"]  # transfers share the DRAM interface
    assert {s.queue for s in result.spans} >= {"load", "store", "pe0", "neuron", "vector"}
