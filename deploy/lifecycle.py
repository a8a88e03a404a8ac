"""Changing which deployments exist and which is default: rollback, pin, cleanup, recovery,
and rebuilding the state from the deployments' own records."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy import bootcheck, bootselect, records, rootfs, state
from deploy.errors import DeploymentError, LockError
from deploy.layout import Layout
from deploy.lock import DEFAULT_WAIT, sysroot_lock
from deploy.state import DeploymentRecord, State
from deploy.system import System
from host import kernel
from host.log import get as logger

log = logger(__name__)


@contextlib.contextmanager
def mutating(system: System, lock_wait: float = DEFAULT_WAIT, *, clean: bool = True) -> Iterator[State]:
    """Hold the sysroot lock, check the state explains the disk, yield the current state.

    With clean, what a killed run left behind is removed first; without (pin, rollback),
    nothing is deleted.
    """
    system.layout.create()
    with sysroot_lock(system.layout.lock_file, lock_wait):
        current = system.load_state()
        recover(system, current, delete=clean)
        yield current


def _delete_subvolume_or_tree(path: Path) -> None:
    if kernel.is_subvolume(path):
        kernel.subvolume_delete(path)
    elif path.is_dir() and not path.is_symlink():
        import shutil  # here: shutil loads bz2 and lzma, and read-only verbs never delete

        shutil.rmtree(path)
    else:
        path.unlink()


def _staging_leftovers(layout: Layout) -> list[Path]:
    return [
        e for e in sorted(layout.staging.iterdir())
        if e != layout.downloads and not e.name.startswith("discard-")
    ]


def recover(system: System, current: State, *, delete: bool = True) -> list[str]:
    """Delete half-built deployments and those a marker allows to; make the boot file match.

    Refuses (StateError, deleting nothing) when a deployment subvolume is neither in the
    state nor marked as deletable, or is mounted: the state is missing or older than the
    disk. Partial downloads are kept so that the next fetch resumes them.
    """
    layout = system.layout
    why = records.stale(system, current)
    if why:
        raise records.refusal(system, why)
    known = {d.id for d in current.deployments}
    marked = records.discardable(layout)
    removed = []
    if delete:
        doomed = [p for i in sorted(marked - known) for p in (layout.deployment(i), layout.root_of(i))]
        for entry in [*_staging_leftovers(layout), *(p for p in doomed if os.path.lexists(p))]:
            _delete_subvolume_or_tree(entry)
            removed.append(os.fspath(entry))
        for tmp in layout.root.glob(".*.tmp-*"):
            tmp.unlink()
        # A package being rewritten by the store, or half decompressed: never resumable.
        for tmp in [*layout.downloads.glob("*.share"), *layout.downloads.glob("*.unzst")]:
            tmp.unlink()
            removed.append(os.fspath(tmp))
        for d in layout.store.glob("*/*"):
            if not d.name.endswith(".rpm"):
                d.unlink()
                removed.append(os.fspath(d))
    for deployment_id in records.discardable(layout):
        # Handled above, or stale: the run that marked it was killed after saving the state.
        if delete or deployment_id in known:
            records.unmark(layout, deployment_id)
    if removed:
        log.info("removed leftovers of an interrupted run: %s", ", ".join(removed))
    bootselect.write(system, current)
    return removed


def settle(system: System) -> State:
    """The state for a read-only command, with usr-default.conf made to agree with it.

    The boot file is rewritten only when no other rpmimg holds the lock and the state
    explains every deployment on disk; otherwise a warning points to `state rebuild`.
    """
    current = system.load_state()
    layout = system.layout
    if not layout.deployments.is_dir():
        return current
    try:
        with sysroot_lock(layout.lock_file, 0):
            why = records.stale(system, current)
            if why:
                log.warning("%s", records.refusal(system, why, refused=False))
            else:
                bootselect.write(system, current)
    except LockError:
        pass
    except OSError as e:
        # A sysroot mounted read-only (a rescue system, a disk looked at): the view needs no
        # write, and the boot selection can't have changed since it was mounted so.
        if e.errno != errno.EROFS:
            raise
        log.debug("%s: the boot selection is not checked: %s", layout.lock_file, e.strerror)
    return current


def rebuild_state(system: System, lock_wait: float = DEFAULT_WAIT) -> tuple[State, list[str]]:
    """Rebuild state.json from the deployments' own records (atomically); deletes nothing."""
    system.layout.create()
    with sysroot_lock(system.layout.lock_file, lock_wait):
        new, skipped = records.rebuild(system)
        # Saved as rebuilt, serial included: it continues the one the boot selection names.
        state.save(system.layout.state_file, new)
        bootselect.write(system, new)
        return new, skipped


def previous_of(current: State, deployment_id: str) -> DeploymentRecord | None:
    """The newest deployment created before deployment_id that is not known bad."""
    ids = [d.id for d in current.deployments]
    at = ids.index(deployment_id)
    for d in reversed(current.deployments[:at]):
        if d.id not in current.bad:
            return d
    return None


@dataclass(frozen=True)
class RollbackResult:
    """A rollback: the default before it and the default now."""

    previous: str
    default: str


def rollback(system: System, lock_wait: float = DEFAULT_WAIT, target_id: str | None = None) -> RollbackResult:
    """Make target_id (default: the deployment before the default) the new default; mark the
    old default as rolled back (bad). Choosing a rolled-back deployment clears its mark."""
    with mutating(system, lock_wait, clean=False) as current:
        if current.default is None:
            raise DeploymentError("nothing is deployed, so there is nothing to roll back")
        target: DeploymentRecord | None
        if target_id is not None:
            target = current.get(target_id)
            if target_id == current.default:
                raise DeploymentError(f"deployment {target.id} is already the default")
        else:
            target = previous_of(current, current.default)
        if target is None:
            raise DeploymentError(
                f"deployment {current.default} is the oldest one; there is nothing to roll back to"
            )
        bad = tuple(b for b in current.bad if b != target.id)
        new = dataclasses.replace(current, default=target.id, bad=(*bad, current.default))
        bootselect.write(system, system.save_state(new))
        return RollbackResult(previous=current.default, default=target.id)


def pin(system: System, deployment_id: str, pinned: bool, lock_wait: float = DEFAULT_WAIT) -> None:
    """Protect a deployment from cleanup (or remove that protection)."""
    with mutating(system, lock_wait, clean=False) as current:
        record = current.get(deployment_id)
        system.save_state(current.replace_deployment(dataclasses.replace(record, pinned=pinned)))


@dataclass(frozen=True)
class CleanupResult:
    """What cleanup removed: deployments, store entries and their bytes, leftovers."""

    removed_deployments: tuple[str, ...]
    removed_packages: int
    freed_store_bytes: int
    leftovers: tuple[str, ...]


def cleanup(system: System, keep: int, lock_wait: float = DEFAULT_WAIT) -> CleanupResult:
    """Keep the newest `keep` deployments plus the booted, default and pinned ones; remove the
    rest, then store entries no kept deployment needs, and partial downloads."""
    if keep < 1:
        raise DeploymentError(f"--keep {keep}: must keep at least one deployment")
    with mutating(system, lock_wait) as current:
        leftovers = tuple(recover(system, current))
        protected = {current.default, system.booted(), *system.mounted()}
        newest = [d.id for d in current.deployments][-keep:]
        keepers = [
            d for d in current.deployments
            if d.id in protected or d.pinned or d.id in newest
        ]
        drop = [d for d in current.deployments if d not in keepers]
        new = dataclasses.replace(
            current,
            deployments=tuple(keepers),
            bad=tuple(b for b in current.bad if any(k.id == b for k in keepers)),
        )
        # Mark, then record: a crash leaves marked subvolumes the state no longer names,
        # which recover() removes; unmarked ones it would refuse to touch.
        for d in drop:
            records.mark_discardable(system.layout, d.id)
        system.save_state(new)
        for d in drop:
            for path in (system.layout.deployment(d.id), system.layout.root_of(d.id)):
                if path.exists():
                    kernel.subvolume_delete(path)
            records.unmark(system.layout, d.id)
        for var in rootfs.unused_vars(system):
            try:
                kernel.subvolume_delete(var)
            except OSError as e:  # e.g. it holds subvolumes of its own: left for the admin
                log.warning("%s: /var of a reset no deployment uses any more, not removed: %s", var, e)
        needed = {p.sha256 for d in keepers for p in d.packages}
        from deploy.store import Store  # the package reader, only for cleanup

        store = Store(system.layout.store)
        removed, freed = 0, 0
        for sha in list(store):
            if sha not in needed:
                freed += store.remove(sha)
                removed += 1
        import shutil

        shutil.rmtree(system.layout.downloads, ignore_errors=True)
        system.layout.downloads.mkdir()
        bootcheck.forget(system, {d.id for d in keepers})
        bootcheck.apply(system, system.load_state())
        return CleanupResult(
            removed_deployments=tuple(d.id for d in drop),
            removed_packages=removed,
            freed_store_bytes=freed,
            leftovers=leftovers,
        )
