"""Each deployment's own record, kept inside its subvolume, and rebuilding the state from them.

The state file is a cache of what the deployments' records say. A record is written into
the tree before it is made read-only, so a read-only subvolume whose record names its own
id and subvolume is a complete deployment. A subvolume that may be deleted without the
state naming it (a deployment being built, or one cleanup is removing) is announced first
by a marker `staging/discard-<ID>`; any other subvolume the state does not explain means
the state is missing or older than the disk, and nothing is deleted until
`rpmimg state rebuild` has rebuilt it from the records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from deploy import bootselect
from deploy.errors import LayoutError, StateError
from deploy.layout import Layout
from deploy.state import FORMAT, DeploymentRecord, State, deployment_from, record_json
from deploy.system import System
from host import kernel
from host.files import fsync_dir
from host.log import get as logger
from rpmextents.nevra import vercmp

log = logger(__name__)

RECORD_DIR = "lib/sysimage/rpmimg"
RECORD_NAME = "deployment.json"
RECORD_PATH = f"{RECORD_DIR}/{RECORD_NAME}"
MAX_RECORD = 64 << 20
_INSIDE = kernel.Resolve.BENEATH | kernel.Resolve.NO_SYMLINKS | kernel.Resolve.NO_MAGICLINKS


def _open_dir(parent: int, name: str, create: bool) -> int:
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
    return kernel.openat2(parent, name, os.O_RDONLY | os.O_DIRECTORY, _INSIDE)


def write_record(tree: Path, record: DeploymentRecord) -> None:
    """Write record as lib/sysimage/rpmimg/deployment.json of tree, never through a symlink.

    Whatever is at that path (the previous deployment's record in a snapshot) is replaced.
    Not synced here: the tree being built is synced whole (build._finish) before the state
    names it, and until then it is a leftover that recover() deletes.
    """
    data = {"format": FORMAT, **record_json(record)}
    del data["pinned"]  # changes after the tree is read-only: only the state holds it
    text = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    fds = [os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        for part in RECORD_DIR.split("/"):
            fds.append(_open_dir(fds[-1], part, create=True))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(RECORD_NAME, dir_fd=fds[-1])
        fd = kernel.openat2(fds[-1], RECORD_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _INSIDE, 0o644)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as e:
        raise LayoutError(f"{tree}/{RECORD_PATH}: cannot write the deployment record: {e.strerror}") from e
    finally:
        for fd in reversed(fds):
            os.close(fd)


def read_record(tree: Path) -> DeploymentRecord:
    """The record a deployment tree holds (StateError when missing or malformed)."""
    where = f"{tree}/{RECORD_PATH}"
    try:
        top = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = kernel.openat2(top, RECORD_PATH, os.O_RDONLY | os.O_NOFOLLOW, _INSIDE)
        finally:
            os.close(top)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_RECORD + 1)
    except OSError as e:
        raise StateError(f"{where}: no readable deployment record: {e.strerror}") from e
    if len(raw) > MAX_RECORD:
        raise StateError(f"{where}: deployment record larger than {MAX_RECORD} bytes")
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise StateError(f"{where}: deployment record is not valid JSON: {e}") from e
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise StateError(f"{where}: not a deployment record of format {FORMAT}")
    return deployment_from(data, where)


def complete_record(path: Path) -> DeploymentRecord | None:
    """The record of a complete deployment at path: a read-only subvolume whose record names
    its own directory and subvolume; None for anything else (a half-built tree)."""
    try:
        if not kernel.is_subvolume(path) or not kernel.subvolume_is_readonly(path):
            return None
        record = read_record(path)
        if record.id != path.name or record.subvol_id != kernel.subvolume_id(path):
            return None
    except (OSError, StateError) as e:
        log.debug("%s: not a complete deployment: %s", path, e)
        return None
    return record


# --- subvolumes that may be deleted without the state naming them ---------------------------

def _marker(layout: Layout, deployment_id: str) -> Path:
    return layout.staging / f"discard-{deployment_id}"


def mark_discardable(layout: Layout, deployment_id: str) -> None:
    """Announce that deployments/<id> may be deleted unless the state names it (fsynced)."""
    fd = os.open(_marker(layout, deployment_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(layout.staging)


def unmark(layout: Layout, deployment_id: str) -> None:
    _marker(layout, deployment_id).unlink(missing_ok=True)


def discardable(layout: Layout) -> set[str]:
    return {p.name[len("discard-") :] for p in layout.staging.glob("discard-*")}


def unexplained(system: System, current: State) -> list[str]:
    """Deployment subvolumes the state does not name and no marker allows to delete, plus
    mounted ones the state does not name: the state is missing or older than the disk."""
    known = {d.id for d in current.deployments}
    allowed = discardable(system.layout) - system.mounted()
    layout = system.layout
    ids = [e.name for e in sorted(layout.deployments.iterdir())
           if e.name not in known and e.name not in allowed]
    roots = sorted(layout.roots.iterdir()) if layout.roots.is_dir() else []
    # A root without its deployment (one with it is named by the deployment).
    on_disk = {e.name for e in layout.deployments.iterdir()}
    return ids + [f"{e.name} (root)" for e in roots
                  if e.name not in known and e.name not in allowed and e.name not in on_disk]


def stale(system: System, current: State) -> str | None:
    """Why the state is missing or older than the disk, or None when it explains it: a
    deployment it does not name, or a boot selection written from a newer state."""
    ids = unexplained(system, current)
    if ids:
        what = "deployment" if len(ids) == 1 else "deployments"
        return f"{what} {', '.join(ids)} not in it"
    written = bootselect.serial(system)
    if written is not None and written > current.serial:
        return f"usr-default.conf was written from a newer one (serial {written} > {current.serial})"
    return None


def refusal(system: System, why: str, refused: bool = True) -> StateError:
    """The one line saying the state is missing or older than the disk."""
    done = "nothing was deleted: " if refused else ""
    return StateError(
        f"{system.layout.state_file}: missing or older than the deployments on disk ({why});"
        f" {done}run `rpmimg state rebuild`"
    )


# --- rebuilding the state --------------------------------------------------------------------

def _previous_flags(system: System) -> State:
    """Pins and rolled-back marks of a still readable (maybe older) state file."""
    try:
        return system.load_state()
    except StateError:
        return State()


def rebuild(system: System) -> tuple[State, list[str]]:
    """The state as the deployments' records describe it, and the entries skipped.

    The default is the deployment usr-default.conf selects, else the newest one; pins and
    rolled-back marks are kept from the old state file where it still parses.
    """
    records, skipped = [], []
    for entry in system.layout.deployments.iterdir():
        record = complete_record(entry)
        if record is None:
            skipped.append(entry.name)
        else:
            records.append(record)
    ids_found = {r.id for r in records}
    if system.layout.roots.is_dir():
        skipped += [f"{e.name} (root)" for e in system.layout.roots.iterdir() if e.name not in ids_found]
    records.sort(key=lambda r: int(r.id))
    old = _previous_flags(system)
    pinned = {d.id for d in old.deployments if d.pinned}
    ids = [r.id for r in records]
    newest: dict[str, str] = {}
    for r in records:
        if r.image not in newest or vercmp(r.version, newest[r.image]) > 0:
            newest[r.image] = r.version
    for image, version in old.newest.items():
        if image not in newest or vercmp(version, newest[image]) > 0:
            newest[image] = version
    chosen = bootselect.selected(system)
    default = chosen if chosen in ids else (ids[-1] if ids else None)
    new = State(
        deployments=tuple(dataclasses.replace(r, pinned=r.id in pinned) for r in records),
        default=default, bad=tuple(b for b in old.bad if b in ids and b != default),
        next_id=max([old.next_id, *(int(i) + 1 for i in ids)]), newest=newest,
        serial=max(old.serial, bootselect.serial(system) or 0),
    )
    return new, sorted(skipped, key=lambda s: (len(s), s))

