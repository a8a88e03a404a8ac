"""Content digests of a deployment's files, hashed while `verify` checks their metadata.

Each file is opened below its tree's fd following no symlink at all; the work is cut
into batches handed to one process per core once there is more than one batch.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from host import digest, kernel

if TYPE_CHECKING:  # the pool's machinery (about 1 MB) is loaded when a pool starts
    import concurrent.futures

BATCH_BYTES = 16 << 20
# Also cut a batch after this many files: small files are many jobs. Up to
# IN_FLIGHT * workers + 1 batches of jobs are held at once (about 300 bytes a job);
# 512 small files are still some 15 ms of work against a pool round trip's fraction of one.
BATCH_FILES = 512
IN_FLIGHT = 2  # batches queued per worker before add() waits: memory stays bounded


@dataclass(frozen=True, slots=True)
class DigestJob:
    """A file's content still to hash, after the metadata checks."""

    root: str  # the deployment tree
    rel: str  # the file, resolved inside it: a path with no symlink in it
    algo: str
    expected: str
    size: int


# Never follow a symlink, never block on a FIFO planted where a file was.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


def _differing(jobs: list[DigestJob]) -> list[bool]:
    """For each job, whether the file's digest differs from the expected one.

    Each file is opened below its tree's fd following no symlink at all, so a tree changed
    since its metadata was checked can't make this read anything outside it.
    """
    out = []
    roots: dict[str, int] = {}
    try:
        for j in jobs:
            try:
                if j.root not in roots:
                    roots[j.root] = os.open(j.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                with open(kernel.open_beneath(roots[j.root], j.rel, READ_FLAGS), "rb", buffering=0) as f:
                    out.append(digest.file_digest(f, j.algo).hexdigest() != j.expected)
            except OSError:
                out.append(True)  # unreadable content is not the packaged content
    finally:
        for fd in roots.values():
            os.close(fd)
    return out


def _worker_start(parent: int) -> None:
    """In each pool worker: die with the process that made the pool. Without this, a
    verify killed by SIGKILL (the OOM killer) leaves its workers running, orphaned.

    The pool's workers are forked by the thread that submits the first batch (the fork
    context starts them all at once), and verify submits from its main thread."""
    kernel.die_with_parent()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def worker_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of forked workers that end when this process does, however it ends."""
    import concurrent.futures
    import multiprocessing

    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_start,
        initargs=(os.getpid(),))


class Hashing:
    """Digest checks that run while the metadata checks go on.

    Jobs are cut into batches of about BATCH_BYTES or BATCH_FILES; once there are two
    batches' worth, they go to one process per core (the hashes hold the GIL between chunks, so threads
    would contend with the metadata pass). A small deployment is hashed in this process.
    """

    def __init__(self, batch_bytes: int = BATCH_BYTES) -> None:
        self._batch_bytes = batch_bytes
        self._batch: list[DigestJob] = []
        self._bytes = 0
        # (result, job count) of batches handed to the pool, oldest first
        self._futures: collections.deque[tuple[concurrent.futures.Future[list[bool]], int]] = (
            collections.deque())
        self._queued = 0  # jobs handed to the pool or hashed
        self._done = 0  # jobs whose result is known
        self._ready: list[bool] = []  # results not yet taken
        self._parts: list[int] = []  # sizes of the batches done since results() last reported
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._workers = os.cpu_count() or 1

    def __enter__(self) -> Hashing:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def add(self, job: DigestJob) -> None:
        self._batch.append(job)
        self._bytes += job.size
        if self._bytes < self._batch_bytes and len(self._batch) < BATCH_FILES:
            return
        if self._workers <= 1:
            self._collect(_differing(self._batch))
        elif self._pool is None and self._bytes < self._batch_bytes and len(self._batch) < 2 * BATCH_FILES:
            return  # not worth the workers yet: a small deployment is hashed here
        else:
            if self._pool is None:
                self._pool = worker_pool(self._workers)
            # What waited for the pool goes as batches of BATCH_FILES, so that the workers
            # start together and no one batch (pickled, then unpickled) is larger than that.
            for start in range(0, len(self._batch), BATCH_FILES):
                self._submit(self._pool, self._batch[start:start + BATCH_FILES])
        self._queued += len(self._batch)
        self._batch, self._bytes = [], 0

    def _submit(self, pool: concurrent.futures.ProcessPoolExecutor, batch: list[DigestJob]) -> None:
        while len(self._futures) >= IN_FLIGHT * self._workers:
            self._collect(self._futures.popleft()[0].result())  # back-pressure
        self._futures.append((pool.submit(_differing, batch), len(batch)))

    def _collect(self, part: list[bool]) -> None:
        self._ready.extend(part)
        self._done += len(part)
        self._parts.append(len(part))

    def take_ready(self) -> list[bool]:
        """Results of the jobs whose batches are done, in order, from where the last take
        stopped (so a caller can let go of what it keeps for them)."""
        while self._futures and self._futures[0][0].done():
            self._collect(self._futures.popleft()[0].result())
        out, self._ready = self._ready, []
        return out

    def results(self, progress: Callable[[int, int], None] | None) -> list[bool]:
        """Whether each job differs, in the order the jobs were added, from where the last
        take_ready stopped."""
        total = self._queued + len(self._batch)
        if progress is not None:  # batches that finished before: progress moves batch by batch
            done = self._done - sum(self._parts)
            for size in self._parts:
                done += size
                progress(done, total)
        self._parts = []
        while self._futures:
            self._collect(self._futures.popleft()[0].result())
            if progress is not None:
                progress(self._done, total)
        self._collect(_differing(self._batch))
        self._queued += len(self._batch)
        self._batch = []
        if progress is not None:
            progress(total, total)
        out, self._ready = self._ready, []
        return out
