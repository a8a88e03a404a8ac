"""Find the btrfs top level of a sysroot, mounting it privately when it is not visible.

On MicroOS the root is a read-only snapshot inside the filesystem; deployments and the
package store live beside it in the top level (subvolid=5), which a normal system does
not mount. rpmimg then mounts the top level in a private mount namespace, so the mount
is invisible to the rest of the system and vanishes with the process even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import LayoutError
from host import kernel
from host.run import run


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_point: Path
    root: str  # path inside the filesystem mounted there; "/" for a btrfs top level
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text into Mount records, in the kernel's order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-")
            mounts.append(
                Mount(
                    mount_point=Path(_unescape(fields[4])),
                    root=_unescape(fields[3]),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                    options=fields[5] + "," + fields[sep + 3],
                )
            )
        except (ValueError, IndexError):
            continue
    return mounts


def current_mounts() -> list[Mount]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return parse_mountinfo(f.read())


def mount_of(path: Path, mounts: list[Mount] | None = None) -> Mount:
    """The mount that holds path (the last, i.e. topmost, of the longest matching prefix)."""
    real = Path(os.path.realpath(path))
    best: Mount | None = None
    for m in mounts if mounts is not None else current_mounts():
        if real == m.mount_point or m.mount_point in real.parents:
            if best is None or len(m.mount_point.parts) >= len(best.mount_point.parts):
                best = m
    if best is None:
        raise LayoutError(f"{path}: no mount found in /proc/self/mountinfo")
    return best


def visible_toplevel(sysroot: Path) -> Path | None:
    """Where the top level of sysroot's btrfs is already mounted in this namespace, if anywhere."""
    mounts = current_mounts()
    m = mount_of(sysroot, mounts)
    if m.fstype != "btrfs":
        raise LayoutError(f"{sysroot}: is on {m.fstype}, not btrfs")
    for other in [m, *mounts]:
        if other.fstype == "btrfs" and other.source == m.source and other.root == "/":
            if os.path.ismount(other.mount_point):
                return other.mount_point
    return None


def enter_private_namespace() -> None:
    """Move this process into its own mount namespace with private propagation."""
    kernel.unshare_mount_namespace()
    # Without this, mounts made here would propagate back to the host's namespace.
    run(["mount", "--make-rprivate", "/"])


@contextlib.contextmanager
def toplevel(sysroot: Path, *, private_namespace: bool = False) -> Iterator[Path]:
    """Yield a path where sysroot's btrfs top level is mounted.

    With private_namespace, a needed mount is made in a new mount namespace (the CLI
    does this); otherwise it is a temporary private mount that is removed on exit.
    """
    if not sysroot.is_dir():
        raise LayoutError(f"{sysroot}: sysroot is not a directory")
    found = visible_toplevel(sysroot)
    if found is not None:
        yield found
        return
    source = mount_of(sysroot).source
    if private_namespace:
        try:
            enter_private_namespace()
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            raise LayoutError(f"cannot create a private mount namespace: {e.strerror}") from e
    import tempfile  # here: a sysroot that is btrfs's top level needs no mount point

    with tempfile.TemporaryDirectory(prefix="rpmimg-top-") as tmp:
        run(["mount", "-t", "btrfs", "-o", "subvolid=5", source, tmp])
        try:
            if not private_namespace:
                run(["mount", "--make-private", tmp])
            yield Path(tmp)
        finally:
            run(["umount", "-l", tmp], allowed_codes=(0, 32))
