"""Each deployment's kernels and initrds: which ones (a small record) and their bytes.

    TOP/@rpmimg/boot/<ID>.json        {"kernels": [{"version", "kernel", "kernel_size",
                                                    "initrd", "initrd_size"}]}
    TOP/@rpmimg/boot/files/<sha256>   kernel and initrd files by content, verified

The image's signed manifest pins them (its `boot` section, made by compose); deploy fetches
them like packages, checks size and sha256, and keeps them so that boot entries can be
written again (rollback, a replaced ESP) without the image's server. A kept file is hashed
again by the next deploy that needs it unless the btrfs items that say what it holds are
those it had when it last hashed right (TOP/@rpmimg/boot-checked.json, deploy.storemarks's
marks, as for the store): every deploy of an image with a kernel hashed its kernel and
initrd again, 45 MB on the benchmark image (about 40 ms, and libcrypto loaded).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import DeployError, DeployFetchError
from deploy.storemarks import StoreMarks
from deploy.system import System
from host import digest
from host.files import read_limited, write_atomically

if TYPE_CHECKING:  # at run time only fetch() needs them: `status` reads boot state without
    from deploy.sources import Source  # loading the download and manifest machinery
    from imagespec.manifest import BootFile, ImageManifest

_KVER = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+~-]{0,127}$")
RECORD_LIMIT = 64 << 10


@dataclass(frozen=True)
class KernelFiles:
    """One kernel of a deployment and the initrd made for it."""

    version: str
    kernel: str  # sha256
    kernel_size: int
    initrd: str
    initrd_size: int

    def files(self) -> dict[str, int]:
        return {self.kernel: self.kernel_size, self.initrd: self.initrd_size}


@dataclass(frozen=True)
class ManifestKernel:
    """A kernel and its initrd as a manifest names them."""

    version: str
    kernel: BootFile
    initrd: BootFile

    @property
    def files(self) -> KernelFiles:
        return KernelFiles(self.version, self.kernel.sha256, self.kernel.size,
                           self.initrd.sha256, self.initrd.size)


def boot_dir(system: System) -> Path:
    return system.layout.root / "boot"


def files_dir(system: System) -> Path:
    return boot_dir(system) / "files"


def _valid(k: KernelFiles, what: str) -> KernelFiles:
    if not _KVER.match(k.version):
        raise DeployError(f"{what}: kernel version {k.version!r} is not a plain name")
    for sha, size in k.files().items():
        if not digest.is_sha256_hex(sha) or not 0 < size < (1 << 32):
            raise DeployError(f"{what}: kernel {k.version}: bad sha256 or size")
    return k


def manifest_kernels(m: ImageManifest) -> tuple[ManifestKernel, ...]:
    """The kernels the (verified) manifest pins; none for an image without a boot section."""
    return tuple(ManifestKernel(b.kernel_version, b.kernel, b.initrd) for b in m.boot)


def load(system: System, deployment_id: str) -> tuple[KernelFiles, ...]:
    """The deployment's kernels (none when it has no boot record)."""
    path = boot_dir(system) / f"{deployment_id}.json"
    try:
        data = json.loads(read_limited(path, RECORD_LIMIT))
        kernels = data["kernels"]
        return tuple(_valid(KernelFiles(**k), os.fspath(path)) for k in kernels)
    except FileNotFoundError:
        return ()
    except (ValueError, KeyError, TypeError) as e:
        raise DeployError(f"{path}: not a boot record: {e}") from e


def save(system: System, deployment_id: str, kernels: Sequence[KernelFiles], sync: bool = True) -> None:
    """Write the deployment's boot record; not synced without sync (the caller syncs the
    filesystem before the state names the deployment)."""
    boot_dir(system).mkdir(parents=True, exist_ok=True)
    data = {"kernels": [k.__dict__ for k in kernels]}
    write_atomically(boot_dir(system) / f"{deployment_id}.json", json.dumps(data, indent=1).encode(), sync=sync)


def remove(system: System, deployment_id: str) -> None:
    (boot_dir(system) / f"{deployment_id}.json").unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        h = digest.new("sha256", os.fstat(f.fileno()).st_size)
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch(system: System, source: Source, kernels: Sequence[ManifestKernel]) -> None:
    """Bring every kernel and initrd into boot/files, checked against the manifest."""
    from deploy.sources import FetchJob
    from imagespec.manifest import ManifestPackage

    d = files_dir(system)
    d.mkdir(parents=True, exist_ok=True)
    refs = {r.sha256: r for k in kernels for r in (k.kernel, k.initrd)}
    if not refs:
        return
    marks = StoreMarks(system.layout.boot_marks, d)
    kept = {sha: d / sha for sha, ref in refs.items() if _has_size(d / sha, ref.size)}
    damaged = marks.check(kept, lambda shas: {sha for sha in shas if _sha256(d / sha) != sha})
    fetched = {}
    for sha, ref in refs.items():
        dest = d / sha
        if sha in kept and sha not in damaged:
            continue
        tmp = d / f".{sha}.part"
        tmp.unlink(missing_ok=True)
        # The sources fetch packages; a boot file is one more file at a pinned location.
        as_package = ManifestPackage(
            name=f"boot-{sha[:12]}", epoch=None, version="0", release="0", arch="boot",
            sha256=sha, size=ref.size, header_sha256="", block_size=0, source_checksum="",
            source_size=ref.size, location=ref.location,
        )
        source.fetch([FetchJob(as_package, tmp)], None)
        got = _sha256(tmp)
        if got != sha:
            tmp.unlink(missing_ok=True)
            raise DeployFetchError(f"{ref.location}: sha256 {got}, the manifest states {sha}")
        os.rename(tmp, dest)
        fetched[sha] = dest
    if fetched:
        marks.mark(fetched)  # hashed right as they were fetched
    marks.save(lambda sha: (d / sha).is_file())


def _has_size(path: Path, size: int) -> bool:
    """Whether path is a regular file (not a symlink) of size bytes."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def prune(system: System, keep: set[str]) -> None:
    """Remove boot records and files no kept deployment needs."""
    d = boot_dir(system)
    if not d.is_dir():
        return
    needed: set[str] = set()
    for rec in d.glob("*.json"):
        if rec.stem in keep:
            needed |= {sha for k in load(system, rec.stem) for sha in k.files()}
        else:
            rec.unlink()
    for f in files_dir(system).glob("*"):
        if f.name not in needed:
            f.unlink()
