"""Marks that spare a deploy re-hashing store entries the filesystem shows unchanged.

A full build reads every store entry, so it hashed every one of them again first (a fifth of
its time): the store lives on the deployments' filesystem, where someone with a foothold may
have changed it since it was verified. An entry that hashed to its name gets a mark instead:
a digest of the btrfs items that say what the file holds, kept in TOP/@rpmimg/store-checked.json.
While an entry's items are those of its mark, its bytes are those that were hashed; any other
mark, or none, means hashing it again.

The items are everything the entry's subvolume tree keys by its inode, from the inode item to
the file extent items (with its names and xattrs between them). btrfs never rewrites file data
in place unless the inode is NODATACOW or PREALLOC: a write, a truncate, a clone or dedupe into
the file, fallocate or hole punching replace extent items, and every new extent item carries the
transaction that wrote it, so no later change brings back an earlier item, not even one reusing
a freed disk address. chmod, chown, chattr, utime, link and rename rewrite the inode item or the
names; a file put in the entry's place is another inode with a younger inode generation. Inodes
that may be written in place (NODATACOW, PREALLOC) or whose data btrfs does not checksum
(NODATASUM) get no mark. Two fields are left out of the inode item: its transid and atime,
which a mere read rewrites (relatime, once a day), so reads by anyone keep a mark valid.

btrfs delays inode items and extent items until its transaction commits, so the filesystem is
synced before any items are read: a change made before that shows. A mark is made only when
the items read before hashing are still those after hashing (synced again): a change made
while the entry was hashed is never taken into the mark.

What a mark does not cover: writes to the block device beneath the filesystem (btrfs's data
checksums would have to be forged too), and a mark file forged by someone who can already
write TOP/@rpmimg as root, which holds the state and the intact mark of deploy.basecheck as
well. So the file is only read when it is a regular file (not a link) owned by this user and
writable by no one else, and it is written with mode 0600; anything else in it is ignored.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from host import digest, kernel
from host.files import write_atomically
from host.log import get as logger

log = logger(__name__)

FORMAT = 1
# A mark is about 140 bytes in the file: ten thousand store entries take 1.4 MB.
MAX_BYTES = 64 << 20

# btrfs_inode.h: inodes whose data may be overwritten in place, or is not checksummed
_INODE_NODATASUM = 1 << 0
_INODE_NODATACOW = 1 << 1
_INODE_PREALLOC = 1 << 4
_UNMARKABLE = _INODE_NODATASUM | _INODE_NODATACOW | _INODE_PREALLOC
# struct btrfs_inode_item: generation, transid, size, nbytes, block_group, nlink, uid, gid,
# mode, rdev, flags, sequence, reserved[4], atime, ctime, mtime, otime (btrfs_timespec: u64, u32)
_TRANSID = slice(8, 16)
_FLAGS = slice(64, 72)
_ATIME = slice(112, 124)
_INODE_ITEM_SIZE = 160

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def fingerprint(path: Path) -> str | None:
    """The digest of the btrfs items that say what the regular file at path holds (without
    following a symlink), or None when they can't vouch for it: not btrfs, no privilege to
    read the tree, an inode whose data may change in place, anything unreadable."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        items = kernel.inode_items(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not items or items[0].type != kernel.BTRFS_INODE_ITEM_KEY or len(items[0].data) != _INODE_ITEM_SIZE:
        return None
    inode = bytearray(items[0].data)
    if int.from_bytes(inode[_FLAGS], "little") & _UNMARKABLE:
        return None
    inode[_TRANSID] = bytes(8)
    inode[_ATIME] = bytes(12)
    # A few hundred bytes for a few extents: hashed at hand, with the size known (an unknown
    # size would load libcrypto, 3.5 MB, into a deploy that otherwise never needs it).
    parts = []
    for item, data in zip(items, [bytes(inode), *(i.data for i in items[1:])], strict=True):
        parts.append(b"%d %d %d %d\n" % (item.objectid, item.type, item.offset, len(data)))
        parts.append(data)
    return digest.of("sha256", b"".join(parts)).hexdigest()


class StoreMarks:
    """The marks of one store, read from (and saved to) the file at path."""

    def __init__(self, path: Path, store_root: Path) -> None:
        self.path = path
        self.store_root = store_root
        self._marks = self._read()
        self._changed = False

    def _read(self) -> dict[str, str]:
        try:
            fd = os.open(self.path, _READ_FLAGS)
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.debug("store marks not read: %s", e)
            return {}
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                    or st.st_mode & 0o022 or st.st_size > MAX_BYTES):
                log.warning("%s: ignored (not a regular file of this user writable only by it,"
                            " or too large)", self.path)
                return {}
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as e:
            log.debug("store marks not read: %s", e)
            return {}
        finally:
            os.close(fd)
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        marks = data.get("marks") if isinstance(data, dict) and data.get("format") == FORMAT else None
        if (len(raw) > MAX_BYTES or not isinstance(marks, dict)
                or not all(digest.is_sha256_hex(k) and digest.is_sha256_hex(v) for k, v in marks.items())):
            log.warning("%s: ignored (not a store marks file)", self.path)
            return {}
        return marks

    def vouches(self, sha256: str, mark: str | None) -> bool:
        return mark is not None and self._marks.get(sha256) == mark

    def check(self, paths: dict[str, Path], damaged: Callable[[list[str]], set[str]]) -> set[str]:
        """Which of the entries (sha256 -> path) are damaged: damaged(shas) hashes those
        no mark vouches for; those it finds intact are marked, unless they changed meanwhile."""
        kernel.sync_filesystem(self.store_root)
        before = {sha: fingerprint(path) for sha, path in paths.items()}
        unvouched = [sha for sha, mark in before.items() if not self.vouches(sha, mark)]
        found = damaged(unvouched) if unvouched else set()
        for sha in found:
            self._forget(sha)
        fresh = [sha for sha in unvouched if sha not in found and before[sha] is not None]
        if fresh:
            kernel.sync_filesystem(self.store_root)
            for sha in fresh:
                mark = before[sha]
                if mark is not None and fingerprint(paths[sha]) == mark:
                    self._marks[sha] = mark
                    self._changed = True
        return found

    def mark(self, paths: dict[str, Path]) -> None:
        """Mark entries (sha256 -> path) known to hold what hashed to their names, without
        hashing them here: the store's own additions, hashed as they were added (Store.add).
        The filesystem is synced first, so that the marks are of what is on disk."""
        kernel.sync_filesystem(self.store_root)
        for sha, path in paths.items():
            mark = fingerprint(path)
            if mark is not None and self._marks.get(sha) != mark:
                self._marks[sha] = mark
                self._changed = True

    def _forget(self, sha256: str) -> None:
        if self._marks.pop(sha256, None) is not None:
            self._changed = True

    def save(self, present: Callable[[str], bool]) -> None:
        """Write the marks (of the entries still present) if they changed. Best effort:
        without them the next full deploy hashes again."""
        if not self._changed:
            return
        kept = {sha: mark for sha, mark in sorted(self._marks.items()) if present(sha)}
        try:
            write_atomically(self.path, json.dumps({"format": FORMAT, "marks": kept}).encode(), mode=0o600)
        except OSError as e:
            log.debug("store marks not written: %s", e)
            return
        self._changed = False
