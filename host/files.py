"""Durable file writes: a file is complete on disk before its name says it exists.

`write_atomically` replaces a file so that a crash at any point leaves either the old
or the new content under its name; `write_new` writes a file that a caller renames
into place later; `fsync_dir` makes a rename or a new entry in a directory durable.
`read_limited` is the one bounded read of a small local file (keys, signatures,
definitions, manifests on a disk).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class ReadRefused(Exception):
    """A file read_limited would not read; the message names the path and why."""


def read_limited(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file at path, which may hold at most `limit` bytes.

    Nothing past limit + 1 bytes is read, and a FIFO, device or directory is refused
    without blocking on it: ReadRefused then, OSError when the file can't be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise ReadRefused(f"{os.fspath(path)} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ReadRefused(f"{os.fspath(path)} is larger than {limit} bytes")
    return data


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (after a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Create path (it must not exist), write data and fsync it; callers rename it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace path with data so that a crash leaves either the old or the new content."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a killed process that had our pid
    try:
        write_new(tmp, data, mode)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
