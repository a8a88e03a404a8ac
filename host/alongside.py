"""One piece of work in a thread while the caller goes on with another.

For work that waits on the kernel (a snapshot's transaction commit, a sync, a subprocess)
while the interpreter has Python to run: the two overlap on two cores, or in one core's
idle time. The block's end waits for the thread, so nothing it made is used or discarded
half done, and raises what the work raised; an error of the block itself comes first (the
work's is then logged)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from host.log import get as logger

log = logger(__name__)


@contextlib.contextmanager
def alongside(work: Callable[[], object], name: str) -> Iterator[None]:
    """work() in a thread named name while the block runs; done when the block ends."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # handed to the thread that waits for it
            failed.append(e)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    try:
        yield
    except BaseException:
        thread.join()
        if failed:
            log.debug("%s failed too: %s", name, failed[0])
        raise
    thread.join()
    if failed:
        raise failed[0]
