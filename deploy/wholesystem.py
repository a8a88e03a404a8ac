"""Building a deployment as a whole system: its root, its accounts, its /usr, its /etc.

    root     staging/root-<ID>: a snapshot of the base deployment's root, or a new one
    accounts the image's sysusers.d applied to the root (deploy.sysusers)
    /usr     built with owners resolving through those accounts, with its rpm database
    /etc     the image's vendor defaults merged into the root's /etc, before /usr is sealed
    finish   the root moved to roots/<ID>, then /usr read-only in deployments/<ID>

Everything is made under the discard marker of the deployment (deploy.records): a run
killed at any point leaves only things recover() deletes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from deploy import basecheck, bootselect, mounts, rootfs, sysusers
from deploy.build import Built, Image, OwnerIds, ProgressFn, Seal, build
from deploy.delta import KeptError
from deploy.etcbase import record_after, recorded_files, write_records
from deploy.etcmerge import EtcMerge, EtcPart, merge_etc
from deploy.faults import checkpoint
from deploy.headers import (
    FileIdentity,
    Listed,
    header_identities,
    header_names,
    installed_file_lists,
)
from deploy.state import DeploymentRecord
from deploy.store import Store
from deploy.system import System
from host.log import get as logger
from rpmextents import Owners, refuse_package_db
from rpmextents.files import FileList

log = logger(__name__)


@dataclass(frozen=True)
class WholeBuilt:
    """A whole deployment built: its /usr, its root, its accounts and its /etc merge."""

    built: Built
    root: Path
    accounts: sysusers.Accounts
    etc: EtcMerge


def device(system: System) -> str:
    uuid = bootselect.fs_uuid(system)
    return f"UUID={uuid}" if uuid else mounts.mount_of(system.layout.top).source


def merge(root: Path, usr: Path, old_usr: Path | None, merged_from: str | None,
          known: Mapping[str, Listed] | None = None,
          lists: tuple[Sequence[Listed], Sequence[Listed]] | None = None,
          written: Mapping[str, tuple[str, EtcPart]] | None = None,
          old_names: Mapping[str, str] | None = None,
          owner_ids: OwnerIds | None = None) -> EtcMerge:
    """Merge the image's /etc into the root (deploy.etcmerge) as `rpm -U` from the packages
    of old_usr would (`rpm -i` without one) and record it in the new /usr. The packages are
    the trees' header files; known: file lists already read, by their header's sha256;
    lists: the old and the new tree's file lists in header file order, when the caller
    knows what both trees hold (tree_lists): then no header file is read; written: what a
    full build wrote into usr, by header file name: (the sha256 of that header file, its
    /etc part) (see _new_packages). An old tree's header file that hashes to one of those
    is taken as that part, not parsed again (a full build of packages old_usr has too);
    old_names: the sha256 of old_usr's header files by name, when the tree is known to hold
    exactly its record's (installed_file_lists' names), so that none of them is hashed;
    owner_ids: the ids the build of usr resolved the image's owner names to (Built.owner_ids),
    so that a root file already as built is known without a look at usr's factory."""
    reuse: Mapping[str, Listed] = known or {}
    if written:
        reuse = {**reuse, **{sha: part for sha, part in written.values()}}
    old: Iterable[Listed] | None
    new: Iterable[Listed]
    if lists is not None and old_usr is not None:
        old, new = lists
    else:
        # Read as merge_etc takes their /etc entries: one package's file list at a time. For
        # an update, read remembers the lists of the tree read first by file identity: the new
        # tree's header files that nothing changed since the snapshot are the old tree's. Only
        # those are kept: a tree built in full shares no header file with the old one, and
        # keeping every list of the old tree held 20 MB more at the benchmark corpus's peak.
        # A full build's tree is new (and its packages noted): nothing to remember.
        read: dict[FileIdentity, Listed] | None = {} if old_usr is not None and not written else None
        old = (installed_file_lists(old_usr, reuse, read,
                                    keep=header_identities(usr) if read is not None else (),
                                    names=old_names)
               if old_usr is not None else None)
        new = _new_packages(usr, known or {}, read, written)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        usr_fd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # The root is a snapshot of merged_from's, which old_usr's record describes.
            recorded = recorded_files(old_usr) if old_usr is not None and merged_from is not None else None
            owners = None if owner_ids is None else Owners(
                *({name: i for name, i in owner_ids.get(kind, {}).items() if i is not None}
                  for kind in ("users", "groups")))
            result = merge_etc(root_fd, usr_fd, old, new, recorded, owners)
            # A fresh root has no earlier record: its first update takes its digests from this.
            after = record_after(root_fd, result) if merged_from is None else ()
            write_records(usr_fd, result, merged_from, after)
        finally:
            os.close(usr_fd)
    finally:
        os.close(root_fd)
    return result


def tree_lists(known: Mapping[str, Listed], base: DeploymentRecord, m: Image
               ) -> tuple[list[Listed], list[Listed]] | None:
    """The file lists of base's tree and of its update to m, in header file order, from
    known (header sha256 -> file list); None unless known has all of them.

    Only for a tree built as an update of base: base was found intact first (its header
    files are its packages' headers, deploy.basecheck), and the update removed the header
    files of the packages m drops and wrote those of the packages it adds, so the new
    tree's header files are m's packages'. Neither tree's header files need to be read."""
    def in_order(packages: Iterable[tuple[str, str]]) -> list[Listed] | None:
        # (header file name, header sha256), sorted by name as the header files are read
        found = [known.get(sha) for _, sha in sorted(packages)]
        return None if any(f is None for f in found) else cast(list[Listed], found)

    old = in_order((f"{p.nvra}.rpm", p.header_sha256) for p in base.packages)
    new = in_order((f"{r.nvra}.rpm", r.header_sha256) for r in m.packages)
    return None if old is None or new is None else (old, new)


def _new_packages(usr: Path, known: Mapping[str, Listed], read: dict[FileIdentity, Listed] | None,
                  written: Mapping[str, tuple[str, EtcPart]] | None) -> Iterable[Listed]:
    """The packages of the new tree at usr as the merge reads them (header files by name):
    what the build noted as it wrote each header file, when the tree holds exactly those
    (a full build makes the tree, and with it the header directory, new), else each header
    file read again."""
    if written and header_names(usr) == sorted(written):
        return [written[name][1] for name in sorted(written)]
    return installed_file_lists(usr, known, read, keep=())


def _read(store: Store, m: Image, base: DeploymentRecord | None) -> dict[str, Listed]:
    """header sha256 -> file list of the packages of m and base the store remembers (of one
    it has a summary of, deploy.summaries, its /etc part)."""
    if not store.remembers:
        return {}
    shas = [r.sha256 for r in m.packages] + [p.sha256 for p in (base.packages if base is not None else ())]
    known: dict[str, Listed] = {}
    for sha in dict.fromkeys(shas):
        kept = store.summary(sha)
        if kept is not None:
            try:
                known[kept.header_sha256] = kept.etc_part()
                continue
            except KeptError as e:
                log.debug("%s: its summary not used: %s", store.path(sha), e)
        try:  # remembered by now, but for an entry the build did not need
            pkg = store.package(sha)
        except FileNotFoundError:
            continue
        known[pkg.header_sha256] = pkg.entries()
    return known


def _header_names_if_intact(system: System, base: DeploymentRecord | None) -> dict[str, str] | None:
    """The sha256 of base's header files by name, as its record gives them, when its tree
    is as it was built (deploy.basecheck.intact: an update found it so, or it was not
    changed since it was built or checked); else None (the files are hashed: a full build
    of the benchmark corpus hashed 5.5 MB of them, past host.digest's budget)."""
    if base is None or not basecheck.intact(system, base.id):
        return None
    return {f"{p.nvra}.rpm": p.header_sha256 for p in base.packages}


def build_system(
    system: System, m: Image, store: Store, new_id: str, progress: ProgressFn,
    base: DeploymentRecord | None, write_record: Seal, *, full: bool = False,
    fresh_root: bool = False, var_subvol: str | None = None,
) -> WholeBuilt:
    """Build deployment new_id of image m with its root; base is the deployment updated
    (its /usr and its root are the starting points) unless fresh_root asks for a root made
    as a first deployment's (without adopting the sysroot's /etc: a factory reset), whose
    fstab mounts var_subvol (default: the shared /var)."""
    root_path = rootfs.staging_path(system, new_id)
    rootfs.ensure_var(system)
    merged: list[EtcMerge] = []
    try:
        root_base = None if fresh_root or base is None else base.id
        old_usr = system.layout.deployment(root_base) if root_base is not None else None
        # Asked before anything is built: the check syncs the filesystem, which costs nothing
        # yet (asked at the merge, it waited a quarter of a second for the build's writes).
        # An update's merge reads no header file of either tree (tree_lists).
        old_names = _header_names_if_intact(system, base) if full and root_base is not None else None
        root = rootfs.make_root(system, new_id, device(system), root_base,
                                adopt=base is None and not fresh_root, var_subvol=var_subvol)
        checkpoint("root created")
        # A full build's claims on the package database are checked on the accounts' pass
        # over the headers (an update's, by build: it may read them from the store's memory).
        claims_checked = full or base is None
        accounts = sysusers.create_accounts(root, store, [r.sha256 for r in m.packages],
                                            refuse_package_db if claims_checked else None)
        checkpoint("accounts created")

        written: dict[str, tuple[str, EtcPart]] = {}

        def noted(name: str, header_sha256: str, files: FileList) -> None:
            # Its header file was written under name, over any earlier one of that name.
            written[name] = header_sha256, EtcPart.of(files)

        def seal(tree: Path, subvol_id: int, owner_ids: OwnerIds, updated: bool) -> None:
            known = _read(store, m, base)
            lists = (tree_lists(known, base, m)
                     if updated and base is not None and root_base == base.id else None)
            merged.append(merge(root, tree, old_usr, root_base, known, lists, written, old_names, owner_ids))
            checkpoint("etc merged")
            write_record(tree, subvol_id, owner_ids)
            # The root goes into place before its /usr: a complete deployment always has it.
            rootfs.finish_root(system, root, new_id)
            checkpoint("root in place")

        built = build(system, m, store, new_id, progress, base, full=full, seal=seal,
                      accounts=root, noted=noted, claims_checked=claims_checked)
    except BaseException:
        for path in (root_path, system.layout.root_of(new_id)):
            with contextlib.suppress(OSError):
                rootfs.discard(path)
        raise
    return WholeBuilt(built, system.layout.root_of(new_id), accounts, merged[0])
