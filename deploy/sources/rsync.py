"""rsync:// with the real rsync binary and its delta transfer.

An extents RPM keeps its payload uncompressed and block-aligned, so the previous
version of the same package shares most of its bytes with the new one. The client
puts a reflink of that previous version under the new file's name in a --copy-dest
directory; rsync uses it as the basis file and sends only the changed blocks.

Bounded like HTTP (host.http.Limits, RPMIMG_FETCH_* in the environment): rsync's own
`--contimeout` and `--timeout` (idle), an overall deadline per file (`timeout`), and
`--max-size` at the size the manifest states, which a daemon that lies in its file
list can't pass either: rsync runs under RLIMIT_FSIZE of that size (`prlimit`).
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import shutil
import signal
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from deploy.sources.base import (
    MANIFEST_LIMIT,
    SIGNATURE_LIMIT,
    ByteCounter,
    FetchJob,
    FetchStats,
    ProgressFn,
    copy_file,
    download_limits,
    read_limited,
)
from host.fetchlimits import Limits
from host.log import get as logger
from host.run import CommandError, run
from imagespec.errors import ManifestError
from imagespec.manifest import ManifestPackage
from imagespec.published import MANIFEST, SIGNATURE

log = logger(__name__)

WORKERS = 2
_LITERAL = re.compile(r"Literal data: ([\d,]+) bytes")
# Exit statuses: `timeout` when the deadline passed, rsync's "file not there", and
# rsync killed for writing past RLIMIT_FSIZE (reported by `timeout` as 128 + signal).
_DEADLINE = 124
_MISSING = 23
_TOO_LARGE = 128 + signal.SIGXFSZ


class _Missing(CommandError):
    """rsync found no such file."""


def join_url(base: str, location: str) -> str:
    """Resolve location against base like a relative URL (urljoin does not know rsync://)."""
    scheme, _, rest = base.partition("://")
    host, _, path = rest.partition("/")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname("/" + path), location))
    return f"{scheme}://{host}{resolved}"


class RsyncSource:
    """An image published by an rsync daemon (or any rsync URL)."""

    def __init__(self, url: str, *, limits: Limits | None = None) -> None:
        if url.endswith("/"):
            url += MANIFEST
        self.url = url
        self.limits = download_limits(limits)

    @property
    def manifest_location(self) -> str:
        return self.url

    def _rsync(self, args: list[str], url: str, size: int) -> str:
        """Run rsync for one file of at most `size` bytes; CommandError names url and why."""
        limits = self.limits
        deadline = limits.deadline(size)
        argv = [
            "prlimit", f"--fsize={size}", "--core=0", "--",
            "timeout", "--kill-after=5", f"{deadline:.1f}",
            "rsync", "--no-motd", f"--max-size={size}",
            f"--contimeout={math.ceil(limits.connect_timeout)}",
            f"--timeout={math.ceil(limits.idle_timeout)}", *args,
        ]
        proc = run(argv, allowed_codes=range(256))
        code = proc.returncode
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        if code == _DEADLINE:
            raise CommandError(f"{url}: gave up after {deadline:.1f} s, past the deadline for "
                               f"{size} bytes")
        if code == _TOO_LARGE:
            raise CommandError(f"{url}: rsync wrote more than the {size} bytes expected")
        if code == _MISSING:
            raise _Missing(f"{url}: no such file" + (f" ({detail[-1]})" if detail else ""))
        if code != 0:
            raise CommandError(f"{url}: rsync exited {code}" + (f": {detail[-1]}" if detail else ""))
        return proc.stdout.decode(errors="replace")

    def _fetch_small(self, url: str, dest: Path, limit: int, what: str) -> bytes:
        self._rsync([url, os.fspath(dest)], url, limit)
        if not dest.exists():  # skipped by --max-size
            raise ManifestError(f"{url}: {what} larger than the {limit}-byte maximum")
        return read_limited(dest, limit, what)

    def fetch_manifest(self) -> tuple[bytes, bytes | None]:
        with tempfile.TemporaryDirectory(prefix="rpmimg-rsync-") as tmp:
            try:
                data = self._fetch_small(self.url, Path(tmp, MANIFEST), MANIFEST_LIMIT, "manifest")
            except CommandError as e:
                raise ManifestError(f"cannot fetch the manifest: {e}") from e
            sig_url = join_url(self.url, SIGNATURE)
            try:
                sig = self._fetch_small(sig_url, Path(tmp, SIGNATURE), SIGNATURE_LIMIT, "signature")
            except _Missing:
                return data, None
            except CommandError as e:
                raise ManifestError(f"cannot fetch the signature: {e}") from e
            return data, sig

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
        size = job.ref.size
        if job.basis is not None:
            basis_dir.mkdir(exist_ok=True)
            if not (basis_dir / name).exists():
                copy_file(job.basis, basis_dir / name)
            args.append(f"--copy-dest={os.fspath(basis_dir.resolve())}")
        try:
            output = self._rsync([*args, url, os.fspath(out_dir) + "/"], url, size)
        except CommandError as e:
            raise DeployFetchError(f"{job.ref.nvra}: {e}") from e
        checkpoint("rsynced package")
        got = out_dir / name
        if not got.exists():  # skipped by --max-size
            raise DeployFetchError(f"{job.ref.nvra}: {url}: larger than the {size} bytes the manifest states")
        os.rename(got, job.dest)
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
