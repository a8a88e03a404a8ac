"""How the C allocator gives memory back to the system.

glibc serves a large request (128 KiB and up) with its own mmap and, when such a block is
freed, raises the threshold to that block's size: from then on same-sized requests come
from the heap, and freed heap memory below anything still live is kept, not returned. A
deploy reads a package's header (25 MB for 200,000 files) several times, and rpm reads it
again to check it, so the dynamic threshold turns each transient copy into resident memory
kept to the end of the run (about 20 MB at 200,000 files). A fixed threshold keeps every
block of 4 MiB or more in its own mapping, returned the moment it is freed; smaller blocks
(the 1 MiB read buffers) stay on the heap as before.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
LARGE_BLOCK = 4 << 20


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Serve blocks of threshold bytes and more by mmap, always; False where the C
    library has no mallopt (not glibc), which changes nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
