"""One mutating rpmimg per sysroot: an flock() on the layout's lock file.

The kernel drops an flock when its holder dies, even by SIGKILL, so a crash never
leaves a stale lock. The holder writes its pid into the file so that a second
rpmimg can say who it is waiting for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import LockError

DEFAULT_WAIT = 5.0


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown process"
    return f"pid {text}" if text.isdigit() else "unknown process"


@contextlib.contextmanager
def sysroot_lock(path: Path, wait: float = DEFAULT_WAIT) -> Iterator[None]:
    """Hold the exclusive lock at path; wait up to `wait` seconds, then raise LockError."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"{path}: another rpmimg is changing this system ({_holder(fd)});"
                        " try again when it has finished"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
