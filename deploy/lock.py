"""One mutating rpmimg per sysroot: the layout's lock file, held through host.lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import LockError
from host.lock import LockHeld, file_lock
from host.log import get as logger

log = logger(__name__)

DEFAULT_WAIT = 5.0


@contextlib.contextmanager
def sysroot_lock(path: Path, wait: float = DEFAULT_WAIT) -> Iterator[None]:
    """Hold the exclusive lock at path; wait up to `wait` seconds, then raise LockError."""
    with contextlib.ExitStack() as stack:
        try:
            try:
                stack.enter_context(file_lock(path, 0))
            except LockHeld as e:
                if wait <= 0:
                    raise
                # Waiting is a phase of its own: say so rather than hang silently.
                log.warning("waiting up to %g s for another rpmimg (%s) to finish", wait, e.holder)
                stack.enter_context(file_lock(path, wait))
        except LockHeld as e:
            raise LockError(
                f"{path}: another rpmimg is changing this system ({e.holder});"
                " try again when it has finished"
            ) from None
        yield
