"""deploy.pathset: verify's compact set of owned paths, and the streamed header-file check."""

from __future__ import annotations

import io
import os
import tracemalloc

from deploy.pathset import PathSet
from deploy.verify import _same_bytes


def test_paths_and_their_parents_are_members() -> None:
    s = PathSet(["lib/scale/drivers/usb-03/a.ko", "bin/sh"])
    s.add("share/doc/x/README")
    for p in ("lib/scale/drivers/usb-03/a.ko", "lib/scale/drivers/usb-03", "lib/scale", "lib",
              "bin/sh", "bin", "share/doc/x/README", "share/doc/x", "share"):
        assert p in s, p
    for p in ("lib/scale/drivers/usb-03/a.k", "lib/scale/drivers/usb-0", "li", "bin/s", "bin/sh/x",
              "share/doc/x/README/", "", "/bin/sh", "lib/scale/drivers/usb-03/b.ko"):
        assert p not in s, p
    assert 3 not in s and b"bin/sh" not in s
    assert len(s) == 3


def test_names_that_are_not_utf8_are_kept_apart() -> None:
    odd = os.fsdecode(b"lib/caf\xe9")  # a surrogate-escaped byte, as os.listdir gives it
    s = PathSet([odd])
    assert odd in s and "lib/caf\u00e9" not in s and "lib" in s


def test_keys_differ_between_sets() -> None:
    """The hash is keyed per set: a colliding path can't be prepared in advance."""
    a, b = PathSet(), PathSet()
    assert a._hash("usr/bin/sh") != b._hash("usr/bin/sh")


def test_adding_after_lookups_still_finds_everything() -> None:
    s = PathSet(f"d{i % 7}/f{i}" for i in range(1000))
    assert "d3/f3" in s
    s.add("late/file")
    assert "late/file" in s and "d5/f999" in s and "d6/f1000" not in s


def test_a_path_costs_bytes_not_a_string() -> None:
    paths = [f"lib/scale/drivers/usb-{i % 30:02d}/parser_{i:06x}_07.ko" for i in range(50_000)]
    tracemalloc.start()
    try:
        s = PathSet(paths)
        assert "lib/scale/drivers/usb-29/parser_00001d_07.ko" in s  # sorted on first lookup
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A set of these (caller's) strings alone would keep ~3 MB: 60 bytes a path; this keeps
    # 8 (and, while it sorts on the first lookup, a list of ints for a moment).
    assert kept < 50_000 * 12, kept
    assert peak < 50_000 * 64, peak


def test_same_bytes_reads_in_chunks_and_stops_at_a_difference() -> None:
    data = bytes(range(256)) * 40
    assert _same_bytes(io.BytesIO(data), data, chunk=100)
    changed = bytearray(data)
    changed[5000] ^= 1
    assert not _same_bytes(io.BytesIO(bytes(changed)), data, chunk=100)
    assert not _same_bytes(io.BytesIO(data[:-1]), data, chunk=100)  # short file
    f = io.BytesIO(data + b"x")
    assert _same_bytes(f, data, chunk=100) and f.read() == b"x"  # the caller sees what is left
