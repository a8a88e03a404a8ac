"""Extracting an extents RPM into a directory, the way ``rpm -i --root`` would."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host import kernel
from host.kernel import NO_REFLINK
from rpmextents.files import Entry, EntryType, Extent, FileFlag
from rpmextents.index import align_up
from rpmextents.tree import ExtractError, Relocation, Tree

if TYPE_CHECKING:  # the package is opened by the caller: a verify reads none
    from rpmextents.package import ExtentsPackage

__all__ = ["NO_REFLINK", "DeferredDirs", "ExtractError", "ExtractReport", "Owners", "Relocation", "Tree",
           "extract"]


@dataclass(frozen=True)
class ExtractReport:
    """What an extraction did: entries, those placed, files made and how their data got there."""

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
    def _table(root_fd: int, path: str, id_field: int) -> dict[str, int]:
        table = {"root": 0}
        try:
            # Inside the root as rpm reads it there, chrooted: its symlinks can't lead out.
            fd = kernel.open_in_root(root_fd, path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return table
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ExtractError(f"{path}: not a regular file")
            text = f.read().decode("utf-8", errors="surrogateescape")
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) > id_field and fields[0] and fields[id_field].isdigit():
                table.setdefault(fields[0], int(fields[id_field]))
        return table

    @classmethod
    def from_root(cls, root: str | os.PathLike[str]) -> Owners:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return cls(cls._table(fd, "etc/passwd", 2), cls._table(fd, "etc/group", 2))
        finally:
            os.close(fd)

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
                if length != extent.length:
                    # The clone ends at the block's end: cut it at the file's. (A truncate
                    # costs about as much as the clone; a file of whole blocks needs none.)
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


def _apply_meta(entry: Entry, owners: Owners, fd: int | None, name: str, dir_fd: int | None,
                meta: tuple[int, int, int] | None = None) -> None:
    """Owner, mode, capabilities and mtime of an entry just made; meta: its
    owners.mode_and_ids when the caller has it already."""
    mode, uid, gid = meta if meta is not None else owners.mode_and_ids(entry)
    if fd is not None:
        # Owner and mode set only where the kernel made them otherwise (the umask, a
        # set-group-ID directory's group, set-id bits a file is made without): each is an
        # inode update, and most files and directories are made as they should be.
        _set_meta(fd, mode, uid, gid)
        if entry.caps and entry.type is EntryType.FILE:
            kernel.set_capabilities(fd, entry.caps)
        os.utime(fd, (entry.mtime, entry.mtime))
        return
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    if entry.type is not EntryType.SYMLINK:
        os.chmod(name, mode, dir_fd=dir_fd)  # a node made just now, by name in its parent's fd
    os.utime(name, (entry.mtime, entry.mtime), dir_fd=dir_fd, follow_symlinks=False)


def _replacing(
    tree: Tree, entry: Entry, at_fd: int, at_name: str, create: Callable[..., Any], /, *args: Any, **kw: Any
) -> Any:
    """Create an entry; what is in the way is replaced, as rpm does, unless it is a directory."""
    try:
        return create(*args, **kw)
    except FileExistsError:
        _clear(tree, entry, at_fd, at_name)
    return create(*args, **kw)


def _clear(tree: Tree, entry: Entry, at_fd: int, at_name: str) -> None:
    """Remove what stands where entry is to be made, unless it is a directory."""
    mode = os.lstat(at_name, dir_fd=at_fd).st_mode
    if stat.S_ISDIR(mode):
        raise ExtractError(f"{entry.path}: a directory is in the way") from None
    os.unlink(at_name, dir_fd=at_fd)
    if stat.S_ISLNK(mode):
        tree.forget(entry.path)  # paths below it may have been resolved through it


_SPECIAL = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_EMPTIED = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KEPT_XATTRS = frozenset({"security.selinux"})  # the label a new file there would get too


def _emptied(dir_fd: int, name: str) -> int | None:
    """A file standing where a file is to be made, opened emptied and bare (mode 0600, no
    extended attributes but its SELinux label), to be written and given its metadata as a
    new one is; or None: make a new one (the path is something else, one of several names
    of its inode, or refuses to be emptied).

    An update writes over files of the previous deployment's snapshot: on btrfs, emptying
    and refilling the inode costs half what unlinking it and making another does (the
    directory's entries and a new inode item are not rewritten)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None  # other names of a hardlinked inode keep their content
        fd = os.open(name, _EMPTIED, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or now.st_nlink != 1:
            raise OSError(errno.ESTALE, "replaced while it was opened")
        # Root's and 0600 while the new data is written, as a new file is made (set-id bits
        # and capabilities go with emptying, the kernel's killpriv, but root's set-id bits).
        if (now.st_uid, now.st_gid) != (0, 0):
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o600)
        for attr in os.listxattr(fd):
            if attr not in _KEPT_XATTRS:
                os.removexattr(fd, attr)
    except OSError:
        os.close(fd)
        return None
    return fd


def _make_dir(tree: Tree, entry: Entry, dir_fd: int, name: str) -> int | None:
    """Create a directory; the mode of the one that stood there already (0: made now), or
    None when a symlink to one stands there (rpm keeps it)."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        return 0
    except FileExistsError:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
        if stat.S_ISDIR(mode):
            return mode
        if stat.S_ISLNK(mode):
            try:
                tree.resolve_dir(entry.path, create=False)  # in the image, as rpm follows it
                return None
            except (OSError, ExtractError):
                pass
        raise ExtractError(f"{entry.path}: something that is not a directory is in the way") from None


_GHOST = int(FileFlag.GHOST)


class DeferredDirs:
    """Directory metadata of several extractions into one tree, applied once at the end.

    A tree built from many packages has each shared directory (/usr/share/doc: every
    package of the benchmark image) owned many times over; extracted one by one, each
    package gave its own directories their metadata at its end, and the last one to own a
    directory is the one that stays. Here each directory is given the last owner's
    metadata once, in finish(): the benchmark image's 8,530 directory entries are 2,977
    directories. (A directory whose set-group-ID bit is set or taken away gets its owner
    and mode as it is extracted too, as in one extraction: _Run.place.)

    The result is the one-by-one result but for directory mtimes, which then are the
    last owner's rather than whatever a later package's new entry in it made them (rpm's
    are the latter; neither `rpm -V` nor the trees' comparison with rpm's checks them)."""

    def __init__(self) -> None:
        self._pending: dict[str, DirMeta] = {}  # tree path -> its last owner's

    def defer(self, rel: str, meta: DirMeta) -> None:
        """Take a directory's metadata for finish()."""
        self._pending[rel] = meta

    def finish(self, tree: Tree) -> None:
        """Apply what is pending, deepest directories first, in tree (the one extracted into)."""
        pending, self._pending = self._pending, {}
        for rel in sorted(pending, key=lambda r: -r.count("/")):
            _dir_meta(tree, rel, pending[rel])


# A directory entry's image path, then its mode, uid and gid (Owners.mode_and_ids) and mtime.
DirMeta = tuple[str, int, int, int, int]


def _dir_meta(tree: Tree, rel: str, meta: DirMeta) -> None:
    """Give the directory at tree path rel its metadata."""
    path, mode, uid, gid, mtime = meta
    try:
        fd = tree.open_dir(rel)
        try:
            _set_meta(fd, mode, uid, gid)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
    except OSError as e:
        raise ExtractError(f"{path}: {e.strerror or e}") from e


def _set_meta(fd: int, mode: int, uid: int, gid: int) -> None:
    """Owner and mode of a file or directory open as fd, changed only where they differ."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)  # before chmod: chown clears set-id bits
        os.fchmod(fd, mode)
    elif stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


@dataclass
class _Run:
    """One extraction: where things go, and what is done so far."""

    pkg: ExtentsPackage
    tree: Tree
    owners: Owners
    writer: DataWriter
    links: dict[int, tuple[str, str]]  # hardlink group -> (parent's tree path, name) of its first member
    dirs: list[tuple[str, int]]  # (tree path, file index) of directories, for their metadata last
    files: int = 0
    written: int = 0
    later: DeferredDirs | None = None

    def place(self, entry: Entry) -> None:
        tree = self.tree
        dir_fd, name, rel = tree.place(entry.path)
        etype = entry.type
        if name == ".":
            # The destination itself (a package owning "/", or "/usr" of a /usr tree): rpm
            # applies the directory's metadata to it.
            if etype is not EntryType.DIR:
                raise ExtractError(f"{entry.path}: only a directory can stand at the top of the tree")
            self.dirs.append((rel, entry.index))
            return
        if etype is EntryType.FILE:
            self._file(entry, dir_fd, name, rel)
        elif etype is EntryType.DIR:
            before = _make_dir(tree, entry, dir_fd, name)
            if before is not None:
                if (entry.mode | before) & stat.S_ISGID:
                    # rpm gives a directory its owner and mode as it makes it; ours wait for
                    # the end (finish_dirs), but a set-group-ID bit, set or taken away, decides
                    # the group and bit of the directories made in it from here on.
                    self._owner_and_mode(entry, dir_fd, name)
                self.dirs.append((rel, entry.index))
        elif etype is EntryType.SYMLINK:
            _replacing(tree, entry, dir_fd, name, os.symlink, entry.linkto, name, dir_fd=dir_fd)
            _apply_meta(entry, self.owners, None, name, dir_fd)
        else:
            _replacing(tree, entry, dir_fd, name, os.mknod, name, entry.mode, entry.rdev, dir_fd=dir_fd)
            _apply_meta(entry, self.owners, None, name, dir_fd)

    def _file(self, entry: Entry, dir_fd: int, name: str, rel: str) -> None:
        key = entry.hardlink_key
        if key is not None and key in self.links:
            src_parent, src_name = self.links[key]
            src_fd = self.tree.open_dir(src_parent, os.O_PATH)
            try:
                _replacing(self.tree, entry, dir_fd, name, os.link, src_name, name,
                           src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.close(src_fd)
            return
        meta = self.owners.mode_and_ids(entry)
        # Made with its mode unless it has set-id bits (chown and writes clear them): then a
        # file that is also its owner's needs no chown nor chmod (_apply_meta).
        made = 0o600 if meta[0] & _SPECIAL else meta[0]
        try:
            fd = os.open(name, _NEW_FILE, made, dir_fd=dir_fd)
        except FileExistsError:
            reused = _emptied(dir_fd, name)
            if reused is not None:
                fd = reused
            else:
                _clear(self.tree, entry, dir_fd, name)
                fd = os.open(name, _NEW_FILE, made, dir_fd=dir_fd)
        try:
            extent = entry.extent
            if extent is not None:
                self.writer.write(extent, fd)
                self.written += extent.length
            _apply_meta(entry, self.owners, fd, name, dir_fd, meta)
        finally:
            os.close(fd)
        self.files += 1
        if key is not None:
            self.links[key] = (rel.rpartition("/")[0], name)

    def _owner_and_mode(self, entry: Entry, dir_fd: int, name: str) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _set_meta(fd, *self.owners.mode_and_ids(entry))
        finally:
            os.close(fd)

    def finish_dirs(self) -> None:
        """Directory metadata last and deepest first, so adding entries doesn't change their mtimes."""
        entries = self.pkg.entries()
        for rel, index in reversed(self.dirs):
            entry = entries[index]
            meta = (entry.path, *self.owners.mode_and_ids(entry), entry.mtime)
            if self.later is not None:
                self.later.defer(rel, meta)
            else:
                _dir_meta(self.tree, rel, meta)


def extract(
    pkg: ExtentsPackage,
    dest: str | os.PathLike[str],
    *,
    method: str = "auto",
    owners: Owners | None = None,
    relocation: Relocation | None = None,
    reserved: Collection[str] = (),
    only: Collection[int] | None = None,
    tree: Tree | None = None,
    dirs: DeferredDirs | None = None,
) -> ExtractReport:
    """Extract ``pkg`` into ``dest`` as ``rpm -i --root DEST --nodeps --noscripts`` would.

    Every path, and every symlink target met on the way, is resolved inside DEST as in
    a chroot: nothing outside DEST is created, changed or read through it. ``relocation``
    says which part of the image DEST holds (deploy: the image's /usr, with paths outside
    it under /usr/share/factory); ``reserved`` names tree paths no entry may resolve to.
    ``owners`` defaults to DEST's own etc/passwd and etc/group. ``only`` limits the work
    to the entries with these indices (an update rewriting part of a tree); a hardlinked
    file is linked only to the members of its group that are selected too.

    Several packages extracted into one tree may share ``tree`` (a Tree of DEST with that
    relocation and reserved, which the caller closes): the directories one resolved are
    not resolved again. ``dirs`` takes the directories' metadata, for dirs.finish().
    """
    root = Path(dest)
    entries = pkg.entries()
    placed = 0
    if tree is None:
        root.mkdir(parents=True, exist_ok=True)
    with Tree(root, relocation, reserved) if tree is None else contextlib.nullcontext(tree) as into:
        run = _Run(pkg, into, owners if owners is not None else Owners.from_root(root),
                   DataWriter(pkg, method), {}, [], later=dirs)
        # Only the entries asked for are made (in header order): an update rewriting a few
        # files of a large package does not decode all of its paths.
        chosen = entries if only is None else (entries[i] for i in sorted(only) if 0 <= i < len(entries))
        for entry in chosen:
            if entry.flags & _GHOST:
                continue  # rpm records %ghost files but does not create them
            placed += 1
            try:
                run.place(entry)
            except OSError as e:
                raise ExtractError(f"{entry.path}: {e.strerror or e}") from e
        run.finish_dirs()
    return ExtractReport(
        entries=len(entries), placed=placed, files=run.files, reflinked=run.writer.reflinked,
        copied=run.writer.copied, bytes=run.written,
    )
