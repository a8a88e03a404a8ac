"""HTTP(S) with requests: parallel, resumable (Range), retried with backoff.

Packages are fetched as their zstd copy when the manifest lists one, so a client
downloads about as many bytes as the original compressed RPMs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from deploy.sources.base import (
    ByteCounter,
    FetchJob,
    FetchStats,
    ProgressFn,
    decompress_zstd,
    sha256_file,
)
from imagespec.errors import ManifestError
from imagespec.manifest import ManifestPackage
from imagespec.published import MANIFEST, SIGNATURE

log = logging.getLogger(__name__)

# Small enough that a dropped connection loses little of what was already received.
CHUNK = 1 << 14
WORKERS = 4
RETRIES = 4
TIMEOUT = 30.0
# Statuses worth retrying: the server or a proxy had a moment.
_TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


class _Transient(Exception):
    pass


class HttpSource:
    """An image published on a web server."""

    def __init__(self, url: str, *, workers: int = WORKERS, retries: int = RETRIES) -> None:
        if url.endswith("/"):
            url += MANIFEST
        self.url = url
        self.workers = workers
        self.retries = retries
        self._local = threading.local()

    @property
    def manifest_location(self) -> str:
        return self.url

    def _session(self) -> requests.Session:
        # A Session is not safe to share between threads; keep one per worker.
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "rpmimg"
            self._local.session = session
        return session

    def _retrying(self, what: str, attempt_fn: Any) -> Any:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return attempt_fn()
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError, _Transient) as e:
                if attempt == self.retries:
                    raise DeployFetchError(f"{what}: failed after {attempt + 1} attempts: {e}") from e
                log.debug("%s: %s; retrying in %.1f s", what, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _get_small(self, url: str, missing_ok: bool = False) -> bytes | None:
        def attempt() -> bytes | None:
            r = self._session().get(url, timeout=TIMEOUT)
            if r.status_code == 404 and missing_ok:
                return None
            if r.status_code in _TRANSIENT:
                raise _Transient(f"HTTP {r.status_code}")
            if r.status_code != 200:
                raise ManifestError(f"{url}: HTTP {r.status_code} {r.reason}")
            return r.content

        result: bytes | None = self._retrying(url, attempt)
        return result

    def fetch_manifest(self) -> tuple[bytes, bytes | None]:
        data = self._get_small(self.url)
        assert data is not None
        sig = self._get_small(urllib.parse.urljoin(self.url, SIGNATURE), missing_ok=True)
        return data, sig

    def package_url(self, ref: ManifestPackage) -> str:
        return urllib.parse.urljoin(self.url, ref.location)

    def _download(self, url: str, part: Path, size: int, counter: ByteCounter) -> None:
        """Bring part up to size bytes from url, resuming what a previous attempt left."""

        def attempt() -> None:
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            if have == size:
                return
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._session().get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
                if r.status_code in _TRANSIENT:
                    raise _Transient(f"HTTP {r.status_code}")
                if r.status_code == 200:
                    mode = "wb"  # server ignored the range: start over
                    counter.add(-have)
                elif r.status_code == 206 and have:
                    mode = "ab"
                else:
                    raise DeployFetchError(f"{url}: HTTP {r.status_code} {r.reason}")
                with open(part, mode) as f:
                    for chunk in r.iter_content(CHUNK):
                        f.write(chunk)
                        counter.add(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            got = part.stat().st_size
            if got < size:
                raise _Transient(f"connection closed after {got} of {size} bytes")

        if part.exists():
            counter.add(min(part.stat().st_size, size))
        self._retrying(url, attempt)

    def _fetch_one(self, job: FetchJob, counter: ByteCounter) -> None:
        ref = job.ref
        if ref.zstd is not None:
            url = urllib.parse.urljoin(self.url, ref.zstd.location)
            size, digest = ref.zstd.size, ref.zstd.sha256
        else:
            url, size, digest = self.package_url(ref), ref.size, ref.sha256
        part = job.dest.with_name(job.dest.name + (".zst.part" if ref.zstd else ".part"))
        self._download(url, part, size, counter)
        checkpoint("downloaded package")
        if part.stat().st_size != size or sha256_file(part) != digest:
            part.unlink()
            raise DeployFetchError(f"{ref.nevra}: {url}: download does not match the manifest's sha256")
        if ref.zstd is not None:
            decompress_zstd(part, job.dest, ref.nvra)
            part.unlink()
        else:
            os.rename(part, job.dest)

    def fetch(self, jobs: Sequence[FetchJob], progress: ProgressFn | None) -> FetchStats:
        total = sum(j.ref.zstd.size if j.ref.zstd else j.ref.size for j in jobs)
        counter = ByteCounter(total, progress)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(self._fetch_one, job, counter) for job in jobs]
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return FetchStats(packages=len(jobs), transferred=total)
