"""Transcoding an RPM into an extents RPM."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpmextents import layout
from rpmextents.errors import CorruptPackageError, Error, FormatError, UnsupportedPackageError
from rpmextents.files import Entry, EntryType, header_files, payload_sizes
from rpmextents.header import HASH_ALGOS, Header, PackagePrefix, SigTag, Tag, read_prefix
from rpmextents.keyring import check_header
from rpmextents.layout import Index, Record, RecordKind, align_up
from rpmextents.payload import (
    CHUNK,
    Background,
    HashingReader,
    Prefetch,
    new_hash,
    open_payload,
    pwrite_all,
    sniff,
)

NEWC_MAGICS = (b"070701", b"070702")
STRIPPED_MAGIC = b"07070X"
TRAILER = b"TRAILER!!!\0"
NEWC_FIELDS = 13
# Bytes after the cpio trailer are kept, but a payload that is mostly trailing junk is refused.
MAX_TAIL = 1 << 20
_ZEROS = bytes(CHUNK)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TranscodeResult:
    nevra: str
    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    block_size: int
    files: int
    data_bytes: int
    size: int
    header_sha256: str
    sha256: str


def nevra_of(header: Header) -> tuple[str, int | None, str, str, str, str]:
    name = header.string(Tag.NAME)
    epoch = header.number(Tag.EPOCH)
    version = header.string(Tag.VERSION)
    release = header.string(Tag.RELEASE)
    # Source packages have no ARCH tag worth trusting; binary ones always do.
    arch = header.string(Tag.ARCH, "noarch")
    evr = f"{epoch}:{version}-{release}" if epoch is not None else f"{version}-{release}"
    return f"{name}-{evr}.{arch}", epoch, name, version, release, arch


class _Stream:
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


class _IndexTooSmall(Exception):
    def __init__(self, needed: int) -> None:
        self.needed = needed


def _cpio_path(name: bytes) -> str:
    text = name.decode("utf-8", "surrogateescape")
    if text.startswith("./"):
        return text[1:]
    return text if text.startswith("/") else "/" + text


def _estimate_index(entries: list[Entry]) -> int:
    """An upper bound of the index size for a payload rpm wrote."""
    literal = 3 + 110 + len(TRAILER) + 3
    for e in entries:
        literal += 3 + 110 + len(e.path.encode("utf-8", "surrogateescape")) + 2 + 3 + 8
        if e.type is EntryType.SYMLINK:
            literal += e.size
    return Index.needed_size(2 * len(entries) + 3, literal)


def _digest_expectations(prefix: PackagePrefix) -> tuple[list[tuple[str, Any, str]], list[tuple[str, Any, str]]]:
    """(compressed-side, uncompressed-side) checks: (what, hash object, expected hex)."""
    header = prefix.header
    compressed: list[tuple[str, Any, str]] = []
    uncompressed: list[tuple[str, Any, str]] = []
    algo_number = header.number(Tag.PAYLOADDIGESTALGO) or 8
    algo = HASH_ALGOS.get(algo_number)
    if algo is None:
        raise UnsupportedPackageError(f"unknown payload digest algorithm {algo_number}")
    payload_digest = header.strings(Tag.PAYLOADDIGEST)
    if payload_digest:
        compressed.append(("payload digest", new_hash(algo), payload_digest[0]))
    alt = header.strings(Tag.PAYLOADDIGESTALT)
    # A matching compressed digest already proves the payload; the uncompressed
    # one is then checked by verify() on the extents file instead.
    if alt and not payload_digest:
        uncompressed.append(("uncompressed payload digest", new_hash(algo), alt[0]))
    md5 = prefix.signature.binary(SigTag.MD5)
    if not payload_digest and md5 is not None:
        h = new_hash("md5")
        h.update(prefix.header.blob)
        compressed.append(("header+payload MD5 digest", h, md5.hex()))
    return compressed, uncompressed


def _transcode_into(
    src: Path, f: Any, out_fd: int, prefix: PackagePrefix, entries: list[Entry],
    block_size: int, data_offset: int, progress: Progress | None,
) -> tuple[Index, int]:
    what = os.fspath(src)
    header_end = prefix.header_end
    f.seek(header_end)
    compressed_checks, uncompressed_checks = _digest_expectations(prefix)
    magic = f.read(6)
    f.seek(header_end)
    if not magic:
        raise CorruptPackageError(f"{what}: the payload is missing (the file ends after the header)")
    compressor = sniff(magic)
    total = os.fstat(f.fileno()).st_size - header_end

    with contextlib.ExitStack() as stack:
        background = Background()

        def close_background() -> None:
            # On an error the one that stopped parsing is reported, not a later one from the worker.
            with contextlib.suppress(Exception):
                background.close()

        stack.callback(close_background)
        raw = HashingReader(f, [h for _, h, _ in compressed_checks], total, progress, background)
        prefetch = Prefetch(open_payload(raw, compressor))
        stack.callback(prefetch.close)
        stream = _Stream(prefetch, [h for _, h, _ in uncompressed_checks], what, background)
        return _parse_stream(
            what, stream, prefetch, raw, background, out_fd, entries, block_size, data_offset,
            compressed_checks, uncompressed_checks, header_end,
        )


def _parse_stream(
    what: str, stream: _Stream, prefetch: Prefetch, raw: HashingReader, background: Background,
    out_fd: int, entries: list[Entry], block_size: int, data_offset: int,
    compressed_checks: list[tuple[str, Any, str]], uncompressed_checks: list[tuple[str, Any, str]],
    header_end: int,
) -> tuple[Index, int]:
    """Split the payload into literal and data records, writing data at aligned offsets."""
    check_files = not compressed_checks and not uncompressed_checks
    file_checks: list[tuple[Entry, Any]] = []

    by_path = {e.path: e for e in entries}
    expected = payload_sizes(entries)
    seen: set[int] = set()
    records: list[Record] = []
    literal = bytearray()
    literals = bytearray()
    next_data = data_offset
    data_bytes = 0

    def flush_literal() -> None:
        if literal:
            records.append(Record(RecordKind.LITERAL, -1, len(literals), len(literal)))
            literals.extend(literal)
            literal.clear()

    while True:
        literal += stream.read((-stream.pos) % 4)
        entry_magic = stream.read(6)
        literal += entry_magic
        if entry_magic == STRIPPED_MAGIC:
            fx_hex = stream.read(8)
            literal += fx_hex
            try:
                fx = int(fx_hex, 16)
            except ValueError:
                raise CorruptPackageError(f"{what}: bad cpio header at payload byte {stream.pos - 14}") from None
            if fx >= len(entries):
                raise CorruptPackageError(f"{what}: cpio entry refers to file {fx}, the header has {len(entries)}")
            literal += stream.read((-stream.pos) % 4)
            size = expected[fx]
        elif entry_magic in NEWC_MAGICS:
            fields_raw = stream.read(8 * NEWC_FIELDS)
            literal += fields_raw
            try:
                fields = [int(fields_raw[i : i + 8], 16) for i in range(0, 8 * NEWC_FIELDS, 8)]
            except ValueError:
                raise CorruptPackageError(f"{what}: bad cpio header at payload byte {stream.pos - 110}") from None
            size, namesize = fields[6], fields[11]
            if namesize < 2 or namesize > 65536:
                raise CorruptPackageError(f"{what}: cpio name size {namesize} is absurd")
            name = stream.read(namesize)
            literal += name
            literal += stream.read((-stream.pos) % 4)
            if name == TRAILER:
                literal += stream.read_tail()
                break
            if name[-1:] != b"\0":
                raise CorruptPackageError(f"{what}: cpio name is not terminated")
            path = _cpio_path(name[:-1])
            entry = by_path.get(path)
            if entry is None:
                raise CorruptPackageError(f"{what}: payload file {path} is not in the header")
            fx = entry.index
            if size != expected[fx]:
                raise CorruptPackageError(
                    f"{what}: payload has {size} bytes for {path}, the header says {expected[fx]}"
                )
        else:
            raise CorruptPackageError(
                f"{what}: bad cpio magic {entry_magic!r} at payload byte {stream.pos - 6}"
            )
        if fx in seen:
            raise CorruptPackageError(f"{what}: {entries[fx].path} appears twice in the payload")
        seen.add(fx)
        entry = entries[fx]
        if size and entry.type is EntryType.FILE:
            flush_literal()
            file_hash = new_hash(entry.digest_algo) if check_files and entry.digest else None
            stream.copy_to(out_fd, next_data, size, file_hash)
            if file_hash is not None:
                file_checks.append((entry, file_hash))
            records.append(Record(RecordKind.DATA, fx, next_data, size))
            next_data = align_up(next_data + size, block_size)
            data_bytes += size
        elif size:
            literal += stream.read(size)

    flush_literal()
    missing = [e.path for e in entries if not e.ghost and e.index not in seen]
    if missing:
        raise CorruptPackageError(f"{what}: {missing[0]} is in the header but not in the payload")
    prefetch.close()
    raw.drain()
    background.close()  # every hash update and write is done after this
    for label, h, want in compressed_checks + uncompressed_checks:
        if h.hexdigest() != want:
            raise CorruptPackageError(f"{what}: {label} mismatch (the package is corrupt)")
    for entry, h in file_checks:
        if h.hexdigest() != entry.digest:
            raise CorruptPackageError(f"{what}: {entry.path} does not match its digest")

    needed = Index.needed_size(len(records), len(literals))
    if header_end + needed > data_offset:
        raise _IndexTooSmall(align_up(header_end + needed, block_size))
    index = Index(
        block_size=block_size,
        index_start=header_end,
        data_offset=data_offset,
        data_size=next_data - data_offset,
        stream_size=stream.pos,
        records=tuple(records),
        literals=bytes(literals),
    )
    return index, data_bytes


def transcode(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    block_size: int = layout.DEFAULT_BLOCK_SIZE,
    progress: Progress | None = None,
    checksum: bool = True,
    fsync: bool = True,
) -> TranscodeResult:
    """Transcode the RPM ``src`` into the extents RPM ``dst``.

    The original is checked first (header digests, payload digests); ``dst``
    appears only when complete (written, fsynced unless ``fsync=False``, renamed),
    and nothing is left behind on failure. With ``checksum=False`` the output is
    not read back and the result's ``sha256`` is empty.
    """

    src_path, dst_path = Path(src), Path(dst)
    layout.check_block_size(block_size)
    with open(src_path, "rb", buffering=0) as f:
        try:
            prefix = read_prefix(f)
        except FormatError as e:
            raise FormatError(f"{src_path}: {e}") from e
        except UnsupportedPackageError as e:
            raise UnsupportedPackageError(f"{src_path}: {e}") from e
        fmt = prefix.header.string(Tag.PAYLOADFORMAT, "cpio")
        if fmt not in ("cpio", "drpm"):
            raise UnsupportedPackageError(f"{src_path}: payload format {fmt!r} is not cpio")
        if fmt == "drpm":
            raise UnsupportedPackageError(f"{src_path}: delta RPMs are not supported")
        try:
            check_header(src_path, prefix.signature, None)
        except Error as e:
            raise CorruptPackageError(str(e)) from e
        try:
            entries = header_files(prefix.header)
        except FormatError as e:
            raise FormatError(f"{src_path}: {e}") from e

        data_offset = align_up(prefix.header_end + _estimate_index(entries), block_size)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(2):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dst_path.name}.", suffix=".tmp", dir=dst_path.parent)
            try:
                try:
                    index, data_bytes = _transcode_into(
                        src_path, f, fd, prefix, entries, block_size, data_offset, progress
                    )
                except _IndexTooSmall as e:
                    data_offset = e.needed
                    continue
                os.pwrite(fd, prefix.raw, 0)
                os.pwrite(fd, index.pack(), index.index_start)
                os.ftruncate(fd, index.file_size)
                os.fchmod(fd, 0o644)
                if fsync:
                    os.fsync(fd)
                digest = hashlib.sha256()
                if checksum:
                    with open(fd, "rb", closefd=False) as out:
                        out.seek(0)
                        while chunk := out.read(CHUNK):
                            digest.update(chunk)
                os.rename(tmp_name, dst_path)
                tmp_name = ""
            finally:
                os.close(fd)
                if tmp_name:
                    os.unlink(tmp_name)
            break
        else:
            raise AssertionError("index size estimate failed twice")

    nevra, epoch, name, version, release, arch = nevra_of(prefix.header)
    return TranscodeResult(
        nevra=nevra, name=name, epoch=epoch, version=version, release=release, arch=arch,
        block_size=block_size, files=len(entries), data_bytes=data_bytes, size=index.file_size,
        header_sha256=hashlib.sha256(prefix.raw).hexdigest(), sha256=digest.hexdigest() if checksum else "",
    )
