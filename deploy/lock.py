"""One mutating rpmimg per sysroot: the layout's lock file, held through host.lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import LockError
from host.lock import LockHeld, file_lock

DEFAULT_WAIT = 5.0


@contextlib.contextmanager
def sysroot_lock(path: Path, wait: float = DEFAULT_WAIT) -> Iterator[None]:
    """Hold the exclusive lock at path; wait up to `wait` seconds, then raise LockError."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, wait))
        except LockHeld as e:
            raise LockError(
                f"{path}: another rpmimg is changing this system ({e.holder});"
                " try again when it has finished"
            ) from None
        yield
