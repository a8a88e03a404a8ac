"""host.memory: with the fixed threshold, a freed large block goes back to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

from host import memory

# The probes' start: glibc's malloc and free, declared for ctypes.
_LIBC = """
import ctypes, sys
from host import memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
"""

# In a fresh interpreter: free a block of argv[2] KiB after glibc's dynamic threshold has
# risen (a first large block freed), and report how many KiB of it go back.
_PROBE = _LIBC + """
if sys.argv[1] == "fixed":
    assert memory.return_large_blocks()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
def touch(n):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    return p
libc.free(touch(20 << 20))  # glibc raises its mmap threshold to 20 MiB here
big = touch(int(sys.argv[2]) << 10)
keep = touch(64 << 10)  # live above it on the heap, so the heap cannot shrink past it
before = rss()
libc.free(big)
print((before - rss()) >> 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("kib", [16 << 10, 2 << 10])  # a 200,000 and a 15,000-file package's header
def test_a_freed_large_block_is_returned(kib: int) -> None:
    def returned(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(kib)], capture_output=True, text=True,
                             check=True)
        return int(out.stdout)

    assert returned("fixed") >= kib * 7 // 8
    # Without it the block stays resident: the case the fixed threshold is for.
    assert returned("dynamic") < kib // 4


def test_a_read_buffer_stays_below_the_threshold() -> None:
    # Reads of 1 MiB, repeated file after file, are not worth a mapping each.
    assert len(bytes(1 << 20)) + sys.getsizeof(b"") < memory.LARGE_BLOCK


# In a fresh interpreter: where a thread's malloc lands, with one arena or glibc's default.
_THREAD_PROBE = _LIBC + """
import threading
if sys.argv[1] == "one":
    assert memory.one_arena()
libc.malloc(1 << 10)  # the main heap exists
got = []
t = threading.Thread(target=lambda: got.append(libc.malloc(1 << 10)))
t.start()
t.join()
with open("/proc/self/maps") as f:
    heap = [line.split()[0] for line in f if line.rstrip().endswith("[heap]")]
lo, hi = (int(x, 16) for x in heap[0].split("-"))
print("main" if lo <= got[0] < hi else "other")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_thread_allocates_from_the_main_heap_with_one_arena() -> None:
    def lands(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", _THREAD_PROBE, mode], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert lands("one") == "main"
    assert lands("default") == "other"  # the case one_arena is for
