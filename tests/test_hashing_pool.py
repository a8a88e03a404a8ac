"""verify's hashing workers end with the process that made them, even killed with SIGKILL.

The OOM killer ends a verify with SIGKILL; its pool's workers, blocked on their task
queue (whose write end they hold themselves), would otherwise live on, orphaned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.hashing import worker_pool

CHECKOUT = Path(__file__).resolve().parents[1]

# A parent that makes the pool, has every worker say its pid, then waits to be killed.
PARENT = """
import os, sys, time
from deploy.hashing import worker_pool

def pid(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()

pool = worker_pool(3)
print(" ".join(map(str, sorted(set(pool.map(pid, range(12)))))), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie no one reaps has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def _worker_pid(_: int) -> int:
    return os.getpid()


def test_workers_die_when_the_parent_is_killed() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT], cwd=CHECKOUT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers and proc.pid not in workers
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


def test_the_pool_still_works_in_a_live_parent() -> None:
    with worker_pool(2) as pool:
        pids = set(pool.map(_worker_pid, range(8)))
    assert pids and os.getpid() not in pids
