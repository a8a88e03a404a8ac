"""HTTP(S): parallel, resumable (Range), retried with backoff, bounded (host.http).

Packages are fetched as their zstd copy (one zstd stream) when the manifest lists one,
so a client downloads about as many bytes as the original compressed RPMs. An updated
package (an older version is in the store) with a seekable copy is rebuilt from the
store and HTTP ranges of that copy's frames for the files it lacks (deploy.rangefetch). No file is read past
the size the signed manifest states; the manifest and its signature, fetched before
anything is verified, past MANIFEST_LIMIT and SIGNATURE_LIMIT.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from deploy.rangefetch import NotWorthIt, RangeStats, fetch_package
from deploy.sources.base import (
    MANIFEST_LIMIT,
    SIGNATURE_LIMIT,
    ByteCounter,
    FetchJob,
    FetchStats,
    ProgressFn,
    decompress_zstd,
    download_limits,
)
from deploy.sources.mirrorlist import published_mirrors
from host.digest import sha256_file
from host.http import DownloadError, Limits, NoRanges, download_bytes, download_file
from host.log import get as logger
from imagespec.errors import ManifestError
from imagespec.manifest import ManifestPackage
from imagespec.published import MANIFEST, SIGNATURE

log = logger(__name__)

WORKERS = 4


class HttpSource:
    """An image published on a web server, and on any number of mirrors of it.

    `url` and each of `mirrors` name the same manifest (a URL ending in / names its
    directory); package locations resolve against each. Mirrors an image's publisher lists
    beside its versions (deploy.sources.mirrorlist) are added after those. The manifest and signature come
    from `url`; each package, or range of one, is asked of the mirrors in turn until one
    serves bytes that check against the signed manifest.
    """

    def __init__(self, url: str, *, mirrors: Sequence[str] = (), workers: int = WORKERS,
                 limits: Limits | None = None) -> None:
        self.bases = [u + MANIFEST if u.endswith("/") else u for u in (url, *mirrors)]
        self.url = self.bases[0]
        self.workers = workers
        self.limits = download_limits(limits)
        self.ranges = RangeStats()
        self._lock = threading.Lock()

    @property
    def manifest_location(self) -> str:
        return self.url

    def fetch_manifest(self) -> tuple[bytes, bytes | None]:
        try:
            data = download_bytes(self.url, MANIFEST_LIMIT, limits=self.limits)
        except DownloadError as e:
            raise ManifestError(str(e)) from e
        self.bases += [u for u in published_mirrors(self.url, self.limits) if u not in self.bases]
        sig_url = urllib.parse.urljoin(self.url, SIGNATURE)
        try:
            return data, download_bytes(sig_url, SIGNATURE_LIMIT, limits=self.limits)
        except DownloadError as e:
            if e.status == 404:
                return data, None
            raise ManifestError(str(e)) from e

    def package_url(self, ref: ManifestPackage) -> str:
        return urllib.parse.urljoin(self.url, ref.location)

    def _whole(self, job: FetchJob, counter: ByteCounter) -> int:
        """Fetch the whole package (its zstd copy when there is one), mirror after mirror."""
        ref = job.ref
        location, size, digest = ((ref.zstd.location, ref.zstd.size, ref.zstd.sha256) if ref.zstd
                                  else (ref.location, ref.size, ref.sha256))
        part = job.dest.with_name(job.dest.name + (".zst.part" if ref.zstd else ".part"))
        problems = []
        for base in self.bases:
            url = urllib.parse.urljoin(base, location)
            try:
                download_file(url, part, size=size, limits=self.limits, progress=counter.add)
            except DownloadError as e:
                problems.append(str(e))
                continue
            checkpoint("downloaded package")
            if part.stat().st_size == size and sha256_file(part) == digest:
                break
            counter.add(-part.stat().st_size)
            part.unlink()
            problems.append(f"{url}: download does not match the manifest's sha256")
        else:
            raise DeployFetchError(f"{ref.nevra}: " + "; ".join(problems))
        if ref.zstd is not None:
            with open(part, "rb") as f:
                decompress_zstd(f, job.dest, ref.nvra, ref.size)
            part.unlink()
        else:
            os.rename(part, job.dest)
        return size

    def _fetch_one(self, job: FetchJob, counter: ByteCounter) -> int:
        ref, z = job.ref, job.ref.seekable
        if job.basis is not None and job.have is not None and z is not None \
                and z.table_size is not None:
            urls = [urllib.parse.urljoin(base, z.location) for base in self.bases]
            try:
                stats = fetch_package(ref, job.dest, urls, job.have, self.limits, counter.add,
                                      budget=ref.zstd.size if ref.zstd else ref.size)
            except NotWorthIt as e:
                log.info("%s: %s; fetching the whole package", ref.nevra, e)
                return e.spent + self._whole(job, counter)
            except NoRanges as e:
                log.info("%s: %s; fetching the whole package", ref.nevra, e)
            except DeployFetchError as e:
                log.warning("%s: %s; fetching the whole package", ref.nevra, e)
            else:
                with self._lock:
                    for field in ("transferred", "requests", "cloned"):
                        setattr(self.ranges, field, getattr(self.ranges, field) + getattr(stats, field))
                whole = ref.zstd.size if ref.zstd else ref.size
                counter.add(whole - stats.transferred)  # the bar counts the package as done
                return stats.transferred
        return self._whole(job, counter)

    def fetch(self, jobs: Sequence[FetchJob], progress: ProgressFn | None) -> FetchStats:
        total = sum(j.ref.zstd.size if j.ref.zstd else j.ref.size for j in jobs)
        counter = ByteCounter(total, progress)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(self._fetch_one, job, counter) for job in jobs]
            for f in futures:
                f.add_done_callback(lambda _: counter.file_done(len(jobs)))
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return FetchStats(packages=len(jobs), transferred=sum(f.result() for f in futures))
