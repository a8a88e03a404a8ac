"""Build a deployment's /usr tree from extents RPMs: reflink the data, create the rest.

Paths are relocated: /usr/X becomes X in the tree, and a path outside /usr goes under
share/factory/ with its original path (systemd's place for vendor defaults), because
a deployment is only a /usr.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.owners import Owners
from rpmextents import Entry, EntryType, ExtentsPackage, kernel

FACTORY = "share/factory"
HEADER_DIR = "lib/sysimage/packages"
_NO_REFLINK = (errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.ENOSYS)


def relocate(path: str) -> tuple[str, bool]:
    """The entry's path relative to the tree, and whether it lies outside /usr."""
    if path == "/usr":
        return "", False
    if path.startswith("/usr/"):
        return path[len("/usr/") :], False
    return f"{FACTORY}{path.rstrip('/')}", True


def header_file_name(pkg: ExtentsPackage) -> str:
    return f"{pkg.name}-{pkg.version}-{pkg.release}.{pkg.arch}.rpm"


def align_up(n: int, block: int) -> int:
    return (n + block - 1) // block * block


@dataclass
class TreeStats:
    files: int = 0
    reflinked: int = 0
    copied: int = 0
    bytes: int = 0
    outside_usr: dict[str, list[str]] = field(default_factory=dict)


def _copy_range(src_fd: int, offset: int, length: int, dst_fd: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(src_fd, dst_fd, length - done, offset + done, done)
        if n == 0:
            raise OSError(errno.EIO, "unexpected end of package data", "")
        done += n


class TreeBuilder:
    """Writes package entries into a directory (a new subvolume) that becomes /usr."""

    def __init__(self, root: Path, owners: Owners) -> None:
        self.root = root
        self.owners = owners
        self.stats = TreeStats()
        # Directory metadata is applied last: creating entries inside changes mtimes.
        self._dirs: dict[str, Entry] = {}

    def target(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def _parent(self, path: Path) -> None:
        os.makedirs(path.parent, mode=0o755, exist_ok=True)

    def _clear(self, path: Path) -> None:
        # A file listed by two packages: the later one wins, as with rpm -i in order.
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", os.fspath(path))
        os.unlink(path)

    def _write_data(self, pkg: ExtentsPackage, entry: Entry, fd: int) -> None:
        if entry.extent is None or entry.size == 0:
            return
        ext = entry.extent
        try:
            kernel.clone_range(pkg.fileno(), ext.offset, align_up(ext.length, pkg.block_size), fd, 0)
            os.ftruncate(fd, ext.length)
            self.stats.reflinked += 1
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
            # Not on the store's btrfs (or no reflink support): copy instead.
            os.ftruncate(fd, 0)
            _copy_range(pkg.fileno(), ext.offset, ext.length, fd)
            self.stats.copied += 1
        self.stats.bytes += ext.length

    def _set_meta_fd(self, fd: int, entry: Entry) -> None:
        # chown first: it clears setuid bits and capabilities.
        os.fchown(fd, self.owners.uid(entry.user), self.owners.gid(entry.group))
        os.fchmod(fd, stat.S_IMODE(entry.mode))
        if entry.caps:
            kernel.set_capabilities(fd, entry.caps)
        os.utime(fd, ns=(entry.mtime * 10**9, entry.mtime * 10**9))

    def write_entry(self, pkg: ExtentsPackage, entry: Entry, links: dict[int, Path]) -> None:
        """Create one entry (not a directory: see finish) at its relocated path."""
        rel, _ = relocate(entry.path)
        path = self.target(rel)
        self._parent(path)
        if entry.type is EntryType.DIR:
            os.makedirs(path, mode=0o755, exist_ok=True)
            self._dirs[rel] = entry
            return
        self._clear(path)
        if entry.type is EntryType.FILE:
            if entry.hardlink_key is not None and entry.hardlink_key in links:
                os.link(links[entry.hardlink_key], path)
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                self._write_data(pkg, entry, fd)
                self._set_meta_fd(fd, entry)
            finally:
                os.close(fd)
            self.stats.files += 1
            if entry.hardlink_key is not None:
                links[entry.hardlink_key] = path
        elif entry.type is EntryType.SYMLINK:
            os.symlink(entry.linkto, path)
            os.lchown(path, self.owners.uid(entry.user), self.owners.gid(entry.group))
            ns = entry.mtime * 10**9
            os.utime(path, ns=(ns, ns), follow_symlinks=False)
        else:
            os.mknod(path, entry.mode, entry.rdev)
            os.chown(path, self.owners.uid(entry.user), self.owners.gid(entry.group))
            os.chmod(path, stat.S_IMODE(entry.mode))
            ns = entry.mtime * 10**9
            os.utime(path, ns=(ns, ns))

    def add_package(self, pkg: ExtentsPackage, entries: Iterable[Entry] | None = None) -> None:
        """Write every installable entry of pkg (ghosts are not created, as with rpm)."""
        links: dict[int, Path] = {}
        outside: list[str] = []
        for entry in pkg.entries() if entries is None else entries:
            if entry.ghost:
                continue
            if relocate(entry.path)[1]:
                outside.append(entry.path)
            self.write_entry(pkg, entry, links)
        if outside:
            self.stats.outside_usr[pkg.nevra] = outside

    def write_header(self, pkg: ExtentsPackage) -> None:
        """Store pkg's lead, signature and header as lib/sysimage/packages/N-V-R.A.rpm."""
        path = self.target(HEADER_DIR) / header_file_name(pkg)
        self._parent(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(pkg.header_bytes())

    def set_dir_meta(self, rel: str, entry: Entry) -> None:
        path = self.target(rel)
        os.chown(path, self.owners.uid(entry.user), self.owners.gid(entry.group))
        os.chmod(path, stat.S_IMODE(entry.mode))
        ns = entry.mtime * 10**9
        os.utime(path, ns=(ns, ns))

    def finish(self) -> None:
        """Apply directory metadata, deepest first (after everything inside them exists)."""
        for rel in sorted(self._dirs, key=lambda r: r.count("/") if r else -1, reverse=True):
            self.set_dir_meta(rel, self._dirs[rel])
