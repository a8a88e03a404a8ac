"""Content digests of a deployment's files, hashed while `verify` checks their metadata.

Each file is opened below its tree's fd following no symlink at all; the work is cut
into batches handed to one forked process per core once there is more than one batch.
The pool is os.fork() and two pipes a worker: multiprocessing and concurrent.futures
(their modules, threads and arenas) added about 1.2 MiB to verify's peak at 10,000 files.
"""

from __future__ import annotations

import collections
import gc
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from deploy.errors import DeploymentError
from deploy.faults import checkpoint
from host import digest, kernel

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


# A batch goes to its worker as one frame: its length (8 bytes, little-endian), then every
# job's root, path, algorithm and expected digest, separated by NUL (a path holds no NUL,
# but may hold a newline). The answer is one byte a job, 1 where the content differs.
_FIELDS = 4


def _frame(batch: list[DigestJob]) -> bytes:
    fields = [os.fsencode(f) for j in batch for f in (j.root, j.rel, j.algo, j.expected)]
    if any(b"\0" in f for f in fields):
        raise ValueError(f"a path to hash contains a NUL byte: {batch!r}")
    payload = b"\0".join(fields)
    return len(payload).to_bytes(8, "little") + payload


def _jobs(payload: bytes) -> list[DigestJob]:
    f = [os.fsdecode(field) for field in payload.split(b"\0")]
    return [DigestJob(f[i], f[i + 1], f[i + 2], f[i + 3], 0) for i in range(0, len(f), _FIELDS)]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """size bytes from fd, or None if it ends first."""
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _serve(jobs: int, answers: int) -> None:
    """A worker's life: answer each batch read from jobs, until the pool closes the pipe."""
    while (size := _read_exactly(jobs, 8)) is not None:
        payload = _read_exactly(jobs, int.from_bytes(size, "little"))
        if payload is None:
            return
        answer = bytes(_differing(_jobs(payload)))
        checkpoint("hashing worker answers")
        _write_all(answers, answer)


def _alone() -> bool:
    """Whether this is the main thread and no other runs: a child forked while another
    thread held a lock (the heap's, a logging handler's) would wait for it forever."""
    return threading.current_thread() is threading.main_thread() and threading.active_count() == 1


@dataclass(slots=True)
class _Batch:
    """Files handed to a hashing worker at once: their count, then the worker's answers."""

    size: int  # jobs
    answer: list[bool] | None = None


@dataclass(slots=True)
class _Worker:
    """A forked hashing worker: its pid, its pipes' counts, and the batches in flight."""

    pid: int  # 0 once reaped
    jobs: int  # the write end of its jobs pipe
    answers: int  # the read end of its answers pipe
    batches: collections.deque[_Batch]  # handed to it and not answered, oldest first


class WorkerPool:
    """Processes forked from this one, each hashing the batches handed to it over a pipe,
    which end when this process does, however it ends (SIGKILL by the OOM killer included).

    At most IN_FLIGHT batches of at most BATCH_FILES jobs wait on a worker, so its answers
    (one byte a job) always fit in its pipe: a worker never blocks writing them, and a
    write of jobs to it, however long their paths, ends once it reads again."""

    def __init__(self, workers: int) -> None:
        if not _alone():
            raise RuntimeError("the hashing pool forks only from the main thread, no other running")
        self._workers: list[_Worker] = []
        self._batches: collections.deque[_Batch] = collections.deque()  # not taken, oldest first
        gc.freeze()  # the children never collect (nor finalize) this process's objects
        try:
            for _ in range(workers):
                self._workers.append(self._fork(os.getpid()))
        except BaseException:
            self.close()
            raise
        finally:
            gc.unfreeze()

    def _fork(self, parent: int) -> _Worker:
        jobs_r, jobs_w = os.pipe()
        answers_r, answers_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (jobs_r, jobs_w, answers_r, answers_w):
                os.close(fd)
            raise
        if pid == 0:
            code = 1
            try:  # whatever happens, never return into the parent's stack or run its exit
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for verify, which ends us
                os.close(jobs_w)
                os.close(answers_r)
                for w in self._workers:  # so each sees the end of its jobs when the pool closes
                    os.close(w.jobs)
                    os.close(w.answers)
                kernel.die_with_parent()
                if os.getppid() == parent:  # else it died before the request took effect
                    _serve(jobs_r, answers_w)
                    code = 0
            except Exception as e:
                os.write(2, f"rpmimg: hashing worker: {e}\n".encode())
            finally:
                os._exit(code)
        os.close(jobs_r)
        os.close(answers_w)
        return _Worker(pid, jobs_w, answers_r, collections.deque())

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def submit(self, batch: list[DigestJob]) -> None:
        """Hand a batch (at most BATCH_FILES jobs) to the least busy worker, waiting for
        answers while every worker has IN_FLIGHT batches."""
        while len((w := min(self._workers, key=lambda w: len(w.batches))).batches) >= IN_FLIGHT:
            self._receive(None)
        frame = _frame(batch)
        w.batches.append(b := _Batch(len(batch)))
        self._batches.append(b)
        try:
            _write_all(w.jobs, frame)
        except BrokenPipeError:
            raise DeploymentError(self._ended(w)) from None

    def answers(self, wait: bool) -> Iterator[list[bool]]:
        """Each batch's answer in the order they were handed out: those in already, or with
        wait, every batch's as it comes in."""
        if not wait:
            self._receive(0)
        while self._batches:
            while wait and self._batches[0].answer is None:
                self._receive(None)
            answer = self._batches[0].answer
            if answer is None:
                return
            self._batches.popleft()
            yield answer

    def _receive(self, timeout: int | None) -> None:
        """Read the answers in, waiting up to timeout ms for one (None: as long as it takes)."""
        busy = {w.answers: w for w in self._workers if w.batches}
        if not busy:
            return
        poll = select.poll()
        for fd in busy:
            poll.register(fd, select.POLLIN)
        for fd, _ in poll.poll(timeout):
            w = busy[fd]
            # A worker writes each answer at once: under PIPE_BUF, it is all there.
            data = _read_exactly(fd, w.batches[0].size)
            if data is None:
                raise DeploymentError(self._ended(w))
            w.batches.popleft().answer = [bool(b) for b in data]

    def _ended(self, w: _Worker) -> str:
        """Reap a worker that went away, and say how it ended."""
        pid, status = os.waitpid(w.pid, 0)
        w.pid = 0
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        return (f"a hashing worker (pid {pid}) {how} before it had checked"
                f" {sum(b.size for b in w.batches)} files: the content is not verified")

    def close(self) -> None:
        """End and reap every worker, whatever it was doing (nothing it holds needs saving)."""
        for w in self._workers:
            if w.pid:  # first: a worker must not find its answers pipe closed and complain
                os.kill(w.pid, signal.SIGKILL)
                os.waitpid(w.pid, 0)
                w.pid = 0
            os.close(w.jobs)
            os.close(w.answers)
        self._workers = []


class Hashing:
    """Digest checks that run while the metadata checks go on.

    Jobs are cut into batches of about BATCH_BYTES or BATCH_FILES; once there are two
    batches' worth, they go to one process per core (the hashes hold the GIL between chunks, so threads
    would contend with the metadata pass). A small deployment is hashed in this process, and
    so is any while another thread runs (no fork then).
    """

    def __init__(self, batch_bytes: int = BATCH_BYTES) -> None:
        self._batch_bytes = batch_bytes
        self._batch: list[DigestJob] = []
        self._bytes = 0
        self._queued = 0  # jobs handed to the pool or hashed
        self._done = 0  # jobs whose result is known
        self._ready: list[bool] = []  # results not yet taken
        self._parts: list[int] = []  # sizes of the batches done since results() last reported
        self._pool: WorkerPool | None = None
        self._workers = (os.cpu_count() or 1) if _alone() else 1  # else: no fork, hash here

    def __enter__(self) -> Hashing:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()

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
                self._pool = WorkerPool(self._workers)
            # What waited for the pool goes as batches of BATCH_FILES, so that the workers
            # start together and no one batch is larger than that.
            for start in range(0, len(self._batch), BATCH_FILES):
                self._pool.submit(self._batch[start:start + BATCH_FILES])
        self._queued += len(self._batch)
        self._batch, self._bytes = [], 0

    def _collect(self, part: list[bool]) -> None:
        self._ready.extend(part)
        self._done += len(part)
        self._parts.append(len(part))

    def take_ready(self) -> list[bool]:
        """Results of the jobs whose batches are done, in order, from where the last take
        stopped (so a caller can let go of what it keeps for them)."""
        for part in self._pool.answers(wait=False) if self._pool is not None else ():
            self._collect(part)
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
        for part in self._pool.answers(wait=True) if self._pool is not None else ():
            self._collect(part)
            if progress is not None:
                progress(self._done, total)
        self._collect(_differing(self._batch))
        self._queued += len(self._batch)
        self._batch = []
        if progress is not None:
            progress(total, total)
        out, self._ready = self._ready, []
        return out
