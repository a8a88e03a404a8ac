"""A package's file list, as its signed header describes it."""

from __future__ import annotations

import enum
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from rpmextents.errors import FormatError, UnsafePathError
from rpmextents.header import HASH_ALGOS, Header, Tag, read_prefix

_T = TypeVar("_T", int, str)


class EntryType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHR = "chr"
    BLK = "blk"
    FIFO = "fifo"
    SOCK = "sock"


_TYPES = {
    stat.S_IFREG: EntryType.FILE,
    stat.S_IFDIR: EntryType.DIR,
    stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFCHR: EntryType.CHR,
    stat.S_IFBLK: EntryType.BLK,
    stat.S_IFIFO: EntryType.FIFO,
    stat.S_IFSOCK: EntryType.SOCK,
}


class FileFlag(enum.IntFlag):
    """RPMFILE_* attributes (rpmfiles.h)."""

    CONFIG = 1 << 0
    DOC = 1 << 1
    ICON = 1 << 2
    MISSINGOK = 1 << 3
    NOREPLACE = 1 << 4
    SPECFILE = 1 << 5
    GHOST = 1 << 6
    LICENSE = 1 << 7
    README = 1 << 8
    PUBKEY = 1 << 11
    ARTIFACT = 1 << 12


_GHOST = int(FileFlag.GHOST)
_CONFIG = int(FileFlag.CONFIG)


@dataclass(frozen=True)
class Extent:
    """File data at [offset, offset + length) of an extents RPM.

    ``offset`` is block-aligned and the stored region is zero-padded to the next
    block, so the whole aligned range can be cloned and the copy truncated.
    """

    offset: int
    length: int


@dataclass(frozen=True)
class Entry:
    """One file of a package, with its metadata from the signed header."""

    index: int
    path: str
    type: EntryType
    mode: int
    user: str
    group: str
    mtime: int
    size: int
    linkto: str
    caps: str | None
    rdev: int
    digest: str
    digest_algo: str
    flags: int
    hardlink_key: int | None
    extent: Extent | None = None

    @property
    def ghost(self) -> bool:
        return bool(self.flags & _GHOST)

    @property
    def config(self) -> bool:
        return bool(self.flags & _CONFIG)


def _column(values: list[_T], count: int, what: str, fill: _T) -> list[_T]:
    if not values:
        return [fill] * count
    if len(values) != count:
        raise FormatError(f"header: {what} has {len(values)} entries for {count} files")
    return values


def file_paths(header: Header) -> list[str]:
    """Absolute paths of the header's files, in header order."""
    basenames = header.strings(Tag.BASENAMES)
    if not basenames:
        return header.strings(Tag.OLDFILENAMES)
    dirnames = header.strings(Tag.DIRNAMES)
    dirindexes = header.ints(Tag.DIRINDEXES)
    if len(dirindexes) != len(basenames):
        raise FormatError("header: DIRINDEXES and BASENAMES differ in length")
    try:
        return [dirnames[d] + b for d, b in zip(dirindexes, basenames, strict=True)]
    except IndexError:
        raise FormatError("header: a DIRINDEXES entry points past DIRNAMES") from None


def check_path(path: str) -> None:
    """Refuse a path that is not absolute, not normalised, or climbs with '..'.

    "/" itself is allowed: distributions' filesystem packages own it.
    """
    if path == "/":
        return
    if path[:1] == "/" and "//" not in path and "/." not in path and path[-1] != "/" and "\0" not in path:
        return  # the common case, cheaply: no empty, "." or ".." component, nothing to normalise
    if not path.startswith("/"):
        raise FormatError(f"unsafe file name {path!r}: not an absolute path")
    parts = path.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise FormatError(f"unsafe file name {path!r}: empty, '.' or '..' component")
    if posixpath.normpath(path) != path:
        raise FormatError(f"unsafe file name {path!r}: not normalised")


@dataclass(frozen=True)
class _Columns:
    """The header's per-file arrays, each checked to have one value per file."""

    sizes: list[int]
    modes: list[int]
    rdevs: list[int]
    mtimes: list[int]
    digests: list[str]
    linktos: list[str]
    flags: list[int]
    users: list[str]
    groups: list[str]
    caps: list[str]
    inodes: list[int]
    devices: list[int]
    digest_algo: str

    @classmethod
    def of(cls, header: Header, n: int) -> _Columns:
        sizes = header.ints(Tag.LONGFILESIZES) or header.ints(Tag.FILESIZES)
        modes = header.ints(Tag.FILEMODES)
        if len(sizes) != n or len(modes) != n:
            raise FormatError("header: file sizes or modes do not match the file count")
        algo_number = header.number(Tag.FILEDIGESTALGO) or 1
        digest_algo = HASH_ALGOS.get(algo_number)
        if digest_algo is None:
            raise FormatError(f"header: unknown file digest algorithm {algo_number}")
        return cls(
            sizes=sizes, modes=modes,
            rdevs=_column(header.ints(Tag.FILERDEVS), n, "FILERDEVS", 0),
            mtimes=_column(header.ints(Tag.FILEMTIMES), n, "FILEMTIMES", 0),
            digests=_column(header.strings(Tag.FILEDIGESTS), n, "FILEDIGESTS", ""),
            linktos=_column(header.strings(Tag.FILELINKTOS), n, "FILELINKTOS", ""),
            flags=_column(header.ints(Tag.FILEFLAGS), n, "FILEFLAGS", 0),
            users=_column(header.strings(Tag.FILEUSERNAME), n, "FILEUSERNAME", "root"),
            groups=_column(header.strings(Tag.FILEGROUPNAME), n, "FILEGROUPNAME", "root"),
            caps=_column(header.strings(Tag.FILECAPS), n, "FILECAPS", ""),
            inodes=_column(header.ints(Tag.FILEINODES), n, "FILEINODES", 0),
            devices=_column(header.ints(Tag.FILEDEVICES), n, "FILEDEVICES", 0),
            digest_algo=digest_algo,
        )

    def stored(self, i: int) -> bool:
        """Whether file i has content in the payload: a regular file, not a %ghost."""
        return stat.S_ISREG(int(self.modes[i])) and not int(self.flags[i]) & _GHOST


def _hardlink_keys(cols: _Columns) -> dict[int, int]:
    """File index -> the first index of its hardlink group (groups of one are left out).

    Regular, non-ghost files sharing (device, inode) are hardlinks, as rpm groups them.
    """
    groups_by_inode: dict[tuple[int, int], list[int]] = {}
    for i in range(len(cols.modes)):
        if cols.stored(i) and int(cols.inodes[i]) > 0:
            groups_by_inode.setdefault((int(cols.devices[i]), int(cols.inodes[i])), []).append(i)
    return {i: members[0] for members in groups_by_inode.values() if len(members) > 1
            for i in members}


def _group_extents(cols: _Columns, paths: list[str], data: dict[int, Extent],
                   hardlink_key: dict[int, int]) -> dict[int, Extent]:
    """The stored extent of each hardlink group (or single file), checked against the header."""
    group_extent: dict[int, Extent] = {}
    for fx, stored in data.items():
        if fx >= len(paths):
            raise FormatError(f"extents index refers to file {fx}, the header has {len(paths)}")
        if not cols.stored(fx) or int(cols.sizes[fx]) != stored.length:
            raise FormatError(f"extents index data for {paths[fx]} does not fit its header entry")
        key = hardlink_key.get(fx, -1 - fx)
        if key in group_extent:
            raise FormatError(f"extents index stores {paths[fx]} twice")
        group_extent[key] = stored
    return group_extent


def header_files(header: Header, data: dict[int, Extent] | None = None) -> list[Entry]:
    """The header's file list; with ``data`` (file index -> extent of the stored
    content), every regular file gets its extent, hardlinks sharing one."""
    paths = file_paths(header)
    if not paths:
        return []
    cols = _Columns.of(header, len(paths))
    hardlink_key = _hardlink_keys(cols)
    group_extent = _group_extents(cols, paths, data or {}, hardlink_key)
    # Local names: this loop runs once per file of every package a deploy reads.
    modes, sizes, flags, users, groups = cols.modes, cols.sizes, cols.flags, cols.users, cols.groups
    with_data = data is not None
    entries = []
    for i, path in enumerate(paths):
        check_path(path)
        mode = int(modes[i])
        etype = _TYPES.get(stat.S_IFMT(mode))
        if etype is None:
            raise FormatError(f"header: {path} has an unknown file type in mode {mode:o}")
        extent = None
        if with_data and etype is EntryType.FILE and int(sizes[i]) > 0 and not int(flags[i]) & _GHOST:
            extent = group_extent.get(hardlink_key.get(i, -1 - i))
            if extent is None:
                raise FormatError(f"extents index has no data for {path}")
        entries.append(Entry(
            index=i, path=path, type=etype, mode=mode, user=str(users[i]), group=str(groups[i]),
            mtime=int(cols.mtimes[i]), size=int(sizes[i]),
            linkto=str(cols.linktos[i]) if etype is EntryType.SYMLINK else "",
            caps=str(cols.caps[i]) or None, rdev=int(cols.rdevs[i]), digest=str(cols.digests[i]),
            digest_algo=cols.digest_algo, flags=int(flags[i]),
            hardlink_key=hardlink_key.get(i), extent=extent,
        ))
    return entries


def payload_sizes(entries: list[Entry]) -> list[int]:
    """How many data bytes rpm writes after each entry's cpio header.

    Symlinks carry their target; of a hardlink set only the last member carries
    the content (rpm's rpmfiArchiveWriteHeader).
    """
    last_link: dict[int, int] = {}
    for e in entries:
        if e.hardlink_key is not None:
            last_link[e.hardlink_key] = e.index
    sizes = []
    for e in entries:
        if e.type is EntryType.FILE:
            if e.hardlink_key is not None and last_link[e.hardlink_key] != e.index:
                sizes.append(0)
            else:
                sizes.append(e.size)
        elif e.type is EntryType.SYMLINK:
            sizes.append(e.size)
        else:
            sizes.append(0)
    return sizes


# Where rpmimg keeps each deployed package's header: its package database, no package's.
PACKAGE_DB = "/usr/lib/sysimage/packages"
# What rpmimg writes into a /usr tree besides the packages: the header files above and
# each deployment's own record. No package may own anything there.
RESERVED = {
    PACKAGE_DB: "rpmimg's package database",
    "/usr/lib/sysimage/rpmimg": "rpmimg's deployment record",
}
# Directories a package may own (rpm's own package does) but nothing below: rpmimg derives
# what is there (the rpm database, from the header files).
RESERVED_BELOW = {
    "/usr/lib/sysimage/rpm": "the rpm database rpmimg derives from the headers",
}


def package_files(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(path, mode) of every file of any RPM, original or extents, from its header alone.

    Much cheaper than the full file list of an ExtentsPackage: no index, no Entry objects.
    """
    with open(path, "rb") as f:
        header = read_prefix(f).header
    paths = file_paths(header)
    modes = header.ints(Tag.FILEMODES)
    if len(modes) != len(paths):
        raise FormatError(f"{os.fspath(path)}: header: file modes do not match the file count")
    return list(zip(paths, modes, strict=True))


def package_db_path(files: Iterable[tuple[str, int]]) -> tuple[str, str] | None:
    """The first (path, reserved directory) where the (path, mode) pairs claim one of the
    RESERVED directories, or None.

    That is a reserved directory itself or anything below it (%ghost too), or one of its
    parents as anything but a directory (a symlink there would move it elsewhere).
    """
    for p, mode in files:
        for reserved in RESERVED:
            if p == reserved or p.startswith(reserved + "/"):
                return p, reserved
            if not stat.S_ISDIR(mode) and reserved.startswith(p.rstrip("/") + "/"):
                return p, reserved
        for reserved in RESERVED_BELOW:
            if p.startswith(reserved + "/"):
                return p, reserved
            if not stat.S_ISDIR(mode) and (p == reserved or reserved.startswith(p.rstrip("/") + "/")):
                return p, reserved
    return None


def refuse_package_db(nevra: str, files: Iterable[tuple[str, int]]) -> None:
    """Raise UnsafePathError naming the package and path if it claims the package database."""
    claim = package_db_path(files)
    if claim is not None:
        path, reserved = claim
        what = RESERVED.get(reserved) or RESERVED_BELOW[reserved]
        raise UnsafePathError(f"{nevra}: owns {path}, but {reserved} is {what}")
