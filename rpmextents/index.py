"""The extents index: a versioned, little-endian table between header and data.

Layout of an extents RPM::

    [0, index_start)            lead, signature header, header (byte-identical)
    [index_start, data_offset)  index: head, records, literal bytes, zero fill,
                                sha256 of all of it but the last 32 bytes
    [data_offset, file size)    file data, each file block-aligned and zero-padded

Records rebuild the uncompressed cpio payload in order: a LITERAL record is a
run of ``literals`` (cpio headers, names, padding, symlink targets, trailer), a
DATA record is a regular file's content stored at an aligned offset. Nothing
here is trusted by itself: verification rebuilds the payload and compares it
with the signed header's digest. Parsing is strict so that any changed byte is
either refused here or changes the rebuilt payload.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from host import digest as _digest
from rpmextents.errors import FormatError

MAGIC = b"RPMEXTS\0"
VERSION = 1
DEFAULT_BLOCK_SIZE = 4096
MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 1 << 20
# magic, version, flags, block size, index start, index size, data offset,
# data size, stream size, literal size, record count, reserved
HEAD = struct.Struct("<8sHHIQQQQQQII")
RECORD = struct.Struct("<IiQQ")  # kind, file index, a, b
DIGEST_SIZE = 32
# An index larger than this is refused as absurd (about 10 million files).
MAX_INDEX_SIZE = 2 << 30


class RecordKind(enum.IntEnum):
    LITERAL = 1  # a = offset into the literal bytes, b = length
    DATA = 2  # a = offset in the file, b = length


@dataclass(frozen=True)
class Record:
    """One record of the extents index: a literal run or a file's data extent."""

    kind: RecordKind
    fx: int  # header file index of DATA records, -1 for literals
    a: int
    b: int


def align_up(n: int, block: int) -> int:
    return (n + block - 1) // block * block


def block_size_problem(block_size: int) -> str | None:
    """What is wrong with block_size as an extents block size, or None.

    The one rule, for transcode, the index parser, image definitions and manifests:
    a power of two from 4 KiB (the page size btrfs reflinks in) to 1 MiB.
    """
    if MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE and not block_size & (block_size - 1):
        return None
    return f"must be a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}"


def check_block_size(block_size: int) -> None:
    problem = block_size_problem(block_size)
    if problem is not None:
        raise FormatError(f"block size {block_size} {problem}")


@dataclass(frozen=True)
class Index:
    """A package's extents index: its place in the file, the data area, and the packed records."""

    block_size: int
    index_start: int
    data_offset: int
    data_size: int
    stream_size: int
    packed: bytes | bytearray  # the records, RECORD after RECORD: a few dozen bytes each, not an object
    literals: bytes | bytearray

    @property
    def record_count(self) -> int:
        return len(self.packed) // RECORD.size

    @property
    def records(self) -> Iterator[Record]:
        """The records in order, made one at a time."""
        for kind, fx, a, b in RECORD.iter_unpack(self.packed):
            yield Record(RecordKind(kind), fx, a, b)

    def data_triples(self) -> Iterator[tuple[int, int, int]]:
        """(file index, offset, length) of each DATA record, without making Record objects."""
        data = RecordKind.DATA
        return ((fx, a, b) for kind, fx, a, b in RECORD.iter_unpack(self.packed) if kind == data)

    @property
    def index_size(self) -> int:
        return self.data_offset - self.index_start

    @property
    def file_size(self) -> int:
        return self.data_offset + self.data_size

    @staticmethod
    def needed_size(record_count: int, literal_size: int) -> int:
        """Bytes the index needs before zero fill."""
        return HEAD.size + RECORD.size * record_count + literal_size + DIGEST_SIZE

    def pieces(self) -> list[bytes | bytearray]:
        """The index region [index_start, data_offset), digest included, as the pieces it
        is made of (no copy of the records and literals)."""
        head = HEAD.pack(
            MAGIC, VERSION, 0, self.block_size, self.index_start, self.index_size,
            self.data_offset, self.data_size, self.stream_size, len(self.literals),
            self.record_count, 0,
        )
        used = len(head) + len(self.packed) + len(self.literals)
        fill = self.index_size - used - DIGEST_SIZE
        if fill < 0:
            raise ValueError("index does not fit before the data offset")
        out: list[bytes | bytearray] = [head, self.packed, self.literals, bytes(fill)]
        digest = _digest.new("sha256", self.index_size)
        for piece in out:
            digest.update(piece)
        return [*out, digest.digest()]

    def pack(self) -> bytes:
        """The index region [index_start, data_offset), digest included."""
        return b"".join(self.pieces())

    def data_records(self) -> Iterator[Record]:
        return (Record(RecordKind.DATA, fx, a, b) for fx, a, b in self.data_triples())


def parse_head(buf: bytes, index_start: int, file_size: int) -> tuple[int, int, int, int, int, int]:
    """Check the fixed head against the file; return (block size, index size,
    data size, stream size, record count, literal size)."""
    if len(buf) < HEAD.size:
        raise FormatError(f"truncated extents index at offset {index_start}")
    (magic, version, flags, block_size, start, index_size, data_offset, data_size,
     stream_size, literal_size, count, reserved) = HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise FormatError(f"not an extents RPM: bad index magic {magic!r} at offset {index_start}")
    if version != VERSION:
        raise FormatError(f"unknown extents format version {version} (this rpmimg reads {VERSION})")
    if flags or reserved:
        raise FormatError("extents index has unknown flags or non-zero reserved fields")
    check_block_size(block_size)
    if start != index_start:
        raise FormatError(f"extents index says it starts at {start}, but the header ends at {index_start}")
    if data_offset % block_size or data_offset != index_start + index_size:
        raise FormatError(f"extents data offset {data_offset} is not the aligned end of the index")
    if index_size > MAX_INDEX_SIZE or index_size < Index.needed_size(count, literal_size):
        raise FormatError(f"absurd extents index size {index_size} for {count} records")
    if data_size % block_size:
        raise FormatError(f"extents data size {data_size} is not a multiple of the block size")
    if data_offset + data_size != file_size:
        raise FormatError(
            f"file is {file_size} bytes but the index describes {data_offset + data_size} (truncated or extended)"
        )
    return block_size, index_size, data_size, stream_size, count, literal_size


def _check_records(packed: bytes | bytearray | memoryview, data_offset: int, block_size: int,
                   data_size: int, stream_size: int, literal_size: int) -> None:
    """The records, in order, cover the literal bytes and the data area exactly."""
    lit_pos = 0
    next_data = data_offset
    total = 0
    for kind, fx, a, b in RECORD.iter_unpack(packed):
        if b <= 0:
            raise FormatError("extents index has an empty record")
        if kind == RecordKind.LITERAL:
            if fx != -1 or a != lit_pos or a + b > literal_size:
                raise FormatError(f"extents index literal record at {a} is out of place")
            lit_pos += b
        elif kind == RecordKind.DATA:
            if fx < 0 or a != next_data:
                raise FormatError(f"extents index data record at offset {a} is out of place (expected {next_data})")
            next_data = align_up(a + b, block_size)
        else:
            raise FormatError(f"extents index has a record of unknown kind {kind}")
        total += b
    if lit_pos != literal_size:
        raise FormatError("extents index literal records do not cover the literal bytes")
    if next_data != data_offset + data_size:
        raise FormatError("extents data area size does not match its records")
    if total != stream_size:
        raise FormatError(f"extents index records add up to {total} bytes, not {stream_size}")


def parse(region: bytes, index_start: int, file_size: int) -> Index:
    """Parse and strictly check the index region [index_start, data_offset)."""
    block_size, index_size, data_size, stream_size, count, literal_size = parse_head(
        region, index_start, file_size
    )
    if len(region) != index_size:
        raise FormatError(f"truncated extents index: {len(region)} of {index_size} bytes")
    view = memoryview(region)  # slices of it copy nothing
    if _digest.of("sha256", view[:-DIGEST_SIZE]).digest() != view[-DIGEST_SIZE:]:
        raise FormatError("extents index digest mismatch (the index was changed or damaged)")
    rec_end = HEAD.size + RECORD.size * count
    fill_start = rec_end + literal_size
    if region.count(0, fill_start, index_size - DIGEST_SIZE) != index_size - DIGEST_SIZE - fill_start:
        raise FormatError("extents index fill is not zero")
    packed = bytes(view[HEAD.size : rec_end])
    data_offset = index_start + index_size
    _check_records(packed, data_offset, block_size, data_size, stream_size, literal_size)
    return Index(block_size, index_start, data_offset, data_size, stream_size, packed,
                 bytes(view[rec_end:fill_start]))


def parse_records(read: Callable[[int, int], bytes], index_start: int, file_size: int,
                  check_digest: bool = True) -> tuple[Index, int]:
    """Parse and check the index like parse(), reading it with read(offset, n) in chunks and
    keeping only its records: (the index without its literals, where they start in the file).

    The literal bytes (the cpio headers and names, most of a big index) are hashed on the
    way and dropped; whoever needs them reads them again from the file. Without
    check_digest (a file whose whole content was just found to hash to what names it, which
    covers the index and its digest) the literals are not read and the index's own digest
    is not worked out; the head, the records and the fill are checked all the same.
    """
    head = read(index_start, HEAD.size)
    block_size, index_size, data_size, stream_size, count, literal_size = parse_head(
        head, index_start, file_size
    )
    rec_end = HEAD.size + RECORD.size * count
    fill_start = rec_end + literal_size
    if fill_start + DIGEST_SIZE > index_size:
        raise FormatError(f"absurd extents index size {index_size} for {count} records")
    digest = _digest.new("sha256", index_size) if check_digest else None
    packed = read(index_start + HEAD.size, rec_end - HEAD.size)
    if digest is not None:
        digest.update(head)
        digest.update(packed)
    pos = rec_end if digest is not None else fill_start
    while pos < index_size - DIGEST_SIZE:
        chunk = read(index_start + pos, min(1 << 18, index_size - DIGEST_SIZE - pos))
        if not chunk:
            raise FormatError(f"truncated extents index at offset {index_start + pos}")
        if digest is not None:
            digest.update(chunk)
        zero_from = max(fill_start - pos, 0)
        if zero_from < len(chunk) and chunk.count(0, zero_from) != len(chunk) - zero_from:
            raise FormatError("extents index fill is not zero")
        pos += len(chunk)
    if len(packed) != rec_end - HEAD.size or (
            digest is not None and digest.digest() != read(index_start + index_size - DIGEST_SIZE, DIGEST_SIZE)):
        raise FormatError("extents index digest mismatch (the index was changed or damaged)")
    data_offset = index_start + index_size
    _check_records(packed, data_offset, block_size, data_size, stream_size, literal_size)
    index = Index(block_size, index_start, data_offset, data_size, stream_size, packed, b"")
    return index, index_start + rec_end
