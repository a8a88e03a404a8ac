"""Read package headers (lead, signature header, header) through rpmextents.

A deployment keeps them as /usr/lib/sysimage/packages/N-V-R.A.rpm; the store holds them
at the start of each extents RPM. `diff` reads the former; `verify` anchors on the
latter (see deploy.verify).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias, cast

from deploy.errors import DeploymentError
from host import digest, kernel
from imagespec.relocation import USR_TREE
from rpmextents.errors import ExtentsError
from rpmextents.files import PACKAGE_DB, FileList, header_files
from rpmextents.header import PackagePrefix, read_prefix
from rpmextents.nevra import Nevra, nevra_of

# Where a deployment keeps its packages' headers, in the /usr tree.
HEADER_DIR = USR_TREE.tree_path(PACKAGE_DB)

if TYPE_CHECKING:
    from deploy.etcmerge import EtcPart

# A package as the /etc merge takes it: its file list, or only its entries below /etc.
Listed: TypeAlias = "FileList | EtcPart"


@dataclass(frozen=True)
class InstalledPackage:
    """One package header: its identity and the parsed lead, signature and header."""

    file: Path
    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    prefix: PackagePrefix

    @property
    def ident(self) -> Nevra:
        return Nevra(self.name, self.epoch, self.version, self.release, self.arch)

    @property
    def nvra(self) -> str:
        return self.ident.nvra

    @property
    def evr(self) -> str:
        return self.ident.evr


@contextlib.contextmanager
def _open_header_file(path: Path, dir_fd: int | None) -> Iterator[io.BufferedReader]:
    """path opened for reading, not followed if a symlink; with dir_fd, path's name is
    opened in that directory. Anything but a regular file is refused."""
    fd = os.open(path.name if dir_fd is not None else path,
                 os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        yield f


def read_prefix_at(path: Path, dir_fd: int | None = None) -> PackagePrefix:
    """Lead, signature header and header at the start of path (not followed if a symlink).

    With dir_fd, path's name is opened in that directory; anything but a regular file is refused.
    """
    with _open_header_file(path, dir_fd) as f:
        return read_prefix(cast(BinaryIO, f))


def read_header(path: Path, dir_fd: int | None = None) -> InstalledPackage:
    """Parse one header file; its signatures are not checked (the store did that)."""
    try:
        prefix = read_prefix_at(path, dir_fd)
        ident = nevra_of(prefix.header)
    except (OSError, ExtentsError) as e:
        raise DeploymentError(f"{path}: unreadable package header: {e}") from e
    return InstalledPackage(path, ident.name, ident.epoch, ident.version, ident.release, ident.arch,
                            prefix)


# A header file as fstat sees it: inode number, change time, modification time, size.
FileIdentity = tuple[int, int, int, int]


def header_identities(usr: Path) -> set[FileIdentity]:
    """The identity of each header file of the /usr tree at usr (as installed_file_lists
    remembers them; anything but a regular file is left out, and read as such later)."""
    out = set()
    with _header_dir(usr) as dir_fd:
        for name in _header_names(dir_fd):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.add((st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size))
    return out


def installed_file_lists(usr: Path, known: Mapping[str, Listed],
                         read: dict[FileIdentity, Listed] | None = None,
                         keep: Container[FileIdentity] | None = None,
                         names: Mapping[str, str] | None = None) -> Iterator[Listed]:
    """The file list of each package of the /usr tree at usr, as installed_packages reads
    them; a header file whose bytes hash to a key of known (header sha256 -> that header's
    file list, or its /etc part, already read) is hashed, not parsed again. names: the
    sha256 of the header files of a tree known to hold exactly those bytes (by file name:
    a deployment found intact, deploy.basecheck), taken instead of hashing them.

    read remembers each file read by its identity (inode number, ctime, mtime, size): the
    tree of an update is a snapshot of the old one, whose files keep their inode numbers
    and times there, so the new tree's header files that nothing changed since the snapshot
    (any write or metadata change sets a new ctime; a new file gets a new inode number) are
    taken as read from the old tree, neither hashed nor parsed again. With keep, read
    remembers only the files of those identities (the other tree's: header_identities),
    not every file list of a tree no other file will be taken for."""
    directory = usr / HEADER_DIR
    with _header_dir(usr) as dir_fd:
        for name in _header_names(dir_fd):
            try:
                with _open_header_file(directory / name, dir_fd) as f:
                    st = os.fstat(f.fileno())
                    identity = (st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)
                    files: Listed | None = read.get(identity) if read is not None else None
                    if files is None and known:  # nothing known (a full build's): no hashing
                        sha = names.get(name) if names is not None else None
                        files = known.get(sha if sha is not None else digest.file_digest(f, "sha256").hexdigest())
                    if files is None:
                        f.seek(0)
                        header = read_prefix(cast(BinaryIO, f)).header
                        nevra_of(header)  # refused here, as installed_packages refuses it
                        files = header_files(header)
                    if read is not None and (keep is None or identity in keep):
                        read[identity] = files
            except (OSError, ExtentsError) as e:
                raise DeploymentError(f"{directory / name}: unreadable package header: {e}") from e
            yield files


@contextlib.contextmanager
def _header_dir(usr: Path) -> Iterator[int]:
    """The tree's header directory, opened below it following no symlink."""
    root_fd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dir_fd = kernel.open_beneath(root_fd, HEADER_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise DeploymentError(f"{usr / HEADER_DIR}: no package headers (not an rpmimg deployment?)") from e
    finally:
        os.close(root_fd)
    try:
        yield dir_fd
    finally:
        os.close(dir_fd)


def _header_names(dir_fd: int) -> list[str]:
    return sorted(n for n in os.listdir(dir_fd) if n.endswith(".rpm") and not n.startswith("."))


def header_names(usr: Path) -> list[str]:
    """The names of the header files of the /usr tree at usr, in the order they are read."""
    with _header_dir(usr) as dir_fd:
        return _header_names(dir_fd)


def installed_packages(usr: Path) -> Iterator[InstalledPackage]:
    """The packages of the /usr tree at usr, by header file name.

    The header directory is opened below the tree following no symlink, and each file in it
    by name: nothing outside the tree is read.
    """
    directory = usr / HEADER_DIR
    with _header_dir(usr) as dir_fd:
        for name in _header_names(dir_fd):
            yield read_header(directory / name, dir_fd)
