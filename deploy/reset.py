"""`rpmimg reset`: a factory reset as a new deployment of the current image.

The new deployment's /usr is the default deployment's packages again (an update of it that
changes nothing, so it costs almost no space); its root is made as a first deployment's
is, from the image's vendor defaults and sysusers.d alone, without adopting anything of
the running system. The previous deployment and its root stay untouched, for rollback.

/var: with keep_var the new root mounts the shared /var like every root; without, it gets
a new, empty /var subvolume of its own (TOP/@rpmimg/var-<ID>), which the deployments that
later update it share in turn (their roots are snapshots of its root, fstab included).
Rolling back past the reset returns the old /var with the old root.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy import bootselect, records
from deploy.build import OwnerIds
from deploy.errors import DeploymentError
from deploy.lifecycle import mutating
from deploy.lock import DEFAULT_WAIT
from deploy.state import DeploymentRecord, PackageRecord, now_iso
from deploy.store import Store
from deploy.system import System
from deploy.wholesystem import build_system
from host import kernel
from rpmextents.nevra import Nevra

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class _Ref:
    """A package of a deployment's record, as reset rebuilds from it."""

    sha256: str
    nvra: str
    nevra: str
    header_sha256: str


@dataclass(frozen=True)
class _Image:
    """A deployment's record as the image reset builds again."""

    name: str
    version: str
    packages: tuple[_Ref, ...]


def _ref(p: PackageRecord) -> _Ref:
    return _Ref(p.sha256, p.nvra, str(Nevra(p.name, p.epoch, p.version, p.release, p.arch)),
                p.header_sha256)


@dataclass(frozen=True)
class ResetResult:
    """A reset: the new deployment, the default before, and the image it was built from."""

    deployment: str
    previous_default: str
    image: str
    version: str
    root: str
    var: str
    kernel_arguments: str


def _fresh_var(system: System, new_id: str) -> str:
    name = f"var-{new_id}"
    path = system.layout.root / name
    if os.path.lexists(path):
        kernel.subvolume_delete(path)  # left by a killed reset: nothing names it
    kernel.subvolume_create(path)
    return f"{system.layout.var_subvol_path}-{new_id}"


def reset(system: System, keep_var: bool = False, lock_wait: float = DEFAULT_WAIT,
          progress: ProgressFn = lambda done, total: None) -> ResetResult:
    """Make a new deployment of the default's image with a fresh root; it becomes the default."""
    with mutating(system, lock_wait) as current:
        if current.default is None:
            raise DeploymentError("nothing is deployed, so there is nothing to reset")
        base = current.get(current.default)
        store = Store(system.layout.store)
        for p in base.packages:
            if not store.has(p.sha256):
                raise DeploymentError(f"{p.nvra}: no longer in the store; deploy {base.image} again instead")
        new_id = str(current.next_id)
        now = now_iso()
        record = dataclasses.replace(base, id=new_id, created=now, subvol_id=0, pinned=False,
                                     owner_ids=None)
        sealed: list[DeploymentRecord] = []

        def seal(tree: Path, subvol_id: int, owner_ids: OwnerIds) -> None:
            sealed.append(dataclasses.replace(record, subvol_id=subvol_id, owner_ids=owner_ids))
            records.write_record(tree, sealed[0])

        records.mark_discardable(system.layout, new_id)
        var = system.layout.var_subvol_path if keep_var else _fresh_var(system, new_id)
        image = _Image(base.image, base.version, tuple(_ref(p) for p in base.packages))
        whole = build_system(system, image, store, new_id, progress, base, seal,
                             fresh_root=True, var_subvol=var)
        new_state = dataclasses.replace(
            current, deployments=(*current.deployments, sealed[0]), default=new_id,
            next_id=current.next_id + 1,
        )
        saved = system.save_state(new_state)
        records.unmark(system.layout, new_id)
        bootselect.write(system, saved)
        return ResetResult(new_id, base.id, base.image, base.version, str(whole.root), var,
                           bootselect.kernel_arguments(system, new_id))
