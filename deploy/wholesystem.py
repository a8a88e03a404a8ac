"""Building a deployment as a whole system: its root, its accounts, its /usr, its /etc.

    root     staging/root-<ID>: a snapshot of the base deployment's root, or a new one
    accounts the image's sysusers.d applied to the root (deploy.sysusers)
    /usr     built with owners resolving through those accounts, with its rpm database
    /etc     the image's vendor defaults merged into the root's /etc, before /usr is sealed
    finish   /usr read-only in deployments/<ID>, then the root moved to roots/<ID>

Everything is made under the discard marker of the deployment (deploy.records): a run
killed at any point leaves only things recover() deletes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from deploy import bootselect, mounts, rootfs, sysusers
from deploy.build import Built, OwnerIds, ProgressFn, Seal, build
from deploy.faults import checkpoint
from deploy.state import DeploymentRecord
from deploy.store import Store
from deploy.system import System
from host.run import run
from imagespec.manifest import ImageManifest

log = logging.getLogger(__name__)

FACTORY_ETC = "share/factory/etc"  # in the /usr tree


@dataclass(frozen=True)
class WholeBuilt:
    built: Built
    root: Path
    accounts: sysusers.Accounts
    etc_added: tuple[str, ...]


def device(system: System) -> str:
    uuid = bootselect.fs_uuid(system)
    return f"UUID={uuid}" if uuid else mounts.mount_of(system.layout.top).source


def seed_etc(root: Path, usr: Path) -> tuple[str, ...]:
    """Copy each vendor default (usr/share/factory/etc) the root's /etc lacks, with its
    mode, owner and times; never replaces or follows anything in the root."""
    factory = usr / FACTORY_ETC
    added: list[str] = []
    if not factory.is_dir() or factory.is_symlink():
        return ()
    for dirpath, dirnames, filenames in os.walk(factory):
        rel = os.path.relpath(dirpath, factory)
        dest_dir = root / "etc" / rel if rel != "." else root / "etc"
        if dest_dir.is_symlink() or not dest_dir.is_dir():
            dirnames[:] = []
            continue
        for name in sorted([*dirnames, *filenames]):
            src, dest = Path(dirpath) / name, dest_dir / name
            if os.path.lexists(dest):
                continue
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dest, stat.S_IMODE(st.st_mode))
                shutil.copystat(src, dest, follow_symlinks=False)
                os.lchown(dest, st.st_uid, st.st_gid)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dest)
                os.lchown(dest, st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                run(["cp", "-a", "--reflink=auto", "--no-dereference", "--",
                            os.fspath(src), os.fspath(dest)])
            else:
                continue
            added.append(os.path.relpath(dest, root))
    return tuple(added)


def build_system(
    system: System, m: ImageManifest, store: Store, new_id: str, progress: ProgressFn,
    base: DeploymentRecord | None, write_record: Seal, *, full: bool = False,
    fresh_root: bool = False,
) -> WholeBuilt:
    """Build deployment new_id of image m with its root; base is the deployment updated
    (its /usr and its root are the starting points) unless fresh_root asks for a root made
    as a first deployment's (without adopting the sysroot's /etc: a factory reset)."""
    root_path = rootfs.staging_path(system, new_id)
    rootfs.ensure_var(system)
    etc_added: list[tuple[str, ...]] = []
    try:
        root_base = None if fresh_root or base is None else base.id
        root = rootfs.make_root(system, new_id, device(system), root_base,
                                adopt=base is None and not fresh_root)
        checkpoint("root created")
        accounts = sysusers.create_accounts(root, store, [r.sha256 for r in m.packages])
        checkpoint("accounts created")

        def seal(tree: Path, subvol_id: int, owner_ids: OwnerIds) -> None:
            etc_added.append(seed_etc(root, tree))
            checkpoint("etc merged")
            write_record(tree, subvol_id, owner_ids)

        built = build(system, m, store, new_id, progress, base, full=full, seal=seal,
                      accounts=root)
        rootfs.finish_root(system, root, new_id)
        checkpoint("root in place")
    except BaseException:
        with contextlib.suppress(OSError):
            rootfs.discard(root_path)
        raise
    return WholeBuilt(built, system.layout.root_of(new_id), accounts, etc_added[0])
