"""Build a deployment's /usr tree from extents RPMs with rpmextents' extraction.

A deployment is only a /usr, so paths are relocated: /usr/X becomes X in the tree,
and a path outside /usr goes under share/factory/ with its original path (systemd's
place for vendor defaults). Owner names resolve against the sysroot's /etc, the
system the deployment is for, like rpm resolves them against its --root.

Symlinks resolve as under `rpm -i --root`, in the image: an absolute target /usr/share/foo
is share/foo in the tree, a target outside /usr is relocated like a package path, and
nothing is ever created, changed or read outside the tree (rpmextents.tree).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.headers import HEADER_DIR
from host import kernel
from imagespec.relocation import USR_TREE, outside_usr
from rpmextents import PACKAGE_DB, Entry, ExtentsPackage, Owners
from rpmextents.extract import NO_REFLINK, DeferredDirs, extract
from rpmextents.files import FileFlag, FileList
from rpmextents.index import align_up
from rpmextents.tree import Tree


def header_file_name(pkg: ExtentsPackage) -> str:
    return f"{pkg.ident.nvra}.rpm"


_SETID = stat.S_ISUID | stat.S_ISGID
_GHOST = int(FileFlag.GHOST)  # an int: IntFlag's & is Python code
_USR_BELOW = USR_TREE.top + "/"  # a directory name (DIRNAMES) starting so is inside /usr


@dataclass(frozen=True)
class SetidFile:
    """A set-user-ID or set-group-ID file of a package, and the owner names it carries."""

    path: str
    mode: int
    user: str
    group: str


@dataclass(frozen=True)
class Accounting:
    """What the build notes of each package: the owner names its files carry, its paths
    outside /usr, its set-id files (%ghost files aside)."""

    users: frozenset[str]
    groups: frozenset[str]
    outside: tuple[str, ...]
    setid: tuple[SetidFile, ...]


def accounting(entries: Iterable[Entry]) -> Accounting:
    """TreeBuilder.account's notes of a package's entries."""
    if isinstance(entries, FileList):  # its columns, without an Entry per file
        users, groups = entries.owner_names()
        # A path with its directory name below /usr/ is inside: only the others are asked.
        outside = [path for i, path in entries.paths_in(lambda d: not d.startswith(_USR_BELOW))
                   if not entries.flags[i] & _GHOST and outside_usr(path)]
        setid = [e for i, mode in enumerate(entries.modes) if mode & _SETID
                 and not (e := entries.metadata(i)).ghost]
    else:
        users, groups, outside, setid = set(), set(), [], []
        for e in entries:
            if e.ghost:
                continue
            if outside_usr(e.path):
                outside.append(e.path)
            users.add(e.user)
            groups.add(e.group)
            if e.mode & _SETID:
                setid.append(e)
    return Accounting(frozenset(users), frozenset(groups), tuple(outside),
                      tuple(SetidFile(e.path, e.mode, e.user, e.group) for e in setid))


@dataclass
class TreeStats:
    """What a tree build counted: entries, files, and how their data got there."""

    entries: int = 0
    files: int = 0
    reflinked: int = 0
    copied: int = 0
    bytes: int = 0
    outside_usr: dict[str, list[str]] = field(default_factory=dict)
    users: set[str] = field(default_factory=lambda: {"root"})
    groups: set[str] = field(default_factory=lambda: {"root"})
    # (path, mode, user, group) of each set-id file, package by package (deploy.setid)
    setid: list[SetidFile] = field(default_factory=list)


class TreeBuilder:
    """Extracts packages, relocated, into a directory (a new subvolume) that becomes /usr."""

    def __init__(self, root: Path, sysroot: Path) -> None:
        self.root = root
        self.owners = Owners.from_root(sysroot)
        self.stats = TreeStats()
        # One tree for every package (a directory one resolved is known to the next), and
        # the directories' metadata once each at the end (rpmextents.extract.DeferredDirs).
        self._tree: Tree | None = None
        self._dirs = DeferredDirs()

    def add_package(self, pkg: ExtentsPackage, only: Collection[int] | None = None) -> None:
        """Write every entry of pkg (ghosts excepted, as with rpm), or those `only` names;
        the end of the builder's with block completes what the packages added."""
        if self._tree is None:
            self._tree = Tree(self.root, USR_TREE, (HEADER_DIR,))
        report = extract(pkg, self.root, method="auto", owners=self.owners, relocation=USR_TREE,
                         reserved=(HEADER_DIR,), only=only, tree=self._tree, dirs=self._dirs)
        self.stats.entries += report.placed
        self.stats.files += report.files
        self.stats.reflinked += report.reflinked
        self.stats.copied += report.copied
        self.stats.bytes += report.bytes

    def __enter__(self) -> TreeBuilder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """After the last add_package, before anything reads the tree: the directories the
        packages made or own get their metadata (not for a build given up: what is pending
        is dropped), and the tree is let go of."""
        if self._tree is None:
            return
        try:
            if exc_type is None:
                self._dirs.finish(self._tree)
        finally:
            self._tree.close()
            self._tree = None

    def account(self, nevra: str, entries: Iterable[Entry]) -> None:
        """Note what a package of the image puts outside /usr and which owners it names."""
        self.add_accounting(nevra, accounting(entries))

    def add_accounting(self, nevra: str, noted: Accounting) -> None:
        """account() of a package from what accounting() told of it (kept: deploy.summaries)."""
        self.stats.users |= noted.users
        self.stats.groups |= noted.groups
        self.stats.setid += noted.setid
        if noted.outside:
            self.stats.outside_usr[nevra] = list(noted.outside)

    @property
    def unknown_owners(self) -> tuple[str, ...]:
        return tuple(sorted(
            [f"user {u}" for u in self.stats.users if u not in self.owners.users]
            + [f"group {g}" for g in self.stats.groups if g not in self.owners.groups]
        ))

    def owner_ids(self) -> dict[str, dict[str, int | None]]:
        """The ids the image's owner names resolved to (None: unknown, so root)."""
        return {
            "users": {u: self.owners.users.get(u) for u in sorted(self.stats.users)},
            "groups": {g: self.owners.groups.get(g) for g in sorted(self.stats.groups)},
        }

    def remove_header(self, file_name: str) -> None:
        with Tree(self.root, USR_TREE) as tree:
            try:
                dir_fd = tree.open_dir(tree.resolve_dir(PACKAGE_DB, create=False)[1], os.O_PATH)
            except FileNotFoundError:
                return
        try:
            os.unlink(file_name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)

    def write_header(self, pkg: ExtentsPackage) -> None:
        """Store pkg's lead, signature and header as lib/sysimage/packages/N-V-R.A.rpm.

        The bytes are reflinked from the package (they are its first header_end bytes), so
        a header file costs one block of its own at most: the one cut at header_end. Its
        mtime is the package's build time, so the same packages make the same directory.
        The file is made under a temporary name in the directory, resolved inside the tree,
        and renamed over whatever stands at its name: nothing there is ever followed.
        """
        name = header_file_name(pkg)
        with Tree(self.root, USR_TREE) as tree:
            dir_fd = tree.open_dir(tree.resolve_dir(PACKAGE_DB)[1], os.O_PATH)
        tmp = f".{name}.tmp"
        try:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as f:
                _write_header_bytes(pkg, f.fileno())
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)


def _write_header_bytes(pkg: ExtentsPackage, fd: int) -> None:
    end = pkg.header_end
    length = align_up(end, pkg.block_size)
    try:
        # Length 0 clones to the end of the package, when that is before the block's end.
        kernel.clone_range(pkg.fileno(), 0, 0 if length >= pkg.size else length, fd, 0)
        os.ftruncate(fd, end)
    except OSError as e:
        if e.errno not in NO_REFLINK:
            raise
        os.ftruncate(fd, 0)
        data = pkg.header_bytes()
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
    built = pkg.build_time
    if built is not None:
        os.utime(fd, (built, built))
