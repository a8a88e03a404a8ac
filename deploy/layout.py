"""Where rpmimg keeps its data on the sysroot's filesystem.

    TOP/@rpmimg/                      a directory in the btrfs top level (subvolid=5)
      state.json                      deployments, default, pinned, known bad (replaced atomically)
      lock                            flock()ed by the one mutating rpmimg; holds its pid
      usr-default.conf                kernel arguments selecting the default deployment's /usr
      store/<sha[:2]>/<sha256>.rpm    verified extents RPMs, content-addressed, read-only
      store-checked.json              which store entries hashed right, as btrfs marks (mode 0600)
      boot-checked.json               which kernels and initrds in boot/files hashed right, the same
      deployments/<ID>/               one read-only subvolume per deployment: its /usr tree,
                                      with its own record in lib/sysimage/rpmimg/deployment.json
      roots/<ID>/                     one writable subvolume per deployment: its / (etc/, the
                                      merged-usr links, empty mount points; see deploy.rootfs)
      var/                            one subvolume mounted at /var by every root, never rolled back
      staging/                        partial downloads and deployments being built

TOP is the sysroot itself when it is the top level; otherwise rpmimg mounts the top
level privately (see deploy.mounts). A deployment subvolume is the /usr tree itself,
so `mount.usr=UUID=<fs> mount.usrflags=subvol=/@rpmimg/deployments/<ID>,ro` selects it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DIRNAME = "@rpmimg"


def entry_path(store: Path, sha256: str) -> Path:
    """The file of the store entry sha256 in the store directory store."""
    return store / sha256[:2] / f"{sha256}.rpm"


@dataclass(frozen=True)
class Layout:
    """Paths of rpmimg's data under a mounted btrfs top level."""

    top: Path  # where the top level is mounted (in this process)
    sysroot: Path

    @property
    def root(self) -> Path:
        return self.top / DIRNAME

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @property
    def boot_file(self) -> Path:
        return self.root / "usr-default.conf"

    @property
    def store(self) -> Path:
        return self.root / "store"

    def store_entry(self, sha256: str) -> Path:
        """Where the store keeps the package whose file hashes to sha256 (deploy.store)."""
        return entry_path(self.store, sha256)

    @property
    def store_marks(self) -> Path:
        """Marks of the store entries found intact (deploy.storemarks)."""
        return self.root / "store-checked.json"

    @property
    def boot_marks(self) -> Path:
        """Marks of the kernels and initrds in boot/files found intact (deploy.bootfiles)."""
        return self.root / "boot-checked.json"

    @property
    def layout_cache(self) -> Path:
        """The default deployment's store entries up to their data (deploy.layoutcache)."""
        return self.root / "layout-cache"

    @property
    def summaries(self) -> Path:
        """What an update asks of the default deployment's packages (deploy.summaries)."""
        return self.root / "summaries"

    @property
    def deployments(self) -> Path:
        return self.root / "deployments"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def downloads(self) -> Path:
        return self.staging / "downloads"

    def deployment(self, deployment_id: str) -> Path:
        return self.deployments / deployment_id

    @property
    def roots(self) -> Path:
        return self.root / "roots"

    def root_of(self, deployment_id: str) -> Path:
        """The writable root subvolume of a deployment."""
        return self.roots / deployment_id

    @property
    def var(self) -> Path:
        return self.root / "var"

    def root_subvol_path(self, deployment_id: str) -> str:
        """The deployment's root inside the filesystem, as rootflags=subvol= wants it."""
        return f"/{DIRNAME}/roots/{deployment_id}"

    @property
    def var_subvol_path(self) -> str:
        return f"/{DIRNAME}/var"

    def subvol_path(self, deployment_id: str) -> str:
        """The deployment's path inside the filesystem, as mount's subvol= option wants it."""
        return f"/{DIRNAME}/deployments/{deployment_id}"

    def create(self) -> None:
        """Make the directories (idempotent)."""
        for d in (self.root, self.store, self.deployments, self.roots, self.staging, self.downloads):
            os.makedirs(d, exist_ok=True)
