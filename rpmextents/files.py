"""A package's file list, as its signed header describes it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence

from rpmextents.entry import _TYPES, Entry, EntryType, Extent, FileFlag, check_path, entry_type
from rpmextents.errors import FormatError, UnsafePathError
from rpmextents.filelist import FileList, header_files, may_lead_to
from rpmextents.header import Header, read_prefix

__all__ = [
    "PACKAGE_DB",
    "RESERVED",
    "_TYPES",
    "Entry",
    "EntryType",
    "Extent",
    "FileFlag",
    "FileList",
    "check_path",
    "claim_candidates",
    "entry_type",
    "file_paths",
    "header_files",
    "package_db_path",
    "package_files",
    "payload_sizes",
    "refuse_package_db",
]

def file_paths(header: Header) -> list[str]:
    """Absolute paths of the header's files, in header order."""
    return list(header_files(header).paths())


def payload_sizes(entries: Sequence[Entry]) -> list[int]:
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


# What package_db_path looks at closer, the few paths of an image that can claim one: those
# below the reserved directories' common parent, and (as "/x/" stands for "/x") their parents.
_RESERVED_TOP = os.path.commonpath([*RESERVED, *RESERVED_BELOW]) + "/"
_RESERVED_PARENTS = {r[:i] for r in (*RESERVED, *RESERVED_BELOW) for i, c in enumerate(r) if c == "/"} | {
    *RESERVED, *RESERVED_BELOW}


def package_files(path: str | os.PathLike[str]) -> Iterator[tuple[str, int]]:
    """(path, mode) of every file of any RPM, original or extents, from its header alone,
    one at a time (a package of 200,000 files is not a list of 200,000 tuples).

    Much cheaper than the full file list of an ExtentsPackage: no index, no Entry objects.
    """
    files = header_file_list(path)
    return zip(files.paths(), files.modes, strict=True)


def header_file_list(path: str | os.PathLike[str]) -> FileList:
    """The file list of any RPM, original or extents, from its header alone: every
    entry's metadata, no data extents (an extents RPM's index is not read)."""
    with open(path, "rb") as f:
        header = read_prefix(f).header
    try:
        return header_files(header)
    except FormatError as e:
        raise FormatError(f"{os.fspath(path)}: {e}") from e


def package_db_path(files: Iterable[tuple[str, int]]) -> tuple[str, str] | None:
    """The first (path, reserved directory) where the (path, mode) pairs claim one of the
    RESERVED directories, or None.

    That is a reserved directory itself or anything below it (%ghost too), or one of its
    parents as anything but a directory (a symlink there would move it elsewhere).
    """
    for p, mode in files:
        if not p.startswith(_RESERVED_TOP) and p.rstrip("/") not in _RESERVED_PARENTS:
            continue  # neither in the reserved directories' tree nor one of their parents
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


def _may_claim(dirname: str) -> bool:
    """Whether a path with this directory name (DIRNAMES) may be one package_db_path looks
    at: one starting with _RESERVED_TOP, or one of _RESERVED_PARENTS, each of which lies
    along _RESERVED_TOP or below it, so that its directory name leads to _RESERVED_TOP too
    (a parent with slashes after it is no path a FileList takes)."""
    return may_lead_to(dirname, _RESERVED_TOP)


def claim_candidates(files: FileList) -> Iterator[tuple[str, int]]:
    """(path, mode) of the files of the list, in order, that package_db_path looks at closer,
    decoding no other path (for most packages, none): the same claim as of every file."""
    modes = files.modes
    for i, path in files.paths_in(_may_claim):
        yield path, modes[i]


def refuse_package_db(nevra: str, files: Iterable[tuple[str, int]]) -> None:
    """Raise UnsafePathError naming the package and path if it claims the package database."""
    claim = package_db_path(files)
    if claim is not None:
        path, reserved = claim
        what = RESERVED.get(reserved) or RESERVED_BELOW[reserved]
        raise UnsafePathError(f"{nevra}: owns {path}, but {reserved} is {what}")
