"""Merge /etc into a new deployment's root with rpm's own per-file rules.

The root (a snapshot of the root being updated) holds the administrator's /etc; the new
/usr tree holds every vendor entry of /etc/X at share/factory/etc/X. For every path the old
or the new packages own below /etc, deploy.etcrules decides what ``rpm -U`` (or, with no old
packages, ``rpm -i``) would do, and this module does it inside the root, confined, before
the deployment is ever booted. The result lists what happened to every path that changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deploy.etcbase import BaseEntry, Recorded, read_merge_record, record_base, write_records
from deploy.etcfs import EtcBlocked, EtcMergeError, EtcTree, fd_tree
from deploy.etcrules import Fate, OnDisk, erase_fate, install_fate
from rpmextents.files import Entry, EntryType, FileList, header_files
from rpmextents.header import Header
from rpmextents.nevra import nevra_of
from rpmextents.tree import Relocation

if TYPE_CHECKING:
    from rpmextents.extract import Owners

__all__ = ["ACTIONS", "NOTABLE", "EtcAction", "EtcMerge", "EtcMergeError", "EtcPart", "merge_etc",
           "read_merge_record", "write_records"]

ETC = "/etc"
FACTORY = Relocation(top="/usr", outside="/usr/share/factory")

# The stable vocabulary of EtcAction.action.
ACTIONS = {
    "created": "the vendor's entry, where there was none",
    "vendor": "the vendor's new version replaced the one on disk",
    "kept": "the administrator's version stays; the vendor's did not change",
    "kept-vendor-changed": "the administrator's version stays although the vendor changed it",
    "rpmnew": "the administrator's version stays; the vendor's is beside it as .rpmnew",
    "rpmsave": "the administrator's version is saved as .rpmsave",
    "rpmorig": "a file that was there before its package is saved as .rpmorig",
    "removed": "the vendor removed it and the administrator had not changed it",
    "blocked": "the vendor's entry could not be written: something else is in the way",
}
NOTABLE = frozenset({"kept-vendor-changed", "rpmnew", "rpmsave", "rpmorig", "blocked"})


@dataclass(frozen=True)
class EtcAction:
    """What the /etc merge did with one path, and why."""

    path: str            # image path, "/etc/foo.conf"
    action: str          # one of ACTIONS
    package: str | None  # NEVRA of the package owning the path (new, else old)
    detail: str          # one line for humans


@dataclass(frozen=True)
class EtcMerge:
    """The /etc merge of one deployment: what it did, and the base it recorded."""

    actions: tuple[EtcAction, ...]
    # Every entry of the root's /etc before the merge: what first-boot sync compares against.
    base: tuple[BaseEntry, ...] = field(default=(), compare=False)

    def notable(self) -> tuple[EtcAction, ...]:
        """Every .rpmnew/.rpmsave/.rpmorig and every file kept against a vendor change."""
        return tuple(a for a in self.actions if a.action in NOTABLE)

    def to_json(self) -> list[dict[str, object]]:
        return [{"path": a.path, "action": a.action, "package": a.package, "detail": a.detail}
                for a in self.actions]

    @classmethod
    def from_json(cls, data: object) -> EtcMerge:
        """Parse to_json's output; ValueError on anything else."""
        if not isinstance(data, list):
            raise ValueError("the /etc merge record is not a list")
        actions = []
        for item in data:
            if not isinstance(item, dict):
                raise ValueError("an /etc merge action is not an object")
            path, action, package, detail = (item.get(k) for k in ("path", "action", "package", "detail"))
            if (not isinstance(path, str) or action not in ACTIONS or not isinstance(detail, str)
                    or not (package is None or isinstance(package, str))):
                raise ValueError(f"bad /etc merge action {item!r:.200}")
            actions.append(EtcAction(path, str(action), package, detail))
        return cls(tuple(actions))


@dataclass(frozen=True)
class EtcPart:
    """All the merge needs of one package: its NEVRA and its entries below /etc, in order
    (a full build notes it as it extracts the package, rather than read its header again)."""

    nevra: str
    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, files: FileList) -> EtcPart:
        return cls(str(nevra_of(files.header)), tuple(files.entries_below(ETC)))


Package = Header | FileList | EtcPart


def etc_entries(headers: Iterable[Package], parts: dict[int, EtcPart] | None = None
                ) -> dict[str, tuple[Entry, str]]:
    """path -> (entry, NEVRA) of every entry below /etc; a later package's wins, as in the tree.
    A package is its header, its file list when that was read already, or its EtcPart.
    parts: the parts worked out already, by id() of their package, which the caller keeps
    alive as long as the dict (so no id stands for another object); filled in here."""
    owned: dict[str, tuple[Entry, str]] = {}
    for header in headers:
        part = parts.get(id(header)) if parts is not None else None
        if part is None:
            part = header if isinstance(header, EtcPart) else EtcPart.of(
                header if isinstance(header, FileList) else header_files(header))
            if parts is not None:
                parts[id(header)] = part
        for entry in part.entries:
            owned[entry.path] = (entry, part.nevra)
    return owned


def _same_as_vendor(disk: OnDisk, vendor: OnDisk, new: Entry) -> bool:
    """Whether the root already holds the vendor's entry (content, type, mode and owner)."""
    if (disk.type, disk.mode, disk.uid, disk.gid) != (vendor.type, vendor.mode, vendor.uid, vendor.gid):
        return False
    if disk.type is EntryType.SYMLINK:
        return disk.linkto == vendor.linkto
    if disk.type is EntryType.FILE:
        return bool(new.digest) and disk.digest(new.digest_algo) == new.digest
    return disk.type is EntryType.DIR


def _meta_changed(old: Entry, new: Entry) -> bool:
    return (old.mode, old.user, old.group, old.linkto) != (new.mode, new.user, new.group, new.linkto)


class _Merge:
    def __init__(self, root: EtcTree, factory: EtcTree, owners: Owners | None = None) -> None:
        self.root = root
        self.factory = factory
        self.owners = owners
        self.actions: list[EtcAction] = []

    def as_built(self, disk: OnDisk, new: Entry) -> bool:
        """Whether the root holds the regular file new is, as the build made it in the
        factory (its content, and owner and mode as owners resolved them for the build),
        known without looking at the factory. Most /etc files of an update are: the
        benchmark image's update looks up 148 paths of the new /usr's factory, not 535.
        Only the answer yes is taken: else the factory is looked at as before."""
        if self.owners is None or new.type is not EntryType.FILE:
            return False
        built = OnDisk(EntryType.FILE, *self.owners.mode_and_ids(new), "", disk.digest)
        return _same_as_vendor(disk, built, new)

    def note(self, path: str, action: str, nevra: str | None, detail: str) -> None:
        self.actions.append(EtcAction(path, action, nevra, detail))

    def vendor(self, path: str, dest: str | None = None) -> str | None:
        """Write the vendor's entry; None when done, else why it could not be (blocked)."""
        try:
            self.root.install_from(self.factory, path, dest)
        except EtcBlocked as e:
            return str(e)
        return None

    def install(self, path: str, new: Entry, nevra: str, old: Entry | None) -> None:
        disk = self.root.look(path)
        fate = install_fate(old, new, disk)
        if fate is Fate.SKIP:
            if disk is None or new.ghost:
                return
            changed = old is not None and (_meta_changed(old, new) or old.digest != new.digest)
            self.note(path, "kept-vendor-changed" if changed else "kept", nevra,
                      "the administrator's version stays" + (
                          f" (the vendor changed mode/owner to {new.mode & 0o7777:o} {new.user}:{new.group})"
                          if changed else ""))
            return
        if fate is Fate.ALTNAME:
            blocked = self.vendor(path, path + ".rpmnew")
            if blocked:
                self.note(path, "blocked", nevra, blocked)
            else:
                self.note(path, "rpmnew", nevra, f"kept the administrator's; the vendor's is {path}.rpmnew")
            return
        if fate is Fate.CREATE and disk is not None and self.as_built(disk, new):
            return  # already the vendor's
        vendor = self.factory.look(path)
        if vendor is None:
            raise EtcMergeError(f"{path}: owned by {nevra} but missing from the new /usr/share/factory")
        if fate is Fate.CREATE and disk is not None and (
                _same_as_vendor(disk, vendor, new)
                or (vendor.type is EntryType.DIR and disk.type is EntryType.SYMLINK)):
            return  # already the vendor's; or a symlink standing for the directory, which rpm keeps
        if fate in (Fate.SAVE, Fate.BACKUP) and disk is not None:
            suffix = ".rpmsave" if fate is Fate.SAVE else ".rpmorig"
            if disk.type is EntryType.DIR:
                self.note(path, "blocked", nevra, "a directory stands where the vendor has a file; kept")
                return
            self.root.rename(path, suffix)
            blocked = self.vendor(path)
            self.note(path, suffix[1:], nevra, f"the administrator's is saved as {path}{suffix}; " + (
                f"the vendor's could not be written: {blocked}" if blocked else "the vendor's replaced it"))
            return
        blocked = self.vendor(path)
        if blocked:
            self.note(path, "blocked", nevra, blocked)
            return
        self.note(path, "created" if disk is None else "vendor", nevra,
                  "the vendor's entry" if disk is None else "the vendor's version")

    def erase(self, path: str, old: Entry, nevra: str) -> None:
        disk = self.root.look(path)
        fate = erase_fate(old, disk)
        if fate is Fate.SAVE and old.ghost:
            # rpm makes no backup of a %ghost (fsm.c): it leaves the file as it is.
            self.note(path, "kept", nevra, "a %ghost %config file the vendor no longer lists; left as it is")
        elif fate is Fate.SAVE:
            self.root.rename(path, ".rpmsave")
            self.note(path, "rpmsave", nevra, f"removed by the vendor; the administrator's version is "
                      f"saved as {path}.rpmsave")
        elif fate is Fate.ERASE and self.root.erase(path):
            self.note(path, "removed", nevra, "removed by the vendor")


def merge_etc(root_fd: int, usr_fd: int, old: Iterable[Package] | None,
              new: Iterable[Package], recorded: Recorded | None = None,
              owners: Owners | None = None) -> EtcMerge:
    """Merge /etc of the root at root_fd for the /usr tree at usr_fd, as rpm -U old -> new would.

    old None: a first deployment or a reset, merged as ``rpm -i`` onto what the root holds.
    recorded: the files an earlier record of the root holds (deploy.etcbase.recorded_files),
    whose digests stand for the untouched ones in the base record made here.
    owners: the owner names as the build of the /usr at usr_fd resolved them, when known: a
    root file that is a new regular file as built is then not compared with the factory's.
    Raises EtcMergeError naming the path when the root can't take the result.
    """
    # Both trees' packages given as sequences (an update's lists): those the trees share are
    # the same objects, held by the sequences for the whole merge, and parsed for /etc once.
    parts: dict[int, EtcPart] | None = {} if isinstance(new, Sequence) and isinstance(old, Sequence) else None
    new_owned = etc_entries(new, parts)
    old_owned = etc_entries(old or (), parts)
    base = record_base(root_fd, recorded)
    hashed = {f"{ETC}/{e.path}": e.recorded() for e in base if e.type == "f"}
    root, factory = EtcTree(fd_tree(root_fd), hashed), EtcTree(fd_tree(usr_fd, FACTORY))
    try:
        run = _Merge(root, factory, owners)
        for path in sorted(new_owned):
            entry, nevra = new_owned[path]
            before = old_owned.get(path)
            try:
                run.install(path, entry, nevra, before[0] if before else None)
            except OSError as e:
                raise EtcMergeError(f"{path}: {e.strerror or e}") from e
        for path in sorted(set(old_owned) - set(new_owned), reverse=True):
            entry, nevra = old_owned[path]
            try:
                run.erase(path, entry, nevra)
            except OSError as e:
                raise EtcMergeError(f"{path}: {e.strerror or e}") from e
    finally:
        root.close()
        factory.close()
    return EtcMerge(tuple(sorted(run.actions, key=lambda a: a.path)), base)
