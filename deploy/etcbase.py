"""What a deployment records about its /etc merge, inside its read-only /usr.

``lib/sysimage/rpmimg/etc-merge.json``: ``{"merged_from": ID or null, "actions": [...]}``, the
merge's actions (EtcMerge.to_json) and the deployment whose root it merged (``rpmimg diff --etc``).
``lib/sysimage/rpmimg/etc-base/``: what first-boot sync (packaging/dracut/95rpmimg/
rpmimg-etc-sync.sh) needs to carry edits made in the old root after the deploy:

- ``old-deployment``: one line, the id of the deployment whose root was merged;
- ``entries``: one line per entry of that root's /etc when it was merged,
  ``TYPE MODE UID GID DIGEST PATH``: TYPE f (regular file), d, l (symlink) or o (other);
  MODE the permission bits in octal as ``stat -c %a`` prints them; DIGEST the sha256 of a
  file's content or of a symlink's target, else "-"; PATH relative to /etc, the rest of the line;
- ``stamps``: the same entries as ``TYPE MODE UID GID INODE CTIME PATH``, CTIME as
  ``stat -c %.9Z`` prints it: the new root is a snapshot of the old one, so an entry nobody
  touched since keeps its inode and ctime, and the sync hashes only the entries that differ;
- ``merged``: one line per path (relative to /etc) the merge changed in the new root.

A first deployment (or a reset) has no old root: it writes neither old-deployment nor
merged, and its entries and stamps are those of its own root's /etc as the merge left it
(record_after), for its first update to take the digests of untouched files from.

Paths holding a newline have no line of their own; the sync script leaves them alone.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from host import digest as _digest
from host import kernel

if TYPE_CHECKING:
    from deploy.etcmerge import EtcMerge

RECORD_DIR = "lib/sysimage/rpmimg"
MERGE_RECORD = f"{RECORD_DIR}/etc-merge.json"
BASE_DIR = f"{RECORD_DIR}/etc-base"
_SUFFIXED = ("rpmnew", "rpmsave", "rpmorig")  # actions that write PATH.<action>
# Actions that leave PATH itself as the administrator had it: a later edit there is no conflict.
_PATH_KEPT = ("rpmnew", "kept", "kept-vendor-changed", "blocked")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class BaseEntry:
    """One /etc entry as a deployment's root had it after the merge: its type, metadata and digest."""

    path: str    # relative to /etc
    type: str    # f, d, l or o
    mode: int    # permission bits
    uid: int
    gid: int
    digest: str  # sha256 of a file's content or a symlink's target, else "-"
    ino: int = 0
    ctime_ns: int = 0

    def line(self) -> str:
        return f"{self.type} {self.mode:o} {self.uid} {self.gid} {self.digest} {self.path}"

    def recorded(self) -> tuple[Stamp, str]:
        """(its stamp, its digest): what a record holds of a file (Recorded's values)."""
        return (self.mode, self.uid, self.gid, self.ino, self.ctime_ns), self.digest

    def stamp(self) -> str:
        ctime = f"{self.ctime_ns // 10**9}.{self.ctime_ns % 10**9:09d}"
        return f"{self.type} {self.mode:o} {self.uid} {self.gid} {self.ino} {ctime} {self.path}"


def _sha256_file(dir_fd: int, name: str) -> str:
    fd = os.open(name, _READ, dir_fd=dir_fd)
    try:
        h = _digest.new("sha256", os.fstat(fd).st_size)
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


# A regular file as a stamp shows it: mode, uid, gid, inode number, ctime in ns.
Stamp = tuple[int, int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    """The stamp of a file as stat gives it (what a recorded digest is held to)."""
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_ino, st.st_ctime_ns


# path (relative to /etc) -> (its stamp, the sha256 of its content) of the files a record holds
Recorded = Mapping[str, tuple[Stamp, str]]


def _walk(dir_fd: int, prefix: str, recorded: Recorded) -> Iterator[BaseEntry]:
    for item in sorted(os.scandir(dir_fd), key=lambda d: d.name):
        rel = f"{prefix}{item.name}"
        st = item.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            hit = recorded.get(rel)
            if hit is not None and hit[0] == stamp_of(st):
                kind, digest = "f", hit[1]  # untouched since it was recorded: no write keeps a ctime
            else:
                kind, digest = "f", _sha256_file(dir_fd, item.name)
        elif stat.S_ISLNK(mode):
            kind = "l"
            digest = _digest.of("sha256", os.fsencode(os.readlink(item.name, dir_fd=dir_fd))).hexdigest()
        elif stat.S_ISDIR(mode):
            kind, digest = "d", "-"
        else:
            kind, digest = "o", "-"
        if "\n" not in rel:
            yield BaseEntry(rel, kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, digest, st.st_ino,
                            st.st_ctime_ns)
        if kind == "d":
            sub = os.open(item.name, _DIR, dir_fd=dir_fd)
            try:
                yield from _walk(sub, rel + "/", recorded)
            finally:
                os.close(sub)


def record_base(root_fd: int, recorded: Recorded | None = None) -> tuple[BaseEntry, ...]:
    """Every entry below the root's etc/ (not following symlinks); () when there is none.

    recorded: what an earlier record of this root's subvolume holds (recorded_files): a
    file with the inode number, ctime, mode and owner a stamp there gives it has that
    stamp's digest, and is not read again (the root is a snapshot of the one recorded, whose
    inodes keep their numbers and times; any write, chmod, chown or rename sets a new ctime)."""
    try:
        fd = kernel.open_beneath(root_fd, "etc", _DIR)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return ()
        raise
    try:
        return tuple(_walk(fd, "", recorded or {}))
    finally:
        os.close(fd)


def record_after(root_fd: int, merge: EtcMerge) -> tuple[BaseEntry, ...]:
    """The root's /etc entries as the merge left them (as record_base gives them): the files
    the merge did not touch keep the stamps, and so take the digests, its base recorded."""
    return record_base(root_fd, {e.path: e.recorded() for e in merge.base if e.type == "f"})


def recorded_files(usr: str | os.PathLike[str]) -> dict[str, tuple[Stamp, str]]:
    """The regular files the etc-base record of a /usr tree holds, with their stamps and
    digests (record_base's `recorded`): {} when it has none, or when its entries and stamps
    do not pair line by line as write_records writes them (nothing is taken from it then)."""
    try:
        root = os.open(usr, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            texts = [_read_record(root, f"{BASE_DIR}/{name}") for name in ("entries", "stamps")]
        finally:
            os.close(root)
        found = {}
        entries, stamps = (t.decode("utf-8", "surrogateescape").split("\n") for t in texts)
        if len(entries) != len(stamps) or entries[-1] != "" or stamps[-1] != "":
            return {}
        for line, stamp in zip(entries[:-1], stamps[:-1], strict=True):
            kind, mode, uid, gid, digest, path = line.split(" ", 5)
            kind2, mode2, uid2, gid2, ino, ctime, path2 = stamp.split(" ", 6)
            if (kind, mode, uid, gid, path) != (kind2, mode2, uid2, gid2, path2):
                return {}
            if kind != "f":
                continue
            sec, _, ns = ctime.partition(".")
            if not _digest.SHA256_HEX.fullmatch(digest) or len(ns) != 9 or not (sec + ns).isdigit():
                return {}
            found[path] = ((int(mode, 8), int(uid), int(gid), int(ino), int(sec) * 10**9 + int(ns)), digest)
        return found
    except (OSError, ValueError):
        return {}


def _read_record(root_fd: int, rel: str) -> bytes:
    fd = kernel.open_beneath(root_fd, rel, _READ)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", rel)
        return f.read(64 << 20)


def _mkdirs(usr_fd: int, rel: str) -> int:
    """An fd of usr_fd/rel, created (root's, 0755) as needed, following no symlink."""
    fd = os.dup(usr_fd)
    try:
        for name in rel.split("/"):
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = kernel.open_beneath(fd, name, os.O_RDONLY | os.O_DIRECTORY)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write(dir_fd: int, name: str, data: bytes) -> None:
    """A file of the new /usr tree, made whole under a temporary name. Not synced here: the
    tree is synced whole (build._finish) before the state names the deployment."""
    tmp = f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                 dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_records(usr_fd: int, merge: EtcMerge, old_deployment: str | None,
                  after: tuple[BaseEntry, ...] = ()) -> None:
    """Record the merge and its base in the new /usr tree (before it is made read-only).

    old_deployment: the id of the deployment whose root the new root was made from, or
    None (first deployment, reset): then there is nothing to carry over at first boot, no
    old-deployment is written (so the sync does nothing), and entries and stamps hold
    after: the new root's own /etc as the merge left it (record_after), which the first
    update takes its digests from (recorded_files) instead of reading every file again.
    """
    if old_deployment is not None and ("\n" in old_deployment or "/" in old_deployment):
        raise ValueError(f"bad deployment id {old_deployment!r}")
    fd = _mkdirs(usr_fd, RECORD_DIR)
    try:
        record = {"merged_from": old_deployment, "actions": merge.to_json()}
        _write(fd, "etc-merge.json", json.dumps(record, indent=1).encode() + b"\n")
    finally:
        os.close(fd)
    if old_deployment is None and not after:
        return
    entries = merge.base if old_deployment is not None else after
    fd = _mkdirs(usr_fd, BASE_DIR)
    try:
        _write(fd, "entries", "".join(e.line() + "\n" for e in entries).encode("utf-8", "surrogateescape"))
        _write(fd, "stamps", "".join(e.stamp() + "\n" for e in entries).encode("utf-8", "surrogateescape"))
        if old_deployment is None:
            return
        # Last: the sync script takes a record with this file as one to carry edits by.
        _write(fd, "old-deployment", old_deployment.encode() + b"\n")
        merged = sorted(p[len("/etc/"):] for p in merged_paths(merge))
        _write(fd, "merged", "".join(p + "\n" for p in merged if "\n" not in p)
               .encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class MergeRecord:
    """A root's /etc merge as recorded: the deployment it was merged from, and the merge."""

    merged_from: str | None  # the deployment whose root was merged; None: a first root or reset
    merge: EtcMerge


def merged_paths(merge: EtcMerge) -> set[str]:
    """The image paths whose entry in the new root the merge wrote or removed."""
    paths = set()
    for a in merge.actions:
        if not a.path.startswith("/etc/"):
            continue
        if a.action not in _PATH_KEPT:
            paths.add(a.path)
        if a.action in _SUFFIXED:
            paths.add(f"{a.path}.{a.action}")
    return paths


def read_merge_record(usr: str | os.PathLike[str]) -> MergeRecord | None:
    """The merge a /usr tree records, or None when it records none (built before this).

    ValueError (naming the file) when the record is damaged.
    """
    from deploy.etcmerge import EtcMerge

    root = os.open(usr, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = kernel.open_beneath(root, MERGE_RECORD, os.O_RDONLY)
    except FileNotFoundError:
        return None
    finally:
        os.close(root)
    with os.fdopen(fd, "rb") as f:
        data = f.read(64 << 20)
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        merged_from = record.get("merged_from")
        if merged_from is not None and not isinstance(merged_from, str):
            raise ValueError("merged_from is not a deployment id")
        return MergeRecord(merged_from, EtcMerge.from_json(record.get("actions")))
    except ValueError as e:
        raise ValueError(f"{os.fspath(usr)}/{MERGE_RECORD}: {e}") from e
