"""An updated package rebuilt from the store and HTTP ranges of its seekable form.

The seekable form (rpmextents.seekable) holds a package's lead, headers and index in
frame 0 and each file's block-aligned data in frames of its own. For a package the
client has an older version of, this module:

1. fetches the frame table (the last `table_size` bytes) and checks its sha256
   against the signed manifest;
2. fetches frame 0 and checks the header in it against the manifest's header_sha256;
3. for every file, looks its digest (from that header) up in the store: known data is
   cloned from the store into place, the frames of the rest are fetched, adjacent ones
   merged into one Range request, decompressed and written at their offsets;
4. checks every fetched file against its header digest (and its padding is zero)
   as soon as its frames arrive, so a mirror that serves a wrong range is caught there
   and the range is asked of the next mirror;
5. checks the whole rebuilt file against the manifest's sha256 before it is renamed
   to its destination; the store verifies it again (signature included) on entry.

Nothing a mirror sends is trusted: each check names the mirror, and a failed range is
retried on the next one. A server that ignores Range raises NoRanges (the caller then
fetches the whole package); a package rebuilt wrongly raises DeployFetchError.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployFetchError
from deploy.faults import checkpoint
from host import digest, kernel
from host.digest import sha256_file
from host.http import DownloadError, Limits, NoRanges, download_range
from host.kernel import NO_REFLINK
from host.log import get as logger
from imagespec.manifest import ManifestPackage
from rpmextents import Entry, ExtentsPackage
from rpmextents.errors import ExtentsError
from rpmextents.header import STRONG_HASH_ALGOS
from rpmextents.index import align_up
from rpmextents.seekable import Frame, FrameTable, decompress_frame, parse_table

log = logger(__name__)

# (digest algorithm, digest, length) -> (store file, offset) of that content, or None.
Lookup = Callable[[str, str, int], "tuple[Path, int] | None"]
Progress = Callable[[int], None]
# Frames closer than this in the compressed form are fetched in one request.
MERGE_GAP = 256


class BadRange(Exception):
    """What a mirror sent for a range is wrong; str() says how."""


class NotWorthIt(NoRanges):
    """The ranges a package needs would cost at least its whole one-stream copy; `spent`
    is what was fetched to know it (the table and frame 0)."""

    def __init__(self, message: str, spent: int) -> None:
        super().__init__(message)
        self.spent = spent


@dataclass
class RangeStats:
    """What ranged fetches transferred, in how many requests, and what was cloned instead."""

    transferred: int = 0
    requests: int = 0
    cloned: int = 0


class Mirrors:
    """The URLs of one file on every mirror; each range is asked of them in turn."""

    def __init__(self, urls: Sequence[str], limits: Limits, progress: Progress,
                 stats: RangeStats) -> None:
        self.urls = list(urls)
        self.limits = limits
        self.progress = progress
        self.stats = stats

    def get(self, start: int, length: int, accept: Callable[[bytes], None]) -> None:
        """Fetch [start, +length) and pass it to accept (which raises BadRange on bad data),
        from the first mirror that serves it right."""
        problems: list[str] = []
        no_ranges = 0
        for url in self.urls:
            try:
                data = download_range(url, start, length, limits=self.limits, progress=self.progress)
            except NoRanges as e:
                no_ranges += 1
                problems.append(str(e))
                continue
            except DownloadError as e:
                problems.append(str(e))
                continue
            finally:
                self.stats.requests += 1
            self.stats.transferred += len(data)
            try:
                accept(data)
                return
            except BadRange as e:
                log.warning("%s: bytes %d-%d: %s; trying another mirror", url, start,
                            start + length - 1, e)
                problems.append(f"{url}: bytes {start}-{start + length - 1}: {e}")
        if no_ranges == len(self.urls):
            raise NoRanges(problems[-1])
        raise DeployFetchError("; ".join(problems))


def _frames(data: bytes, frames: Sequence[Frame]) -> list[bytes]:
    base = frames[0].coffset
    try:
        return [decompress_frame(data[f.coffset - base:f.coffset - base + f.csize], f) for f in frames]
    except ExtentsError as e:
        raise BadRange(str(e)) from e


def _runs(frames: Sequence[Frame]) -> list[list[Frame]]:
    runs: list[list[Frame]] = []
    for f in frames:
        if runs and f.coffset - (runs[-1][-1].coffset + runs[-1][-1].csize) <= MERGE_GAP:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def _check_file(fd: int, e: Entry, block_size: int) -> None:
    """The written data of e must hash to its header digest, and its padding be zero."""
    assert e.extent is not None
    h = digest.new(e.digest_algo, e.extent.length)
    pos, end = e.extent.offset, e.extent.offset + e.extent.length
    while pos < end:
        chunk = os.pread(fd, min(1 << 20, end - pos), pos)
        h.update(chunk)
        pos += len(chunk)
    pad = align_up(end, block_size) - end
    if h.hexdigest() != e.digest or any(os.pread(fd, pad, end)):
        raise BadRange(f"/{e.path.lstrip('/')}: data does not match its header digest")


class Rebuild:
    """One package being rebuilt into `part` from the store and ranges."""

    def __init__(self, ref: ManifestPackage, part: Path, mirrors: Mirrors, lookup: Lookup) -> None:
        self.ref = ref
        self.part = part
        self.mirrors = mirrors
        self.lookup = lookup

    def table(self) -> FrameTable:
        z = self.ref.seekable
        assert z is not None and z.table_size is not None
        found: list[FrameTable] = []

        def accept(data: bytes) -> None:
            if digest.of("sha256", data).hexdigest() != z.table_sha256:
                raise BadRange("frame table differs from the manifest's table_sha256")
            try:
                found.append(parse_table(data, self.ref.size, z.size))
            except ExtentsError as e:
                raise BadRange(str(e)) from e

        self.mirrors.get(z.size - z.table_size, z.table_size, accept)
        return found[0]

    def head(self, fd: int, frame: Frame) -> ExtentsPackage:
        opened: list[ExtentsPackage] = []

        def accept(data: bytes) -> None:
            (head,) = _frames(data, [frame])
            os.pwrite(fd, head, 0)
            try:
                pkg = ExtentsPackage.open(self.part)
            except ExtentsError as e:
                raise BadRange(f"frame 0: {e}") from e
            if digest.of("sha256", pkg.header_bytes()).hexdigest() != self.ref.header_sha256:
                pkg.close()
                raise BadRange("header differs from the manifest's header_sha256")
            opened.append(pkg)

        self.mirrors.get(frame.coffset, frame.csize, accept)
        return opened[0]

    def clone_known(self, fd: int, pkg: ExtentsPackage) -> tuple[list[tuple[int, int]], list[Entry]]:
        """Clone what the store has; the byte ranges covered, and the entries still to fetch."""
        covered: list[tuple[int, int]] = []
        missing: list[Entry] = []
        seen: set[int] = set()
        bs = pkg.block_size
        for e in pkg.entries():
            if e.extent is None or e.extent.offset in seen:
                continue
            seen.add(e.extent.offset)
            found = None
            if e.digest and e.digest_algo in STRONG_HASH_ALGOS:
                found = self.lookup(e.digest_algo, e.digest, e.extent.length)
            length = align_up(e.extent.length, bs)
            if found is None or not _clone(found, fd, e.extent.offset, length):
                missing.append(e)
                continue
            covered.append((e.extent.offset, e.extent.offset + length))
            self.mirrors.stats.cloned += length
        return covered, missing

    @staticmethod
    def plan(table: FrameTable, covered: list[tuple[int, int]]) -> list[list[Frame]]:
        """The runs of frames (one request each) holding what the store did not cover."""
        done = set(covered)
        need = [f for f in table.frames[1:]
                if not any(a <= f.offset and f.offset + f.size <= b for a, b in done)]
        return _runs(need)

    def fetch_frames(self, fd: int, runs: list[list[Frame]], missing: list[Entry],
                     block_size: int) -> None:
        for run in runs:
            inside = [e for e in missing if e.extent is not None
                      and run[0].offset <= e.extent.offset < run[-1].offset + run[-1].size]

            def accept(data: bytes, run: list[Frame] = run, inside: list[Entry] = inside) -> None:
                for frame, plain in zip(run, _frames(data, run), strict=True):
                    os.pwrite(fd, plain, frame.offset)
                for e in inside:
                    _check_file(fd, e, block_size)

            start = run[0].coffset
            self.mirrors.get(start, run[-1].coffset + run[-1].csize - start, accept)
            checkpoint("fetched range")


def _clone(found: tuple[Path, int], fd: int, offset: int, length: int) -> bool:
    path, src_offset = found
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(src).st_size < src_offset + length:
            return False
        try:
            kernel.clone_range(src, src_offset, length, fd, offset)
        except OSError as e:
            if e.errno not in NO_REFLINK and e.errno != errno.EINVAL:
                raise
            data = os.pread(src, length, src_offset)
            os.pwrite(fd, data, offset)
        return True
    finally:
        os.close(src)


def _span(run: list[Frame]) -> int:
    return run[-1].coffset + run[-1].csize - run[0].coffset


def fetch_package(ref: ManifestPackage, dest: Path, urls: Sequence[str], lookup: Lookup,
                  limits: Limits, progress: Progress, budget: int | None = None) -> RangeStats:
    """Rebuild ref's extents RPM at dest from the store and ranges of its seekable form at
    urls (one per mirror). dest appears only complete and matching the manifest's sha256.

    With a budget (the bytes of fetching the package whole), NotWorthIt is raised, before
    any file's frames are asked for, when the table, frame 0 and the frames still needed
    would come to at least that much."""
    stats = RangeStats()
    mirrors = Mirrors(urls, limits, progress, stats)
    part = dest.with_name(dest.name + ".ranged")
    rebuild = Rebuild(ref, part, mirrors, lookup)
    table = rebuild.table()
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, ref.size)
        with rebuild.head(fd, table.frames[0]) as pkg:
            covered, missing = rebuild.clone_known(fd, pkg)
            runs = rebuild.plan(table, covered)
            cost = stats.transferred + sum(_span(r) for r in runs)
            if budget is not None and cost >= budget:
                raise NotWorthIt(f"its changed files' ranges would take {cost} bytes, "
                                 f"the whole package {budget}", stats.transferred)
            rebuild.fetch_frames(fd, runs, missing, pkg.block_size)
        os.fsync(fd)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    if sha256_file(part) != ref.sha256:
        part.unlink()
        raise DeployFetchError(f"{ref.nevra}: rebuilt from ranges, it does not match the "
                               "manifest's sha256")
    os.rename(part, dest)
    return stats
