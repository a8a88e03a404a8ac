"""The kernel module indexes (modules.dep, modules.alias, ...) a kernel package needs, made at
conversion time.

Debian's kernel packages ship the modules without the indexes: the package's postinst runs
`depmod`. rpmimg never runs scriptlets, and the deployed /usr is read-only, so without them
`modprobe` finds nothing in the running system (udev loads no driver, `mount -t 9p` cannot
load 9p). The converted package carries them as ordinary files, made by the host's `depmod`
on the package's own modules (as a kernel build's `make modules_install` would).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.rpmwriter import FileEntry

MODULES = "/usr/lib/modules/"
_KVER = re.compile(r"/usr/lib/modules/([^/]+)/(?:kernel|extra|updates|vdso)/")
# The inputs depmod reads besides the modules (kept as the package has them).
_INPUTS = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


class DepmodError(RuntimeError):
    """depmod is missing or failed."""


def _depmod() -> str:
    for candidate in ("depmod", "/usr/sbin/depmod", "/sbin/depmod"):
        found = shutil.which(candidate)
        if found:
            return found
    raise DepmodError("depmod not found (install kmod)")


def kernel_versions(files: Sequence[FileEntry]) -> list[str]:
    """The KVERs whose modules the files hold."""
    return sorted({m.group(1) for f in files if (m := _KVER.match(f.path)) and f.path.endswith(
        (".ko", ".ko.xz", ".ko.zst", ".ko.gz"))})


def module_indexes(files: Sequence[FileEntry], kver: str) -> list[FileEntry]:
    """depmod's output for kernel kver's modules among files, as new entries beside them."""
    if kver in (".", "..") or "/" in kver:
        raise DepmodError(f"{kver!r}: not a kernel version")
    prefix = f"{MODULES}{kver}/"
    have = {f.path for f in files}
    mtime = max((f.mtime for f in files if f.path.startswith(prefix)), default=0)
    with tempfile.TemporaryDirectory(prefix="rpmimg-depmod-") as tmp:
        base = Path(tmp) / "lib/modules" / kver
        for f in files:
            if not f.path.startswith(prefix) or f.mode & 0o170000 != 0o100000:
                continue
            rel = f.path[len(prefix):]
            if posixpath.normpath(rel) != rel or rel.startswith(("/", "..")):
                raise DepmodError(f"{f.path}: not a plain path under {prefix}")
            if not (rel.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz")) or rel in _INPUTS):
                continue
            dest = base / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.data)
        before = set(os.listdir(base))
        proc = subprocess.run([_depmod(), "-b", tmp, kver], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise DepmodError(f"depmod for {kver} failed: {proc.stderr.strip()}")
        out = []
        for name in sorted(set(os.listdir(base)) - before):
            path = posixpath.join(prefix, name)
            if path in have or not (base / name).is_file():
                continue
            out.append(FileEntry(path, 0o100644, mtime=mtime, data=(base / name).read_bytes()))
        return out


def with_module_indexes(files: list[FileEntry]) -> list[FileEntry]:
    """files plus the module indexes of every kernel whose modules they hold."""
    extra: list[FileEntry] = []
    for kver in kernel_versions(files):
        extra += module_indexes(files, kver)
    return files + extra
