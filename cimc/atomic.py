"""Atomic file writes: readers never see half a file, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def check_output(path: str | os.PathLike, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a Path if a file can be written there (by renaming a finished temporary file
    over it), else an OutputError saying why: no file name, a directory, a device or pipe
    (``/dev/null``: the rename would replace the node), a missing or read-only directory, or
    (``suffixes`` given) an extension the writer cannot produce. Commands call it before they
    work, so a bad path fails at once and no other output of the command is written first."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputError(f"cannot write {str(path)!r}: give a file name, e.g. {path / 'out'}")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; give a file name inside it")
    if path.exists() and not path.is_file():
        raise OutputError(
            f"cannot write {path}: it is not a regular file (a device, pipe or socket), which "
            "cimc would replace by renaming its output over it; give a file path"
        )
    if not path.parent.is_dir():
        raise OutputError(
            f"cannot write {path}: directory {path.parent} does not exist; create it first"
        )
    if not os.access(path.parent, os.W_OK):
        raise OutputError(
            f"cannot write {path}: directory {path.parent} is not writable; choose another"
        )
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(
            f"cannot write {path}: give it one of the extensions {', '.join(suffixes)}"
        )
    return path


def output_folder(path: str | os.PathLike) -> Path:
    """``path`` as a folder to write into, made if missing; an existing file there, or a place
    where no folder can be made, is an OutputError (before any work is done)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write into {path}: it is a file; give a folder (new or not)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make folder {path}: {exc.strerror}; choose another") from None
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends
    without error, removed otherwise. It keeps ``path``'s extension, which writers such as
    ``np.savez`` and ``savefig`` go by. An OS error on the temporary file or the rename (disk
    full, permissions) is an OutputError."""
    path = check_output(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename not in (str(tmp), str(path)):
            raise
        raise OutputError(f"cannot write {path}: {exc.strerror}; choose another place") from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
