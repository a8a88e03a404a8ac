"""Building a deployment's subvolume: from the previous deployment where it can, else from nothing.

Either way the tree is made under staging/, moved into deployments/ and made read-only;
the caller records it. An update starts from a writable snapshot of the current default
and rewrites only what changed (deploy.delta); a first deployment, `--full`, or an
update the snapshot can't express exactly is extracted package by package.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deploy import delta, rpmdb
from deploy.faults import checkpoint
from deploy.headers import HEADER_DIR
from deploy.state import DeploymentRecord
from deploy.store import Store
from deploy.summaries import Summary, summarize
from deploy.system import System
from deploy.tree import SetidFile, TreeBuilder, header_file_name
from host import kernel
from host.log import get as logger
from rpmextents import ExtentsPackage, refuse_package_db
from rpmextents.files import FileList, claim_candidates, package_files

log = logger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Built:
    """A tree built: its subvolume, how it was built, and what the build counted."""

    subvol_id: int
    method: str  # "update" (from the previous deployment) or "full"
    full_reason: str  # why a full build, when it is one
    written: int  # paths written (all of them in a full build)
    kept: int  # paths the update compared and left untouched (deploy.delta.plan_update)
    reflinked: int
    copied: int
    outside_usr: dict[str, list[str]]
    unknown_owners: tuple[str, ...]
    owner_ids: Mapping[str, Mapping[str, int | None]]
    setid_files: tuple[SetidFile, ...] = ()  # every package's, noted as it was accounted for
    # The summaries of the image's packages in its order (deploy.summaries), made when asked.
    summaries: Callable[[], list[Summary]] | None = None


class PackageRef(Protocol):
    @property
    def sha256(self) -> str: ...
    @property
    def nvra(self) -> str: ...
    @property
    def nevra(self) -> str: ...
    @property
    def header_sha256(self) -> str: ...


class Image(Protocol):
    """What a build needs of an image: a manifest, or a deployment's record (rpmimg reset)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def packages(self) -> Sequence[PackageRef]: ...


OwnerIds = Mapping[str, Mapping[str, int | None]]
# Writes the deployment's own record into the finished tree: (tree, subvolume id, owner ids).
Seal = Callable[[Path, int, OwnerIds], None]
# What build() calls on the finished tree: a Seal's arguments and whether the tree is an
# update of base (its snapshot, changed where the image differs) rather than a full build.
BuildSeal = Callable[[Path, int, OwnerIds, bool], None]
# Told of each package a full build extracts: (its header file's name in the tree, the sha256
# of that file's bytes, its files).
Noted = Callable[[str, str, FileList], None]


def build(
    system: System, m: Image, store: Store, new_id: str, progress: ProgressFn,
    base: DeploymentRecord | None, full: bool = False, seal: BuildSeal | None = None,
    accounts: Path | None = None, noted: Noted | None = None, claims_checked: bool = False,
) -> Built:
    """Build image m as deployment new_id; base is the deployment to update from. seal
    writes the deployment's record into the tree before it is made read-only. Owner names
    resolve through the accounts of the root `accounts` (default: the sysroot's). A full
    build tells noted of each package it writes, in the manifest's order.

    A package claiming rpmimg's package database is refused before anything is built (unless
    the caller did that already, claims_checked: deploy.sysusers.image_config's each); a build that fails
    leaves no subvolume behind.
    """
    if not claims_checked:
        for ref in m.packages:
            summary = store.summary(ref.sha256)
            refuse_package_db(ref.nevra, summary.claims if summary is not None else _claims(store, ref.sha256))
    path = system.layout.staging / f"build-{new_id}"
    owners_root = accounts if accounts is not None else system.sysroot
    method, reason = "full", "asked for" if full else "no previous deployment" if base is None else ""
    imported: rpmdb.Importing | None = None
    summaries: Callable[[], list[Summary]] | None = None
    # The tree's rpm database, made while the rest is built (see _package_database); every
    # way out of here waits for it before its tree is discarded or put in place.
    database = contextlib.ExitStack()
    try:
        if base is not None and not full:
            try:
                builder, written, kept, summaries = _update(system, m, store, path, base, progress,
                                                            owners_root, database)
                method = "update"
            except delta.NoDelta as e:
                reason = str(e)
                log.info("building %s %s from scratch: %s", m.name, m.version, reason)
                _abandon(database)
                _discard(path)
        if method == "full":
            imported = rpmdb.Importing()  # the database, made by rpm while the packages are laid out
            made: list[Summary] = []
            builder = _full(system, m, store, path, progress, owners_root, noted, imported, made)
            written, kept = builder.stats.entries, 0
            summaries = lambda: made  # noqa: E731
            # A new database's indexes are rpm's work, done while the seal merges /etc.
            database.enter_context(_package_database(path, m, None, imported))
        owner_ids = builder.owner_ids()
        with database:
            if seal is not None:
                seal(path, kernel.subvolume_id(path), owner_ids, method == "update")
        checkpoint("rpm database written")
    except BaseException:
        _abandon(database)
        if imported is not None:
            imported.abandon()
        with contextlib.suppress(OSError):
            _discard(path)
        raise
    return Built(
        subvol_id=_finish(system, path, new_id), method=method, full_reason=reason,
        written=written, kept=kept,
        reflinked=builder.stats.reflinked, copied=builder.stats.copied,
        outside_usr=builder.stats.outside_usr, unknown_owners=builder.unknown_owners,
        owner_ids=owner_ids, setid_files=tuple(builder.stats.setid), summaries=summaries,
    )


def _claims(store: Store, sha256: str) -> Iterable[tuple[str, int]]:
    """(path, mode) of every file of a stored package: from the file list the store
    remembers or read last (not a second copy beside it), else from the header alone (no
    index, no entries)."""
    if store.remembers or store.at_hand(sha256):
        return claim_candidates(store.file_list(sha256)[1])
    return package_files(store.path(sha256))


def _discard(path: Path) -> None:
    if os.path.lexists(path):
        kernel.subvolume_delete(path)


def _abandon(database: contextlib.ExitStack) -> None:
    """Wait for a database being made (if one is) whose tree is to be discarded; how it
    went no longer matters."""
    try:
        database.close()
    except Exception as e:
        log.debug("the rpm database of a tree given up: %s", e)


@contextlib.contextmanager
def _package_database(path: Path, m: Image, base: DeploymentRecord | None,
                      imported: rpmdb.Importing | None) -> Iterator[None]:
    """The tree's rpm database: base's (in the snapshot) changed where m differs, else new
    (imported has it, when it could make it); made while the block runs, in place when it ends."""
    headers = path / HEADER_DIR
    every = [headers / f"{r.nvra}.rpm" for r in m.packages]
    if base is not None:
        old = {p.sha256 for p in base.packages}
        new = {r.sha256 for r in m.packages}
        gone = sorted({p.nvra for p in base.packages if p.sha256 not in new})
        added = sorted({r.nvra for r in m.packages if r.sha256 not in old})
        with rpmdb.updating(path, gone, [headers / f"{n}.rpm" for n in added], every):
            yield
        return
    with rpmdb.building(path, every, imported):
        yield


def _full(system: System, m: Image, store: Store, path: Path, progress: ProgressFn,
          owners_root: Path, noted: Noted | None, imported: rpmdb.Importing,
          made: list[Summary]) -> TreeBuilder:
    """Extract every package of m; made gets each package's summary."""
    kernel.subvolume_create(path)
    checkpoint("subvolume created")
    with TreeBuilder(path, owners_root) as builder:
        # About ten crash points spread over the build, whatever the image's size.
        step = max(1, len(m.packages) // 10)
        kept = 0
        for i, ref in enumerate(m.packages):
            with store.opened(ref.sha256) as pkg:  # held once, here, while it is extracted
                builder.add_package(pkg)
                # The package's summary: the one kept of it (its entry unchanged since), else
                # made now from the file list at hand.
                summary = store.summary(ref.sha256)
                if summary is None:
                    summary = summarize(ref.sha256, ref.header_sha256, pkg)
                else:
                    kept += 1
                made.append(summary)
                builder.add_accounting(pkg.nevra, summary.accounting)
                builder.write_header(pkg)
                name = header_file_name(pkg)
                if noted is not None:
                    # The manifest's header digest, which the stored entry's header was checked
                    # to have before the build (Store.check_stored): not hashed a second time
                    # (5.5 MB of headers on the benchmark corpus). Only a change to the entry in
                    # between, which only root can make, would make them differ: the merge would
                    # then take an old header file of the manifest's digest for this /etc part.
                    noted(name, ref.header_sha256, pkg.entries())
            del pkg  # (the with statement leaves the name bound: the package would live on)
            # Once the package is let go of: its header is read again, a piece at a time.
            imported.add(store.path(ref.sha256), name)  # its first bytes are the header file's
            progress(i + 1, len(m.packages))
            if i % step == 0:
                checkpoint("package built")
    log.debug("%d of the %d packages known by their summaries", kept, len(m.packages))
    return builder


def _entries(store: Store, sha256s: Sequence[str], what: str,
             found: dict[str, tuple[str, FileList]] | None = None) -> dict[str, tuple[str, FileList]]:
    """sha256 -> (N-V-R.A, entries) of stored packages, added to found (those in it already
    are not asked again: the packages both images of an update have)."""
    found = {} if found is None else found
    for sha in sha256s:
        if sha in found:
            continue
        if not store.has(sha):
            raise delta.NoDelta(f"a package of {what} is no longer in the store ({sha[:12]})")
        found[sha] = store.file_list(sha)
    return found


def _update(
    system: System, m: Image, store: Store, path: Path, base: DeploymentRecord,
    progress: ProgressFn, owners_root: Path, database: contextlib.ExitStack,
) -> tuple[TreeBuilder, int, int, Callable[[], list[Summary]]]:
    """The update as a snapshot of base changed where m differs; (builder, paths written,
    paths kept, the new image's summaries when asked). The snapshot's rpm database is
    changed (entered into database) while the update is planned, the changed packages are
    laid out and the /etc merge runs: it starts as soon as the snapshot holds the new header
    files, as the longest piece of the update after the plan (a plan that refuses, NoDelta,
    leaves it to _abandon).

    A package both images have is known by its summary where the store has one
    (deploy.summaries): its file list is read only where the plan needs it."""
    base_path = system.layout.deployment(base.id)
    if base.owner_ids is None:
        raise delta.NoDelta(f"deployment {base.id} predates updates built from a previous deployment")
    if not kernel.is_subvolume(base_path) or not kernel.subvolume_is_readonly(base_path):
        raise delta.NoDelta(f"deployment {base.id} is not a read-only subvolume")
    builder = TreeBuilder(path, owners_root)
    delta.check_owners(base.owner_ids, builder.owners)
    old_keys = [p.sha256 for p in base.packages]
    new_keys = [r.sha256 for r in m.packages]
    old_set, new_set = set(old_keys), set(new_keys)
    kept = {k: s for k in old_set & new_set if (s := store.summary(k)) is not None}
    log.debug("%d of the %d packages both images have known by their summaries",
              len(kept), len(old_set & new_set))
    entries = _entries(store, [k for k in new_keys if k not in kept], f"{m.name} {m.version}",
                       _entries(store, [k for k in old_keys if k not in kept], f"deployment {base.id}"))

    kernel.subvolume_snapshot(base_path, path, readonly=False)
    checkpoint("subvolume created")
    for p in base.packages:
        if p.sha256 not in new_set:
            builder.remove_header(f"{p.nvra}.rpm")
    # The added packages' header files first (reflinked from the store entries, headers read
    # already): the database update starts from them while the update is planned and the
    # packages' files are written.
    for ref in m.packages:
        if ref.sha256 not in old_set:
            with store.package(ref.sha256).opened_again() as pkg:
                builder.write_header(pkg)
    database.enter_context(_package_database(path, m, base, None))

    def load(key: str) -> FileList:
        return _entries(store, [key], f"deployment {base.id}", entries)[key][1]

    summaries = store.summaries
    plan = delta.plan_update([(k, entries[k][1] if k in entries else None) for k in old_keys],
                             [(k, entries[k][1] if k in entries else None) for k in new_keys],
                             summaries.kept if summaries is not None and kept else None, load)
    for key in new_keys:
        if key in entries:
            builder.account(*entries[key])
        else:
            builder.add_accounting(kept[key].nevra, kept[key].accounting)
    delta.remove(os.fspath(path), plan)
    todo = [r for r in m.packages if r.sha256 in plan.write]
    with builder:
        for i, ref in enumerate(todo):
            with ExtentsPackage.open(store.path(ref.sha256)) as pkg:  # its data by the entry's own index
                if ref.sha256 not in entries and pkg.header_sha256 != ref.header_sha256:
                    # Known by its summary until now: its header is checked as it is read.
                    raise delta.NoDelta(f"{ref.nevra}: its store entry no longer has its header")
                builder.add_package(pkg, only=plan.write[ref.sha256])
            progress(i + 1, len(todo))
            checkpoint("package built")

    def made() -> list[Summary]:
        # Those not kept were read already (the store remembers them).
        return [kept.get(ref.sha256) or summarize(ref.sha256, ref.header_sha256, store.package(ref.sha256))
                for ref in m.packages]

    return builder, sum(len(v) for v in plan.write.values()), plan.kept, made


def _finish(system: System, path: Path, new_id: str) -> int:
    """Move the built tree into place and make it read-only; its subvolume id."""
    checkpoint("tree complete")
    # Renaming a read-only subvolume fails (its ".." would change), so move it first;
    # until the state file names it, recover() treats it as a leftover.
    final = system.layout.deployment(new_id)
    os.rename(path, final)
    checkpoint("deployment in place")
    kernel.subvolume_set_readonly(final, True)
    kernel.sync_filesystem(final)
    checkpoint("subvolume read-only")
    return kernel.subvolume_id(final)
