"""One writer at a time: an flock() on a lock file that names its holder.

The kernel drops an flock when its holder dies, even by SIGKILL, so a crash never
leaves a stale lock. The holder writes its pid into the file so that a second
process can say who it is waiting for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator


class LockHeld(Exception):
    """Another process holds the lock; `holder` says who ("pid 123" or "unknown process")."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by {holder}")
        self.holder = holder


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown process"
    return f"pid {text}" if text.isdigit() else "unknown process"


@contextlib.contextmanager
def holding(fd: int, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive flock on the open file fd, waiting up to `wait` seconds for it.

    Raises LockHeld when another process keeps it longer. While held, the file holds our pid.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockHeld(_holder(fd)) from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], wait: float = 0.0) -> Iterator[None]:
    """Hold the lock file at path (created if missing; never through a symlink)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with holding(fd, wait):
            yield
    finally:
        os.close(fd)
