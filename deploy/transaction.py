"""`rpmimg deploy`: fetch and verify an image version, build its /usr, make it the default.

The transaction runs as phases, each a function from typed values to a typed value:
read_manifest (the signed manifest) -> fetch_into_store (every package stored, checked)
-> build_tree (a read-only subvolume holding its own record) -> commit (state, then boot
selection). A later phase (a root with /etc, users, an rpm database, boot entries) slots
in between build_tree and commit.

The order of the steps is what makes a crash harmless: every new thing is built under
staging/ (or as a download), moved into place by rename, and only then recorded in
the state file, which is replaced atomically. The previous default is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy import (
    basecheck,
    bootcheck,
    bootentries,
    bootfiles,
    bootselect,
    intent,
    layoutcache,
    records,
    rootfs,
    setid,
    summaries,
)
from deploy.build import Built, OwnerIds
from deploy.errors import DowngradeError, SpaceError
from deploy.etcmerge import EtcAction
from deploy.faults import checkpoint
from deploy.layoutcache import LayoutCache
from deploy.lifecycle import mutating
from deploy.lock import DEFAULT_WAIT
from deploy.outside import new_outside_usr
from deploy.signature import fetch_verified_manifest, package_keyring, trusted_key_files
from deploy.sources import FetchJob, Source, open_source
from deploy.state import DeploymentRecord, PackageRecord, State, now_iso
from deploy.store import Store
from deploy.summaries import Summary
from deploy.system import System
from deploy.wholesystem import WholeBuilt, build_system
from host.log import get as logger
from imagespec.manifest import ImageManifest, ManifestPackage
from rpmextents import Owners
from rpmextents.errors import ExtentsError
from rpmextents.nevra import vercmp

log = logger(__name__)

ProgressFn = Callable[[int, int], None]
# Makes a progress callback for a labelled phase ("fetch", "build") counting a unit.
ProgressFactory = Callable[[str, str], ProgressFn]

# Room kept free beyond the estimate: btrfs needs metadata space to stay writable.
SPACE_RESERVE = 16 << 20
# Metadata of a deployment (inodes, directory items, extent references, header files)
# as a fraction of the image's size; generous for images of small files.
METADATA_FRACTION = 0.05


class Outcome(enum.Enum):
    DEPLOYED = "deployed"
    UNCHANGED = "no change"
    REACTIVATED = "reactivated"


@dataclass(frozen=True)
class DeployOptions:
    """How to deploy: the source, the keys, and what the administrator allowed."""

    source: str
    keyrings: tuple[Path, ...] = ()
    allow_downgrade: bool = False
    # The manifest's signature and sha256 still pin every package; only the packages'
    # own header signatures are not required.
    allow_unsigned_packages: bool = False
    lock_wait: float = DEFAULT_WAIT
    # Build from nothing even when the previous deployment could be updated.
    full: bool = False
    # Other http(s) URLs of the same manifest (deploy.sources.http).
    mirrors: tuple[str, ...] = ()
    # A root made fresh from the image's defaults, as a first deployment's (rpmimg reset).
    fresh_root: bool = False
    # What the admin asked for beyond an update of the same image (deploy.intent); its
    # force also makes a deployment that failed to boot the default again.
    intent: intent.Intent = field(default_factory=intent.Intent)


@dataclass(frozen=True)
class DeployResult:
    """What a deploy did, and what it found on the way."""

    outcome: Outcome
    deployment: str
    image: str
    version: str
    previous_default: str | None
    packages: int
    fetched: int = 0
    fetched_bytes: int = 0
    transferred_bytes: int = 0
    deduplicated_bytes: int = 0
    reflinked_files: int = 0
    copied_files: int = 0
    signed_by: str = ""
    kernel_arguments: str = ""
    outside_usr: dict[str, list[str]] = field(default_factory=dict)
    # Of those, the ones the replaced deployment lacks (None: nothing replaced, or its tree is gone).
    outside_usr_new: dict[str, list[str]] | None = None
    scriptlets_not_run: tuple[str, ...] = ()
    unknown_owners: tuple[str, ...] = ()
    build: str = ""  # "update" (from the previous deployment) or "full"
    full_reason: str = ""
    written_paths: int = 0
    kept_paths: int = 0
    root: str = ""  # the deployment's root subvolume
    accounts_by_scriptlet: tuple[str, ...] = ()  # packages whose accounts will not exist
    # What the /etc merge did to each path that changed (deploy.etcmerge.ACTIONS), and the
    # notable ones: .rpmnew/.rpmsave/.rpmorig, files kept against a vendor change, blocked.
    etc_merge: tuple[EtcAction, ...] = ()
    etc_notable: tuple[EtcAction, ...] = ()
    # The default deployment this one replaces (None: there was none).
    replaces: intent.Ref | None = None
    # Files the base of an update differed in from its packages (deploy.basecheck).
    base_damage: tuple[str, ...] = ()
    # Files whose set-id bit was dropped because their owner is unknown here (deploy.setid).
    setid_dropped: tuple[str, ...] = ()


def _noop_progress(label: str, unit: str) -> ProgressFn:
    return lambda done, total: None


# --- phase 1: the signed manifest, and what to do with it -----------------------------------

@dataclass(frozen=True)
class SignedManifest:
    """A manifest whose detached signature verified against the trusted keys."""

    manifest: ImageManifest
    sha256: str
    signed_by: str  # the signing key's fingerprint
    source: Source
    key_files: tuple[Path, ...]


def read_manifest(system: System, options: DeployOptions) -> SignedManifest:
    """Phase 1: fetch the manifest and refuse it unless a trusted key signed it."""
    key_files = tuple(trusted_key_files(system.sysroot, options.keyrings))
    source = open_source(options.source, options.mirrors)
    m, sha, fingerprint = fetch_verified_manifest(source, key_files)
    checkpoint("manifest verified")
    return SignedManifest(m, sha, fingerprint, source, key_files)


def _check_downgrade(current: State, m: ImageManifest, allow: bool) -> None:
    newest = current.newest.get(m.name)
    if newest is not None and vercmp(m.version, newest) < 0 and not allow:
        raise DowngradeError(
            f"{m.name} {m.version} is older than {newest}, which was already deployed"
            " (use --allow-downgrade to deploy it anyway, or rollback)"
        )


def _reactivate(system: System, current: State, existing: DeploymentRecord) -> None:
    new = dataclasses.replace(
        current, default=existing.id, bad=tuple(b for b in current.bad if b != existing.id)
    )
    bootselect.write(system, system.save_state(new))


# --- phase 2: every package of the manifest in the store, checked ---------------------------

@dataclass(frozen=True)
class Stored:
    """Every package of the manifest in the store: those fetched, and the bytes it took."""

    fetched: tuple[ManifestPackage, ...]
    transferred: int
    deduplicated: int


def _basis(current: State, store: Store, ref: ManifestPackage) -> Path | None:
    """The newest stored version of the same package: the delta base for rsync."""
    for d in reversed(current.deployments):
        for p in d.packages:
            if p.name == ref.name and p.arch == ref.arch and store.has(p.sha256):
                return store.path(p.sha256)
    return None


def _check_space(system: System, m: ImageManifest, fetch: Sequence[ManifestPackage]) -> None:
    st = os.statvfs(system.layout.root)
    free = st.f_bavail * st.f_frsize
    image = sum(p.size for p in m.packages)
    need = sum(p.size for p in fetch) + int(image * METADATA_FRACTION) + SPACE_RESERVE
    if need > free:
        raise SpaceError(
            f"{system.layout.top}: not enough free space for {m.name} {m.version}:"
            f" needs {need >> 20} MiB ({len(fetch)} packages to fetch plus metadata),"
            f" {free >> 20} MiB free"
        )


def _builds_in_full(current: State, options: DeployOptions) -> bool:
    base = current.find(current.default)
    return options.full or base is None or base.owner_ids is None


def _missing(store: Store, signed: SignedManifest, current: State, full: bool) -> list[ManifestPackage]:
    """Packages to fetch: those the store lacks, or holds damaged. Stored ones are checked
    against their manifest entry; their whole content too where a full build will read it."""
    base = current.find(current.default)
    in_base = {p.sha256 for p in base.packages} if base is not None else set()
    # The headers are read after this (the store's check of each, or, of a package with a
    # summary, the build's): asked for ahead, all at once.
    store.prefetch(r.sha256 for r in signed.manifest.packages)
    refs: dict[str, ManifestPackage] = {}
    for ref in signed.manifest.packages:
        refs.setdefault(ref.sha256, ref)
    stored = [r for r in refs.values() if store.has(r.sha256)]
    # The content of all of them at once: marks spare the unchanged ones (deploy.storemarks).
    damaged = store.damaged_entries(r.sha256 for r in stored if full or r.sha256 not in in_base)
    for ref in stored:
        if ref.sha256 in damaged:
            store.discard_damaged(ref)
    # The last one read whole stays at hand for the build (all of a one-package image's reads);
    # of the others, only the headers.
    last = next((r.sha256 for r in reversed(stored) if r.sha256 not in damaged), None)
    return [r for r in refs.values() if not store.has(r.sha256)
            or not store.check_stored(r, content=False, keep=r.sha256 == last)]


def fetch_into_store(
    system: System, signed: SignedManifest, current: State, options: DeployOptions,
    progress: ProgressFactory, check_all: bool = False, store: Store | None = None,
) -> Stored:
    """Phase 2: bring every package of the manifest into the store, verified (with check_all,
    every stored entry re-hashed, as a full build needs)."""
    store = store if store is not None else Store(system.layout.store)
    fetch = _missing(store, signed, current, check_all or _builds_in_full(current, options))
    _check_space(system, signed.manifest, fetch)
    jobs = [
        FetchJob(ref, system.layout.downloads / f"{ref.sha256}.rpm", _basis(current, store, ref),
                 store.find_data)
        for ref in fetch
    ]
    # rpm checks the header signatures of what is added, with keys it must be able to use:
    # asked before the fetch, and only when there is something to add (rpm's library is 8 MB).
    keyring = (None if options.allow_unsigned_packages or not jobs
               else package_keyring(signed.key_files, options.keyrings))
    pending = [j for j in jobs if not j.dest.exists()]  # complete from a killed run
    stats = signed.source.fetch(pending, progress("fetch", "bytes"))
    checkpoint("fetched")
    deduped = 0
    verify_progress = progress("verify", "packages")
    for i, job in enumerate(jobs):
        deduped += store.add(job.ref, job.dest, keyring)
        verify_progress(i + 1, len(jobs))
    return Stored(tuple(fetch), stats.transferred, deduped)


@dataclass(frozen=True)
class Downloaded:
    """What `deploy --download-only` brought into the store."""

    image: str
    version: str
    packages: int
    fetched: int = 0
    fetched_bytes: int = 0
    transferred_bytes: int = 0
    deduplicated_bytes: int = 0
    signed_by: str = ""
    deployment: str | None = None  # the deployment that already has this version


def download(system: System, options: DeployOptions, progress: ProgressFactory = _noop_progress) -> Downloaded:
    """Fetch and verify an image version's packages (and its kernels and initrds) into the
    store, refused as deploy would refuse the version; no deployment, state or boot entry
    changes. A later deploy of it fetches nothing; `cleanup` removes what no deployment uses."""
    signed = read_manifest(system, options)
    m = signed.manifest
    with mutating(system, options.lock_wait) as current:
        intent.check(current, m, options.intent, bootcheck.failed(system))
        result = functools.partial(Downloaded, image=m.name, version=m.version,
                                   packages=len(m.packages), signed_by=signed.signed_by)
        existing = next(
            (d for d in current.deployments if (d.image, d.version) == (m.name, m.version)), None
        )
        if existing is not None:
            return result(deployment=existing.id)
        _check_downgrade(current, m, options.allow_downgrade)
        bootfiles.fetch(system, signed.source, bootfiles.manifest_kernels(m))
        store = Store(system.layout.store, marks=system.layout.store_marks)
        with _phase(system, current, "fetching the packages of", m, system.layout.downloads):
            stored = fetch_into_store(system, signed, current, options, progress, store=store)
        store.mark_added()
    return result(fetched=len(stored.fetched), fetched_bytes=sum(r.size for r in stored.fetched),
                  transferred_bytes=stored.transferred, deduplicated_bytes=stored.deduplicated)


# --- phase 3: the tree, with its own record, read-only in deployments/ -----------------------

@dataclass(frozen=True)
class Tree:
    """The tree built for a deployment, with its record."""

    record: DeploymentRecord
    built: Built
    whole: WholeBuilt


def _record(ref: ManifestPackage, source: Source) -> PackageRecord:
    return PackageRecord(
        name=ref.name, epoch=ref.epoch, version=ref.version, release=ref.release, arch=ref.arch,
        sha256=ref.sha256, header_sha256=ref.header_sha256, size=ref.size,
        url=source.package_url(ref),
    )


def build_tree(
    system: System, signed: SignedManifest, current: State, options: DeployOptions,
    progress: ProgressFactory, store: Store | None = None,
) -> Tree:
    """Phase 3: build the deployment; its record is written into it before it is read-only.

    Until the state names it, a marker lets the next run delete it.
    """
    m = signed.manifest
    new_id = str(current.next_id)
    record = DeploymentRecord(
        id=new_id, image=m.name, version=m.version, arch=m.arch, created=now_iso(),
        manifest_sha256=signed.sha256, subvol_id=0,
        source=intent.versioned_location(signed.source.manifest_location, m),
        packages=tuple(_record(r, signed.source) for r in m.packages), signed_by=signed.signed_by,
        allow_unsigned_packages=options.allow_unsigned_packages,
    )
    sealed: list[DeploymentRecord] = []

    def seal(tree: Path, subvol_id: int, owner_ids: OwnerIds) -> None:
        sealed.append(dataclasses.replace(record, subvol_id=subvol_id, owner_ids=owner_ids))
        records.write_record(tree, sealed[0])
        # The boot record too, durable with the tree: the build syncs the filesystem once
        # the tree is in place, before the state names it (its own fsyncs cost 20 ms). Left
        # by a build that fails, it names a deployment no state does (pruned as such).
        bootfiles.save(system, new_id, [k.files for k in bootfiles.manifest_kernels(m)], sync=False)

    records.mark_discardable(system.layout, new_id)
    try:
        whole = build_system(
            system, m, store if store is not None else Store(system.layout.store), new_id,
            progress("build", "packages"),
            current.find(current.default), seal, full=options.full, fresh_root=options.fresh_root,
        )
    except BaseException:
        # A failed build deletes what it made; the marker stays only if something is left.
        made = (system.layout.staging / f"build-{new_id}", system.layout.deployment(new_id),
                rootfs.staging_path(system, new_id), system.layout.root_of(new_id))
        if not any(os.path.lexists(p) for p in made):
            records.unmark(system.layout, new_id)
        raise
    return Tree(sealed[0], whole.built, whole)


# --- phase 4: record it as the default ------------------------------------------------------

def commit(system: System, signed: SignedManifest, current: State, tree: Tree) -> State:
    """Phase 4: save the state naming the new deployment as default, then the boot selection."""
    m = signed.manifest
    newest = dict(current.newest)
    if m.name not in newest or vercmp(m.version, newest[m.name]) > 0:
        newest[m.name] = m.version
    new_state = dataclasses.replace(
        current, deployments=(*current.deployments, tree.record), default=tree.record.id,
        next_id=current.next_id + 1, newest=newest,
    )
    saved = system.save_state(new_state)
    checkpoint("state saved")
    records.unmark(system.layout, tree.record.id)
    bootselect.write(system, saved)
    return saved


def _out_of_space(e: BaseException | None) -> OSError | None:
    while e is not None:  # extract() wraps the OSError in its own error: follow the causes
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        e = e.__cause__
    return None


@contextlib.contextmanager
def _phase(
    system: System, current: State, name: str, m: ImageManifest, path: Path, undo: bool = True
) -> Iterator[None]:
    """Turn a full filesystem during a phase into one line naming the phase and the path
    (the failing file's, else the phase's own), after removing what the phase left (with undo)."""
    try:
        yield
    except (OSError, ExtentsError) as e:
        full = _out_of_space(e)
        if full is None:
            raise
        if undo:
            from deploy.lifecycle import recover

            recover(system, current)
        where = full.filename if full.filename is not None else path
        raise SpaceError(
            f"{where}: no space left on the device while {name} {m.name} {m.version}"
            + ("; nothing was changed" if undo else "")
        ) from e


def _fetch_and_build(
    system: System, signed: SignedManifest, current: State, options: DeployOptions,
    progress: ProgressFactory,
) -> tuple[Stored, Tree, Store]:
    """Phases 2 and 3. An update that had to fall back to a full build read store entries
    the fetch phase did not re-hash: if one of them is damaged, the uncommitted tree is
    discarded and both phases run again with every entry checked (and refetched).

    An update reads each stored package's header and file list once for both phases; a
    full build reads them one package at a time, to bound its memory. (The report's set-id
    files were noted by the build as it went: no package is read again for it.)"""
    m, layout = signed.manifest, system.layout
    check_all = False
    while True:
        store = Store(layout.store, remember=not check_all and not _builds_in_full(current, options),
                      marks=layout.store_marks)
        base = current.find(current.default)
        if store.remembers:
            headers = {p.sha256: p.header_sha256 for p in (base.packages if base is not None else ())}
            headers.update((r.sha256, r.header_sha256) for r in m.packages)
            store.use_layout(LayoutCache.load(layout.layout_cache), headers)
        if base is not None and not check_all:  # (a second round reads every package itself)
            store.use_summaries(summaries.load(layout.summaries,
                                               [(p.sha256, p.header_sha256) for p in base.packages]))
        with _phase(system, current, "fetching the packages of", m, layout.downloads):
            stored = fetch_into_store(system, signed, current, options, progress, check_all, store)
        with _phase(system, current, "building", m, layout.staging / f"build-{current.next_id}"):
            tree = build_tree(system, signed, current, options, progress, store)
        if check_all or tree.built.method != "full" or _builds_in_full(current, options):
            return stored, tree, store
        if not store.damaged_entries(r.sha256 for r in m.packages):
            return stored, tree, store
        log.warning("a store entry the full build read is damaged; building again from refetched packages")
        from deploy.lifecycle import recover

        recover(system, current)  # the tree is marked and not in the state: it goes
        if store.layout is not None:  # the next round reads every entry itself
            store.layout.close()
        check_all = True


def _save_layout(system: System, store: Store, record: DeploymentRecord,
                 made: Callable[[], list[Summary]] | None) -> None:
    """Write the layout cache of the new default (deploy.layoutcache) and its packages'
    summaries (deploy.summaries, made: from the build). Best effort: without them the next
    update reads the store entries."""
    previous = store.layout
    if made is not None:
        try:
            summaries.save(system.layout.summaries, made(), store.summaries)
        except Exception as e:  # in a thread of its own: nothing else would hear of it
            log.warning("%s: not written: %s: %s", system.layout.summaries, type(e).__name__, e)
    try:
        layoutcache.refresh(system.layout.layout_cache, store, (p.sha256 for p in record.packages),
                            {p.sha256: p.header_sha256 for p in record.packages})
    except (OSError, ExtentsError) as e:
        log.warning("%s: not written: %s", system.layout.layout_cache, e)
    except Exception as e:  # in a thread of its own: nothing else would hear of it
        log.warning("%s: not written: %s: %s", system.layout.layout_cache, type(e).__name__, e)
    finally:
        if previous is not None:
            previous.close()


@contextlib.contextmanager
def _saving_layout(system: System, store: Store, record: DeploymentRecord,
                   made: Callable[[], list[Summary]] | None = None) -> Iterator[None]:
    """_save_layout in a thread while the block runs, done when it ends. Writing the cache
    (12.5 MB on the benchmark image) is the kernel's work and the state's and boot entry's
    fsyncs are waits: each goes on while the other does, on two cores (about 40 ms of an
    update). The tree is complete and on the disk by then: the cache's writes add nothing
    to its sync. A deploy that fails after this leaves a cache of the packages it did not
    commit: a cache of other entries only makes the next update read the store's."""
    saving = threading.Thread(target=_save_layout, args=(system, store, record, made), name="layout-cache")
    saving.start()
    try:
        yield
    finally:
        saving.join()


def deploy(system: System, options: DeployOptions, progress: ProgressFactory = _noop_progress) -> DeployResult:
    """Deploy the image version options.source names and make it the default for next boot."""
    # The manifest is fetched and verified before the lock is taken: a slow server then
    # holds up only this command, not every other rpmimg on the machine.
    signed = read_manifest(system, options)
    m = signed.manifest
    with mutating(system, options.lock_wait) as current:
        intent.check(current, m, options.intent, bootcheck.failed(system))
        replaced = current.find(current.default)
        base = functools.partial(
            DeployResult, image=m.name, version=m.version, previous_default=current.default,
            packages=len(m.packages), signed_by=signed.signed_by,
            replaces=intent.ref_of(replaced),
            outside_usr_new={} if current.default is not None else None,
        )
        existing = next(
            (d for d in current.deployments if (d.image, d.version) == (m.name, m.version)), None
        )
        if existing is not None and existing.id == current.default:
            return base(outcome=Outcome.UNCHANGED, deployment=existing.id)
        # Making an existing older deployment the default again is a downgrade too.
        _check_downgrade(current, m, options.allow_downgrade)
        if existing is not None:
            bootcheck.reactivated(system, existing.id)
            _reactivate(system, current, existing)
            return base(outcome=Outcome.REACTIVATED, deployment=existing.id,
                        kernel_arguments=bootselect.kernel_arguments(system, existing.id))
        kernels = bootfiles.manifest_kernels(m)
        if system.esp is not None:  # before anything is staged
            bootentries.check_space(system.esp, system, current, [k.files for k in kernels])
        bootfiles.fetch(system, signed.source, kernels)
        damage = basecheck.damaged_base(system, current, options.full)
        if damage:
            options = dataclasses.replace(options, full=True)
        stored, tree, store = _fetch_and_build(system, signed, current, options, progress)
        with _saving_layout(system, store, tree.record, tree.built.summaries):  # the next update need not read every store entry
            with _phase(system, current, "recording", m, system.layout.state_file, undo=False):
                commit(system, signed, current, tree)
            # Nor walk it. The build synced the filesystem when it made the tree read-only, and
            # nothing changed the tree since: no second sync (about 20 ms).
            basecheck.record_intact(system, tree.record.id, synced=True)
            store.mark_added()  # nor a full deploy hash the new store entries again
        built = tree.built
        kept = {p.sha256 for p in replaced.packages} if replaced is not None else set()
        new_outside = new_outside_usr(system, replaced.id if replaced is not None else None,
                                      built.outside_usr, {r.nevra for r in m.packages if r.sha256 in kept})
        return base(
            outcome=Outcome.DEPLOYED, deployment=tree.record.id, fetched=len(stored.fetched),
            fetched_bytes=sum(r.size for r in stored.fetched), transferred_bytes=stored.transferred,
            deduplicated_bytes=stored.deduplicated, reflinked_files=built.reflinked,
            copied_files=built.copied, kernel_arguments=bootselect.kernel_arguments(system, tree.record.id),
            outside_usr=built.outside_usr, outside_usr_new=new_outside, scriptlets_not_run=m.report.scriptlets,
            unknown_owners=built.unknown_owners, build=built.method,
            full_reason=basecheck.reason(current.default or "", damage) if damage else built.full_reason,
            written_paths=built.written, kept_paths=built.kept, base_damage=damage,
            setid_dropped=setid.dropped(built.setid_files, Owners.from_root(tree.whole.root)),
            root=os.fspath(tree.whole.root), accounts_by_scriptlet=tree.whole.accounts.by_scriptlet,
            etc_merge=tree.whole.etc.actions, etc_notable=tree.whole.etc.notable(),
        )
