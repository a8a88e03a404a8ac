"""The composed image as a root tree, and commands run confined to it (depmod, dracut).

Compose builds initrds with the image's own tools, never the server's: the image's
packages are extracted into a scratch root (merged /usr, as clients lay it out) and
the command runs there in a sandbox:

    setpriv --pdeathsig KILL unshare --mount --pid --net --ipc --uts --fork --kill-child
        --mount-proc=ROOT/proc chroot ROOT COMMAND...

The mount namespace keeps the fresh /proc (and anything the command mounts) away from
the server; the network namespace has only a down loopback, so nothing in the image
reaches the network; the PID namespace ends every process the command leaves behind
when it exits. /dev holds only null, zero, full, random and urandom, made by us.
Nothing of the server is bind-mounted in, so the command sees only the image.
The sandbox is for our own composed packages, which are signed and checked
before this runs; it is not a boundary against a hostile kernel package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from host.run import CommandError, run
from rpmextents.errors import ExtentsError
from rpmextents.extract import Owners, extract
from rpmextents.package import ExtentsPackage
from solver.errors import PublishError

# What clients make at the top of each root (the merged-/usr links).
_MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
_PASSWD_MASTERS = {"etc/passwd": "usr/share/base-passwd/passwd.master",
                   "etc/group": "usr/share/base-passwd/group.master"}
SANDBOX_TIMEOUT = 1800.0


@contextlib.contextmanager
def image_root(packages: Sequence[Path], scratch: Path) -> Iterator[Path]:
    """A temporary root tree holding every package's files; removed on exit."""
    scratch.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=scratch, prefix="boot-root-"))
    try:
        os.chmod(root, 0o755)
        for name in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "proc", "sys",
                     "dev", "run", "var/tmp", "tmp"):
            (root / name).mkdir(parents=True, exist_ok=True)
        for link, target in _MERGED.items():
            os.symlink(target, root / link)
        for name in ("tmp", "var/tmp"):
            os.chmod(root / name, 0o1777)
        _extract_all(packages, root)
        _make_devices(root / "dev")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _extract_all(packages: Sequence[Path], root: Path) -> None:
    # Owners come from the image's own user database; Debian-style images ship it as
    # base-passwd masters that a maintainer script would copy, so those go in first.
    first = [p for p in packages if _has_masters(p)]
    for path in first:
        _extract(path, root, Owners({"root": 0}, {"root": 0}))
    for rel, master in _PASSWD_MASTERS.items():
        if not (root / rel).exists() and (root / master).is_file():
            shutil.copyfile(root / master, root / rel)
    owners = Owners.from_root(root)
    for path in packages:
        if path not in first:
            _extract(path, root, owners)


def _has_masters(path: Path) -> bool:
    try:
        with ExtentsPackage.open(path) as pkg:
            return any(e.path.lstrip("/") in _PASSWD_MASTERS.values() for e in pkg.entries())
    except ExtentsError as e:
        raise PublishError(f"{os.fspath(path)}: unreadable pool entry: {e}") from e


def _extract(path: Path, root: Path, owners: Owners) -> None:
    try:
        with ExtentsPackage.open(path) as pkg:
            extract(pkg, root, owners=owners)
    except (ExtentsError, OSError) as e:
        raise PublishError(f"{path.name}: cannot assemble the image tree: {e}") from e


def _make_devices(dev: Path) -> None:
    for name, (major, minor) in _DEVICES.items():
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)


def run_in(root: Path, argv: Sequence[str], what: str, timeout: float = SANDBOX_TIMEOUT) -> bytes:
    """Run argv (a path inside root) confined to root; its stdout. Fails as a PublishError."""
    # setpriv: if compose dies, so does the sandbox (and with --kill-child, all in it).
    sandbox = ["setpriv", "--pdeathsig", "KILL",
               "unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
               f"--mount-proc={os.fspath(root / 'proc')}",
               "chroot", os.fspath(root), *argv]
    try:
        env = {"HOME": "/root", "TMPDIR": "/var/tmp", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        return run(sandbox, timeout=timeout, env=env).stdout
    except CommandError as e:
        raise PublishError(f"{what}: {e}") from e
