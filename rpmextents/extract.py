"""Extracting an extents RPM into a directory, the way ``rpm -i --root`` would."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host import kernel
from rpmextents.errors import ExtentsError, UnsafePathError
from rpmextents.files import Entry, EntryType, Extent, FileFlag
from rpmextents.index import align_up
from rpmextents.package import ExtentsPackage

# Errors that mean "this pair of files cannot share extents", so copying is the answer.
NO_REFLINK = (errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM)
MAX_SYMLINK_HOPS = 40


class ExtractError(ExtentsError):
    """A package that cannot be extracted into the destination."""


@dataclass(frozen=True)
class ExtractReport:
    entries: int
    placed: int  # entries written (ghosts and entries not selected are not)
    files: int
    reflinked: int
    copied: int
    bytes: int

    @property
    def method(self) -> str:
        if self.reflinked and self.copied:
            return "mixed"
        return "reflink" if self.reflinked else "copy" if self.copied else "none"


class Owners:
    """User and group names resolved through a root's etc/passwd and etc/group, as rpm does."""

    def __init__(self, users: dict[str, int], groups: dict[str, int]) -> None:
        self.users = users
        self.groups = groups

    @staticmethod
    def _table(path: Path, id_field: int) -> dict[str, int]:
        table = {"root": 0}
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return table
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) > id_field and fields[0] and fields[id_field].isdigit():
                table.setdefault(fields[0], int(fields[id_field]))
        return table

    @classmethod
    def from_root(cls, root: str | os.PathLike[str]) -> Owners:
        base = Path(root)
        return cls(cls._table(base / "etc/passwd", 2), cls._table(base / "etc/group", 2))

    def mode_and_ids(self, entry: Entry) -> tuple[int, int, int]:
        """Permission bits, uid and gid as rpm applies them.

        rpm maps an unknown user or group to root and then drops the set-user-ID
        or set-group-ID bit, so that a name it could not resolve never yields a
        set-id root file.
        """
        mode = stat.S_IMODE(entry.mode)
        uid = self.users.get(entry.user)
        gid = self.groups.get(entry.group)
        if uid is None:
            uid, mode = 0, mode & ~stat.S_ISUID
        if gid is None:
            gid, mode = 0, mode & ~stat.S_ISGID
        return mode, uid, gid


class Tree:
    """A destination directory; every path is resolved inside it as if chrooted.

    Directory symlinks are followed the way rpm follows them under --root, but a
    symlink whose target climbs out of the tree is refused rather than clamped.
    Entries are created relative to an open descriptor of their parent, which
    saves a path lookup per file.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.fspath(root)
        self._dirs: dict[str, str] = {"": ""}  # logical dir -> resolved relative dir
        self._fd_rel: str | None = None
        self._fd = -1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd, self._fd_rel = -1, None

    def real(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _resolve_dir(self, rel: str, hops: int = 0, create: bool = True) -> str:
        known = self._dirs.get(rel)
        if known is not None:
            return known
        parent, _, name = rel.rpartition("/")
        base = self._resolve_dir(parent, hops, create)
        candidate = f"{base}/{name}" if base else name
        real = self.real(candidate)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(real, 0o755)  # rpm creates missing parents as root:root 0755
            self._dirs[rel] = candidate
            return candidate
        if stat.S_ISLNK(st.st_mode):
            if hops >= MAX_SYMLINK_HOPS:
                raise UnsafePathError(f"too many levels of symlinks at /{rel}")
            target = os.readlink(real)
            joined = target if target.startswith("/") else "/" + posixpath.join(base, target)
            if _climbs_out(joined):
                raise UnsafePathError(f"/{rel} is a symlink to {target!r}, outside the destination")
            resolved = self._resolve_dir(posixpath.normpath(joined).lstrip("/"), hops + 1, create)
            self._dirs[rel] = resolved
            return resolved
        if not stat.S_ISDIR(st.st_mode):
            raise ExtractError(f"/{rel} is in the way: not a directory")
        self._dirs[rel] = candidate
        return candidate

    def place(self, path: str) -> tuple[int, str, str]:
        """(parent directory fd, name, resolved relative path) of a package path.

        Missing parents are created; the fd stays valid until the next call.
        """
        parent, _, name = path.lstrip("/").rpartition("/")
        real_parent = self._resolve_dir(parent)
        return self._enter(real_parent), name, f"{real_parent}/{name}" if real_parent else name

    def find(self, path: str) -> tuple[int, str]:
        """(parent directory fd, name) of an existing path's parent, resolved like place();
        FileNotFoundError when a parent is missing, which find() does not create."""
        parent, _, name = path.lstrip("/").rpartition("/")
        return self._enter(self._resolve_dir(parent, create=False)), name

    def _enter(self, real_parent: str) -> int:
        if real_parent != self._fd_rel:
            self.close()
            self._fd = os.open(self.real(real_parent), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._fd_rel = real_parent
        return self._fd

    def note_dir(self, path: str, real_rel: str) -> None:
        self._dirs[path.lstrip("/")] = real_rel


def _climbs_out(path: str) -> bool:
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part and part != ".":
            depth += 1
    return False


class DataWriter:
    """Puts an extent's data into a new file: a reflink where possible, else a copy."""

    def __init__(self, pkg: ExtentsPackage, method: str) -> None:
        if method not in ("auto", "reflink", "copy"):
            raise ValueError(f"unknown extract method {method!r}")
        self.pkg = pkg
        self.method = method
        self.reflinked = 0
        self.copied = 0

    def write(self, extent: Extent, fd: int) -> None:
        if self.method != "copy":
            try:
                length = align_up(extent.length, self.pkg.block_size)
                kernel.clone_range(self.pkg.fileno(), extent.offset, length, fd, 0)
                os.ftruncate(fd, extent.length)
                self.reflinked += 1
                return
            except OSError as e:
                if self.method == "reflink" or e.errno not in NO_REFLINK:
                    raise
                self.method = "copy"  # one failure means the pair can't share extents
        self._copy(extent, fd)
        self.copied += 1

    def _copy(self, extent: Extent, fd: int) -> None:
        src = self.pkg.fileno()
        done = 0
        try:
            while done < extent.length:
                n = os.copy_file_range(src, fd, extent.length - done, extent.offset + done, done)
                if n == 0:
                    break
                done += n
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        for chunk in self.pkg.read_extent(Extent(extent.offset + done, extent.length - done)):
            done += os.pwrite(fd, chunk, done)


def _apply_meta(entry: Entry, owners: Owners, fd: int | None, name: str, dir_fd: int | None) -> None:
    mode, uid, gid = owners.mode_and_ids(entry)
    if fd is not None:
        os.fchown(fd, uid, gid)  # before chmod: chown clears set-id bits
        os.fchmod(fd, mode)
        if entry.caps:
            kernel.set_capabilities(fd, entry.caps)
        os.utime(fd, (entry.mtime, entry.mtime))
        return
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    if entry.type is not EntryType.SYMLINK:
        os.chmod(name, mode, dir_fd=dir_fd)
    os.utime(name, (entry.mtime, entry.mtime), dir_fd=dir_fd, follow_symlinks=False)


def _replacing(
    entry: Entry, at_fd: int, at_name: str, create: Callable[..., Any], /, *args: Any, **kw: Any
) -> Any:
    """Create an entry; what is in the way is replaced, as rpm does, unless it is a directory."""
    try:
        return create(*args, **kw)
    except FileExistsError:
        if stat.S_ISDIR(os.lstat(at_name, dir_fd=at_fd).st_mode):
            raise ExtractError(f"{entry.path}: a directory is in the way") from None
        os.unlink(at_name, dir_fd=at_fd)
    return create(*args, **kw)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _new_file(entry: Entry, dir_fd: int, name: str) -> int:
    fd: int = _replacing(entry, dir_fd, name, os.open, name, _NEW_FILE, 0o600, dir_fd=dir_fd)
    return fd


def _make_dir(entry: Entry, dir_fd: int, name: str) -> bool:
    """Create a directory; False when a symlink to one already stands there (rpm keeps it)."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        return True
    except FileExistsError:
        st = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISDIR(st.st_mode):
            return True
        if stat.S_ISLNK(st.st_mode) and stat.S_ISDIR(os.stat(name, dir_fd=dir_fd).st_mode):
            return False
        raise ExtractError(f"{entry.path}: something that is not a directory is in the way") from None


Relocate = Callable[[str], str]
_GHOST = int(FileFlag.GHOST)


def extract(
    pkg: ExtentsPackage,
    dest: str | os.PathLike[str],
    *,
    method: str = "auto",
    owners: Owners | None = None,
    relocate: Relocate | None = None,
    only: Collection[int] | None = None,
) -> ExtractReport:
    """Extract ``pkg`` into ``dest`` as ``rpm -i --root DEST --nodeps --noscripts`` would.

    ``relocate`` maps a package path to the path to create (deploy puts files
    outside /usr under /usr/share/factory); ``owners`` defaults to DEST's own
    etc/passwd and etc/group. ``only`` limits the work to the entries with these
    indices (an update rewriting part of a tree); a hardlinked file is linked only
    to the members of its group that are selected too.
    """
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    tree = Tree(root)
    owners = owners if owners is not None else Owners.from_root(root)
    writer = DataWriter(pkg, method)
    links: dict[int, str] = {}
    dirs: list[tuple[str, Entry]] = []
    files = 0
    placed = 0
    written = 0
    entries = pkg.entries()
    try:
        for entry in entries:
            if entry.flags & _GHOST:
                continue  # rpm records %ghost files but does not create them
            if only is not None and entry.index not in only:
                continue
            placed += 1
            target = relocate(entry.path) if relocate is not None else entry.path
            if not target.strip("/"):
                # The destination itself (a package owning "/", or "/usr" relocated to a
                # /usr tree): rpm applies the directory's metadata to it.
                if entry.type is not EntryType.DIR:
                    raise ExtractError(f"{entry.path}: only a directory can stand at the top of the tree")
                dirs.append((tree.real(""), entry))
                continue
            try:
                dir_fd, name, real = tree.place(target)
                etype = entry.type
                if etype is EntryType.FILE:
                    key = entry.hardlink_key
                    if key is not None and key in links:
                        _replacing(entry, dir_fd, name, os.link, links[key], name, dst_dir_fd=dir_fd)
                        continue
                    fd = _new_file(entry, dir_fd, name)
                    try:
                        if entry.extent is not None:
                            writer.write(entry.extent, fd)
                            written += entry.extent.length
                        _apply_meta(entry, owners, fd, name, dir_fd)
                    finally:
                        os.close(fd)
                    files += 1
                    if key is not None:
                        links[key] = tree.real(real)
                elif etype is EntryType.DIR:
                    if _make_dir(entry, dir_fd, name):
                        tree.note_dir(target, real)
                        dirs.append((tree.real(real), entry))
                elif etype is EntryType.SYMLINK:
                    _replacing(entry, dir_fd, name, os.symlink, entry.linkto, name, dir_fd=dir_fd)
                    _apply_meta(entry, owners, None, name, dir_fd)
                else:
                    _replacing(entry, dir_fd, name, os.mknod, name, entry.mode, entry.rdev, dir_fd=dir_fd)
                    _apply_meta(entry, owners, None, name, dir_fd)
            except OSError as e:
                raise ExtractError(f"{entry.path}: {e.strerror or e}") from e
        # Directory metadata last and deepest first, so adding entries doesn't change their mtimes.
        for real_path, entry in reversed(dirs):
            try:
                _apply_meta(entry, owners, None, real_path, None)
            except OSError as e:
                raise ExtractError(f"{entry.path}: {e.strerror or e}") from e
    finally:
        tree.close()
    return ExtractReport(
        entries=len(entries), placed=placed, files=files, reflinked=writer.reflinked, copied=writer.copied, bytes=written
    )
