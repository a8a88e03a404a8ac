"""Downloads: parallel, retried, resumed with HTTP Range, bounded, checked against a checksum.

`file://` URLs are read in place (checked, never copied). A download goes to
`DEST.part` and is renamed to DEST only once its checksum matches, so DEST always
holds a verified file and an interrupted run resumes from the `.part` file.

Transfers go through host.http: a file is read up to the size the repository lists and
no further, or up to a fixed cap when no size is listed (`limit`, else DEFAULT_LIMIT);
each has a connect and idle timeout and an overall deadline (see host.http.Limits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from host.http import DownloadError, Limits, download_file
from solver.errors import ComposeFetchError

# Caps for files whose size nothing lists: anything not given a `limit` (a package listed
# with size 0 among them), and metadata files repomd.xml lists without a size. repomd.xml,
# its signature and keys have their own (solver.trust).
DEFAULT_LIMIT = 4 << 20
METADATA_LIMIT = 1 << 30

ByteCounter = Callable[[int], None]


# Checksum types a repository may use: collision-resistant ones, and weak ones that a
# definition must allow per repository (they would otherwise become the pool's reuse key).
STRONG_CHECKSUMS = frozenset({"sha224", "sha256", "sha384", "sha512"})
WEAK_CHECKSUMS = frozenset({"md5", "sha1"})


@dataclass(frozen=True)
class Checksum:
    """A repository checksum: hashlib algorithm name and hex digest."""

    algo: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algo}:{self.hex}"

    @property
    def weak(self) -> bool:
        return self.algo in WEAK_CHECKSUMS

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algo, sep, digest = text.partition(":")
        if not sep or not digest:
            raise ValueError(f"not an ALGO:HEX checksum: {text[:80]!r}")
        if algo not in STRONG_CHECKSUMS | WEAK_CHECKSUMS:
            raise ValueError(f"unsupported checksum type {algo[:40]!r}")
        digest = digest.lower()
        if len(digest) != hashlib.new(algo).digest_size * 2 or digest.strip("0123456789abcdef"):
            raise ValueError(f"not a {algo} digest: {digest[:80]!r}")
        return cls(algo, digest)


@dataclass(frozen=True)
class FetchItem:
    """One file to fetch; `label` names it in messages (a package NEVRA, a metadata type)."""

    url: str
    dest: Path
    checksum: Checksum | None
    label: str
    size: int | None = None  # the exact size, when the repository lists it
    limit: int | None = None  # the cap when `size` is None (DEFAULT_LIMIT if this is None too)


def local_path(url: str) -> Path | None:
    """The filesystem path of a file:// URL, None for anything else."""
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def file_digest(path: Path, algo: str, counter: ByteCounter | None = None) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if counter:
                counter(len(chunk))
    return h.hexdigest()


class Fetcher:
    """Fetches files over HTTP(S) or from file:// URLs; safe to use from several threads.

    `limits` defaults to host.http's, as the RPMIMG_FETCH_* environment sets them;
    `attempts`, `timeout` (the idle timeout) and `backoff` override single fields.
    """

    def __init__(self, *, limits: Limits | None = None, attempts: int | None = None,
                 timeout: float | None = None, workers: int = 4,
                 backoff: float | None = None) -> None:
        if limits is None:
            try:
                limits = Limits.from_environment()
            except DownloadError as e:
                raise ComposeFetchError(str(e)) from e
        overrides = {"attempts": attempts, "idle_timeout": timeout, "backoff": backoff}
        self.limits = dataclasses.replace(
            limits, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
        self.workers = workers

    def fetch(self, item: FetchItem, counter: ByteCounter | None = None) -> Path:
        """Return a path holding the verified file: the file:// path itself or `item.dest`."""
        path = local_path(item.url)
        if path is not None:
            if not path.is_file():
                raise ComposeFetchError(f"{item.label}: {item.url} does not exist")
            self._check(item, path, counter)
            return path
        if item.dest.is_file() and item.checksum is not None:
            # A previous run already verified and renamed it; recheck in case it was altered.
            if file_digest(item.dest, item.checksum.algo) == item.checksum.hex:
                if counter:
                    counter(item.dest.stat().st_size)
                return item.dest
            item.dest.unlink()
        item.dest.parent.mkdir(parents=True, exist_ok=True)
        return self._download(item, counter)

    def fetch_all(self, items: Sequence[FetchItem], counter: ByteCounter | None = None) -> list[Path]:
        """Fetch items in parallel; the first failure is raised once the others are done."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            futures = [pool.submit(self.fetch, item, counter) for item in items]
            return [f.result() for f in futures]

    def _check(self, item: FetchItem, path: Path, counter: ByteCounter | None) -> None:
        if item.checksum is None:
            return
        try:
            digest = file_digest(path, item.checksum.algo, counter)
        except OSError as e:
            raise ComposeFetchError(f"{item.label}: cannot read {path}: {e.strerror}") from e
        if digest != item.checksum.hex:
            raise ComposeFetchError(
                f"{item.label}: checksum mismatch for {item.url}: expected {item.checksum}, "
                f"got {item.checksum.algo}:{digest}"
            )

    def _download(self, item: FetchItem, counter: ByteCounter | None) -> Path:
        part = item.dest.with_name(item.dest.name + ".part")
        limit = item.limit if item.limit is not None else DEFAULT_LIMIT
        resumed = part.exists() and part.stat().st_size > 0
        for _ in range(2):
            try:
                download_file(item.url, part, size=item.size, limit=limit, limits=self.limits,
                              progress=counter)
            except DownloadError as e:
                raise ComposeFetchError(f"{item.label}: {e}") from e
            try:
                self._check(item, part, None)
            except ComposeFetchError:
                part.unlink(missing_ok=True)
                # A resumed file may have been spliced from two different versions on the
                # server; start over once before calling the checksum wrong.
                if resumed:
                    resumed = False
                    continue
                raise
            os.replace(part, item.dest)
            return item.dest
        raise AssertionError("unreachable")
