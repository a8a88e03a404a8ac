"""The base of an update, checked before anything is built from it.

An update starts as a snapshot of the default deployment and keeps every file the new
image did not change: a damaged base would pass its damage on. So the base is verified
first, cheaply: every file's metadata (type, mode, owner, size, mtime, link target) as
`verify` checks it, files no package owns, and the read-only flag; a file's content is
read only when its extents are no longer the store entry's (a file rewritten in place
gets new extents when its data is written, so extents still inside the verified store
entry's are its packaged content). A damaged base makes the deploy build in full.

That walk costs more than the rest of an update, so its result is kept: right after a
deployment is built, and after a base passed the check, TOP/@rpmimg/intact.json records
the subvolume's id, btrfs generation and change transid (filesystem synced first, so
every change made so far is committed and counted). Any change inside a subvolume, made
writable and read-only again or not, raises both numbers, and they never go back; a base
still read-only with the recorded numbers is the tree that was built or checked, and is
not walked again. A missing, unreadable or other deployment's record means the walk.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable

from deploy import delta
from deploy.hashing import READ_FLAGS, DigestJob
from deploy.state import State
from deploy.store import Store
from deploy.system import System
from deploy.verify import accounts_root, verify
from host import kernel
from host.files import ReadRefused, read_limited, write_atomically
from host.kernel import FiemapFlag
from host.log import get as logger
from rpmextents import Owners

log = logger(__name__)

MARK_NAME = "intact.json"

# Extents whose placement FIEMAP can't vouch for: their content must be read.
_UNPLACED = FiemapFlag.UNKNOWN | FiemapFlag.DELALLOC | FiemapFlag.DATA_INLINE | FiemapFlag.ENCODED


class _StoreExtents:
    """Physical byte ranges of store entries, looked up per package sha256."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ranges: dict[str, tuple[list[int], list[int]]] = {}

    def ranges(self, sha256: str) -> tuple[list[int], list[int]]:
        if sha256 not in self._ranges:
            starts: list[int] = []
            ends: list[int] = []
            try:
                fd = os.open(self.store.path(sha256), READ_FLAGS | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    for e in sorted(kernel.fiemap(fd), key=lambda e: e.physical):
                        if not e.flags & _UNPLACED:
                            starts.append(e.physical)
                            ends.append(e.physical + e.length)
                finally:
                    os.close(fd)
            self._ranges[sha256] = (starts, ends)
        return self._ranges[sha256]

    def holds(self, sha256: str, physical: int, length: int) -> bool:
        starts, ends = self.ranges(sha256)
        i = bisect.bisect_right(starts, physical) - 1
        return i >= 0 and physical + length <= ends[i]


def extents_shared(store: Store) -> Callable[[str, DigestJob], bool]:
    """A content check for verify: whether every extent of the file lies inside the
    physical extents of its package's store entry (which the deploy verified)."""
    extents = _StoreExtents(store)
    roots: dict[str, int] = {}

    def known(sha256: str, job: DigestJob) -> bool:
        if job.root not in roots:
            roots[job.root] = os.open(job.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = kernel.open_beneath(roots[job.root], job.rel, READ_FLAGS)
        except OSError:
            return False
        try:
            found = kernel.fiemap(fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        if sum(e.length for e in found) < job.size:
            return False  # holes or inline data: read it
        return all(
            not e.flags & _UNPLACED and extents.holds(sha256, e.physical, e.length) for e in found
        )

    return known


def damaged_base(system: System, current: State, full: bool) -> tuple[str, ...]:
    """How the deployment an update would be built from differs from its packages
    (empty when it is intact, or when no update will be built from it)."""
    base = current.find(current.default)
    if full or base is None or base.owner_ids is None:
        return ()
    try:
        # Owner names that resolve to other ids now make the build full anyway, for that reason.
        delta.check_owners(base.owner_ids, Owners.from_root(accounts_root(system, base.id)))
    except delta.NoDelta:
        return ()
    store = Store(system.layout.store)
    if not all(store.has(p.sha256) for p in base.packages):
        return ()  # the build can't update from it anyway, and says why
    if intact(system, base.id):
        return ()
    result = verify(system, base.id, content_known=extents_shared(store))
    shared = _claimed_twice(store, [p.sha256 for p in base.packages])
    damage = tuple(f"{m.path}: {', '.join(m.what)}" for m in result.mismatches if m.path not in shared)
    if not damage:
        record_intact(system, base.id)
    return damage


def _mark(system: System, deployment_id: str, synced: bool = False) -> list[int] | None:
    """[subvolume id, generation, change transid] of a read-only deployment, every change
    to it committed first (synced: the caller committed them, nothing changed it since);
    None when it is not a read-only subvolume."""
    tree = system.layout.deployment(deployment_id)
    try:
        if not kernel.is_subvolume(tree) or not kernel.subvolume_is_readonly(tree):
            return None
        if not synced:
            kernel.sync_filesystem(tree)
        generation, ctransid = kernel.subvolume_generation(tree)
        return [kernel.subvolume_id(tree), generation, ctransid]
    except OSError:
        return None


def record_intact(system: System, deployment_id: str, synced: bool = False) -> None:
    """Remember that the deployment, as it is now, is what its packages make (it was just
    built from verified packages, or just passed the check). Best effort: without the
    record the next update walks the base. synced: the filesystem was synced after the
    deployment's last change (as a build does when it makes it read-only), so its numbers
    are committed already and are read without another sync."""
    mark = _mark(system, deployment_id, synced)
    if mark is None:
        return
    try:
        write_atomically(system.layout.root / MARK_NAME,
                         json.dumps({"deployment": deployment_id, "mark": mark}).encode())
    except OSError as e:
        log.debug("intact mark not written: %s", e)


def intact(system: System, deployment_id: str) -> bool:
    """Whether the deployment is unchanged since record_intact: same subvolume, same
    generation and change transid, still read-only."""
    try:
        data = json.loads(read_limited(system.layout.root / MARK_NAME, 4096))
    except (OSError, ValueError, ReadRefused):
        return False
    if not isinstance(data, dict) or data.get("deployment") != deployment_id:
        return False
    mark = _mark(system, deployment_id)
    return mark is not None and data.get("mark") == mark


def _claimed_twice(store: Store, shas: list[str]) -> set[str]:
    """Paths more than one package of the base claims: only the last one's entry is on disk,
    so verify reports the others' as differing; that is the image, not damage."""
    seen: set[str] = set()
    twice: set[str] = set()
    for sha in dict.fromkeys(shas):
        if not store.has(sha):
            continue
        for e in store.file_list(sha)[1]:
            (twice if e.path in seen else seen).add(e.path)
    return twice


def reason(base_id: str, damage: tuple[str, ...]) -> str:
    """The line the deploy report gives for a full build forced by a damaged base."""
    shown = "; ".join(damage[:3]) + ("; ..." if len(damage) > 3 else "")
    files = "file differs" if len(damage) == 1 else "files differ"
    return f"deployment {base_id} is damaged ({len(damage)} {files} from its packages: {shown})"
