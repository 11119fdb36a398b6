"""Writing output files so that no reader, and no failure, ever leaves a half-written one.

Every file ttc writes (prog.bin, IR text, assembly, run outputs, reports, benchmark results) goes through
`atomic_write`. This module imports nothing of ttc, so that every part (the ISA first) can use it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

#: The mode of every file written: what a plain `open` gives under the usual umask 022. mkstemp
#: creates its file with 0o600, which would leave outputs unreadable to other users.
FILE_MODE = 0o644


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Make `path` hold what `write(tmp)` writes to the file `tmp`, or leave it as it was.

    `tmp` is a new file with a unique name in the directory of `path` (so that two writers never share
    it and the final rename stays within one file system, where it is atomic); it is renamed onto `path`
    once `write` returns, and removed if anything fails, interruption included."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a missing or read-only directory: name the file asked for, not the temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def decode_text(blob: bytes, where: str) -> str:
    """A text file's bytes as text: UTF-8, or a UserError naming the file and the first bad byte
    (rather than a UnicodeDecodeError escaping as an internal error)."""
    from .errors import UserError  # imports nothing, like this module
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        line = blob[:e.start].count(b"\n") + 1
        raise UserError(f"{where}: not UTF-8 text (byte {blob[e.start]:#04x} at offset {e.start}, line {line})") from None


def read_text(path: str | Path) -> str:
    """The text of a file ttc reads (assembly, a hardware config), decoded by `decode_text`."""
    path = Path(path)
    return decode_text(path.read_bytes(), str(path))
