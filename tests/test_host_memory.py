"""host.memory: with the fixed threshold, a freed large block goes back to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter: free a 16 MiB block after glibc's dynamic threshold has risen
# (a first large block freed), and report how many MiB of it go back.
_PROBE = """
import ctypes, sys
from host import memory
if sys.argv[1] == "fixed":
    assert memory.return_large_blocks()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
def touch(n):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    return p
libc.free(touch(20 << 20))  # glibc raises its mmap threshold to 20 MiB here
big = touch(16 << 20)
keep = touch(64 << 10)  # live above it on the heap, so the heap cannot shrink past it
before = rss()
libc.free(big)
print((before - rss()) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_block_is_returned() -> None:
    def returned(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert returned("fixed") >= 14
    # Without it the block stays resident: the case the fixed threshold is for.
    assert returned("dynamic") < 4
