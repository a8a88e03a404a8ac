"""What every transport provides, and the pieces they share."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deploy.errors import DeployFetchError
from imagespec.manifest import ManifestPackage

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class FetchJob:
    """Fetch ref's extents RPM into dest; basis, if set, is an older version for delta transfer."""

    ref: ManifestPackage
    dest: Path
    basis: Path | None = None


@dataclass(frozen=True)
class FetchStats:
    packages: int = 0
    transferred: int = 0  # bytes that crossed the wire (compressed or literal rsync data)


class Source(Protocol):
    """Where an image version comes from: a manifest, its signature and its packages."""

    @property
    def manifest_location(self) -> str:
        """The manifest's path or URL, as shown to the user and kept in the state."""
        ...

    def fetch_manifest(self) -> tuple[bytes, bytes | None]:
        """The manifest bytes and its detached signature (None when there is none)."""
        ...

    def package_url(self, ref: ManifestPackage) -> str:
        """Absolute location of ref's extents RPM."""
        ...

    def fetch(self, jobs: Sequence[FetchJob], progress: ProgressFn | None) -> FetchStats:
        """Fetch every job's package to its dest (complete files only; partial data elsewhere)."""
        ...


class ByteCounter:
    """Thread-safe running total for a progress callback."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._progress is not None:
                self._progress(self.done, self.total)


def sha256_file(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def decompress_zstd(src: Path, dst: Path, what: str) -> None:
    """Decompress src into dst (via a temp name, so dst is complete or absent)."""
    import zstandard

    tmp = dst.with_name(dst.name + ".unzst")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            zstandard.ZstdDecompressor().copy_stream(fin, fout)
    except zstandard.ZstdError as e:
        tmp.unlink(missing_ok=True)
        raise DeployFetchError(f"{what}: cannot decompress {src.name}: {e}") from e
    os.rename(tmp, dst)


def copy_file(src: Path, dst: Path) -> None:
    """Copy src to dst, sharing extents when the kernel can (same btrfs: a reflink)."""
    tmp = dst.with_name(dst.name + ".copy")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        remaining = os.fstat(fin.fileno()).st_size
        try:
            while remaining > 0:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), remaining)
                if n == 0:
                    break
                remaining -= n
        except OSError:
            # Older kernels refuse cross-filesystem copy_file_range; copy plainly.
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
    os.rename(tmp, dst)
