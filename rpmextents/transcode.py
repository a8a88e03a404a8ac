"""Transcoding an RPM into an extents RPM: check the original, split its payload, write the result."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from host import digest as _digest
from rpmextents.cpio import IndexTooSmall, PayloadSplitter, PayloadStream, estimate_index
from rpmextents.errors import (
    CorruptPackageError,
    ExtentsError,
    FormatError,
    UnsupportedPackageError,
)
from rpmextents.files import FileList, header_files
from rpmextents.header import HASH_ALGOS, PackagePrefix, SigTag, Tag, read_prefix
from rpmextents.index import DEFAULT_BLOCK_SIZE, Index, align_up, check_block_size
from rpmextents.keyring import check_header
from rpmextents.nevra import nevra_of
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

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TranscodeResult:
    """One package transcoded: its identity, the extents RPM written, and their sizes."""

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



# (what, hash object, expected hex digest)
_Check = tuple[str, Any, str]


@dataclass
class _DigestChecks:
    """The digests that prove the payload: of the compressed bytes, or of the uncompressed ones."""

    compressed: list[_Check] = field(default_factory=list)
    uncompressed: list[_Check] = field(default_factory=list)

    @classmethod
    def of(cls, prefix: PackagePrefix) -> _DigestChecks:
        header = prefix.header
        checks = cls()
        algo_number = header.number(Tag.PAYLOADDIGESTALGO) or 8
        algo = HASH_ALGOS.get(algo_number)
        if algo is None:
            raise UnsupportedPackageError(f"unknown payload digest algorithm {algo_number}")
        payload_digest = header.strings(Tag.PAYLOADDIGEST)
        if payload_digest:
            checks.compressed.append(("payload digest", new_hash(algo), payload_digest[0]))
        alt = header.strings(Tag.PAYLOADDIGESTALT)
        # A matching compressed digest already proves the payload; the uncompressed
        # one is then checked by verify() on the extents file instead.
        if alt and not payload_digest:
            checks.uncompressed.append(("uncompressed payload digest", new_hash(algo), alt[0]))
        md5 = prefix.signature.binary(SigTag.MD5)
        if not payload_digest and md5 is not None:
            h = new_hash("md5")
            h.update(prefix.header.blob)
            checks.compressed.append(("header+payload MD5 digest", h, md5.hex()))
        return checks

    @property
    def per_file(self) -> bool:
        """Without any payload digest, each file is checked against its header digest instead."""
        return not self.compressed and not self.uncompressed

    def check(self, what: str) -> None:
        for label, h, want in self.compressed + self.uncompressed:
            if h.hexdigest() != want:
                raise CorruptPackageError(f"{what}: {label} mismatch (the package is corrupt)")


def _transcode_into(
    src: Path, f: BinaryIO, out_fd: int, prefix: PackagePrefix, entries: FileList,
    block_size: int, data_offset: int, progress: Progress | None,
) -> tuple[Index, int]:
    """Split the payload of the open original f into out_fd; the index and the data bytes."""
    what = os.fspath(src)
    header_end = prefix.header_end
    checks = _DigestChecks.of(prefix)
    f.seek(header_end)
    magic = f.read(6)
    f.seek(header_end)
    if not magic:
        raise CorruptPackageError(f"{what}: the payload is missing (the file ends after the header)")
    total = os.fstat(f.fileno()).st_size - header_end

    with contextlib.ExitStack() as stack:
        background = Background()

        def close_background() -> None:
            # On an error the one that stopped parsing is reported, not a later one from the worker.
            with contextlib.suppress(Exception):
                background.close()

        stack.callback(close_background)
        raw = HashingReader(f, [h for _, h, _ in checks.compressed], total, progress, background)
        prefetch = Prefetch(open_payload(raw, sniff(magic)))
        stack.callback(prefetch.close)
        stream = PayloadStream(prefetch, [h for _, h, _ in checks.uncompressed], what, background)
        splitter = PayloadSplitter(what, stream, entries, out_fd, block_size, data_offset,
                                   checks.per_file)
        splitter.split()
        prefetch.close()
        raw.drain()
        background.close()  # every hash update and write is done after this
        checks.check(what)
        splitter.check_file_digests()
        return splitter.index(header_end), splitter.data_bytes


def _read_original(src: Path, f: BinaryIO) -> tuple[PackagePrefix, FileList]:
    """The original's lead, headers and file list, its header digests checked by rpm."""
    try:
        prefix = read_prefix(f)
    except FormatError as e:
        raise FormatError(f"{src}: {e}") from e
    except UnsupportedPackageError as e:
        raise UnsupportedPackageError(f"{src}: {e}") from e
    fmt = prefix.header.string(Tag.PAYLOADFORMAT, "cpio")
    if fmt not in ("cpio", "drpm"):
        raise UnsupportedPackageError(f"{src}: payload format {fmt!r} is not cpio")
    if fmt == "drpm":
        raise UnsupportedPackageError(f"{src}: delta RPMs are not supported")
    try:
        check_header(src, prefix.signature, None)
    except ExtentsError as e:
        raise CorruptPackageError(str(e)) from e
    try:
        return prefix, header_files(prefix.header)
    except FormatError as e:
        raise FormatError(f"{src}: {e}") from e


def _finish(fd: int, prefix: PackagePrefix, index: Index, fsync: bool, checksum: bool) -> str:
    """Write the headers and the index around the data; the sha256 of the whole (or "")."""
    os.pwrite(fd, prefix.raw, 0)
    offset = index.index_start
    for piece in index.pieces():
        pwrite_all(fd, piece, offset)
        offset += len(piece)
    os.ftruncate(fd, index.file_size)
    os.fchmod(fd, 0o644)
    if fsync:
        os.fsync(fd)
    if not checksum:
        return ""
    digest = _digest.new("sha256", index.file_size)
    with open(fd, "rb", closefd=False) as out:
        out.seek(0)
        while chunk := out.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def transcode(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
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
    check_block_size(block_size)
    with open(src_path, "rb", buffering=0) as f:
        prefix, entries = _read_original(src_path, f)
        data_offset = align_up(prefix.header_end + estimate_index(entries), block_size)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(2):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dst_path.name}.", suffix=".tmp", dir=dst_path.parent)
            try:
                try:
                    index, data_bytes = _transcode_into(
                        src_path, f, fd, prefix, entries, block_size, data_offset, progress
                    )
                except IndexTooSmall as e:
                    data_offset = e.needed
                    continue
                sha256 = _finish(fd, prefix, index, fsync, checksum)
                os.rename(tmp_name, dst_path)
                tmp_name = ""
            finally:
                os.close(fd)
                if tmp_name:
                    os.unlink(tmp_name)
            break
        else:
            raise AssertionError("index size estimate failed twice")

    ident = nevra_of(prefix.header)
    return TranscodeResult(
        nevra=str(ident), name=ident.name, epoch=ident.epoch, version=ident.version,
        release=ident.release, arch=ident.arch, block_size=block_size, files=len(entries),
        data_bytes=data_bytes, size=index.file_size,
        header_sha256=prefix.sha256(), sha256=sha256,
    )
