"""Writing output files so that no reader, and no failure, ever leaves a half-written one.

Every file ttc writes (prog.bin, IR text, assembly, run outputs, reports, benchmark results) goes through
`atomic_write`, and every directory it creates through `make_dirs`. Inside `all_or_nothing` (each `ttc`
command runs inside one) the files are only written as temporaries, renamed onto their paths when the
block ends and removed, with the directories it created, when it raises: a command that fails part way
(a report written, then a bad model for --check) leaves nothing behind. This module imports nothing of
ttc, so that every part (the ISA first) can use it.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator

#: The mode of every file written: what a plain `open` gives under the usual umask 022. mkstemp
#: creates its file with 0o600, which would leave outputs unreadable to other users.
FILE_MODE = 0o644


class _Pending:
    """What an `all_or_nothing` block has written so far."""

    def __init__(self) -> None:
        self.renames: list[tuple[Path, Path]] = []  # (temporary, path)
        self.created: list[Path] = []  # directories, outermost first


_PENDING: ContextVar[_Pending | None] = ContextVar("pending_outputs", default=None)


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """The files `atomic_write` writes inside the block appear when it ends normally; if it raises, they
    and the directories `make_dirs` created are removed and the paths stay as they were."""
    pending = _Pending()
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending.renames:
            tmp.unlink(missing_ok=True)
        for directory in reversed(pending.created):
            try:
                directory.rmdir()
            except OSError:  # something else was put there meanwhile: not ours to remove
                pass
        raise
    finally:
        _PENDING.reset(token)
    for tmp, path in pending.renames:
        os.replace(tmp, path)


def make_dirs(directory: str | Path) -> None:
    """`mkdir -p`, remembering inside `all_or_nothing` what it created."""
    directory = Path(directory)
    missing = [d for d in (directory, *directory.parents) if not d.exists()][::-1]
    directory.mkdir(parents=True, exist_ok=True)
    pending = _PENDING.get()
    if pending is not None:
        pending.created += missing


def atomic_write(path: str | Path, write: Callable[[Path], object], at_once: bool = False) -> None:
    """Make `path` hold what `write(tmp)` writes to the file `tmp`, or leave it as it was.

    `tmp` is a new file with a unique name in the directory of `path` (so that two writers never share
    it and the final rename stays within one file system, where it is atomic); it is renamed onto `path`
    once `write` returns (inside `all_or_nothing`: when the block ends, unless `at_once`: an output that
    must outlive a command that fails later, such as a sweep's finished points), and removed if anything
    fails, interruption included."""
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    pending = None if at_once else _PENDING.get()
    if pending is None:
        os.replace(tmp, path)
    else:
        pending.renames.append((tmp, path))


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
