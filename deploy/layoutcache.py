"""A copy of the default deployment's store entries up to their data, read as one file.

An update reads the header and file list of every package of the old and the new image
(the plan, owner names, the package database check, set-id files, sysusers, the /etc merge
and the store's content index all go through deploy.store). Read from several hundred
store entries on a cold cache, that is most of an update's time; read from this one file,
it is a sequential read. TOP/@rpmimg/layout-cache holds, for each package of the default
deployment, the bytes of its store entry before its data (lead, signature header, header
and extents index) and the entry as fstat saw it when they were copied:

    "RPMIMGLC", u32 format 2
    entries to the end: sha256 of the store entry (32 bytes); its inode, size, mtime and
             ctime in ns (u64, u64, i64, i64); its header's sha256 (32 bytes);
             u32 length; the bytes
    CRC-32 of everything before it (u32)
    all little-endian

A copy stands for an entry only while the entry is the same file unchanged (inode, size,
mtime and ctime, as deploy.store already trusts the package it read last), and it is
parsed with the same strict checks as the entry itself (its extents index when first asked
for: rpmextents.package); the store then checks its header against the manifest as it would
the entry's, and reads the entry itself when that fails.
A copy never gives data to extract (deploy.store opens the entry for that): its extents only
point the content index at stored data, which sharing checks again. A file not as written
(truncated, changed, another format), not a regular file of this user writable only by
it, or of another filesystem (other inodes and times) stands for nothing: the entries are
read. What it does not cover, as with deploy.storemarks: a file forged by someone who can
already write TOP/@rpmimg as root.

The checksum is there for accidents (a file a crash cut short, a flipped bit), not for a
forger, who would be root and could write any checksum: so a CRC-32, computed in C at
gigabytes a second, rather than the sha256 of format 1 (an update hashed the 12.5 MB of the
benchmark image's cache twice, reading it and writing the next one, with CPython's own
sha256 at 230 MB/s: 0.11 s). What is trusted in a copy is checked as before: its header
against the manifest, its extents again when data is shared.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from host.digest import is_sha256_hex
from host.log import get as logger
from rpmextents.errors import ExtentsError
from rpmextents.package import start_size

if TYPE_CHECKING:
    from deploy.store import Store

log = logger(__name__)

MAGIC = b"RPMIMGLC"
FORMAT = 2
_HEAD = struct.Struct("<8sI")
_ENTRY = struct.Struct("<32sQQqq32sI")
_CHECKSUM = struct.Struct("<I")
MAX_BYTES = 4 << 30
MAX_START = 256 << 20  # bytes before the data of one entry
CHUNK = 1 << 18  # read at a time, into one buffer
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Identity = tuple[int, int, int, int]  # inode, size, mtime ns, ctime ns


def identity(st: os.stat_result) -> Identity:
    # Not the device: btrfs gives each mount its own, so it changes at every boot.
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class LayoutCache:
    """The copies a layout-cache file holds, read one at a time (the file stays open)."""

    def __init__(self, fd: int, entries: dict[str, tuple[Identity, str, int, int]]) -> None:
        self._fd = fd
        self._entries = entries  # sha256 -> (identity, header sha256, offset, length)

    @classmethod
    def load(cls, path: Path) -> LayoutCache | None:
        """The cache at path, or None (logged) when there is none to trust."""
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as e:
            if not isinstance(e, FileNotFoundError):
                log.debug("%s: not read: %s", path, e)
            return None
        try:
            entries = _check(fd)
        except (OSError, ValueError) as e:
            os.close(fd)
            log.warning("%s: ignored (%s); the store entries are read instead", path, e)
            return None
        return cls(fd, entries)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._entries

    def drop(self, sha256: str) -> bool:
        """Forget the copy of an entry; whether there was one."""
        return self._entries.pop(sha256, None) is not None

    def _found(self, sha256: str, now: os.stat_result) -> tuple[str, int, int] | None:
        found = self._entries.get(sha256)
        if found is None or self._fd < 0 or found[0] != identity(now):
            return None
        return found[1:]

    def reader(self, sha256: str, now: os.stat_result) -> Callable[[int, int], bytes] | None:
        """read(offset, n) of the copy of the entry sha256 (as from the entry's start) while
        the entry is the file it was copied from, unchanged (now: its stat); else None."""
        found = self._found(sha256, now)
        if found is None:
            return None
        _, base, length = found
        return lambda offset, n: self._pread(base + offset, max(0, min(n, length - offset)))

    def _pread(self, offset: int, n: int) -> bytes:
        """Bytes of the file, never of whatever file took its descriptor's number once
        closed (a package read from a copy may read its index later: rpmextents.package)."""
        if self._fd < 0:
            raise OSError(errno.EBADF, "the layout cache is closed")
        return os.pread(self._fd, n, offset)

    def copy(self, sha256: str, now: os.stat_result) -> tuple[int, str, Span] | None:
        """(length, header sha256 as recorded, its bytes a chunk at a time, as _chunks gives
        them) of the entry's copy, as reader() finds it."""
        found = self._found(sha256, now)
        if found is None:
            return None
        header_sha, base, length = found
        # The head as it lies before the copy in this file: _entries read these values from it.
        head = _ENTRY.pack(bytes.fromhex(sha256), *identity(now), bytes.fromhex(header_sha), length)
        return length, header_sha, Span(self._fd, base, length, head)


class Span:
    """length bytes of an open file from offset, a chunk at a time as _chunks gives them:
    a copy's bytes where they lie in the cache it was read from. save() copies a run of
    such copies that lie one after the other there, each behind the same entry head it
    writes, in one piece: an update's cache is mostly the previous one's runs of unchanged
    entries, and a read and a write for each of several hundred entries, each a wait for the
    GIL while the deploy works on, kept the copying thread busy 42 ms on the benchmark
    update (30 ms copied in runs)."""

    __slots__ = ("fd", "head", "length", "offset")

    def __init__(self, fd: int, offset: int, length: int, head: bytes) -> None:
        self.fd, self.offset, self.length, self.head = fd, offset, length, head

    def __iter__(self) -> Iterator[memoryview]:
        return _chunks(self.fd, self.offset, self.length)


def _chunks(fd: int, offset: int, length: int) -> Iterator[memoryview]:
    """length bytes of fd from offset, CHUNK at a time, read into one buffer: each chunk is
    valid only until the next is asked for (a megabyte read into a new bytes object each
    time left two alive at once, 2 MB of a 10,000-file deploy's peak)."""
    buf = bytearray(min(CHUNK, length))
    view = memoryview(buf)
    end = offset + length
    while offset < end:
        n = os.preadv(fd, [view[:min(len(buf), end - offset)]], offset)
        if not n:
            raise OSError(f"{length} bytes expected, the file is shorter")
        offset += n
        yield view[:n]


def _check(fd: int) -> dict[str, tuple[Identity, str, int, int]]:
    """The entries of the file open as fd, after its checksum and structure are checked."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ValueError("not a regular file of this user writable only by it")
    if not _HEAD.size + _CHECKSUM.size <= st.st_size <= MAX_BYTES:
        raise ValueError(f"{st.st_size} bytes")
    end = st.st_size - _CHECKSUM.size
    crc = 0
    for chunk in _chunks(fd, 0, end):
        crc = zlib.crc32(chunk, crc)
    if os.pread(fd, _CHECKSUM.size, end) != _CHECKSUM.pack(crc):
        raise ValueError("checksum mismatch: not as written")
    return _entries(fd, end)


def _entries(fd: int, end: int) -> dict[str, tuple[Identity, str, int, int]]:
    """The entries of a cache whose checksum lies at end, as its structure gives them (the
    checksum not checked: _check does)."""
    magic, version = _HEAD.unpack(os.pread(fd, _HEAD.size, 0))
    if magic != MAGIC or version != FORMAT:
        raise ValueError(f"not a layout cache of format {FORMAT}")
    entries = {}
    pos = _HEAD.size
    while pos < end:
        if pos + _ENTRY.size > end:
            raise ValueError("an entry runs past the end")
        sha, ino, size, mtime, ctime, header_sha, length = _ENTRY.unpack(os.pread(fd, _ENTRY.size, pos))
        pos += _ENTRY.size
        if length > MAX_START or pos + length > end:
            raise ValueError("an entry runs past the end")
        entries[sha.hex()] = ((ino, size, mtime, ctime), header_sha.hex(), pos, length)
        pos += length
    if pos != end:
        raise ValueError("bytes after the last entry")
    return entries


Copy = tuple[str, os.stat_result, str, int, Iterable[bytes | memoryview]]


def save(path: Path, copies: Iterable[Copy]) -> None:
    """Write a cache of copies (entry sha256, its stat, header sha256, the length of its
    bytes before its data, those bytes in chunks), one at a time, under a temporary name
    renamed over path. Not synced: a file a crash cut short is not as written, and stands
    for nothing. The caller holds the lock of the sysroot: the temporary files of killed
    runs are removed."""
    for left in path.parent.glob(f".{path.name}.tmp-*"):
        left.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            crc = 0

            def put(data: bytes | memoryview) -> None:
                nonlocal crc
                crc = zlib.crc32(data, crc)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]

            run: list[int] = []  # [fd, start, end]: whole entries of a cache still to copy

            def copy_run() -> None:
                if run:
                    source, start, end = run
                    run.clear()
                    copied = 0
                    for chunk in _chunks(source, start, end - start):
                        put(chunk)
                        copied += len(chunk)
                    if copied != end - start:
                        raise OSError(f"{end - start} bytes of a layout cache expected, {copied} read")

            put(_HEAD.pack(MAGIC, FORMAT))
            for sha, st, header_sha, length, chunks in copies:
                head = _ENTRY.pack(bytes.fromhex(sha), *identity(st), bytes.fromhex(header_sha), length)
                if isinstance(chunks, Span) and chunks.head == head:
                    # The entry as it lies in that cache, head and bytes: joined to the run.
                    if not (run and run[0] == chunks.fd and run[2] == chunks.offset - _ENTRY.size):
                        copy_run()
                        run[:] = [chunks.fd, chunks.offset - _ENTRY.size, 0]
                    run[2] = chunks.offset + length
                    continue
                copy_run()
                put(head)
                written = 0
                for chunk in chunks:
                    put(chunk)
                    written += len(chunk)
                if written != length:
                    raise OSError(f"{sha}: {written} bytes copied, not {length}")
            copy_run()
            put(_CHECKSUM.pack(crc))
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refresh(path: Path, store: Store, sha256s: Iterable[str], headers: Mapping[str, str] | None = None) -> bool:
    """Make the cache at path hold the copies of the store entries sha256s, as
    save(path, copies(store, sha256s, headers)) writes it; whether it was written. A cache that is
    that file already (intact, mode 0600, a copy of exactly those entries in that order, each
    recorded with the entry's inode, size and times as they are now, so each copy is what
    copies() would take from the entry) is left as it is: a full deploy of the packages the
    cache holds reads it once instead of every entry's start, and writes nothing."""
    shas = list(dict.fromkeys(sha256s))
    if _holds(path, store, shas):
        for left in path.parent.glob(f".{path.name}.tmp-*"):
            left.unlink(missing_ok=True)  # as save() removes them
        return False
    save(path, copies(store, shas, headers))
    return True


def _holds(path: Path, store: Store, shas: list[str]) -> bool:
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != 0o600 or not _HEAD.size + _CHECKSUM.size <= st.st_size <= MAX_BYTES:
            return False
        # What it holds first, read from its entry heads alone: a cache of other entries (an
        # update's) is not checksummed for nothing.
        if not _same(_entries(fd, st.st_size - _CHECKSUM.size), store, shas):
            return False
        return _same(_check(fd), store, shas)
    except (OSError, ValueError, struct.error):
        return False
    finally:
        os.close(fd)


def _same(entries: dict[str, tuple[Identity, str, int, int]], store: Store, shas: list[str]) -> bool:
    """Whether entries are a copy of each of shas in that order, recorded with its stat now."""
    if list(entries) != shas:
        return False
    for sha in shas:
        try:
            now = os.stat(store.path(sha), follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISREG(now.st_mode) or entries[sha][0] != identity(now):
            return False
    return True


def copies(store: Store, sha256s: Iterable[str], headers: Mapping[str, str] | None = None) -> Iterator[Copy]:
    """What save() takes for the store entries sha256s, one at a time: the copy the store
    read an entry from (store.layout_copy), else the entry's own bytes (an entry that is
    not an extents RPM is left out; one changed while it is copied is recorded as it was
    before, so its copy stands for nothing). headers: the header sha256 of entries the
    caller knows it of (checked against the entry this run), recorded as it is rather than
    hashed again: nothing is decided by a copy's recorded header digest (the store checks a
    copy's header against the manifest itself), and a full deploy of the benchmark corpus
    hashed 5.5 MB of headers here, which took it past host.digest's budget into libcrypto."""
    known = headers or {}
    for sha in dict.fromkeys(sha256s):
        fd = os.open(store.path(sha), _READ_FLAGS)
        try:
            st = os.fstat(fd)
            found: tuple[int, str, Iterable[bytes | memoryview]] | None = store.layout_copy(sha, st)
            if found is None:
                try:
                    length, prefix = start_size(fd)
                except ExtentsError as e:
                    log.debug("%s: not in the layout cache: %s", store.path(sha), e)
                    continue
                header_sha = known[sha] if is_sha256_hex(known.get(sha)) else prefix.sha256()
                found = length, header_sha, _chunks(fd, 0, length)
            yield sha, st, found[1], found[0], found[2]
        finally:
            os.close(fd)
