"""One file of a package: its type, flags, data extent and metadata as an Entry."""

from __future__ import annotations

import enum
import posixpath
import stat
from dataclasses import dataclass

from rpmextents.errors import FormatError


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


def entry_type(mode: int) -> EntryType:
    """The type of a file of this mode (a header's FILEMODES value); KeyError for none of them
    (a FileList refuses such a mode when it is made)."""
    return _TYPES[stat.S_IFMT(mode)]


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


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a package, with its metadata from the signed header.

    Made on demand by a FileList (which holds the whole list as compact columns): keep
    an Entry only as long as the file it describes is being worked on.
    """

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
