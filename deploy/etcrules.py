"""What rpm does with one path of /etc on an update, decided from headers and the disk.

These are rpm's rules (lib/rpmfi.c rpmfilesDecideFate and rpmfilesConfigConflict, lib/
transaction.c handleInstInstalledFile and handleOverlappedFiles), restated over our own
values: the old package's entry, the new package's entry and what the root holds now.
Only the decision lives here; deploy.etcmerge carries it out inside the root.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from rpmextents.files import Entry, EntryType, FileFlag


class Fate(enum.Enum):
    """rpm's file actions (rpmFileAction) that a merge can take."""

    CREATE = "create"    # write the vendor's entry (FA_CREATE)
    SKIP = "skip"        # leave the disk alone (FA_SKIP)
    SAVE = "save"        # rename the disk's to .rpmsave, then write the vendor's (FA_SAVE)
    ALTNAME = "altname"  # keep the disk's, write the vendor's as .rpmnew (FA_ALTNAME)
    BACKUP = "backup"    # rename the disk's to .rpmorig, then write the vendor's (FA_BACKUP)
    ERASE = "erase"      # remove the disk's (FA_ERASE), a directory only when empty


@dataclass(frozen=True)
class OnDisk:
    """What the root holds at a path: its type and, lazily, its content digest."""

    type: EntryType
    mode: int
    uid: int
    gid: int
    linkto: str
    digest: Callable[[str], str]  # hashlib algorithm name -> hex digest of a regular file


def _same_content(entry: Entry, disk: OnDisk) -> bool:
    """Whether the disk's entry has the content the header entry describes (type included)."""
    if entry.type is not disk.type:
        return False
    if entry.type is EntryType.FILE:
        return bool(entry.digest) and disk.digest(entry.digest_algo) == entry.digest
    if entry.type is EntryType.SYMLINK:
        return entry.linkto == disk.linkto
    return False


def config_conflict(entry: Entry, disk: OnDisk | None) -> bool:
    """rpmfilesConfigConflict: a %config file or link on disk that differs from entry's."""
    if not entry.flags & FileFlag.CONFIG or entry.type not in (EntryType.FILE, EntryType.SYMLINK):
        return False
    if disk is None:
        return False
    return not _same_content(entry, disk)


def _decide_fate(old: Entry, new: Entry, disk: OnDisk | None) -> Fate:
    """rpmfilesDecideFate for a %config path both versions own (skipping missing files)."""
    if disk is None:
        return Fate.SKIP if new.flags & FileFlag.MISSINGOK else Fate.CREATE
    save = Fate.ALTNAME if new.flags & FileFlag.NOREPLACE else Fate.SAVE
    if old.type is EntryType.FILE:
        if disk.type is EntryType.FILE:
            if old.digest and disk.digest(old.digest_algo) == old.digest:
                return Fate.CREATE  # unmodified by the administrator
            if new.type is EntryType.FILE and new.digest and disk.digest(new.digest_algo) == new.digest:
                return Fate.CREATE  # already the new content
        if (new.type is EntryType.FILE and old.digest_algo == new.digest_algo
                and old.digest and old.digest == new.digest):
            return Fate.SKIP  # the vendor's content did not change: the administrator's stays
        return save
    if old.type is EntryType.SYMLINK:
        if disk.type is EntryType.SYMLINK and disk.linkto in (old.linkto, new.linkto if
                                                               new.type is EntryType.SYMLINK else None):
            return Fate.CREATE
        if new.type is EntryType.SYMLINK and old.linkto == new.linkto:
            return Fate.SKIP
        return save
    return Fate.CREATE


def install_fate(old: Entry | None, new: Entry, disk: OnDisk | None) -> Fate:
    """What rpm -U (old given) or rpm -i (old None) does with new's path, given the disk."""
    if new.ghost:
        return Fate.SKIP  # rpm leaves whatever is at a %ghost path alone
    if old is not None and (old.flags | new.flags) & FileFlag.CONFIG:
        return _decide_fate(old, new, disk)
    if config_conflict(new, disk):
        # A pre-existing %config file the old version did not own (or no old version).
        return Fate.ALTNAME if new.flags & FileFlag.NOREPLACE else Fate.BACKUP
    return Fate.CREATE


def erase_fate(old: Entry, disk: OnDisk | None) -> Fate:
    """What rpm does with a path the old version owned and no new package owns."""
    if disk is None:
        return Fate.SKIP
    if config_conflict(old, disk):
        return Fate.SAVE  # a modified %config file is saved as .rpmsave, never lost
    return Fate.ERASE
