"""What every transport provides, and the pieces they share."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from deploy.errors import DeployFetchError
from host import files
from host.fetchlimits import DownloadError, Limits
from imagespec.errors import ManifestError
from imagespec.manifest import ManifestPackage

ProgressFn = Callable[[int, int], None]
# Read at most this much of a manifest and of its signature, whatever the transport: they
# are fetched before anything is verified. 16 MiB holds some 25,000 package entries; an
# armoured detached signature is about 1 KiB.
MANIFEST_LIMIT = 16 << 20
SIGNATURE_LIMIT = 64 << 10


@dataclass(frozen=True)
class FetchJob:
    """Fetch ref's extents RPM into dest; basis, if set, is an older version for delta transfer."""

    ref: ManifestPackage
    dest: Path
    basis: Path | None = None
    # Where the store holds file data by (digest algorithm, digest, length): lets an HTTP
    # source fetch only the files it lacks (deploy.rangefetch).
    have: Callable[[str, str, int], tuple[Path, int] | None] | None = None


@dataclass(frozen=True)
class FetchStats:
    """What a fetch brought: packages and bytes transferred."""

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
        self.files_done = 0
        self._progress = progress
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._progress is not None:
                self._progress(self.done, self.total)

    def file_done(self, files: int) -> None:
        """One more of `files` files is complete; shown by a progress bar that counts files."""
        with self._lock:
            self.files_done += 1
            show = getattr(self._progress, "files", None)
            if show is not None:
                show(self.files_done, files)


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the file at path, refused (ManifestError) when it holds more than limit."""
    try:
        return files.read_limited(path, limit)
    except files.ReadRefused as e:
        raise ManifestError(f"{what} {e}") from e
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from e


def decompress_zstd(fin: BinaryIO, dst: Path, what: str, size: int) -> None:
    """Decompress the zstd stream fin into dst (via a temp name, so dst is complete or
    absent); the result must be exactly `size` bytes, and no more is ever written."""
    import zstandard

    tmp = dst.with_name(dst.name + ".unzst")
    try:
        with zstandard.ZstdDecompressor().stream_reader(fin, closefd=False, read_across_frames=True) as reader, \
                open(tmp, "wb") as fout:
            left = size + 1
            while left and (chunk := reader.read(min(1 << 20, left))):
                fout.write(chunk)
                left -= len(chunk)
            written = fout.tell()
    except zstandard.ZstdError as e:
        tmp.unlink(missing_ok=True)
        raise DeployFetchError(f"{what}: cannot decompress its zstd copy: {e}") from e
    if written != size:
        tmp.unlink()
        got = "more than" if written > size else f"{written} bytes, not"
        raise DeployFetchError(f"{what}: its zstd copy decompresses to {got} the {size} bytes "
                         "the manifest states")
    os.rename(tmp, dst)


def copy_file(src: Path, dst: Path) -> None:
    """Copy src to dst, sharing extents when the kernel can (same btrfs: a reflink)."""
    with open(src, "rb") as fin:
        copy_open_file(fin, dst, os.fstat(fin.fileno()).st_size)


def copy_open_file(fin: BinaryIO, dst: Path, size: int) -> None:
    """Copy the first `size` bytes of fin to dst (via a temp name), reflinked when it can."""
    tmp = dst.with_name(dst.name + ".copy")
    with open(tmp, "wb") as fout:
        remaining = size
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
            remaining = size
            while remaining > 0 and (chunk := fin.read(min(1 << 20, remaining))):
                fout.write(chunk)
                remaining -= len(chunk)
    os.rename(tmp, dst)


def download_limits(limits: Limits | None) -> Limits:
    """The limits given, else those the environment sets (DeployFetchError on a bad value)."""
    if limits is not None:
        return limits
    try:
        return Limits.from_environment()
    except DownloadError as e:
        raise DeployFetchError(str(e)) from e
