"""The command line, end to end: compile, run, check, asm/disasm, inspect; and every kind of bad
input gives one clear line, a non-zero exit and no output file."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import grid_inputs, small_conv_snn
from ttc.cli import main
from ttc.demo import MODEL as DIGITS


def ttc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ttc.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_clean_failure(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.save(small_conv_snn(), d / "model.pt")
    r = ttc("compile", d / "model.pt", "-o", d / "prog.bin", "--input-shape", "4,N,1,8,8")
    assert r.returncode == 0, r.stderr
    return d


def test_run_check_is_bit_exact_and_writes_outputs(compiled):
    x = grid_inputs((4, 5, 1, 8, 8))
    np.save(compiled / "x.npy", x)
    r = ttc("run", "--sim", compiled / "prog.bin", "--input", compiled / "x.npy", "--output", compiled / "y.npy",
            "--check", compiled / "model.pt", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["check"]["reference_bit_exact"] and report["check"]["mismatched_elements"] == 0
    assert report["batch"] == 5 and report["cycles_per_inference"] > 0 and report["energy_pj_per_inference"] > 0
    assert report["actions_per_inference"]["spike_add"] > 0
    y = np.load(compiled / "y.npy")
    assert y.shape == (5, 10) and y.dtype == np.float32
    assert report["check"]["float"][0]["top1_agreement"] >= 0.8


def test_run_streams_a_data_set_in_batches_with_per_sample_figures(compiled):
    x = grid_inputs((4, 7, 1, 8, 8), seed=3)
    np.save(compiled / "seven.npy", x)
    runs = [json.loads(ttc("run", "--sim", compiled / "prog.bin", "--input", compiled / "seven.npy", "--json",
                           *batch, "--output", compiled / f"y{len(batch)}.npy").stdout) for batch in ([], ["--batch", "3"])]
    assert runs[0]["batch"] == runs[1]["batch"] == 7
    assert np.load(compiled / "y0.npy").tobytes() == np.load(compiled / "y2.npy").tobytes()
    for key in ("mean", "min", "max"):
        assert runs[1]["per_sample"]["energy_pj"][key] == pytest.approx(runs[0]["per_sample"]["energy_pj"][key], rel=1e-12)
    assert runs[0]["per_sample"]["cycles"]["min"] == runs[0]["per_sample"]["cycles"]["max"] == runs[0]["cycles_per_inference"]
    assert_clean_failure(ttc("run", "--sim", compiled / "prog.bin", "--input", compiled / "seven.npy", "--batch", "0"),
                         "--batch 0")


def test_run_without_input_uses_a_deterministic_batch_of_one(compiled):
    a, b = (ttc("run", "--sim", compiled / "prog.bin", "--json") for _ in range(2))
    assert a.returncode == 0 and json.loads(a.stdout)["batch"] == 1
    assert json.loads(a.stdout)["actions_per_inference"] == json.loads(b.stdout)["actions_per_inference"]


def test_asm_disasm_inspect(compiled):
    assert ttc("disasm", compiled / "prog.bin", "-o", compiled / "prog.s").returncode == 0
    assert ttc("asm", compiled / "prog.s", "-o", compiled / "again.bin").returncode == 0
    assert (compiled / "again.bin").read_bytes() == (compiled / "prog.bin").read_bytes()
    info = json.loads(ttc("inspect", compiled / "prog.bin", "--json").stdout)
    assert info["provenance"]["hardware"]["name"] == "sata" and info["inputs"][0]["shape"] == [1, 8, 8]
    assert info["source"]["file"] == "model.pt"
    text = ttc("inspect", compiled / "prog.bin").stdout
    assert "conv2d+neuron_q" in text


def test_wrong_input_shape(compiled):
    np.save(compiled / "bad.npy", np.zeros((4, 2, 1, 8, 9), np.float32))
    r = ttc("run", "--sim", compiled / "prog.bin", "--input", compiled / "bad.npy", "--output", compiled / "never.npy")
    assert_clean_failure(r, "shape (4, 2, 1, 8, 9)", "(4, N, 1, 8, 8)")
    assert not (compiled / "never.npy").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_program(compiled, damage):
    blob = (compiled / "prog.bin").read_bytes()
    bad = {"truncate": blob[:-100], "flip": blob[:200] + bytes([blob[200] ^ 1]) + blob[201:],
           "garbage": b"hello world" * 10}[damage]
    (compiled / "bad.bin").write_bytes(bad)
    r = ttc("run", "--sim", compiled / "bad.bin", "--output", compiled / "never.npy")
    assert_clean_failure(r, "bad.bin")
    assert not (compiled / "never.npy").exists()


def test_missing_files(compiled, tmp_path):
    assert_clean_failure(ttc("run", "--sim", tmp_path / "nope.bin"), "no such file")
    assert_clean_failure(ttc("compile", tmp_path / "nope.pt", "-o", tmp_path / "p.bin", "--input-shape", "4,N,1,8,8"),
                         "no such file")
    assert not (tmp_path / "p.bin").exists()


def test_bad_hardware_config_is_one_line_naming_the_file_and_the_key(compiled, tmp_path):
    from ttc.isa.hwconfig import PRESET_DIR

    bad = tmp_path / "slow-dram.toml"
    bad.write_text((PRESET_DIR / "sata.toml").read_text().replace("latency_cycles = 64", "latency_cycles = 0"))
    assert_clean_failure(ttc("run", "--sim", compiled / "prog.bin", "--hw", bad),
                         "ttc: error: slow-dram.toml [dram]: latency_cycles must be a positive integer, got 0")


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def test_pickle_of_unknown_class_needs_trust(tmp_path):
    torch.save(Custom(), tmp_path / "custom.pt")
    r = ttc("compile", tmp_path / "custom.pt", "-o", tmp_path / "p.bin", "--input-shape", "2,N,4")
    assert_clean_failure(r, "test_cli.Custom", "--trust-model")
    assert not (tmp_path / "p.bin").exists()


def test_unsupported_module_names_its_path_and_type(tmp_path):
    from ttc.frontends import modules as M

    torch.save(nn.Sequential(M.Linear(4, 3), nn.Sequential(nn.ReLU())), tmp_path / "relu.pt")
    r = ttc("compile", tmp_path / "relu.pt", "-o", tmp_path / "p.bin", "--input-shape", "2,N,4")
    assert_clean_failure(r, "'1.0'", "torch.nn.modules.activation.ReLU")
    assert not (tmp_path / "p.bin").exists()


def test_bad_input_shape_spec(compiled, tmp_path):
    r = ttc("compile", compiled / "model.pt", "-o", tmp_path / "p.bin", "--input-shape", "4,1,8,8")
    assert_clean_failure(r, "batch axis as N")


def test_unwritable_output_is_one_line_naming_the_file(compiled, tmp_path):
    r = ttc("disasm", compiled / "prog.bin", "-o", tmp_path / "missing" / "prog.s")
    assert_clean_failure(r, str(tmp_path / "missing" / "prog.s"), "No such file or directory")
    assert r.returncode == 1


def test_user_error_is_one_line_exit_1_and_traceback_under_verbose(tmp_path, capsys):
    from ttc import cli

    assert cli.main(["inspect", str(tmp_path / "nope.bin")]) == cli.EXIT_ERROR
    assert capsys.readouterr().err == f"ttc: error: {tmp_path / 'nope.bin'}: no such file\n"
    for argv in (["-v", "inspect", str(tmp_path / "nope.bin")], ["inspect", str(tmp_path / "nope.bin"), "-v"]):
        assert cli.main(argv) == cli.EXIT_ERROR
        err = capsys.readouterr().err
        assert err.startswith("Traceback") and "ProgramError" in err and err.endswith("no such file\n")


def test_unexpected_exception_is_reported_as_an_internal_error(compiled, monkeypatch, capsys):
    from ttc import cli
    from ttc.isa.program import Program

    def broken(path):
        raise KeyError("layers")

    monkeypatch.setattr(Program, "load", broken)
    argv = ["inspect", str(compiled / "prog.bin")]
    assert cli.main(argv) == cli.EXIT_INTERNAL != cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("ttc: internal error: KeyError: 'layers'\n") and "Traceback" not in err
    assert "bug in ttc" in err and f"ttc inspect {compiled / 'prog.bin'}" in err and "-v" in err
    assert cli.main(["-v", *argv]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "in broken" in err and "ttc: internal error: KeyError" in err


def test_compile_flags_are_the_passes_user_options():
    from ttc import cli
    from ttc.compiler.passes import user_options

    compile_args = ["compile", "m.pt", "-o", "p.bin", "--input-shape", "N,4"]
    defaults = cli.build_parser().parse_args(compile_args)
    assert all(getattr(defaults, o.name) == o.default for o in user_options())
    args = cli.build_parser().parse_args(compile_args + ["--tt-rank", "3", "--tt-error", "0.1", "--input-bits", "8",
                                                         "--objective", "edp"])
    assert (args.tt_rank, args.tt_error, args.input_bits, args.objective) == ("3", 0.1, 8, "edp")


def test_every_run_output_says_which_ttc_program_hardware_and_input(tmp_path, capsys):
    """report.json alone answers which ttc, which program, which hardware, which input (issue 18), and
    `ttc run --json` and report.json use one key per quantity; both validate against the documented schema."""
    import hashlib

    import jsonschema
    from referencing import Registry, Resource

    from ttc.isa.program import ttc_version

    schema = json.loads((Path(__file__).parent.parent / "docs" / "schema" / "run.schema.json").read_text())
    prog, x = tmp_path / "d.bin", tmp_path / "x.npy"
    assert main(["compile", str(DIGITS), "-o", str(prog), "--input-shape", "4,N,1,8,8"]) == 0
    np.save(x, grid_inputs((4, 3, 1, 8, 8), seed=2))
    capsys.readouterr()
    assert main(["run", "--sim", str(prog), "--input", str(x), "--json", "--report", str(tmp_path / "rep")]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    for out in (printed, report):
        jsonschema.validate(out, schema)
        p = out["provenance"]
        assert p["ttc_version"] == ttc_version() == p["program"]["compiled_by"]
        assert p["program"]["sha256"] == hashlib.sha256(prog.read_bytes()).hexdigest()
        assert p["hardware"]["name"] == "sata" and len(p["hardware"]["digest"]) == 64
        assert p["input"] == {"source": "file", "path": str(x), "sha256": hashlib.sha256(x.read_bytes()).hexdigest(),
                              "shape": [4, 3, 1, 8, 8]}
    assert {k: report[k] for k in printed} == printed  # one key, one value, per quantity
    import csv

    rows = list(csv.DictReader((tmp_path / "rep" / "layers.csv").open()))
    assert [r["layer"] for r in rows] == [r["layer"] for r in report["layers"]]
    assert [float(r["energy_pj.leakage"]) for r in rows] == [r["energy_pj_by_component"]["leakage"] for r in report["layers"]]
    assert main(["run", "--sim", str(prog)]) == 0  # no input: the terminal says the batch is made up
    assert "a deterministic random batch of shape [4, 1, 1, 8, 8] (seed 0), not data" in capsys.readouterr().out
    assert main(["inspect", str(prog), "--json"]) == 0  # the program's own schema, sharing `provenance`
    docs = Path(__file__).parent.parent / "docs" / "schema"
    inspected = json.loads(capsys.readouterr().out)
    registry = Registry().with_resource("https://ttc.invalid/schema/run.schema.json", Resource.from_contents(schema))
    jsonschema.Draft202012Validator(json.loads((docs / "inspect.schema.json").read_text()), registry=registry).validate(inspected)
    assert inspected["provenance"]["program"] == printed["provenance"]["program"]
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.strip() == f"ttc {ttc_version()}"


def test_a_command_that_fails_part_way_leaves_nothing(compiled, tmp_path, capsys):
    """Outputs appear together when a command succeeds (ttc.isa.files.all_or_nothing): the IR of a
    compile whose program cannot be written, or a report of a run whose output cannot, are not left."""
    missing = tmp_path / "no-such-dir"
    ir = tmp_path / "model.ir"
    assert main(["-q", "compile", str(compiled / "model.pt"), "--input-shape", "4,N,1,8,8", "--emit-ir", str(ir),
                 "-o", str(missing / "prog.bin")]) == 1
    assert f"{missing / 'prog.bin'}" in capsys.readouterr().err
    report = tmp_path / "report" / "deeper"
    assert main(["-q", "run", "--sim", str(compiled / "prog.bin"), "--report", str(report),
                 "--output", str(missing / "y.npy")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither model.ir nor the report's directories
    assert main(["-q", "run", "--sim", str(compiled / "prog.bin"), "--report", str(report), "--output",
                 str(tmp_path / "y.npy")]) == 0
    assert sorted(p.name for p in report.iterdir()) == ["energy.png", "layers.csv", "report.json", "timeline.png",
                                                        "trace.json"]
    assert (tmp_path / "y.npy").is_file()


def test_an_array_that_skips_gives_each_sample_its_time_whole_or_in_batches(compiled):
    """`[array] skip = "event"` in a config file: `ttc run` says each sample's time differs, the batched run
    gives the whole run's per-sample figures, and the JSON keeps the documented schema."""
    import jsonschema

    sata = (Path(__file__).parent.parent / "isa" / "presets" / "sata.toml").read_text()
    (compiled / "event.toml").write_text(sata.replace("frequency_mhz = 400", 'frequency_mhz = 400\nskip = "event"'))
    r = ttc("compile", compiled / "model.pt", "-o", compiled / "event.bin", "--input-shape", "4,N,1,8,8",
            "--hw", compiled / "event.toml")
    assert r.returncode == 0, r.stderr
    x = np.concatenate([grid_inputs((4, 6, 1, 8, 8), seed=3), np.zeros((4, 1, 1, 8, 8), np.float32)], axis=1)
    np.save(compiled / "skip.npy", x)
    runs = [json.loads(ttc("run", "--sim", compiled / "event.bin", "--input", compiled / "skip.npy", "--json",
                           *batch).stdout) for batch in ([], ["--batch", "3"])]
    schema = json.loads((Path(__file__).parent.parent / "docs" / "schema" / "run.schema.json").read_text())
    for run in runs:
        jsonschema.validate(run, schema)
        cycles = run["per_sample"]["cycles"]
        assert cycles["min"] < cycles["max"] and cycles["mean"] == pytest.approx(run["cycles_per_inference"])
    for figure in ("cycles", "energy_pj"):
        assert runs[0]["per_sample"][figure] == pytest.approx(runs[1]["per_sample"][figure], rel=1e-12)
    dense = json.loads(ttc("run", "--sim", compiled / "prog.bin", "--input", compiled / "skip.npy", "--json").stdout)
    assert runs[0]["per_sample"]["cycles"]["max"] < dense["cycles_per_inference"]
    text = ttc("run", "--sim", compiled / "event.bin", "--input", compiled / "skip.npy").stdout
    assert "the array skips: each sample's spikes set its time" in text
