"""`rpmimg deploy`: fetch and verify an image version, build its /usr, make it the default.

The order of the steps is what makes a crash harmless: every new thing is built under
staging/ (or as a download), moved into place by rename, and only then recorded in
the state file, which is replaced atomically. The previous default is never touched.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import errno
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.build import build
from deploy.errors import DowngradeError, PackageError, SpaceError
from deploy.faults import checkpoint
from deploy.lifecycle import mutating
from deploy.lock import DEFAULT_WAIT
from deploy.signature import fetch_verified_manifest, trusted_key_files
from deploy.sources import FetchJob, Source, open_source
from deploy.state import DeploymentRecord, PackageRecord, State
from deploy.store import Store
from deploy.system import System
from imagespec.manifest import ImageManifest, ManifestPackage
from rpmextents import Keyring
from rpmextents.errors import ExtentsError
from rpmextents.nevra import vercmp

log = logging.getLogger(__name__)

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
    source: str
    keyrings: tuple[Path, ...] = ()
    allow_downgrade: bool = False
    # The manifest's signature and sha256 still pin every package; only the packages'
    # own header signatures are not required.
    allow_unsigned_packages: bool = False
    lock_wait: float = DEFAULT_WAIT
    # Build from nothing even when the previous deployment could be updated.
    full: bool = False


@dataclass(frozen=True)
class DeployResult:
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
    scriptlets_not_run: tuple[str, ...] = ()
    unknown_owners: tuple[str, ...] = ()
    build: str = ""  # "update" (from the previous deployment) or "full"
    full_reason: str = ""
    written_paths: int = 0
    kept_paths: int = 0


def _noop_progress(label: str, unit: str) -> ProgressFn:
    return lambda done, total: None


def _check_downgrade(current: State, m: ImageManifest, allow: bool) -> None:
    newest = current.newest.get(m.name)
    if newest is not None and vercmp(m.version, newest) < 0 and not allow:
        raise DowngradeError(
            f"{m.name} {m.version} is older than {newest}, which was already deployed"
            " (use --allow-downgrade to deploy it anyway)"
        )


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


def _basis(current: State, store: Store, ref: ManifestPackage) -> Path | None:
    """The newest stored version of the same package: the delta base for rsync."""
    for d in reversed(current.deployments):
        for p in d.packages:
            if p.name == ref.name and p.arch == ref.arch and store.has(p.sha256):
                return store.path(p.sha256)
    return None


def _record(ref: ManifestPackage, source: Source) -> PackageRecord:
    return PackageRecord(
        name=ref.name, epoch=ref.epoch, version=ref.version, release=ref.release, arch=ref.arch,
        sha256=ref.sha256, header_sha256=ref.header_sha256, size=ref.size,
        url=source.package_url(ref),
    )


def _out_of_space(e: BaseException | None) -> bool:
    # extract() wraps the OSError in its own error: look along the cause chain.
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e = e.__cause__
    return False


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deploy(system: System, options: DeployOptions, progress: ProgressFactory = _noop_progress) -> DeployResult:
    """Deploy the image version options.source names and make it the default for next boot."""
    key_files = trusted_key_files(system.sysroot, options.keyrings)
    source = open_source(options.source)
    with mutating(system, options.lock_wait) as current:
        m, manifest_sha, fingerprint = fetch_verified_manifest(source, key_files)
        checkpoint("manifest verified")
        base = functools.partial(
            DeployResult, image=m.name, version=m.version, previous_default=current.default,
            packages=len(m.packages), signed_by=fingerprint,
        )
        existing = next(
            (d for d in current.deployments if (d.image, d.version) == (m.name, m.version)), None
        )
        if existing is not None and existing.id == current.default:
            return base(outcome=Outcome.UNCHANGED, deployment=existing.id)
        if existing is None:
            _check_downgrade(current, m, options.allow_downgrade)
        else:
            new = dataclasses.replace(
                current, default=existing.id, bad=tuple(b for b in current.bad if b != existing.id)
            )
            system.save_state(new)
            system.write_boot_file(new)
            return base(
                outcome=Outcome.REACTIVATED, deployment=existing.id,
                kernel_arguments=system.kernel_arguments(existing.id),
            )

        store = Store(system.layout.store)
        wanted: dict[str, ManifestPackage] = {}
        for ref in m.packages:
            if not store.has(ref.sha256):
                wanted.setdefault(ref.sha256, ref)
        fetch = list(wanted.values())
        _check_space(system, m, fetch)
        new_id = str(current.next_id)
        try:
            jobs = [
                FetchJob(ref, system.layout.downloads / f"{ref.sha256}.rpm", _basis(current, store, ref))
                for ref in fetch
            ]
            pending = [j for j in jobs if not j.dest.exists()]  # complete from a killed run
            stats = source.fetch(pending, progress("fetch", "bytes"))
            checkpoint("fetched")
            keyring = None if options.allow_unsigned_packages else Keyring.from_files(key_files)
            deduped = 0
            verify_progress = progress("verify", "packages")
            for i, job in enumerate(jobs):
                deduped += store.add(job.ref, job.dest, keyring)
                verify_progress(i + 1, len(jobs))
            built = build(
                system, m, store, new_id, progress("build", "packages"),
                current.find(current.default), full=options.full,
            )
        except (OSError, ExtentsError) as e:
            if not _out_of_space(e):
                raise
            from deploy.lifecycle import recover

            recover(system, current)
            raise SpaceError(
                f"{system.layout.top}: filesystem full while deploying {m.name} {m.version};"
                " nothing was changed"
            ) from e
        record = DeploymentRecord(
            id=new_id, image=m.name, version=m.version, arch=m.arch, created=_now(),
            manifest_sha256=manifest_sha, source=source.manifest_location,
            subvol_id=built.subvol_id, packages=tuple(_record(r, source) for r in m.packages),
            owner_ids=built.owner_ids,
        )
        newest = dict(current.newest)
        if m.name not in newest or vercmp(m.version, newest[m.name]) > 0:
            newest[m.name] = m.version
        new_state = dataclasses.replace(
            current, deployments=(*current.deployments, record), default=new_id,
            next_id=current.next_id + 1, newest=newest,
        )
        system.save_state(new_state)
        checkpoint("state saved")
        system.write_boot_file(new_state)
        return base(
            outcome=Outcome.DEPLOYED, deployment=new_id, fetched=len(fetch),
            fetched_bytes=sum(r.size for r in fetch), transferred_bytes=stats.transferred,
            deduplicated_bytes=deduped, reflinked_files=built.reflinked, copied_files=built.copied,
            kernel_arguments=system.kernel_arguments(new_id), outside_usr=built.outside_usr,
            scriptlets_not_run=m.report.scriptlets, unknown_owners=built.unknown_owners,
            build=built.method, full_reason=built.full_reason, written_paths=built.written,
            kept_paths=built.kept,
        )


def refetcher(system: System, keyrings: Sequence[Path] = ()) -> Callable[[DeploymentRecord, str], Path]:
    """For `verify --repair`: bring one package of a deployment back into the store,
    from the signed manifest the deployment was made from."""

    def refetch(record: DeploymentRecord, nvra: str) -> Path:
        key_files = trusted_key_files(system.sysroot, keyrings)
        source = open_source(record.source)
        m, manifest_sha, _ = fetch_verified_manifest(source, key_files)
        if manifest_sha != record.manifest_sha256:
            raise PackageError(
                f"{record.source}: the manifest changed since deployment {record.id} was made;"
                f" cannot refetch {nvra} from it"
            )
        ref = next(p for p in m.packages if p.nvra == nvra)
        dest = system.layout.downloads / f"{ref.sha256}.rpm"
        if not dest.exists():
            source.fetch([FetchJob(ref, dest)], None)
        store = Store(system.layout.store)
        store.add(ref, dest, Keyring.from_files(key_files))
        return store.path(ref.sha256)

    return refetch
