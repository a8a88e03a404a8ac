"""How the C allocator gives memory back to the system.

glibc serves a large request (128 KiB and up) with its own mmap and, when such a block is
freed, raises the threshold to that block's size: from then on same-sized requests come
from the heap, and freed heap memory below anything still live is kept, not returned. A
deploy reads a package's header (25 MB for 200,000 files) several times, and rpm reads it
again to check it, so the dynamic threshold turns each transient copy into resident memory
kept to the end of the run (about 20 MB at 200,000 files). A fixed threshold keeps every
block larger than a 1 MiB read buffer in its own mapping, returned the moment it is freed;
the read buffers themselves (1 MiB and a bytes object's few dozen bytes), used over and over,
stay on the heap as before. The threshold was 4 MiB: the 1.3 MB header of a 10,000-file
package and its copies then stayed on the heap, 1.3 MB of a deploy's peak of 27 MB there.

glibc also gives each thread that allocates an arena of its own, whose freed memory only
that thread reuses: the thread that writes the rpm database beside the /etc merge (sqlite's
page cache and statements) kept about 0.6 MB resident next to the main heap's free space,
at a 10,000-file deploy's peak. With one arena, all threads allocate from the same heap.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt parameters (malloc.h)
M_ARENA_MAX = -8
LARGE_BLOCK = (1 << 20) + (64 << 10)  # just above a 1 MiB read buffer


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where the C library has none (not glibc), which changes nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value))


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Serve blocks of threshold bytes and more by mmap, always."""
    return _mallopt(M_MMAP_THRESHOLD, threshold)


def one_arena() -> bool:
    """Every thread allocates from the main arena (call it before any thread starts)."""
    return _mallopt(M_ARENA_MAX, 1)
