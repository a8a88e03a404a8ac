"""A published output directory reached through the filesystem (a path, file://, a USB stick).

Whoever wrote the directory is not trusted more than a web server: the manifest and its
signature are read up to MANIFEST_LIMIT and SIGNATURE_LIMIT; a package is opened beneath
the published directory its location climbs to, following no symlink out of it, and
refused unless it is a regular file of the size the manifest states, before any copy.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from deploy.sources.base import (
    MANIFEST_LIMIT,
    SIGNATURE_LIMIT,
    ByteCounter,
    FetchJob,
    FetchStats,
    ProgressFn,
    copy_open_file,
    decompress_zstd,
    read_limited,
)
from host.kernel import Resolve, openat2
from imagespec.errors import ManifestError
from imagespec.manifest import ManifestPackage
from imagespec.published import IMAGES, LATEST, MANIFEST, SIGNATURE


def find_manifest(path: Path) -> Path:
    """The manifest a path names: a manifest file, a version directory, an image directory
    (its `latest`), or an output directory holding exactly one image."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ManifestError(f"{path}: no such file or directory")
    for candidate in (path / MANIFEST, path / LATEST / MANIFEST):
        if candidate.is_file():
            return candidate
    images = path / IMAGES
    if images.is_dir():
        found = sorted(p for p in images.iterdir() if (p / LATEST / MANIFEST).is_file())
        if len(found) == 1:
            return found[0] / LATEST / MANIFEST
        if found:
            names = ", ".join(p.name for p in found)
            raise ManifestError(f"{path}: holds several images ({names}); name one of them")
    raise ManifestError(f"{path}: no {MANIFEST} found in this directory")


class LocalSource:
    """Packages copied (reflinked when on the same btrfs) from a directory tree."""

    def __init__(self, path: Path) -> None:
        self.manifest_path = Path(os.path.abspath(find_manifest(path)))

    @property
    def manifest_location(self) -> str:
        return os.fspath(self.manifest_path)

    def fetch_manifest(self) -> tuple[bytes, bytes | None]:
        data = read_limited(self.manifest_path, MANIFEST_LIMIT, "manifest")
        sig = self.manifest_path.with_name(SIGNATURE)
        return data, read_limited(sig, SIGNATURE_LIMIT, "signature") if sig.is_file() else None

    def _resolve(self, location: str) -> Path:
        return Path(os.path.normpath(self.manifest_path.parent / location))

    def package_url(self, ref: ManifestPackage) -> str:
        return os.fspath(self._resolve(ref.location))

    def _open(self, location: str, size: int, what: str) -> BinaryIO | None:
        """The file at location, opened beneath the directory the location climbs to
        (its `..` steps, taken from the manifest's directory); None if it does not exist."""
        rel = posixpath.normpath(location)
        ups = 0
        while rel == ".." or rel.startswith("../"):
            ups, rel = ups + 1, rel[3:]
        root = self.manifest_path.parent
        if posixpath.isabs(rel) or ups >= len(root.parts):
            raise DeployFetchError(f"{what}: location {location!r} leaves the published directory")
        for _ in range(ups):
            root = root.parent
        try:
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = openat2(dir_fd, rel, os.O_RDONLY, Resolve.BENEATH | Resolve.NO_MAGICLINKS)
            finally:
                os.close(dir_fd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            if e.errno in (errno.EXDEV, errno.ELOOP):
                raise DeployFetchError(f"{what}: {root / rel}: leads outside {root}") from e
            raise DeployFetchError(f"{what}: cannot open {root / rel}: {e.strerror}") from e
        f = os.fdopen(fd, "rb")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            f.close()
            kind = f"{st.st_size} bytes" if stat.S_ISREG(st.st_mode) else "not a regular file"
            raise DeployFetchError(f"{what}: {root / rel}: {kind}, the manifest states {size} bytes")
        return f

    def _fetch_one(self, job: FetchJob) -> None:
        ref = job.ref
        f = self._open(ref.location, ref.size, ref.nvra)
        if f is not None:
            with f:
                copy_open_file(f, job.dest, ref.size)
            return
        if ref.zstd is not None:
            z = self._open(ref.zstd.location, ref.zstd.size, ref.nvra)
            if z is not None:
                with z:
                    decompress_zstd(z, job.dest, ref.nvra, ref.size)
                return
        raise DeployFetchError(f"{ref.nvra}: {self._resolve(ref.location)}: no such file")

    def fetch(self, jobs: Sequence[FetchJob], progress: ProgressFn | None) -> FetchStats:
        counter = ByteCounter(sum(j.ref.size for j in jobs), progress)
        for job in jobs:
            try:
                self._fetch_one(job)
            except OSError as e:
                raise DeployFetchError(f"{job.ref.nvra}: cannot copy {self._resolve(job.ref.location)}: "
                                 f"{e.strerror}") from e
            counter.add(job.ref.size)
            checkpoint("fetched package")
        return FetchStats(packages=len(jobs), transferred=counter.done)
