"""The package store: verified extents RPMs on the deployments' filesystem, by sha256.

A package enters the store only after it matched its manifest entry and verified
against the trusted keys; its files whose content is already in the store are then
deduplicated against it (FIDEDUPERANGE), so an update stores only changed files.
Entries are read-only and never rewritten; a new entry appears by rename.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import PackageError
from deploy.faults import checkpoint
from deploy.manifest import PackageRef
from deploy.sources.base import sha256_file
from rpmextents import Entry, ExtentsPackage, Keyring, kernel
from rpmextents.errors import Error as FormatFamilyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredExtent:
    path: Path
    offset: int
    length: int


class Store:
    """Content-addressed extents RPMs under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[tuple[str, str], StoredExtent] | None = None

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.rpm"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def __iter__(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir():
                for p in sorted(sub.glob("*.rpm")):
                    yield p.stem

    def remove(self, sha256: str) -> int:
        """Delete one entry; returns its size."""
        path = self.path(sha256)
        size = path.stat().st_size
        path.unlink()
        self._index = None  # it may point into the removed entry
        return size

    def _content_index(self) -> dict[tuple[str, str], StoredExtent]:
        """Every stored file's data by (digest algorithm, digest); read once, then kept up to date."""
        if self._index is None:
            self._index = {}
            for sha in self:
                path = self.path(sha)
                try:
                    with ExtentsPackage.open(path) as pkg:
                        self._index_entries(path, pkg.entries())
                except FormatFamilyError as e:
                    log.warning("%s: skipped for deduplication: %s", path, e)
        return self._index

    def _index_entries(self, path: Path, entries: list[Entry]) -> None:
        assert self._index is not None
        for e in entries:
            if e.extent is not None and e.digest:
                self._index.setdefault(
                    (e.digest_algo, e.digest), StoredExtent(path, e.extent.offset, e.extent.length)
                )

    def _dedupe(self, pkg: ExtentsPackage, fd: int) -> int:
        index = self._content_index()
        deduped = 0
        seen: set[int] = set()
        for e in pkg.entries():
            if e.extent is None or not e.digest or e.extent.offset in seen:
                continue
            seen.add(e.extent.offset)
            found = index.get((e.digest_algo, e.digest))
            if found is None or found.length != e.extent.length:
                continue
            length = (e.extent.length + pkg.block_size - 1) // pkg.block_size * pkg.block_size
            try:
                with open(found.path, "rb") as src:
                    deduped += kernel.dedupe_range(
                        src.fileno(), found.offset, length, fd, e.extent.offset
                    )
            except OSError as err:
                # Differing bytes (a digest collision or damaged padding) or no dedupe
                # support: keep the package's own copy.
                if err.errno not in (errno.EBADE, errno.EOPNOTSUPP, errno.EINVAL, errno.EXDEV):
                    raise
        return deduped

    def add(self, ref: PackageRef, fetched: Path, keyring: Keyring | None) -> int:
        """Verify a fetched package against ref and the keyring, dedupe it, move it in.

        Without a keyring the header signature is not required (digests are still checked).

        Returns the bytes deduplicated. A package that fails is deleted, not stored.
        """
        try:
            size = fetched.stat().st_size
            if size != ref.size:
                raise PackageError(
                    f"{ref.nevra}: size {size} differs from the manifest's {ref.size}"
                    " (corrupted in transit?)"
                )
            if sha256_file(fetched) != ref.sha256:
                raise PackageError(
                    f"{ref.nevra}: sha256 differs from the manifest's (corrupted in transit?)"
                )
            fd = os.open(fetched, os.O_RDWR)
            try:
                with ExtentsPackage.open(fetched) as pkg:
                    _check_identity(ref, pkg)
                    pkg.verify(keyring)
                    checkpoint("package verified")
                    deduped = self._dedupe(pkg, fd)
                    entries = pkg.entries()
                os.fchmod(fd, 0o444)
                os.fsync(fd)
            finally:
                os.close(fd)
        except FormatFamilyError as e:
            fetched.unlink(missing_ok=True)
            raise PackageError(f"{ref.nevra}: refused: {e}") from e
        except PackageError:
            fetched.unlink(missing_ok=True)
            raise
        dest = self.path(ref.sha256)
        dest.parent.mkdir(exist_ok=True)
        os.rename(fetched, dest)
        if self._index is not None:
            self._index_entries(dest, entries)
        checkpoint("package stored")
        return deduped


def _check_identity(ref: PackageRef, pkg: ExtentsPackage) -> None:
    if (pkg.name, pkg.version, pkg.release, pkg.arch) != (
        ref.name, ref.version, ref.release, ref.arch,
    ) or pkg.epoch != ref.epoch:
        raise PackageError(f"{ref.nevra}: the file holds {pkg.nevra}, not what the manifest names")
    if pkg.block_size != ref.block_size:
        raise PackageError(f"{ref.nevra}: block size {pkg.block_size}, manifest says {ref.block_size}")
    if hashlib.sha256(pkg.header_bytes()).hexdigest() != ref.header_sha256:
        raise PackageError(f"{ref.nevra}: header differs from the manifest's header_sha256")
