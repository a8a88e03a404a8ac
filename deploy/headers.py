"""Read package headers (lead, signature header, header) through rpmextents.

A deployment keeps them as /usr/lib/sysimage/packages/N-V-R.A.rpm; the store holds them
at the start of each extents RPM. `diff` reads the former; `verify` anchors on the
latter (see deploy.verify).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from deploy.errors import DeploymentError
from deploy.tree import HEADER_DIR
from rpmextents.errors import ExtentsError
from rpmextents.header import PackagePrefix, read_prefix
from rpmextents.nevra import Nevra, nevra_of


@dataclass(frozen=True)
class InstalledPackage:
    """One package header: its identity and the parsed lead, signature and header."""

    file: Path
    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    prefix: PackagePrefix

    @property
    def ident(self) -> Nevra:
        return Nevra(self.name, self.epoch, self.version, self.release, self.arch)

    @property
    def nvra(self) -> str:
        return self.ident.nvra

    @property
    def evr(self) -> str:
        return self.ident.evr


def read_prefix_at(path: Path) -> PackagePrefix:
    """Lead, signature header and header at the start of path (not followed if a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return read_prefix(cast(BinaryIO, f))


def read_header(path: Path) -> InstalledPackage:
    """Parse one header file; its signatures are not checked (the store did that)."""
    try:
        prefix = read_prefix_at(path)
        ident = nevra_of(prefix.header)
    except (OSError, ExtentsError) as e:
        raise DeploymentError(f"{path}: unreadable package header: {e}") from e
    return InstalledPackage(path, ident.name, ident.epoch, ident.version, ident.release, ident.arch,
                            prefix)


def installed_packages(usr: Path) -> Iterator[InstalledPackage]:
    """The packages of the /usr tree at usr, by header file name."""
    directory = usr / HEADER_DIR
    if not directory.is_dir():
        raise DeploymentError(f"{directory}: no package headers (not an rpmimg deployment?)")
    for p in sorted(directory.glob("*.rpm")):
        yield read_header(p)
