"""The store's deduplication index: file digest -> where the store holds that content.

Kept as sorted columns (a digest's first 8 bytes, its first 32, the algorithm, the
package, offset and length): about 60 bytes a file, not a dict entry and two objects.
Packages are added one at a time, each as a sorted chunk; chunks of similar size are
merged (as a log-structured merge tree does), so there are at most log2(files) of them
and a lookup is that many binary searches. When two stored files have the same digest
the one added first is found, as before.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from rpmextents.files import FileList

_WIDTH = 32  # digest bytes compared (sha512 is compared on its first 256 bits)


@dataclass(frozen=True)
class StoredExtent:
    """Where a stored file's data lies: its store entry, offset and length, and its digest."""

    path: Path
    offset: int
    length: int
    digest_algo: str


@dataclass
class _Chunk:
    """A sorted run of the deduplication index, as columns."""

    keys: array[int]  # first 8 bytes of the digest, ascending
    digests: bytearray  # _WIDTH bytes a row
    algos: bytearray  # index into DigestIndex.algos
    packages: array[int]  # index into DigestIndex.paths
    offsets: array[int]
    lengths: array[int]

    def __len__(self) -> int:
        return len(self.keys)

    def permute(self, order: array[int]) -> None:
        """Reorder the rows in place, a column at a time: each old column is freed as its
        reordered copy is made, so at most one column is held twice."""
        digests = bytearray()
        for i in order:
            digests += self.digests[i * _WIDTH : (i + 1) * _WIDTH]
        self.digests = digests
        self.keys = array("Q", (self.keys[i] for i in order))
        self.algos = bytearray(self.algos[i] for i in order)
        self.packages = array("I", (self.packages[i] for i in order))
        self.offsets = array("q", (self.offsets[i] for i in order))
        self.lengths = array("q", (self.lengths[i] for i in order))

    def extend(self, other: _Chunk) -> None:
        self.keys += other.keys
        self.digests += other.digests
        self.algos += other.algos
        self.packages += other.packages
        self.offsets += other.offsets
        self.lengths += other.lengths


def _empty() -> _Chunk:
    return _Chunk(array("Q"), bytearray(), bytearray(), array("I"), array("q"), array("q"))


def _raw(digest: str) -> bytes | None:
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    return raw[:_WIDTH].ljust(_WIDTH, b"\0") if len(raw) >= 8 else None


class DigestIndex:
    """Stored file content by (digest algorithm, digest)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.algos: list[str] = []
        self._chunks: list[_Chunk] = []
        # Rows added since the last lookup, in the order added: sorted into a chunk when a
        # lookup comes (the whole store is indexed once, then looked up; sorting it as one
        # chunk costs less than merging a chunk a package).
        self._pending = _empty()
        # Fetch threads look up while a package is added: chunks are merged and reordered
        # in place under this lock, and a lookup never sees one half reordered.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks) + len(self._pending)

    def add(self, path: Path, files: FileList) -> None:
        """Index the stored files of one package at path."""
        chunk = _empty()
        package = len(self.paths)
        self.paths.append(path)
        algo = self._algo(files.digest_algo)
        for i in range(len(files)):
            extent = files.extent(i)
            raw = _raw(files.digest(i)) if extent is not None else None
            if extent is None or raw is None:
                continue
            chunk.keys.append(int.from_bytes(raw[:8], "big"))
            chunk.digests += raw
            chunk.algos.append(algo)
            chunk.packages.append(package)
            chunk.offsets.append(extent.offset)
            chunk.lengths.append(extent.length)
        if len(chunk):
            with self._lock:
                self._pending.extend(chunk)

    def get(self, algo: str, digest: str) -> StoredExtent | None:
        """The first-added stored copy of content with this digest, or None."""
        raw = _raw(digest)
        if raw is None or algo not in self.algos:
            return None
        want_algo = self.algos.index(algo)
        key = int.from_bytes(raw[:8], "big")
        with self._lock:
            if len(self._pending):
                pending, self._pending = self._pending, _empty()
                _sort(pending)  # stable: of equal digests the one added first stays first
                self._push(pending)
            return self._find(key, want_algo, raw, algo)

    def _find(self, key: int, want_algo: int, raw: bytes, algo: str) -> StoredExtent | None:
        for chunk in self._chunks:  # oldest first
            i = bisect_left(chunk.keys, key)
            while i < len(chunk) and chunk.keys[i] == key:
                if chunk.algos[i] == want_algo and chunk.digests[i * _WIDTH : (i + 1) * _WIDTH] == raw:
                    return StoredExtent(self.paths[chunk.packages[i]], chunk.offsets[i],
                                        chunk.lengths[i], algo)
                i += 1
        return None

    def _algo(self, name: str) -> int:
        if name not in self.algos:
            self.algos.append(name)
        return self.algos.index(name)

    def _push(self, chunk: _Chunk) -> None:
        self._chunks.append(chunk)
        while len(self._chunks) > 1 and len(self._chunks[-1]) * 2 >= len(self._chunks[-2]):
            newer = self._chunks.pop()
            older = self._chunks.pop()
            older.extend(newer)
            del newer
            # Stable: of equal digests the older chunk's row stays first.
            _sort(older)
            self._chunks.append(older)


def _sort(chunk: _Chunk) -> None:
    """Sort the rows by key, stably. The order is kept as an array (4 bytes a row), not
    as the list of ints sorted() returns (36 bytes a row)."""
    order = array("I", sorted(range(len(chunk)), key=chunk.keys.__getitem__))
    chunk.permute(order)
