"""Downloads: parallel, retried, resumed with HTTP Range, checked against a known checksum.

`file://` URLs are read in place (checked, never copied). A download goes to
`DEST.part` and is renamed to DEST only once its checksum matches, so DEST always
holds a verified file and an interrupted run resumes from the `.part` file.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
import urllib3

from solver.errors import FetchError

CHUNK = 1 << 16
# Status codes worth another attempt; any other 4xx/5xx is final.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

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
    size: int | None = None


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
    """Fetches files over HTTP(S) or from file:// URLs; safe to use from several threads."""

    def __init__(self, *, attempts: int = 4, timeout: float = 30.0, workers: int = 4,
                 backoff: float = 0.2) -> None:
        self.attempts = attempts
        self.timeout = timeout
        self.workers = workers
        self.backoff = backoff
        self._local = threading.local()

    def _session(self) -> requests.Session:
        # requests.Session is not documented as thread-safe: one per thread.
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "rpmimg"
            self._local.session = session
        return session

    def fetch(self, item: FetchItem, counter: ByteCounter | None = None) -> Path:
        """Return a path holding the verified file: the file:// path itself or `item.dest`."""
        path = local_path(item.url)
        if path is not None:
            if not path.is_file():
                raise FetchError(f"{item.label}: {item.url} does not exist")
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
            raise FetchError(f"{item.label}: cannot read {path}: {e.strerror}") from e
        if digest != item.checksum.hex:
            raise FetchError(
                f"{item.label}: checksum mismatch for {item.url}: expected {item.checksum}, "
                f"got {item.checksum.algo}:{digest}"
            )

    def _download(self, item: FetchItem, counter: ByteCounter | None) -> Path:
        part = item.dest.with_name(item.dest.name + ".part")
        last: Exception | None = None
        restarted = False
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resumed = self._transfer(item, part, counter, count_existing=attempt == 0)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError) as e:
                last = e
                continue
            except _Retryable as e:
                last = e
                continue
            try:
                self._check(item, part, None)
            except FetchError:
                part.unlink(missing_ok=True)
                # A resumed file may have been spliced from two different versions on the
                # server; start over once before calling the checksum wrong.
                if resumed and not restarted:
                    restarted = True
                    continue
                raise
            os.replace(part, item.dest)
            return item.dest
        raise FetchError(
            f"{item.label}: download of {item.url} failed after {self.attempts} attempts: {last}"
        )

    def _transfer(self, item: FetchItem, part: Path, counter: ByteCounter | None,
                  *, count_existing: bool) -> bool:
        """Download into `part`, resuming when it exists; True if a Range request was honoured."""
        offset = part.stat().st_size if part.exists() else 0
        # Identity encoding: a Range offset must count the bytes of the file itself.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with self._session().get(item.url, stream=True, timeout=self.timeout,
                                 headers=headers) as response:
            status = response.status_code
            if status == 416:
                # Our partial file is no prefix of what the server has now.
                part.unlink(missing_ok=True)
                raise _Retryable(f"{item.url}: range not satisfiable, restarting")
            if status in RETRY_STATUS:
                raise _Retryable(f"{item.url}: HTTP {status}")
            if status not in (200, 206):
                raise FetchError(f"{item.label}: {item.url}: HTTP {status} {response.reason}")
            resumed = status == 206 and offset > 0
            if counter and resumed and count_existing:
                counter(offset)
            with open(part, "ab" if resumed else "wb") as out:
                # read1 hands over what has arrived, so a cut connection loses no bytes
                # that reached us and the next attempt resumes right after them.
                while chunk := response.raw.read1(CHUNK):
                    out.write(chunk)
                    if counter:
                        counter(len(chunk))
                    if item.size is not None and out.tell() > item.size:
                        part.unlink()
                        raise FetchError(
                            f"{item.label}: {item.url} is larger than the {item.size} bytes "
                            f"the repository lists"
                        )
        return resumed


class _Retryable(Exception):
    """A transient server answer worth another attempt."""
