"""Confined reads and writes of /etc entries: a deployment's root, and the vendor's copy.

Every image path is resolved with rpmextents.tree.Tree inside its own tree, as ``rpm --root``
resolves it (an administrator's symlink ``etc/dir -> /`` leads to the root's top, never the
host's); the last component is never followed. Entries are replaced by writing a new one
under a temporary name beside them and renaming it over, so a reader sees the old entry or
the new one, never half of either.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable

from deploy.errors import DeployError
from deploy.etcbase import Recorded, stamp_of
from deploy.etcrules import OnDisk
from host import digest as _digest
from host import kernel
from host.kernel import NO_REFLINK
from rpmextents.errors import UnsafePathError
from rpmextents.files import EntryType
from rpmextents.tree import ExtractError, Relocation, Tree

CAPS_XATTR = "security.capability"
_TYPES = {stat.S_IFREG: EntryType.FILE, stat.S_IFDIR: EntryType.DIR, stat.S_IFLNK: EntryType.SYMLINK,
          stat.S_IFCHR: EntryType.CHR, stat.S_IFBLK: EntryType.BLK, stat.S_IFIFO: EntryType.FIFO,
          stat.S_IFSOCK: EntryType.SOCK}
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_serial = itertools.count()


class EtcMergeError(DeployError):
    """The /etc merge cannot be carried out: a path, and why."""


class EtcBlocked(EtcMergeError):
    """One vendor entry cannot be written where it belongs (something stands in the way);
    the merge goes on and reports it."""


def entry_type(mode: int) -> EntryType:
    return _TYPES.get(stat.S_IFMT(mode), EntryType.FILE)


def file_digest(dir_fd: int, name: str, algo: str) -> str:
    """Hex digest of the regular file name in dir_fd, not following a symlink."""
    fd = os.open(name, _READ, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        h = _digest.new(algo, st.st_size)
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def fd_tree(fd: int, relocation: Relocation | None = None) -> Tree:
    """A Tree over the directory open as fd (a new descriptor of the same directory)."""
    return Tree(f"/proc/self/fd/{fd}", relocation)


class EtcTree:
    """Image paths below /etc of one tree, read and written without leaving it.

    known: image path -> ((mode, uid, gid, inode number, ctime ns), sha256) of regular files
    hashed already (the merge's base record): a file look() finds with that stamp has that
    sha256 without being read again (any write, chmod, chown or rename sets a new ctime)."""

    def __init__(self, tree: Tree, known: Recorded | None = None) -> None:
        self.tree = tree
        self.known = known or {}

    def close(self) -> None:
        self.tree.close()

    def _find(self, path: str) -> tuple[int, str] | None:
        try:
            fd, name, _ = self.tree.find(path)
        except (FileNotFoundError, NotADirectoryError, ExtractError):
            return None  # a parent is missing, or is not a directory: nothing is at path
        except UnsafePathError as e:
            raise EtcMergeError(f"{path}: {e}") from e
        except OSError as e:
            raise EtcMergeError(f"{path}: {e.strerror or e}") from e
        return fd, name

    def look(self, path: str) -> OnDisk | None:
        """What is at path (not followed), or None."""
        found = self._find(path)
        if found is None:
            return None
        fd, name = found
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return None
        etype = entry_type(st.st_mode)
        linkto = os.readlink(name, dir_fd=fd) if etype is EntryType.SYMLINK else ""
        memo: dict[str, str] = {}
        hit = self.known.get(path) if etype is EntryType.FILE else None
        if hit is not None and hit[0] == stamp_of(st):
            memo["sha256"] = hit[1]

        def digest(algo: str) -> str:
            if algo not in memo:
                where = self._find(path)
                memo[algo] = file_digest(where[0], where[1], algo) if where else ""
            return memo[algo]

        return OnDisk(etype, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, linkto, digest)

    def open_entry(self, path: str) -> tuple[int, str]:
        """(parent fd, name) of an existing path; the fd is valid until the next call."""
        found = self._find(path)
        if found is None:
            raise EtcMergeError(f"{path}: missing")
        return found

    def rename(self, path: str, suffix: str) -> None:
        """Move the entry at path to path+suffix (replacing what is there, as rpm does)."""
        fd, name = self.open_entry(path)
        os.rename(name, name + suffix, src_dir_fd=fd, dst_dir_fd=fd)
        self.tree.forget(path)

    def erase(self, path: str) -> bool:
        """Remove the entry at path; a directory only when empty. False when it stays."""
        fd, name = self.open_entry(path)
        if stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return False
                raise
        else:
            os.unlink(name, dir_fd=fd)
        self.tree.forget(path)
        return True

    def install_from(self, source: EtcTree, path: str, dest: str | None = None) -> None:
        """Copy the entry at image path in source to dest (default path) here, with its metadata.

        Regular files share the source's data (FICLONE) where the filesystem can. A directory
        is created or has its metadata set; a symlink to a directory standing there is kept.
        """
        sfd, sname = source.open_entry(path)
        st = os.lstat(sname, dir_fd=sfd)
        etype = entry_type(st.st_mode)
        where = dest or path
        try:
            dfd, dname, rel = self.tree.place(where)
        except (ExtractError, UnsafePathError) as e:
            raise EtcBlocked(f"{where}: {e}") from e
        if rel == "usr" or rel.startswith("usr/"):
            # Through a packaged symlink into /usr: the /usr tree already holds it there, and
            # the root's usr/ is only the mount point /usr hides.
            raise EtcBlocked(f"{where}: leads into /usr, which the root does not hold")
        if etype is EntryType.DIR:
            self._directory(dfd, dname, st)
        elif etype is EntryType.SYMLINK:
            target = os.readlink(sname, dir_fd=sfd)
            self._swap_in(dfd, dname, lambda fd, tmp: os.symlink(target, tmp, dir_fd=fd), st, None)
        elif etype is EntryType.FILE:
            src = os.open(sname, _READ, dir_fd=sfd)
            try:
                self._swap_in(dfd, dname, lambda fd, tmp: _copy_file(src, fd, tmp), st, src)
            finally:
                os.close(src)
        else:
            raise EtcMergeError(f"{path}: the vendor's entry is a {etype.value}, not copied into /etc")
        self.tree.forget(where)

    def _directory(self, dfd: int, name: str, st: os.stat_result) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            mode = os.lstat(name, dir_fd=dfd).st_mode
            if stat.S_ISLNK(mode):
                return  # rpm keeps a symlink standing for a directory
            if not stat.S_ISDIR(mode):
                raise EtcBlocked(f"{name}: something that is not a directory is in the way") from None
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)

    def _swap_in(self, dfd: int, name: str, make: Callable[[int, str], int | None],
                 st: os.stat_result, src: int | None) -> None:
        tmp = f".rpmimg-etc-{os.getpid()}-{next(_serial)}"
        made = make(dfd, tmp)
        try:
            if made is None:  # a symlink
                os.chown(tmp, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                os.utime(tmp, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            else:
                _file_meta(made, st, src)
            if stat.S_ISDIR(_lmode(dfd, name)):
                raise EtcBlocked(f"{name}: a directory is in the way")
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise
        finally:
            if made is not None:
                os.close(made)


def _lmode(dfd: int, name: str) -> int:
    try:
        return os.lstat(name, dir_fd=dfd).st_mode
    except FileNotFoundError:
        return 0


def _copy_file(src: int, dfd: int, tmp: str) -> int:
    fd = os.open(tmp, _NEW, 0o600, dir_fd=dfd)
    try:
        try:
            kernel.clone_file(src, fd)
        except OSError as e:
            if e.errno not in NO_REFLINK:
                raise
            os.lseek(src, 0, os.SEEK_SET)
            while chunk := os.read(src, 1 << 20):
                os.write(fd, chunk)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dfd)
        raise
    return fd


def _file_meta(fd: int, st: os.stat_result, src: int | None) -> None:
    os.fchown(fd, st.st_uid, st.st_gid)  # before chmod: chown clears set-id bits
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    if src is not None:
        try:
            caps = os.getxattr(src, CAPS_XATTR)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
        else:
            os.setxattr(fd, CAPS_XATTR, caps)  # after chown, which clears capabilities
    os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
