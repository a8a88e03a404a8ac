"""Reading and verifying extents RPMs."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from host import digest
from rpmextents.errors import ExtentsError, FormatError, VerifyError
from rpmextents.files import Extent, FileList, header_files
from rpmextents.header import HASH_ALGOS, PackagePrefix, Tag, TagValue, read_prefix
from rpmextents.index import HEAD, Index, RecordKind, align_up, parse_head, parse_records
from rpmextents.index import parse as parse_index
from rpmextents.keyring import Keyring, check_header
from rpmextents.nevra import nevra_of

CHUNK = 1 << 20

SCRIPTLET_TAGS = (
    Tag.PREIN, Tag.POSTIN, Tag.PREUN, Tag.POSTUN, Tag.PRETRANS, Tag.POSTTRANS,
    Tag.PREINPROG, Tag.POSTINPROG, Tag.PREUNPROG, Tag.POSTUNPROG, Tag.PRETRANSPROG, Tag.POSTTRANSPROG,
)
TRIGGER_TAGS = (Tag.TRIGGERSCRIPTS, Tag.FILETRIGGERSCRIPTS, Tag.TRANSFILETRIGGERSCRIPTS)


@dataclass(frozen=True)
class VerifyReport:
    """What `pkg verify` found of one extents RPM: its identity, signature and payload checks."""

    path: str
    nevra: str
    method: str  # "payload-digest" or "file-digests"
    signature: str  # "verified" or "not checked"
    files: int
    data_bytes: int


class _FileReader:
    """A minimal binary reader over an fd (or over read(offset, n)), for read_prefix."""

    def __init__(self, fd: int, read: Callable[[int, int], bytes] | None = None) -> None:
        self._read = read if read is not None else (lambda offset, n: os.pread(fd, n, offset))
        self._pos = 0

    def read(self, n: int) -> bytes:
        data = self._read(self._pos, n)
        self._pos += len(data)
        return data

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence not in (os.SEEK_SET, os.SEEK_CUR):
            raise ValueError("seek from the end is not supported")
        self._pos = offset + (self._pos if whence == os.SEEK_CUR else 0)
        return self._pos


class _Sequential:
    """Reads consecutive byte runs of a file forward, a megabyte at a time."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd, self._offset = fd, offset
        self._buf = memoryview(b"")

    def take(self, n: int) -> bytes:
        if len(self._buf) < n:
            more = os.pread(self._fd, max(n - len(self._buf), 1 << 20), self._offset)
            self._offset += len(more)
            self._buf = memoryview(bytes(self._buf) + more)
            if len(self._buf) < n:
                raise FormatError(f"extents index literals run past the end of the file at {self._offset}")
        out, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return out


@dataclass(frozen=True)
class PackageIdentity:
    """What names an extents RPM and its layout, from its header and index head alone."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    nevra: str
    block_size: int
    header_sha256: str


def start_size(fd: int) -> tuple[int, PackagePrefix]:
    """(how many bytes of the extents RPM open as fd lie before its data: lead, headers and
    index; its lead, signature and header), the sizes taken from the headers and the index
    head. Nothing past them is checked: ExtentsPackage checks them all when it parses the bytes."""
    prefix = read_prefix(_FileReader(fd))  # type: ignore[arg-type]
    end = prefix.header_end
    return end + parse_head(os.pread(fd, HEAD.size, end), end, os.fstat(fd).st_size)[1], prefix


def read_identity(path: str | os.PathLike[str]) -> PackageIdentity:
    """The identity of the extents RPM at path, without reading its file entries (FormatError
    names the file); ExtentsPackage.open checks the rest."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        prefix = read_prefix(_FileReader(fd))  # type: ignore[arg-type]
        end = prefix.header_end
        block_size = parse_head(os.pread(fd, HEAD.size, end), end, os.fstat(fd).st_size)[0]
        ident = nevra_of(prefix.header)
    except ExtentsError as e:
        raise type(e)(f"{os.fspath(path)}: {e}") from e
    finally:
        os.close(fd)
    return PackageIdentity(ident.name, ident.epoch, ident.version, ident.release, ident.arch,
                           str(ident), block_size, prefix.sha256())


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class ExtentsPackage:
    """An open extents RPM: its header, file entries and data extents."""

    def __init__(self, path: Path, fd: int,
                 copied: tuple[Callable[[int, int], bytes], os.stat_result] | None = None,
                 whole_checked: bool = False) -> None:
        """The package open as fd; or, with copied (fd -1), closed and parsed from a copy of
        the file's bytes before its data (the lead to the end of the index), read(offset, n)
        as from the file, and the stat of the file they are a copy of (who gives them
        answers for their being that file's). whole_checked: the caller found the whole file
        to hash to what names it just now (a store entry it checked): the index's own digest,
        part of those bytes, is not worked out again (index.parse_records)."""
        self.path = path
        self._fd = fd
        self._index_digest = copied is not None or not whole_checked
        read: Callable[[int, int], bytes]
        if copied is None:
            st = os.fstat(fd)
            read = lambda offset, n: os.pread(fd, n, offset)  # noqa: E731
        else:
            read, st = copied
        self.size = st.st_size
        self._file = _identity(st)
        self.prefix = read_prefix(_FileReader(fd, read))  # type: ignore[arg-type]
        self.header = self.prefix.header
        start_at = self.prefix.header_end
        block_size, self._index_size, data_size, stream_size, *_ = parse_head(
            read(start_at, HEAD.size), start_at, self.size)
        # The records and literals (about 150 bytes a file) are read again when needed.
        self._index_head = Index(block_size, start_at, start_at + self._index_size, data_size,
                                 stream_size, b"", b"")
        self._data_bytes: int | None = None
        if copied is None:
            self._entries = header_files(self.header, self._records(read))
        else:
            # A copy's extents only ever point the content index at stored data, which
            # sharing checks again (deploy.layoutcache): its index is read and checked when
            # that first asks, and an update that fetches nothing never does.
            self._entries = header_files(self.header)
            self._entries.defer_extents(lambda: self._copied_records(read))
        self.ident = nevra_of(self.header)
        self.name, self.epoch, self.version = self.ident.name, self.ident.epoch, self.ident.version
        self.release, self.arch = self.ident.release, self.ident.arch
        self.nevra = str(self.ident)

    def _records(self, read: Callable[[int, int], bytes]) -> Iterator[tuple[int, int, int]]:
        """(file index, offset, length) of each data record, the whole index checked."""
        index, _ = parse_records(read, self.prefix.header_end, self.size, self._index_digest)
        if (index.block_size, index.data_offset) != (self.block_size, self.data_offset):
            raise FormatError("extents index head changed since it was read")
        self._data_bytes = sum(b for _, _, b in index.data_triples())
        return index.data_triples()

    def _copied_records(self, read: Callable[[int, int], bytes]) -> Iterator[tuple[int, int, int]]:
        try:
            return self._records(read)
        except OSError as e:
            raise FormatError(f"{self.path}: the copy of its index is gone: {e}") from e

    @property
    def data_bytes(self) -> int:
        """The bytes of file data in the payload (before block alignment)."""
        if self._data_bytes is None:
            self._entries.load_extents()  # a copy's index, read now
        assert self._data_bytes is not None
        return self._data_bytes

    @property
    def data_offset(self) -> int:
        """Where the data begins: the lead, headers and index lie before it."""
        return self._index_head.data_offset

    @classmethod
    def open(cls, path: str | os.PathLike[str], whole_checked: bool = False) -> ExtentsPackage:
        """Open and structurally check an extents RPM (FormatError names the file);
        whole_checked as for the constructor."""
        p = Path(path)
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(p, fd, whole_checked=whole_checked)
        except ExtentsError as e:
            os.close(fd)
            raise type(e)(f"{p}: {e}") from e
        except BaseException:
            os.close(fd)
            raise

    @property
    def file_identity(self) -> tuple[int, int, int, int]:
        """The file read, as it was then: its inode, size, and modification and change
        times in ns (deploy.layoutcache's identity)."""
        _, ino, size, mtime, ctime = self._file
        return ino, size, mtime, ctime

    def unchanged(self) -> bool:
        """Whether the file at path is still the one this was read from, unchanged since
        (the same inode, size, modification and change time)."""
        try:
            return _identity(os.stat(self.path)) == self._file
        except OSError:
            return False

    def opened_again(self) -> ExtentsPackage:
        """This package open again for its data, closed or not: the header and file list
        as read when the file at path is still the one they came from, else read anew."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            same = _identity(os.fstat(fd)) == self._file
        except BaseException:
            os.close(fd)
            raise
        if not same:
            os.close(fd)
            return type(self).open(self.path)
        again = copy.copy(self)  # header, file list and index are never changed: shared
        again._fd = fd
        return again

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ExtentsPackage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def fileno(self) -> int:
        return self._fd

    @property
    def block_size(self) -> int:
        return self._index_head.block_size

    @property
    def header_end(self) -> int:
        return self.prefix.header_end

    def header_bytes(self) -> bytes:
        """Lead, signature header and header: a file ``rpm -qp`` reads."""
        return self.prefix.raw

    @property
    def header_sha256(self) -> str:
        return self.prefix.sha256()

    def tag(self, tag: int) -> TagValue | None:
        return self.header.get(tag)

    @property
    def build_time(self) -> int | None:
        """The package's BUILDTIME (seconds since the epoch), when it has one."""
        return self.header.number(Tag.BUILDTIME)

    @property
    def has_scriptlets(self) -> bool:
        return any(t in self.header for t in SCRIPTLET_TAGS)

    @property
    def has_triggers(self) -> bool:
        return any(t in self.header for t in TRIGGER_TAGS)

    def entries(self) -> FileList:
        """The file list (immutable; an Entry is made per file as it is read)."""
        return self._entries

    def _read_index(self) -> Index:
        start = self.prefix.header_end
        return parse_index(os.pread(self._fd, self._index_size, start), start, self.size)

    def _read_records(self) -> tuple[Index, int]:
        """The index checked whole but without its literals, and where they start."""
        return parse_records(lambda offset, n: os.pread(self._fd, n, offset),
                             self.prefix.header_end, self.size)

    @property
    def index(self) -> Index:
        """The whole index, read and checked again from the file (its records and literals
        are not kept in memory)."""
        return self._read_index()

    def read_extent(self, extent: Extent) -> Iterator[bytes]:
        """The bytes of one extent, in chunks."""
        pos, end = extent.offset, extent.offset + extent.length
        while pos < end:
            chunk = os.pread(self._fd, min(CHUNK, end - pos), pos)
            if not chunk:
                raise FormatError(f"{self.path}: data at {pos} is past the end of the file")
            pos += len(chunk)
            yield chunk

    def _check_padding(self, start: int, end: int) -> None:
        if end > start and any(os.pread(self._fd, end - start, start)):
            raise VerifyError(f"{self.path}: padding at offset {start} is not zero (the data area was changed)")

    def verify(self, keyring: Keyring | None = None) -> VerifyReport:
        """Check the package against its signed header; raise VerifyError naming the failure.

        With PAYLOADDIGESTALT the uncompressed payload is rebuilt from the index
        and the data and compared with it; without, every regular file is
        compared with its FILEDIGESTS entry. Padding must be zero either way.
        """
        signature = check_header(self.path, self.prefix.signature, keyring)
        algo_number = self.header.number(Tag.PAYLOADDIGESTALGO) or 8
        algo = HASH_ALGOS.get(algo_number)
        alt = self.header.strings(Tag.PAYLOADDIGESTALT)
        block = self.block_size
        if alt and algo:
            index, literal_start = self._read_records()
            stream = digest.new(algo, index.stream_size)
            literals = _Sequential(self._fd, literal_start)
            for record in index.records:
                if record.kind is RecordKind.LITERAL:
                    stream.update(literals.take(record.b))
                else:
                    for chunk in self.read_extent(Extent(record.a, record.b)):
                        stream.update(chunk)
                    self._check_padding(record.a + record.b, align_up(record.a + record.b, block))
            if stream.hexdigest() != alt[0]:
                raise VerifyError(f"{self.path}: payload digest mismatch (data or index changed)")
            method = "payload-digest"
        else:
            checked: set[int] = set()
            for entry in self._entries:
                if entry.extent is None or entry.extent.offset in checked:
                    continue  # hardlinks share one extent: check it once
                checked.add(entry.extent.offset)
                if not entry.digest:
                    raise VerifyError(f"{self.path}: {entry.path} has no digest to check against")
                h = digest.new(entry.digest_algo, entry.extent.length)
                for chunk in self.read_extent(entry.extent):
                    h.update(chunk)
                if h.hexdigest() != entry.digest:
                    raise VerifyError(f"{self.path}: {entry.path} does not match its digest")
                end = entry.extent.offset + entry.extent.length
                self._check_padding(end, align_up(end, block))
            method = "file-digests"
        return VerifyReport(
            path=os.fspath(self.path), nevra=self.nevra, method=method, signature=signature,
            files=len(self._entries), data_bytes=self.data_bytes,
        )
