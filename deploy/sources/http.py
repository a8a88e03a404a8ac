"""HTTP(S): parallel, resumable (Range), retried with backoff, bounded (host.http).

Packages are fetched as their zstd copy when the manifest lists one, so a client
downloads about as many bytes as the original compressed RPMs. No file is read past
the size the signed manifest states; the manifest and its signature, fetched before
anything is verified, past MANIFEST_LIMIT and SIGNATURE_LIMIT.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from deploy.sources.base import (
    MANIFEST_LIMIT,
    SIGNATURE_LIMIT,
    ByteCounter,
    FetchJob,
    FetchStats,
    ProgressFn,
    decompress_zstd,
    download_limits,
    sha256_file,
)
from host.http import DownloadError, Limits, download_bytes, download_file
from imagespec.errors import ManifestError
from imagespec.manifest import ManifestPackage
from imagespec.published import MANIFEST, SIGNATURE

WORKERS = 4


class HttpSource:
    """An image published on a web server."""

    def __init__(self, url: str, *, workers: int = WORKERS, limits: Limits | None = None) -> None:
        if url.endswith("/"):
            url += MANIFEST
        self.url = url
        self.workers = workers
        self.limits = download_limits(limits)

    @property
    def manifest_location(self) -> str:
        return self.url

    def fetch_manifest(self) -> tuple[bytes, bytes | None]:
        try:
            data = download_bytes(self.url, MANIFEST_LIMIT, limits=self.limits)
        except DownloadError as e:
            raise ManifestError(str(e)) from e
        sig_url = urllib.parse.urljoin(self.url, SIGNATURE)
        try:
            return data, download_bytes(sig_url, SIGNATURE_LIMIT, limits=self.limits)
        except DownloadError as e:
            if e.status == 404:
                return data, None
            raise ManifestError(str(e)) from e

    def package_url(self, ref: ManifestPackage) -> str:
        return urllib.parse.urljoin(self.url, ref.location)

    def _fetch_one(self, job: FetchJob, counter: ByteCounter) -> None:
        ref = job.ref
        if ref.zstd is not None:
            url = urllib.parse.urljoin(self.url, ref.zstd.location)
            size, digest = ref.zstd.size, ref.zstd.sha256
        else:
            url, size, digest = self.package_url(ref), ref.size, ref.sha256
        part = job.dest.with_name(job.dest.name + (".zst.part" if ref.zstd else ".part"))
        try:
            download_file(url, part, size=size, limits=self.limits, progress=counter.add)
        except DownloadError as e:
            raise DeployFetchError(f"{ref.nevra}: {e}") from e
        checkpoint("downloaded package")
        if part.stat().st_size != size or sha256_file(part) != digest:
            part.unlink()
            raise DeployFetchError(f"{ref.nevra}: {url}: download does not match the manifest's sha256")
        if ref.zstd is not None:
            with open(part, "rb") as f:
                decompress_zstd(f, job.dest, ref.nvra, ref.size)
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
