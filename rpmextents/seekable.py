"""The seekable compressed form of an extents RPM: zstd frames a client can fetch alone.

Layout (a valid zstd stream; `zstd -d` gives back the extents RPM)::

    frame 0                 [0, data_offset): lead, headers and extents index
    frame 1 ... n-1         the data area, cut at file starts: one file's block-aligned
                            data per frame (files above MAX_FRAME span several frames)
    skippable frame         the frame table (magic 0x184D2A5E, then its length):
        8s  b"RPMIMGSK"
        u32 version (1)
        u32 n, the number of data frames
        n x (u32 compressed size, u32 decompressed size)
        u32 the table's length, skippable frame head included      all little-endian

Frame i decompresses to the bytes of the extents RPM that follow frame i-1's, so the
table alone gives every frame's offsets in both files. The table is the file's last
`len(table)` bytes; a manifest pins it by length and sha256, and every frame's content
is checked against the signed header's file digests (and the whole against the
package's sha256), so nothing here is trusted by itself.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from rpmextents.errors import FormatError
from rpmextents.index import align_up
from rpmextents.package import ExtentsPackage

TABLE_MAGIC = 0x184D2A5E
TABLE_ID = b"RPMIMGSK"
TABLE_VERSION = 1
_SKIPPABLE = struct.Struct("<II")
_TABLE_HEAD = struct.Struct("<8sII")
_ENTRY = struct.Struct("<II")
_FOOTER = struct.Struct("<I")
_FIXED = _SKIPPABLE.size + _TABLE_HEAD.size + _FOOTER.size
MAX_FRAME = 32 << 20  # decompressed bytes in one frame at most
MAX_FRAMES = 1 << 24


@dataclass(frozen=True)
class Frame:
    """One zstd frame: [offset, +size) of the extents RPM at [coffset, +csize) of the form."""

    offset: int
    size: int
    coffset: int
    csize: int


@dataclass(frozen=True)
class FrameTable:
    """The seekable zstd frames of a payload copy, in order."""

    frames: tuple[Frame, ...]

    @property
    def size(self) -> int:
        """The extents RPM's size."""
        last = self.frames[-1]
        return last.offset + last.size

    @property
    def compressed_size(self) -> int:
        """The frames' bytes, the table not included."""
        last = self.frames[-1]
        return last.coffset + last.csize

    def pack(self) -> bytes:
        body = _TABLE_HEAD.pack(TABLE_ID, TABLE_VERSION, len(self.frames)) + b"".join(
            _ENTRY.pack(f.csize, f.size) for f in self.frames)
        body += _FOOTER.pack(_SKIPPABLE.size + len(body) + _FOOTER.size)
        return _SKIPPABLE.pack(TABLE_MAGIC, len(body)) + body

    def covering(self, start: int, end: int) -> list[Frame]:
        """The frames holding any of the extents RPM's bytes [start, end)."""
        return [f for f in self.frames if f.offset < end and start < f.offset + f.size]


def parse_table(data: bytes, size: int, compressed_size: int) -> FrameTable:
    """Strictly parse a table that must describe `size` bytes in a form of `compressed_size`."""
    if len(data) < _FIXED:
        raise FormatError("seekable table: truncated")
    magic, length = _SKIPPABLE.unpack_from(data)
    ident, version, count = _TABLE_HEAD.unpack_from(data, _SKIPPABLE.size)
    if magic != TABLE_MAGIC or ident != TABLE_ID:
        raise FormatError("seekable table: bad magic")
    if version != TABLE_VERSION:
        raise FormatError(f"seekable table: unknown version {version}")
    (footer,) = _FOOTER.unpack_from(data, len(data) - _FOOTER.size)
    if not 0 < count <= MAX_FRAMES or len(data) != _FIXED + count * _ENTRY.size \
            or length + _SKIPPABLE.size != len(data) or footer != len(data):
        raise FormatError(f"seekable table: {count} frames do not fit its {len(data)} bytes")
    frames: list[Frame] = []
    offset = coffset = 0
    for csize, usize in _ENTRY.iter_unpack(data[_SKIPPABLE.size + _TABLE_HEAD.size:-_FOOTER.size]):
        if not csize or not usize or usize > MAX_FRAME:
            raise FormatError(f"seekable table: frame {len(frames)} has absurd sizes")
        frames.append(Frame(offset, usize, coffset, csize))
        offset += usize
        coffset += csize
    if offset != size or coffset + len(data) != compressed_size:
        raise FormatError(f"seekable table describes {offset} bytes in {coffset + len(data)}, "
                          f"not {size} in {compressed_size}")
    return FrameTable(tuple(frames))


def read_table(f: BinaryIO, size: int) -> tuple[FrameTable, bytes]:
    """The table of a seekable form on disk (its length from the footer), and its bytes."""
    total = f.seek(0, os.SEEK_END)
    if total < _FIXED:
        raise FormatError("not a seekable form: too short")
    f.seek(total - _FOOTER.size)
    (length,) = _FOOTER.unpack(f.read(_FOOTER.size))
    if not _FIXED <= length <= total:
        raise FormatError("not a seekable form: no frame table at its end")
    f.seek(total - length)
    data = f.read(length)
    return parse_table(data, size, total), data


def decompress_frame(data: bytes, frame: Frame) -> bytes:
    """One frame's bytes, which must decompress to exactly frame.size."""
    try:
        out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError as e:
        raise FormatError(f"frame at {frame.coffset}: {e}") from e
    if len(out) != frame.size:
        raise FormatError(f"frame at {frame.coffset}: {len(out)} bytes, not {frame.size}")
    return out


def cuts(pkg: ExtentsPackage, size: int) -> list[tuple[int, int]]:
    """(offset, size) of each frame of an extents RPM of `size` bytes."""
    starts = {0, pkg.index.data_offset, size}
    for r in pkg.index.data_records():
        starts.add(r.a)
        starts.add(min(size, align_up(r.a + r.b, pkg.block_size)))
    edges = sorted(s for s in starts if 0 <= s <= size)
    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(edges):
        for piece in range(a, b, MAX_FRAME):
            out.append((piece, min(MAX_FRAME, b - piece)))
    return out


def _batches(items: list[tuple[int, int]], n: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def compress(src: str | os.PathLike[str], out: BinaryIO, level: int = 19,
             workers: int | None = None) -> FrameTable:
    """Write the seekable form of the extents RPM src to out, frames compressed on all cores."""
    workers = workers or os.cpu_count() or 1
    with ExtentsPackage.open(src) as pkg:
        fd = pkg.fileno()
        size = os.fstat(fd).st_size
        pieces = cuts(pkg, size)
        local = threading.local()

        def one(piece: tuple[int, int]) -> bytes:
            if not hasattr(local, "c"):
                local.c = zstandard.ZstdCompressor(level=level, write_checksum=False)
            data = os.pread(fd, piece[1], piece[0])
            if len(data) != piece[1]:
                raise FormatError(f"{os.fspath(src)}: shorter than its index says")
            compressed: bytes = local.c.compress(data)
            return compressed

        frames: list[Frame] = []
        coffset = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch in _batches(pieces, 4 * workers):
                for (offset, usize), data in zip(batch, pool.map(one, batch), strict=True):
                    out.write(data)
                    frames.append(Frame(offset, usize, coffset, len(data)))
                    coffset += len(data)
    table = FrameTable(tuple(frames))
    out.write(table.pack())
    return table
