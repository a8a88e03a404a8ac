"""A published output directory reached through the filesystem (a path, file://, a USB stick)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from deploy.sources.base import (
    ByteCounter,
    FetchJob,
    FetchStats,
    ProgressFn,
    copy_file,
    decompress_zstd,
)
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
        try:
            data = self.manifest_path.read_bytes()
        except OSError as e:
            raise ManifestError(f"{self.manifest_path}: cannot read: {e.strerror}") from e
        sig = self.manifest_path.with_name(SIGNATURE)
        return data, sig.read_bytes() if sig.is_file() else None

    def _resolve(self, location: str) -> Path:
        return Path(os.path.normpath(self.manifest_path.parent / location))

    def package_url(self, ref: ManifestPackage) -> str:
        return os.fspath(self._resolve(ref.location))

    def fetch(self, jobs: Sequence[FetchJob], progress: ProgressFn | None) -> FetchStats:
        counter = ByteCounter(sum(j.ref.size for j in jobs), progress)
        for job in jobs:
            src = self._resolve(job.ref.location)
            try:
                if src.is_file():
                    copy_file(src, job.dest)
                elif job.ref.zstd is not None and self._resolve(job.ref.zstd.location).is_file():
                    decompress_zstd(self._resolve(job.ref.zstd.location), job.dest, job.ref.nvra)
                else:
                    raise DeployFetchError(f"{job.ref.nvra}: {src}: no such file")
            except OSError as e:
                raise DeployFetchError(f"{job.ref.nvra}: cannot copy {src}: {e.strerror}") from e
            counter.add(job.ref.size)
            checkpoint("fetched package")
        return FetchStats(packages=len(jobs), transferred=counter.done)
