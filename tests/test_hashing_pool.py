"""verify's hashing workers: they end with the process that made them, even killed with
SIGKILL, and a worker that ends before it answers makes verify fail, never hang or pass.

The OOM killer ends a verify with SIGKILL; its workers, busy hashing, would otherwise live
on, orphaned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploytools import Images, deploy, rpmimg

from deploy.errors import DeploymentError
from deploy.hashing import DigestJob, Hashing, WorkerPool

pytest_plugins = ("deployenv",)

CHECKOUT = Path(__file__).resolve().parents[1]
HUGE = 64 << 30  # a sparse file that takes a worker far longer than any test to hash

# A parent that keeps every worker of its pool busy, says their pids, then waits to be killed.
PARENT = """
import sys, time
from deploy.hashing import DigestJob, WorkerPool
pool = WorkerPool(3)
for _ in range(3):
    pool.submit([DigestJob(sys.argv[1], "huge", "sha256", "0" * 64, 0)])
print(" ".join(map(str, pool.pids)), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie no one reaps has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def _gone(pid: int) -> bool:
    """Whether pid has ended and been reaped (no zombie left)."""
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    path = tmp_path / "huge"
    with open(path, "wb") as f:
        f.truncate(HUGE)
    return path


def test_workers_die_when_the_parent_is_killed(huge: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, huge.parent], cwd=CHECKOUT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 3 and proc.pid not in workers
        assert all(_alive(p) for p in workers), "the workers should run while the parent does"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in workers if _alive(p)]
        for p in left:  # do not leave them behind for the rest of the suite
            os.kill(p, signal.SIGKILL)
        assert not left, f"workers {left} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_pool_answers_in_order_and_leaves_no_process(tmp_path: Path) -> None:
    import hashlib

    # Paths with a newline, a backslash and bytes that are not UTF-8 cross the pipe intact.
    names = ["plain", "new\nline", "back\\slash", os.fsdecode(b"latin-\xe9")]
    for name in names:
        (tmp_path / name).write_bytes(name.encode("utf-8", "surrogateescape"))
    good = [DigestJob(os.fspath(tmp_path), n, "sha256",
                      hashlib.sha256((tmp_path / n).read_bytes()).hexdigest(), 1) for n in names]
    wrong = [DigestJob(j.root, j.rel, j.algo, "0" * 64, 1) for j in good]
    long = [DigestJob(os.fspath(tmp_path), "d/" * 2000 + "x", "sha256", "0" * 64, 1)] * 512
    pool = WorkerPool(2)
    pids = pool.pids
    try:
        assert len(set(pids)) == 2 and os.getpid() not in pids and all(_alive(p) for p in pids)
        batches = [good, wrong, long, good + wrong, long, good]  # 2 MB of long paths a batch
        for batch in batches:
            pool.submit(batch)
        answers = list(pool.answers(wait=True))
    finally:
        pool.close()
    assert answers == [[False] * 4, [True] * 4, [True] * 512, [False] * 4 + [True] * 4,
                       [True] * 512, [False] * 4]
    assert all(_gone(p) for p in pids)


@pytest.mark.parametrize("victim", [0, 1], ids=["oldest-batch", "newer-batch"])
def test_a_worker_killed_mid_batch_fails_the_check(huge: Path, victim: int) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no pool")
    job = DigestJob(os.fspath(huge.parent), huge.name, "sha256", "0" * 64, HUGE)
    start = time.monotonic()
    with pytest.raises(DeploymentError, match=r"hashing worker \(pid \d+\) was killed by SIGKILL "
                       r"before it had checked 1 files: the content is not verified"):
        with Hashing() as hashing:
            for _ in range(2):  # a batch each: both workers at work
                hashing.add(job)
            assert hashing._pool is not None
            pids = hashing._pool.pids
            time.sleep(0.2)
            os.kill(pids[victim], signal.SIGKILL)
            hashing.results(None)
    assert time.monotonic() - start < 10
    assert all(_gone(p) for p in pids)


def test_no_fork_while_another_thread_runs(tmp_path: Path) -> None:
    import hashlib
    import threading

    from deploy.hashing import BATCH_FILES

    jobs, expected = [], []
    for i in range(3 * BATCH_FILES):
        (tmp_path / f"f{i}").write_bytes(b"%d" % i)
        wrong = i % 100 == 7
        digest = "0" * 64 if wrong else hashlib.sha256(b"%d" % i).hexdigest()
        jobs.append(DigestJob(os.fspath(tmp_path), f"f{i}", "sha256", digest, 4))
        expected.append(wrong)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with pytest.raises(RuntimeError, match="no other running"):
            WorkerPool(2)
        with Hashing() as hashing:  # hashes in this process instead
            for job in jobs:
                hashing.add(job)
            assert hashing._pool is None
            assert hashing.results(None) == expected
    finally:
        stop.set()
        other.join()


def test_verify_fails_with_one_line_when_a_worker_dies(sysroot: Path, images: Images) -> None:
    deploy(sysroot, images.v1, images.key)  # its "bulk" package (24 MiB) starts the pool
    r = rpmimg("verify", "--sysroot", sysroot, env={"RPMIMG_KILL_AT": "hashing worker answers"},
               check=False)
    assert r.code == 1, r.err
    (line,) = r.err.splitlines()
    assert line.startswith("rpmimg: error: a hashing worker (pid "), line
    assert "was killed by SIGKILL" in line and "not verified" in line
    assert rpmimg("verify", "--sysroot", sysroot).code == 0  # no worker killed: it passes
