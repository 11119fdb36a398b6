"""The sixth fuzz target, `cli`: the `ttc` command line given mutated files, judged as a user sees it.

Each input is a file of one of the kinds a user hands ttc (told apart by its first bytes, so that a
mutation that damages them hands the file to another command: every command must cope with any file):

    prog.bin   ttc inspect P; ttc inspect --json P; ttc disasm P -o OUT; ttc run --sim P --output OUT
               (--report DIR for one input in 16)
    assembly   ttc asm S -o OUT
    model      ttc compile M --input-shape ... -o OUT; ttc run --sim DEMO --check M
    .npy       ttc run --sim DEMO --input X --output OUT
    otherwise  a hardware config: ttc run --sim DEMO --hw H (and ttc compile DEMO_MODEL --hw H -o OUT
               for one input in 8)

Every command runs in-process under `-q` (no progress, no information lines). The verdicts:
- exit status 0 or 1; 2 (a usage error on a command line that is right) or 3 (the simulator differing
  from the reference) is a failure, and so is 70 (an internal error), keyed by the exception's type and
  innermost frame, read from the traceback of the same command rerun with -v;
- on status 1, stderr is one line, `ttc: error: ...`, naming the file handed over;
- a command that fails leaves the directory as it found it: no output, no report, no temporary file.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import tempfile
import zlib
from pathlib import Path

from .seeds import DEMO_MODELS

#: The input shapes the demo models compile for: a mutated model is compiled for one of them.
SHAPES = tuple(shape for _, shape in DEMO_MODELS)


class CliVerdict(Exception):
    """A failure of the command line (not an exception ttc raised): `signature` is what the engine keys
    it by."""

    def __init__(self, signature: tuple[str, str], message: str):
        super().__init__(message)
        self.signature = signature


def kind(blob: bytes) -> str:
    if blob.startswith(b"TTCPROG"):
        return "program"
    if blob.startswith(b"PK"):
        return "model"
    if blob.startswith(b"\x93NUMPY"):
        return "npy"
    if blob.lstrip().startswith(b".ttc"):
        return "asm"
    return "hw"


class CliTarget:
    """Writes each input into a fresh directory (`prepare`), then runs the commands for its kind."""

    def __init__(self, demo_program: bytes, demo_model: Path) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="ttc-fuzz-cli-"))
        (self.base / "demo.bin").write_bytes(demo_program)
        self.demo_bin = str(self.base / "demo.bin")
        self.demo_model = str(demo_model)
        self.dir = self.base / "work"
        self.file = self.dir / "input"

    def prepare(self, blob: bytes) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()
        suffix = {"program": ".bin", "model": ".pt", "npy": ".npy", "asm": ".s", "hw": ".toml"}[kind(blob)]
        self.file = self.dir / f"input{suffix}"
        self.file.write_bytes(blob)

    def commands(self, blob: bytes) -> list[list[str]]:
        f, out, pick = str(self.file), str(self.dir / "out"), zlib.crc32(blob)
        k = kind(blob)
        if k == "program":
            run = ["run", "--sim", f, "--output", out + ".npz"] + (["--report", out + "-report"] if pick % 16 == 0 else [])
            return [["inspect", f], ["inspect", "--json", f], ["disasm", f, "-o", out + ".s"], run]
        if k == "asm":
            return [["asm", f, "-o", out + ".bin"]]
        if k == "model":
            return [["compile", f, "--input-shape", SHAPES[pick % len(SHAPES)], "-o", out + ".bin"],
                    ["run", "--sim", self.demo_bin, "--check", f]]
        if k == "npy":
            return [["run", "--sim", self.demo_bin, "--input", f, "--output", out + ".npy"]]
        commands = [["run", "--sim", self.demo_bin, "--hw", f, "--json"]]
        if pick % 8 == 0:
            commands.append(["compile", self.demo_model, "--input-shape", SHAPES[0], "--hw", f, "-o", out + ".bin"])
        return commands

    def __call__(self, blob: bytes) -> None:
        for argv in self.commands(blob):
            self.judge(argv)

    def judge(self, argv: list[str]) -> tuple[int, str]:
        """Run `ttc -q ARGV` and raise a CliVerdict if it fails as it should not: (exit status, stderr)."""
        before = sorted(p.name for p in self.dir.iterdir())
        status, err = _ttc(["-q", *argv])
        what = f"ttc {argv[0]}"
        if status in (70, 2, 3):
            if status == 70:
                _, trace = _ttc(["-v", *argv])
                raise CliVerdict(_escape(trace), f"{what}: {err.strip()}")
            raise CliVerdict((f"Exit{status}", what), f"{what}: exit status {status}: {err.strip()}")
        if status not in (0, 1):
            raise CliVerdict((f"Exit{status}", what), f"{what}: exit status {status}: {err.strip()}")
        if status == 0:
            return status, err
        lines = err.splitlines()
        if len(lines) != 1 or not lines[0].startswith("ttc: error: "):
            raise CliVerdict(("NotOneLine", what), f"{what}: stderr is {err!r}")
        if self.file.name not in lines[0]:
            raise CliVerdict(("FileNotNamed", what), f"{what}: {lines[0]}")
        after = sorted(p.name for p in self.dir.iterdir())
        if after != before:
            raise CliVerdict(("LeftFiles", what), f"{what} failed and left {sorted(set(after) - set(before))}")
        return status, err


def _ttc(argv: list[str]) -> tuple[int, str]:
    """Run `ttc ARGV` in this process: (exit status, what it wrote on stderr)."""
    from ttc.cli import main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse's usage errors
            status = e.code if isinstance(e.code, int) else 1
    return status, err.getvalue()


_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def _escape(trace: str) -> tuple[str, str]:
    """(exception type, innermost frame) of the traceback `ttc -v` printed."""
    frames = _FRAME.findall(trace)
    reported = re.search(r"ttc: internal error: ([\w.]+)", trace)
    kind_ = reported.group(1) if reported else "InternalError"
    if not frames:
        return kind_, "?"
    path, func = frames[-1]
    return kind_, f"{Path(path).parent.name}/{Path(path).name}:{func}"
