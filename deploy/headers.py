"""Read the package headers a deployment keeps in /usr/lib/sysimage/packages.

These files are the deployment's package database: lead, signature header and header
of each package, as `rpm -qp` reads them. Diff and verify use only them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeploymentError
from deploy.tree import HEADER_DIR

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


def read_header(path: Path) -> InstalledPackage:
    """Parse one header file; digests are checked, signatures are not (the store did that)."""
    import rpm

    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm.RPMVSF_MASK_NOSIGNATURES)
    fd = os.open(path, os.O_RDONLY)
    try:
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
    """The packages of the /usr tree at usr, by header file name."""
    directory = usr / HEADER_DIR
    if not directory.is_dir():
        raise DeploymentError(f"{directory}: no package headers (not an rpmimg deployment?)")
    for p in sorted(directory.glob("*.rpm")):
        yield read_header(p)
