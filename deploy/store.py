"""The package store: verified extents RPMs on the deployments' filesystem, by sha256.

A package enters the store only after it matched its manifest entry and verified
against the trusted keys; its files whose content is already in the store then share
the stored data, so an update stores only changed files: a package that is mostly
known data (an update) is rewritten as clones of the stored data plus its new bytes,
one that is mostly new has its few known files deduplicated in place (FIDEDUPERANGE).
Entries are read-only and never rewritten; a new entry appears by rename, and is made
durable by the sync of the deployment that first uses it.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.dedupindex import DigestIndex, StoredExtent
from deploy.errors import PackageError
from deploy.faults import checkpoint
from deploy.layout import entry_path
from deploy.layoutcache import LayoutCache, Span
from deploy.layoutcache import identity as entry_identity
from deploy.storemarks import StoreMarks
from host import kernel
from host.digest import sha256_file
from host.kernel import NO_REFLINK
from host.log import get as logger
from rpmextents import ExtentsPackage, Keyring
from rpmextents.errors import ExtentsError
from rpmextents.files import FileList
from rpmextents.header import STRONG_HASH_ALGOS
from rpmextents.index import align_up
from rpmextents.package import PackageIdentity, read_identity

if TYPE_CHECKING:  # a type only: `status` and `rollback` load the store without the manifest model
    from deploy.summaries import Summaries, Summary
    from imagespec.manifest import ManifestPackage

log = logger(__name__)

__all__ = ["Store", "StoredExtent"]

# Bytes at the start of an entry read ahead by prefetch: most packages' header and index.
PREFETCH = 256 << 10
# Threads hashing store entries at once (no more than there are cores).
HASH_WORKERS = 4


class Store:
    """Content-addressed extents RPMs under one directory."""

    def __init__(self, root: Path, *, remember: bool = False, marks: Path | None = None) -> None:
        """remember: keep each package's header and file list once read (an update reads
        every stored package of the old and the new image several times over). Without,
        the last one read is kept: a full build of one large package reads it for its
        identity check, its file list, its accounts and its extraction, one after another.
        marks: the file of deploy.storemarks, which damaged_entries then reads and keeps."""
        self.root = root
        self._paths: dict[str, Path] = {}
        self._marks_path = marks
        self._marks: StoreMarks | None = None
        self._index: DigestIndex | None = None
        self._index_lock = threading.Lock()
        self._read: dict[str, ExtentsPackage] | None = {} if remember else None
        self._last: tuple[str, ExtentsPackage] | None = None
        self._layout: LayoutCache | None = None
        self._headers: dict[str, str] = {}
        self._from_layout: set[str] = set()  # packages read from the layout cache's copies
        self._summaries: Summaries | None = None
        self._summarized: dict[str, Summary | None] = {}  # summary()'s answers
        self._present: set[str] = set()  # entries has() found
        self._added: list[str] = []  # entries add() moved in, not yet marked
        # Entries whose whole content hashed to their name in this process (add, or
        # damaged_entries: hashed, or vouched for by a mark): their index's own digest, part
        # of those bytes, is not worked out again when they are read (ExtentsPackage's
        # whole_checked). A full deploy of the benchmark corpus hashed 7.6 MB of indexes.
        self._whole: set[str] = set()

    @property
    def layout(self) -> LayoutCache | None:
        return self._layout

    def use_layout(self, cache: LayoutCache | None, headers: Mapping[str, str]) -> None:
        """Read the packages the layout cache has a copy of from it while their entries
        are unchanged (deploy.layoutcache), when the store remembers what it reads. headers:
        entry sha256 -> the header sha256 a signed manifest (or a deployment's record) names
        for it; a copy is used only for these entries, and only when its header is that one."""
        if self._read is not None:
            self._layout = cache
            self._headers = dict(headers)

    def path(self, sha256: str) -> Path:
        # Kept once made: a deploy asks for each entry's path several times (1,700 times for
        # an update of the benchmark's 347 packages, 25 ms of pathlib).
        found = self._paths.get(sha256)
        if found is None:
            found = self._paths[sha256] = entry_path(self.root, sha256)
        return found

    def has(self, sha256: str) -> bool:
        # Remembered once found (a deploy asks for each entry several times): an entry goes
        # only by remove(), or by another process that would hold the sysroot's lock.
        if sha256 in self._present:
            return True
        if os.path.isfile(self.path(sha256)):
            self._present.add(sha256)
            return True
        return False

    def __iter__(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir():
                for p in sorted(sub.glob("*.rpm")):
                    yield p.stem

    def remove(self, sha256: str) -> int:
        """Delete one entry; returns its size."""
        path = self.path(sha256)
        size = path.stat().st_size
        self._present.discard(sha256)
        self._summarized[sha256] = None
        path.unlink()
        self._whole.discard(sha256)
        self._index = None  # it may point into the removed entry
        self.forget(sha256)
        return size

    @property
    def remembers(self) -> bool:
        return self._read is not None

    def use_summaries(self, summaries: Summaries | None) -> None:
        """Answer summary() from these (deploy.summaries: of the deployment a deploy starts
        from)."""
        self._summaries = summaries
        self._summarized.clear()

    @property
    def summaries(self) -> Summaries | None:
        return self._summaries

    def summary(self, sha256: str) -> Summary | None:
        """The kept summary of a stored package, while its entry is the file it was worked
        out from, unchanged (as a layout cache copy stands for an entry); else None."""
        if sha256 in self._summarized:
            return self._summarized[sha256]
        found = self._summaries.get(sha256) if self._summaries is not None else None
        if found is not None:
            try:
                st = os.stat(self.path(sha256), follow_symlinks=False)
            except OSError:
                found = None
            else:
                if not stat.S_ISREG(st.st_mode) or entry_identity(st) != found.entry:
                    log.debug("%s: changed since its summary was made", self.path(sha256))
                    found = None
        self._summarized[sha256] = found
        return found

    def at_hand(self, sha256: str) -> bool:
        """Whether package(sha256) would answer without reading the entry."""
        if self._read is not None:
            return sha256 in self._read
        return self._last_read(sha256) is not None

    def _last_read(self, sha256: str) -> ExtentsPackage | None:
        """The package last read, kept without remember, if it is sha256's and unchanged."""
        if self._last is not None and self._last[0] == sha256 and self._last[1].unchanged():
            return self._last[1]
        return None

    def forget(self, sha256: str) -> None:
        """Drop what was remembered of an entry (read it again when next asked)."""
        if self._read is not None:
            self._read.pop(sha256, None)
        if self._last is not None and self._last[0] == sha256:
            self._last = None

    def prefetch(self, sha256s: Iterable[str]) -> None:
        """Ask the kernel to start reading the start (header and index) of these entries:
        reading several hundred headers one after the other from a cold cache otherwise
        waits for the disk once for each. A hint only: nothing is read into Python. Not
        for entries the layout cache has copies of: those are read from it."""
        for sha in sha256s:
            if self._layout is not None and sha in self._layout:
                continue
            try:
                fd = os.open(self.path(sha), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, PREFETCH, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def package(self, sha256: str) -> ExtentsPackage:
        """The stored package's header and file list, closed: its data is read by opening
        store.path(sha256) (or `opened`). Remembered (with remember), else read again
        unless it was the last one read and its file has not changed since."""
        if self._read is not None and sha256 in self._read:
            return self._read[sha256]
        if (last := self._last_read(sha256)) is not None:
            return last
        self._last = None  # let go of it before the next one is read
        pkg = self._copied(sha256)
        if pkg is None:
            with ExtentsPackage.open(self.path(sha256), whole_checked=sha256 in self._whole) as pkg:
                pass
        if self._read is not None:
            self._read[sha256] = pkg
        else:
            self._last = (sha256, pkg)
        return pkg

    def _copied(self, sha256: str) -> ExtentsPackage | None:
        """The package from the layout cache's copy of its entry, if it has a good one."""
        if self._layout is None or sha256 not in self._layout or sha256 not in self._headers:
            return None
        path = self.path(sha256)
        try:
            st = os.stat(path, follow_symlinks=False)
            read = self._layout.reader(sha256, st)
            if read is None:
                raise ExtentsError("the entry changed since it was copied")
            pkg = ExtentsPackage(path, -1, (read, st))
            if pkg.header_sha256 != self._headers[sha256]:
                raise ExtentsError("not the header the manifest names")
        except (OSError, ExtentsError) as e:
            log.debug("%s: its layout cache copy not used: %s", path, e)
            self._layout.drop(sha256)
            return None
        self._from_layout.add(sha256)
        return pkg

    def layout_copy(self, sha256: str, now: os.stat_result) -> tuple[int, str, Span] | None:
        """The layout cache's copy of an entry (as LayoutCache.copy gives it) when this store
        read the entry from it (checked as above), and the entry is still as it was."""
        if self._layout is None:
            return None
        if sha256 in self._from_layout:
            return self._layout.copy(sha256, now)
        # An entry known by its summary alone, whose copy has the header the summary is of.
        kept = self._summarized.get(sha256)
        if kept is None or self._headers.get(sha256) != kept.header_sha256:
            return None
        found = self._layout.copy(sha256, now)
        return found if found is not None and found[1] == kept.header_sha256 else None

    def _uncopied(self, sha256: str) -> bool:
        """Stop using the layout cache's copy of an entry; whether it was in use."""
        if sha256 not in self._from_layout:
            return False
        self._from_layout.discard(sha256)
        if self._layout is not None:
            self._layout.drop(sha256)
        self.forget(sha256)
        return True

    def opened(self, sha256: str) -> ExtentsPackage:
        """The stored package open for its data, for a caller that holds it while it
        extracts it; the store itself holds it no longer (a full build's peak comes after
        the extraction, when the package's header and file list need not be resident).
        Data is only ever located through the entry's own index, never a cached copy's."""
        self._uncopied(sha256)
        pkg = self.package(sha256)
        self.forget(sha256)
        return pkg.opened_again()

    def damaged(self, sha256: str) -> bool:
        """Whether a stored entry no longer hashes to its name (the recorded sha256)."""
        try:
            return sha256_file(self.path(sha256)) != sha256
        except OSError:
            return True

    def mark_added(self) -> None:
        """Mark the entries this store added (deploy.storemarks) so that no deploy hashes
        them again while the filesystem shows them unchanged. Each hashed to its name as
        add() moved it in; only root can write the store's read-only entries since, and
        root could write the marks file as well. Best effort, as the marks are."""
        added = [sha for sha in dict.fromkeys(self._added) if self.has(sha)]
        self._added.clear()
        if self._marks_path is None or not added:
            return
        if self._marks is None:
            self._marks = StoreMarks(self._marks_path, self.root)
        self._marks.mark({sha: self.path(sha) for sha in added})
        self._marks.save(self.has)

    def damaged_entries(self, shas: Iterable[str]) -> set[str]:
        """The entries of shas (all present) that no longer hash to their names. With marks,
        an entry the filesystem shows unchanged since it last hashed right is not read again,
        and those hashed now are marked. Hashing runs on up to HASH_WORKERS threads."""
        wanted = list(dict.fromkeys(shas))
        if not wanted:
            return set()
        if self._marks_path is None:
            found = self._hash_damaged(wanted)
        else:
            if self._marks is None:
                self._marks = StoreMarks(self._marks_path, self.root)
            found = self._marks.check({sha: self.path(sha) for sha in wanted}, self._hash_damaged)
            self._marks.save(self.has)
        self._whole.update(sha for sha in wanted if sha not in found)
        self._whole.difference_update(found)
        return found

    def _hash_damaged(self, shas: list[str]) -> set[str]:
        workers = min(HASH_WORKERS, os.cpu_count() or 1, len(shas))
        if workers <= 1:
            return {sha for sha in shas if self.damaged(sha)}
        from concurrent.futures import ThreadPoolExecutor  # its machinery only when used

        # hashlib lets go of the GIL while it hashes: the threads use every core.
        with ThreadPoolExecutor(workers) as pool:
            return {sha for sha, bad in zip(shas, pool.map(self.damaged, shas), strict=True) if bad}

    def check_stored(self, ref: ManifestPackage, content: bool, keep: bool = True) -> bool:
        """Check a package already in the store against its manifest entry: identity always
        (PackageError when the manifest names it as something else), the whole content
        with content. A damaged entry is removed and False returned: fetch it again.
        Without keep, where nothing is remembered, the identity comes from the header alone
        (rather than a read of the whole file list that the store would keep as the last).
        An entry with a summary (summary()) is checked against it, its header not read."""
        kept = self.summary(ref.sha256) if not content else None
        if kept is not None:
            try:
                _check_identity(ref, kept.identity)
                return True
            except PackageError:
                pass  # the entry itself tells
        try:
            _check_identity(ref, self.package(ref.sha256) if self.remembers or keep
                            else read_identity(self.path(ref.sha256)))
        except (PackageError, ExtentsError) as e:
            if self._uncopied(ref.sha256):  # the cache's copy, not the entry: read the entry
                return self.check_stored(ref, content, keep)
            self.forget(ref.sha256)
            if not self.damaged(ref.sha256):
                # The entry is what its sha256 names: the manifest lies about it.
                raise PackageError(f"{ref.nevra}: refused: the stored package with its sha256"
                                   f" does not match the manifest entry: {e}") from e
            self.discard_damaged(ref)
            return False
        if content and ref.sha256 in self.damaged_entries([ref.sha256]):
            self.discard_damaged(ref)
            return False
        return True

    def discard_damaged(self, ref: ManifestPackage) -> None:
        """Remove an entry found damaged (damaged_entries), to be fetched again."""
        log.warning("%s: store entry %s is damaged; fetching it again", ref.nevra, self.path(ref.sha256))
        self.remove(ref.sha256)

    def _content_index(self) -> DigestIndex:
        """Every stored file's data by (digest algorithm, digest); read once, then kept up to date."""
        # HTTP fetch threads ask at once (find_data): the index is built under a lock and
        # published whole, never seen half-filled.
        with self._index_lock:
            if self._index is None:
                index = DigestIndex()
                for sha in self:
                    try:
                        if self._read is not None and sha in self._read:
                            index.add(self.path(sha), self._read[sha].entries())
                            continue
                        copied = self._copied(sha)  # the base's packages the image drops
                        if copied is not None:
                            index.add(copied.path, copied.entries())
                            continue
                        with ExtentsPackage.open(self.path(sha)) as pkg:
                            index.add(pkg.path, pkg.entries())
                    except ExtentsError as e:
                        log.warning("%s: skipped for deduplication: %s", self.path(sha), e)
                self._index = index
            return self._index

    def find_data(self, algo: str, digest: str, length: int) -> tuple[Path, int] | None:
        """(store file, offset) of stored file data with this digest and length, or None."""
        found = self._content_index().get(algo, digest)
        if found is None or found.length != length:
            return None
        return found.path, found.offset

    def file_list(self, sha256: str) -> tuple[str, FileList]:
        """(N-V-R.A, file list) of a stored package (read each time unless the store
        remembers: a file list holds its package's header, and a caller keeps only the
        ones it needs)."""
        pkg = self.package(sha256)
        return pkg.nevra, pkg.entries()

    def _matches(self, pkg: ExtentsPackage) -> list[tuple[int, int, StoredExtent]]:
        """(offset, block-aligned length, stored copy) of pkg's file data the store already holds."""
        index = self._content_index()
        found: dict[int, tuple[int, int, StoredExtent]] = {}
        files = pkg.entries()
        for i in range(len(files)):
            extent = files.extent(i)
            if extent is None or extent.offset in found:
                continue
            digest = files.digest(i)
            stored = index.get(files.digest_algo, digest) if digest else None
            if stored is not None and stored.length == extent.length:
                found[extent.offset] = (extent.offset, align_up(extent.length, pkg.block_size), stored)
        return sorted(found.values(), key=lambda m: m[0])

    def _dedupe(self, matches: list[tuple[int, int, StoredExtent]], fd: int) -> int:
        """Share matching data in place: FIDEDUPERANGE compares the bytes first."""
        deduped = 0
        for offset, length, found in matches:
            try:
                with open(found.path, "rb") as src:
                    deduped += kernel.dedupe_range(src.fileno(), found.offset, length, fd, offset)
            except OSError as err:
                # Differing bytes (a digest collision or damaged padding) or no dedupe
                # support: keep the package's own copy.
                if err.errno not in (errno.EBADE, errno.EOPNOTSUPP, errno.EINVAL, errno.EXDEV):
                    raise
        return deduped

    def _rebuild(self, ref: ManifestPackage, fetched: Path, matches: list[tuple[int, int, StoredExtent]]) -> int:
        """Replace fetched by a copy that clones the matching data from the store and
        writes only the rest; returns the bytes cloned.

        Deduplicating in place frees a downloaded extent only when none of it is still
        used, and a package's data arrives in large extents that its changed files keep
        alive; a fresh copy holds nothing but the new data. Matches are by the file
        digests of two verified packages (strong algorithms only), and the copy must
        hash to the manifest's sha256 before it replaces the download.
        """
        tmp = fetched.with_name(fetched.name + ".share")
        cloned = 0
        sources: dict[Path, int] = {}
        src = os.open(fetched, os.O_RDONLY | os.O_CLOEXEC)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(src).st_size
            pos = 0
            for offset, length, found in matches:
                _copy_bytes(src, out, pos, offset - pos)
                if found.path not in sources:
                    sources[found.path] = os.open(found.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    kernel.clone_range(sources[found.path], found.offset, length, out, offset)
                    cloned += length
                except OSError as e:
                    if e.errno not in NO_REFLINK:
                        raise
                    _copy_bytes(src, out, offset, length)
                pos = offset + length
            _copy_bytes(src, out, pos, size - pos)
            os.ftruncate(out, size)
            # Not synced here, as no entry is (see add).
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            for fd in (src, out, *sources.values()):
                os.close(fd)
        if sha256_file(tmp) != ref.sha256:
            tmp.unlink()
            raise PackageError(f"{ref.nevra}: sharing data with the store changed its content")
        os.rename(tmp, fetched)
        return cloned

    def add(self, ref: ManifestPackage, fetched: Path, keyring: Keyring | None) -> int:
        """Verify a fetched package against ref and the keyring, dedupe it, move it in.

        Without a keyring the header signature is not required (digests are still checked).

        Returns the bytes deduplicated. A package that fails is deleted, not stored.
        """
        self._last = None  # read and the content index built without another package beside them
        try:
            size = fetched.stat().st_size
            if size != ref.size:
                raise PackageError(
                    f"{ref.nevra}: size {size} differs from the manifest's {ref.size}"
                    " (corrupted in transit?)"
                )
            if sha256_file(fetched) != ref.sha256:
                raise PackageError(
                    f"{ref.nevra}: sha256 differs from the manifest's (corrupted in transit?)"
                )
            with ExtentsPackage.open(fetched) as pkg:
                files = pkg.entries()
                _check_identity(ref, pkg)
                pkg.verify(keyring)
                checkpoint("package verified")
                matches = self._matches(pkg)
                # Only a digest strong enough to stand for the content may replace the bytes.
                strong = [m for m in matches if m[2].digest_algo in STRONG_HASH_ALGOS]
                # Mostly known data (an updated package): a fresh copy sharing it. Mostly new
                # data: rewriting it would cost more than the few shared files save.
                rebuild = sum(length for _, length, _ in strong) * 2 > pkg.data_bytes
                if rebuild:
                    matches = strong
            if rebuild:
                deduped = self._rebuild(ref, fetched, matches)
            fd = os.open(fetched, os.O_RDWR)
            try:
                if not rebuild:
                    deduped = self._dedupe(matches, fd)
                os.fchmod(fd, 0o444)
                # Not synced one by one: the deployment that uses an entry syncs the whole
                # filesystem before the state names it (build._finish). An entry a crash left
                # unsynced belongs to no deployment, and entries no deployment holds are
                # hashed again before a deploy uses them (transaction._missing).
            finally:
                os.close(fd)
        except ExtentsError as e:
            fetched.unlink(missing_ok=True)
            raise PackageError(f"{ref.nevra}: refused: {e}") from e
        except PackageError:
            fetched.unlink(missing_ok=True)
            raise
        dest = self.path(ref.sha256)
        dest.parent.mkdir(exist_ok=True)
        os.rename(fetched, dest)
        self._added.append(ref.sha256)
        self._whole.add(ref.sha256)
        del pkg  # its header lives on in files, once; not read again for the index
        if self._index is not None:
            # The verified file list stands for the stored copy: sharing data kept its sha256.
            self._index.add(dest, files)
        checkpoint("package stored")
        return deduped


def _copy_bytes(src: int, dst: int, offset: int, length: int) -> None:
    """Copy a range into the same offset of dst as new data (copy_file_range would reflink)."""
    end = offset + length
    while offset < end:
        chunk = os.pread(src, min(1 << 20, end - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, "file shorter than expected")
        offset += os.pwrite(dst, chunk, offset)


def _check_identity(ref: ManifestPackage, pkg: ExtentsPackage | PackageIdentity) -> None:
    if (pkg.name, pkg.version, pkg.release, pkg.arch) != (
        ref.name, ref.version, ref.release, ref.arch,
    ) or pkg.epoch != ref.epoch:
        raise PackageError(f"{ref.nevra}: the file holds {pkg.nevra}, not what the manifest names")
    if pkg.block_size != ref.block_size:
        raise PackageError(f"{ref.nevra}: block size {pkg.block_size}, manifest says {ref.block_size}")
    if pkg.header_sha256 != ref.header_sha256:
        raise PackageError(f"{ref.nevra}: header differs from the manifest's header_sha256")
