"""Read the package headers a deployment keeps in /usr/lib/sysimage/packages.

These files are the deployment's package database: lead, signature header and header
of each package, as `rpm -qp` reads them. Diff and verify use only them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeploymentError
from deploy.tree import HEADER_DIR
from host import kernel

# rpm's FILEDIGESTALGO numbers (rpmpgp.h) to hashlib names.
DIGEST_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}


@dataclass(frozen=True)
class InstalledPackage:
    """One header file: the package's identity and the rpm header object."""

    file: Path
    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    header: Any  # rpm.hdr

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"

    @property
    def evr(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch is not None else ""
        return f"{epoch}{self.version}-{self.release}"


def read_header(path: Path, dir_fd: int | None = None) -> InstalledPackage:
    """Parse one header file; digests are checked, signatures are not (the store did that).

    With dir_fd, path's name is opened in that directory; a symlink is never followed.
    """
    import rpm

    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm.RPMVSF_MASK_NOSIGNATURES)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path.name if dir_fd is not None else path, flags, dir_fd=dir_fd)
    except OSError as e:
        raise DeploymentError(f"{path}: unreadable package header: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DeploymentError(f"{path}: not a regular file")
        hdr = ts.hdrFromFdno(fd)
    except rpm.error as e:
        raise DeploymentError(f"{path}: unreadable package header: {e}") from e
    finally:
        os.close(fd)

    def text(tag: int) -> str:
        value = hdr[tag]
        return value.decode() if isinstance(value, bytes) else str(value)

    epoch = hdr[rpm.RPMTAG_EPOCH]
    return InstalledPackage(
        file=path, name=text(rpm.RPMTAG_NAME), epoch=epoch,
        version=text(rpm.RPMTAG_VERSION), release=text(rpm.RPMTAG_RELEASE),
        arch=text(rpm.RPMTAG_ARCH), header=hdr,
    )


def installed_packages(usr: Path) -> Iterator[InstalledPackage]:
    """The packages of the /usr tree at usr, by header file name.

    The header directory is opened below the tree following no symlink, and each file in it
    by name: nothing outside the tree is read.
    """
    directory = usr / HEADER_DIR
    root_fd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dir_fd = kernel.open_beneath(root_fd, HEADER_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise DeploymentError(f"{directory}: no package headers (not an rpmimg deployment?)") from e
    finally:
        os.close(root_fd)
    try:
        for name in sorted(n for n in os.listdir(dir_fd) if n.endswith(".rpm") and not n.startswith(".")):
            yield read_header(directory / name, dir_fd)
    finally:
        os.close(dir_fd)
