"""The content-addressed pool of extents RPMs shared by every image version in an output.

An entry is named by the sha256 of its own bytes, so it is written once and never
rewritten: a second transcode of the same original finds the entry in place. Each
entry has two zstd copies beside it for HTTP clients: `….rpm.zst`, one zstd stream
(the fewest bytes for a client that has no older version), and `….rpm.seek.zst`, the
seekable form (rpmextents.seekable) an updating client fetches single files' frames of.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from imagespec.published import POOL, pool_path, seekable_path, zstd_path
from imagespec.relocation import outside_usr
from rpmextents import ExtentsPackage, seekable
from rpmextents.accounts import accounts_without_sysusers
from rpmextents.errors import ExtentsError, FormatError
from rpmextents.transcode import transcode
from solver.confine import FILE_MODE, Output
from solver.errors import ComposeFetchError, PublishError

ZSTD_LEVEL = 19


@dataclass(frozen=True)
class PoolEntry:
    """An extents RPM in the pool and its zstd copy; paths are relative to the output root."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    relpath: str
    sha256: str
    size: int
    header_sha256: str
    block_size: int
    zstd_relpath: str
    zstd_sha256: str
    zstd_size: int
    seekable_relpath: str
    seekable_sha256: str
    seekable_size: int
    table_size: int
    table_sha256: str


@dataclass(frozen=True)
class PackageNotes:
    """What the curation report needs from one extents RPM."""

    scriptlets: bool
    triggers: bool
    outside_usr: tuple[str, ...]
    accounts_by_scriptlet: bool = False  # creates accounts in a scriptlet, ships no sysusers.d


class PackagePool:
    """OUTPUT/pool: `<sha[:2]>/<sha256>-<name>-<version>-<release>.<arch>.rpm` (+ `.zst`, `.seek.zst`)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.root = output / "pool"
        self.scratch = self.root / ".tmp"
        self.out: Output | None = None  # the confined output, set by ImageStore.locked
        self.created: list[str] = []  # pool files this process renamed into place
        self.zstd_level = ZSTD_LEVEL  # of the zstd copies it makes

    def _confined(self) -> Output:
        assert self.out is not None, "PackagePool written outside ImageStore.locked()"
        return self.out

    def _install(self, staged: Path, rel: str) -> None:
        """Rename a staged file to `rel` (0644, its directory made 0755) unless it is there."""
        out = self._confined()
        out.makedirs(os.path.dirname(rel))
        if out.exists(rel):
            return
        os.chmod(staged, FILE_MODE)
        out.replace(os.path.relpath(staged, self.output), rel)
        self.created.append(rel)

    def add(self, original: Path, label: str, *, block_size: int,
            progress: Callable[[int, int], None] | None = None) -> PoolEntry:
        """Transcode an original RPM into the pool (a no-op for bytes already there)."""
        self._confined().makedirs("pool/.tmp")
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            staged = Path(tmp) / "package.rpm"
            try:
                result = transcode(original, staged, block_size=block_size, progress=progress)
            except ExtentsError as e:
                raise ComposeFetchError(f"{label}: cannot transcode: {e}") from e
            rel = pool_path(result.sha256, f"{result.name}-{result.version}-{result.release}"
                                           f".{result.arch}")
            self._install(staged, rel)
            zstd_sha256, zstd_size = self._zstd_copy(rel, Path(tmp))
            seek_sha256, seek_size, table_size, table_sha256 = self._seekable_copy(rel, Path(tmp))
        return PoolEntry(
            name=result.name, epoch=result.epoch, version=result.version,
            release=result.release, arch=result.arch, relpath=rel, sha256=result.sha256,
            size=result.size, header_sha256=result.header_sha256, block_size=result.block_size,
            zstd_relpath=zstd_path(rel), zstd_sha256=zstd_sha256, zstd_size=zstd_size,
            seekable_relpath=seekable_path(rel), seekable_sha256=seek_sha256,
            seekable_size=seek_size, table_size=table_size, table_sha256=table_sha256,
        )

    def _zstd_copy(self, rel: str, tmp: Path) -> tuple[str, int]:
        """The whole-stream zstd copy beside a pool entry (made unless there): sha256, size."""
        out = self._confined()
        if not out.exists(zstd_path(rel)):
            staged = tmp / "package.rpm.zst"
            compressor = zstandard.ZstdCompressor(level=self.zstd_level, threads=-1)
            with os.fdopen(out.open(rel, os.O_RDONLY), "rb") as src, open(staged, "wb") as dst:
                compressor.copy_stream(src, dst, size=os.fstat(src.fileno()).st_size)
                dst.flush()
                os.fsync(dst.fileno())  # as transcode does: a renamed pool file is complete
            self._install(staged, zstd_path(rel))
        return self._digest(zstd_path(rel))

    def _seekable_copy(self, rel: str, tmp: Path) -> tuple[str, int, int, str]:
        """The seekable zstd form beside a pool entry (made unless a valid one is there):
        its sha256 and size, and its frame table's size and sha256."""
        out = self._confined()
        with os.fdopen(out.open(rel, os.O_RDONLY), "rb") as src:
            size = os.fstat(src.fileno()).st_size
        if out.exists(seekable_path(rel)):
            try:
                return self._seekable_facts(rel, size)
            except FormatError:
                pass  # not a seekable form of this entry: made again
        staged = tmp / "package.rpm.seek.zst"
        with open(staged, "wb") as dst:
            seekable.compress(self.output / rel, dst, level=ZSTD_LEVEL)
            dst.flush()
            os.fsync(dst.fileno())
        self._install(staged, seekable_path(rel))
        return self._seekable_facts(rel, size)

    def _seekable_facts(self, rel: str, size: int) -> tuple[str, int, int, str]:
        with os.fdopen(self._confined().open(seekable_path(rel), os.O_RDONLY), "rb") as f:
            _, table = seekable.read_table(f, size)
        return (*self._digest(seekable_path(rel)), len(table), hashlib.sha256(table).hexdigest())

    def _digest(self, rel: str) -> tuple[str, int]:
        h = hashlib.sha256()
        with os.fdopen(self._confined().open(rel, os.O_RDONLY), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest(), size

    def has(self, relpath: str) -> bool:
        return all((self.output / p).is_file()
                   for p in (relpath, zstd_path(relpath), seekable_path(relpath)))

    def notes(self, relpath: str) -> PackageNotes:
        """Scriptlets, triggers and files outside /usr of a pool entry."""
        path = self.output / relpath
        try:
            with ExtentsPackage.open(path) as pkg:
                entries = pkg.entries()
                outside = tuple(e.path for e in entries if outside_usr(e.path))
                return PackageNotes(pkg.has_scriptlets, pkg.has_triggers, outside,
                                    accounts_without_sysusers(pkg.header, entries))
        except ExtentsError as e:
            raise PublishError(f"{os.fspath(path)}: unreadable pool entry: {e}") from e

    def entries(self) -> Iterator[str]:
        """Relative paths of every file in the pool, `.zst` copies included."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.name.startswith(".") or not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                yield f"{POOL}/{sub.name}/{f.name}"
