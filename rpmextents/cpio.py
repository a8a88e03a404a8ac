"""The cpio payload of an RPM, read forward once and split into the extents index's records.

rpm writes either the classic `070701`/`070702` entries (full header, name) or, for
large files, the stripped `07070X` entries that name a header file index instead.
Everything but regular file data becomes LITERAL records (kept byte for byte in the
index); each regular file's data is written at the next block boundary of the output
and becomes a DATA record. Nothing the payload says is trusted: every entry must be a
file of the header, once, with the size the header gives it.
"""

from __future__ import annotations

import stat
from typing import Any

from rpmextents.errors import CorruptPackageError
from rpmextents.files import FileFlag, FileList
from rpmextents.index import RECORD, Index, RecordKind, align_up
from rpmextents.payload import CHUNK, Background, Prefetch, new_hash, pwrite_all

NEWC_MAGICS = (b"070701", b"070702")
STRIPPED_MAGIC = b"07070X"
TRAILER = b"TRAILER!!!\0"
NEWC_FIELDS = 13
MAX_NAME = 65536
# Bytes after the cpio trailer are kept, but a payload that is mostly trailing junk is refused.
MAX_TAIL = 1 << 20
_ZEROS = bytes(CHUNK)


class IndexTooSmall(Exception):
    """The space left for the index before the data was too small; `needed` is the data offset."""

    def __init__(self, needed: int) -> None:
        self.needed = needed


def estimate_index(entries: FileList) -> int:
    """An upper bound of the index size for a payload rpm wrote."""
    literal = 3 + 110 + len(TRAILER) + 3
    for i, path in enumerate(entries.paths()):
        literal += 3 + 110 + len(path.encode("utf-8", "surrogateescape")) + 2 + 3 + 8
        if stat.S_ISLNK(entries.modes[i]):
            literal += entries.sizes[i]
    return Index.needed_size(2 * len(entries) + 3, literal)


def _cpio_path(name: bytes) -> str:
    text = name.decode("utf-8", "surrogateescape")
    if text.startswith("./"):
        return text[1:]
    return text if text.startswith("/") else "/" + text


class PayloadStream:
    """The uncompressed payload, read forward, hashed as it goes."""

    def __init__(self, reader: Prefetch, hashes: list[Any], what: str, background: Background) -> None:
        self._reader = reader
        self._hashes = hashes
        self._background = background
        self._buf = memoryview(b"")
        self.pos = 0
        self.what = what

    def _raw_read(self, n: int) -> bytes:
        try:
            return self._reader.read(n)
        except Exception as e:  # zlib, lzma, bz2 and zstd each raise their own kind
            raise CorruptPackageError(f"{self.what}: payload does not decompress: {e}") from e

    def _take(self, limit: int) -> memoryview:
        """Up to ``limit`` (at least 1) next bytes, hashed."""
        if not self._buf:
            chunk = self._raw_read(CHUNK)
            if not chunk:
                raise CorruptPackageError(f"{self.what}: payload is truncated at byte {self.pos}")
            self._buf = memoryview(chunk)
        data, self._buf = self._buf[:limit], self._buf[limit:]
        self.pos += len(data)
        for h in self._hashes:
            self._background.submit(h.update, data)
        return data

    def read(self, n: int) -> bytes:
        if len(self._buf) >= n:
            return bytes(self._take(n))
        parts = []
        while n:
            part = self._take(n)
            parts.append(bytes(part))
            n -= len(part)
        return b"".join(parts)

    def copy_to(self, fd: int, offset: int, n: int, extra: Any | None) -> None:
        """Copy n bytes to fd at offset; all-zero chunks are left as holes."""
        while n:
            data = self._take(min(n, CHUNK))
            if extra is not None:
                self._background.submit(extra.update, data)
            if data != _ZEROS[: len(data)]:
                self._background.submit(pwrite_all, fd, data, offset)
            offset += len(data)
            n -= len(data)

    def read_tail(self) -> bytes:
        tail = bytearray(self._buf)
        self._buf = memoryview(b"")
        while chunk := self._raw_read(CHUNK):
            tail += chunk
            if len(tail) > MAX_TAIL:
                raise CorruptPackageError(f"{self.what}: more than {MAX_TAIL} bytes after the cpio trailer")
        rest = bytes(tail)
        self.pos += len(rest)
        for h in self._hashes:
            self._background.submit(h.update, rest)
        return rest


class PayloadSplitter:
    """Splits the payload into records, writing each regular file's data at an aligned offset.

    With `per_file_digests` (a package without a payload digest), each file's data is
    hashed on the way and checked against the header by `check_file_digests`.
    """

    def __init__(self, what: str, stream: PayloadStream, entries: FileList, out_fd: int,
                 block_size: int, data_offset: int, per_file_digests: bool) -> None:
        self.what, self.stream, self.entries = what, stream, entries
        self.out_fd, self.block_size, self.data_offset = out_fd, block_size, data_offset
        self.per_file_digests = per_file_digests
        # rpm writes the payload in header order (hardlink sets last): a name is looked for
        # at the next index first; a table of every path is made only when that misses.
        self.next_index = 0
        self.by_path: dict[str, int] | None = None
        self.expected = entries.payload_sizes()
        self.seen = bytearray(len(entries))
        self.records = bytearray()  # packed RECORDs
        self.literal = bytearray()  # the literal run being collected
        self.literals = bytearray()  # every literal run so far
        self.next_data = data_offset
        self.data_bytes = 0
        self.file_hashes: list[tuple[int, Any]] = []

    def split(self) -> None:
        """Read the payload to its end (the trailer and what follows it)."""
        while (found := self._next_entry()) is not None:
            self._take(*found)
        self._flush_literal()
        ghost = FileFlag.GHOST
        for i, seen in enumerate(self.seen):
            if not seen and not self.entries.flags[i] & ghost:
                raise CorruptPackageError(
                    f"{self.what}: {self.entries.path(i)} is in the header but not in the payload")

    def check_file_digests(self) -> None:
        """After the data is hashed (the background work is done): each file matches its digest."""
        for fx, h in self.file_hashes:
            if h.hexdigest() != self.entries.digest(fx):
                raise CorruptPackageError(f"{self.what}: {self.entries.path(fx)} does not match its digest")

    def index(self, header_end: int) -> Index:
        """The index of what was split; IndexTooSmall when it does not fit before the data."""
        needed = Index.needed_size(len(self.records) // RECORD.size, len(self.literals))
        if header_end + needed > self.data_offset:
            raise IndexTooSmall(align_up(header_end + needed, self.block_size))
        return Index(
            block_size=self.block_size, index_start=header_end, data_offset=self.data_offset,
            data_size=self.next_data - self.data_offset, stream_size=self.stream.pos,
            packed=self.records, literals=self.literals,  # bytearrays: not copied
        )

    def _literal(self, n: int) -> bytes:
        data = self.stream.read(n)
        self.literal += data
        return data

    def _flush_literal(self) -> None:
        if self.literal:
            self.records += RECORD.pack(RecordKind.LITERAL, -1, len(self.literals), len(self.literal))
            self.literals.extend(self.literal)
            self.literal.clear()

    def _next_entry(self) -> tuple[int, int] | None:
        """(header file index, size) of the next payload entry; None at the trailer."""
        self._literal((-self.stream.pos) % 4)
        magic = self._literal(6)
        if magic == STRIPPED_MAGIC:
            found: tuple[int, int] | None = self._stripped_entry()
        elif magic in NEWC_MAGICS:
            found = self._newc_entry()
        else:
            raise CorruptPackageError(
                f"{self.what}: bad cpio magic {magic!r} at payload byte {self.stream.pos - 6}")
        if found is not None:
            if self.seen[found[0]]:
                raise CorruptPackageError(
                    f"{self.what}: {self.entries.path(found[0])} appears twice in the payload")
            self.seen[found[0]] = 1
        return found

    def _stripped_entry(self) -> tuple[int, int]:
        fx_hex = self._literal(8)
        try:
            fx = int(fx_hex, 16)
        except ValueError:
            raise CorruptPackageError(
                f"{self.what}: bad cpio header at payload byte {self.stream.pos - 14}") from None
        if fx >= len(self.entries):
            raise CorruptPackageError(
                f"{self.what}: cpio entry refers to file {fx}, the header has {len(self.entries)}")
        self._literal((-self.stream.pos) % 4)
        return fx, self.expected[fx]

    def _newc_entry(self) -> tuple[int, int] | None:
        fields_raw = self._literal(8 * NEWC_FIELDS)
        try:
            fields = [int(fields_raw[i : i + 8], 16) for i in range(0, 8 * NEWC_FIELDS, 8)]
        except ValueError:
            raise CorruptPackageError(
                f"{self.what}: bad cpio header at payload byte {self.stream.pos - 110}") from None
        size, namesize = fields[6], fields[11]
        if namesize < 2 or namesize > MAX_NAME:
            raise CorruptPackageError(f"{self.what}: cpio name size {namesize} is absurd")
        name = self._literal(namesize)
        self._literal((-self.stream.pos) % 4)
        if name == TRAILER:
            self.literal += self.stream.read_tail()
            return None
        if name[-1:] != b"\0":
            raise CorruptPackageError(f"{self.what}: cpio name is not terminated")
        path = _cpio_path(name[:-1])
        fx = self._find(path)
        if size != self.expected[fx]:
            raise CorruptPackageError(f"{self.what}: payload has {size} bytes for {path}, "
                                      f"the header says {self.expected[fx]}")
        return fx, size

    def _find(self, path: str) -> int:
        """The header index of path: the next one in header order, else from a table."""
        fx = self.next_index
        if fx < len(self.entries) and self.entries.path(fx) == path:
            self.next_index += 1
            return fx
        if self.by_path is None:
            self.by_path = {p: i for i, p in enumerate(self.entries.paths())}
        found = self.by_path.get(path)
        if found is None:
            raise CorruptPackageError(f"{self.what}: payload file {path} is not in the header")
        self.next_index = found + 1
        return found

    def _take(self, fx: int, size: int) -> None:
        """The entry's content: a regular file's data goes to the output, the rest is literal."""
        if not size:
            return
        if not stat.S_ISREG(self.entries.modes[fx]):
            self._literal(size)
            return
        self._flush_literal()
        digest = self.per_file_digests and self.entries.digest(fx)
        file_hash = new_hash(self.entries.digest_algo) if digest else None
        self.stream.copy_to(self.out_fd, self.next_data, size, file_hash)
        if file_hash is not None:
            self.file_hashes.append((fx, file_hash))
        self.records += RECORD.pack(RecordKind.DATA, fx, self.next_data, size)
        self.next_data = align_up(self.next_data + size, self.block_size)
        self.data_bytes += size
