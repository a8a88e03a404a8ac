"""Durable file writes: a file is complete on disk before its name says it exists.

`write_atomically` replaces a file so that a crash at any point leaves either the old
or the new content under its name; `write_new` writes a file that a caller renames
into place later; `fsync_dir` makes a rename or a new entry in a directory durable.
`read_limited` is the one bounded read of a small local file (keys, signatures,
definitions, manifests on a disk). `private_dir` and `remove_tree` stand in for tempfile
and shutil where a deploy or verify needs them: those modules bring random, bz2 and lzma
(with their C libraries) along, 0.8 MB resident in every process that imports them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
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


def write_new(path: str | os.PathLike[str], data: bytes | Iterable[bytes], mode: int = 0o644,
              sync: bool = True) -> None:
    """Create path (it must not exist), write data (bytes, or its pieces in turn, so that a
    large file need never be whole in memory) and fsync it (unless not sync: the caller
    syncs the filesystem before anything depends on it); callers rename it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        if isinstance(data, bytes):
            f.write(data)
        else:
            for piece in data:
                f.write(piece)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def write_atomically(path: Path, data: bytes | Iterable[bytes], mode: int = 0o644,
                     sync: bool = True) -> None:
    """Replace path with data (bytes or pieces, as write_new) so that a crash leaves either
    the old or the new content (not sync: once the caller syncs the filesystem, as write_new)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a killed process that had our pid
    try:
        write_new(tmp, data, mode)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def make_private_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new directory in parent named prefix and 12 random hex digits, mode 0700, that
    no one else made (as tempfile.mkdtemp)."""
    for _ in range(100):
        path = Path(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no unused name", os.fspath(Path(parent, prefix)))


@contextlib.contextmanager
def private_dir(prefix: str, parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """make_private_dir in parent ($TMPDIR or /tmp by default), removed with all it holds
    when the block ends, however it ends."""
    path = make_private_dir(parent if parent is not None else os.environ.get("TMPDIR") or "/tmp", prefix)
    try:
        yield path
    finally:
        remove_tree(path, ignore_errors=True)


def remove_tree(path: str | os.PathLike[str], ignore_errors: bool = False) -> None:
    """Delete path and, when it is a directory, everything below it, following no symlink:
    each directory is opened with O_NOFOLLOW and its entries removed relative to that fd,
    so a symlink swapped in for a directory is removed, never entered."""
    try:
        _remove(path, None)
    except OSError:
        if not ignore_errors:
            raise


def _remove(name: str | os.PathLike[str], dir_fd: int | None) -> None:
    """Remove name (relative to dir_fd, when given): a directory with all below it, anything
    else (a file, a symlink, or a directory swapped for one meanwhile) by unlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(name, dir_fd=dir_fd)
        return
    try:
        with os.scandir(fd) as entries:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for entry, is_dir in names:
            if is_dir:
                _remove(entry, fd)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
