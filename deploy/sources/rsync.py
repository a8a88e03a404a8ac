"""rsync:// with the real rsync binary and its delta transfer.

An extents RPM keeps its payload uncompressed and block-aligned, so the previous
version of the same package shares most of its bytes with the new one. The client
puts a reflink of that previous version under the new file's name in a --copy-dest
directory; rsync uses it as the basis file and sends only the changed blocks.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from deploy.sources.base import (
    ByteCounter,
    FetchJob,
    FetchStats,
    ProgressFn,
    copy_file,
)
from host.run import CommandError, run
from imagespec.errors import ManifestError
from imagespec.manifest import ManifestPackage
from imagespec.published import MANIFEST, SIGNATURE

log = logging.getLogger(__name__)

WORKERS = 2
_LITERAL = re.compile(r"Literal data: ([\d,]+) bytes")
# rsync exit codes meaning "the file is not there" rather than a broken transfer.
_MISSING = (23,)


def join_url(base: str, location: str) -> str:
    """Resolve location against base like a relative URL (urljoin does not know rsync://)."""
    scheme, _, rest = base.partition("://")
    host, _, path = rest.partition("/")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname("/" + path), location))
    return f"{scheme}://{host}{resolved}"


class RsyncSource:
    """An image published by an rsync daemon (or any rsync URL)."""

    def __init__(self, url: str) -> None:
        if url.endswith("/"):
            url += MANIFEST
        self.url = url

    @property
    def manifest_location(self) -> str:
        return self.url

    def _rsync(self, args: list[str]) -> str:
        proc = run(["rsync", "--no-motd", *args])
        return proc.stdout.decode(errors="replace")

    def fetch_manifest(self) -> tuple[bytes, bytes | None]:
        with tempfile.TemporaryDirectory(prefix="rpmimg-rsync-") as tmp:
            try:
                self._rsync([self.url, tmp + "/" + MANIFEST])
            except CommandError as e:
                raise ManifestError(f"{self.url}: cannot fetch: {e}") from e
            data = Path(tmp, MANIFEST).read_bytes()
            sig_url = join_url(self.url, SIGNATURE)
            try:
                run(["rsync", "--no-motd", sig_url, tmp + "/" + SIGNATURE])
            except CommandError:
                return data, None
            return data, Path(tmp, SIGNATURE).read_bytes()

    def package_url(self, ref: ManifestPackage) -> str:
        return join_url(self.url, ref.location)

    def _fetch_one(self, job: FetchJob, counter: ByteCounter) -> int:
        url = self.package_url(job.ref)
        name = posixpath.basename(url)
        work = job.dest.with_name(job.dest.name + ".rsync")
        basis_dir = work / "basis"
        out_dir = work / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        args = ["-t", "--stats", "--partial-dir=.rsync-partial", "--fuzzy"]
        if job.basis is not None:
            basis_dir.mkdir(exist_ok=True)
            if not (basis_dir / name).exists():
                copy_file(job.basis, basis_dir / name)
            args.append(f"--copy-dest={os.fspath(basis_dir.resolve())}")
        try:
            output = self._rsync([*args, url, os.fspath(out_dir) + "/"])
        except CommandError as e:
            raise DeployFetchError(f"{job.ref.nvra}: {url}: {e}") from e
        checkpoint("rsynced package")
        os.rename(out_dir / name, job.dest)
        shutil.rmtree(work, ignore_errors=True)
        m = _LITERAL.search(output)
        literal = int(m.group(1).replace(",", "")) if m else job.ref.size
        log.debug("%s: %d literal bytes of %d", job.ref.nvra, literal, job.ref.size)
        counter.add(job.ref.size)
        return literal

    def fetch(self, jobs: Sequence[FetchJob], progress: ProgressFn | None) -> FetchStats:
        counter = ByteCounter(sum(j.ref.size for j in jobs), progress)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(self._fetch_one, job, counter) for job in jobs]
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return FetchStats(packages=len(jobs), transferred=sum(f.result() for f in futures))
