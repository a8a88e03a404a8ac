"""Read-only views of a sysroot: status of its deployments, package diffs between them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from deploy.errors import DeploymentError
from deploy.headers import InstalledPackage, installed_packages
from deploy.lifecycle import previous_of
from deploy.sizes import exclusive_sizes
from deploy.state import State
from deploy.system import System
from imagespec.diff import PackageDiff, package_diff
from rpmextents.nevra import Nevra


@dataclass(frozen=True)
class DeploymentStatus:
    """One deployment as status shows it."""

    id: str
    image: str
    version: str
    packages: int
    created: str
    default: bool
    booted: bool
    pinned: bool
    bad: bool
    path: str | None  # the /usr tree, when reachable outside rpmimg's private mount
    subvol: str
    exclusive_bytes: int | None
    root: str | None = None  # the writable root, reachable like path (None: none, or not reachable)
    root_subvol: str | None = None
    boot: tuple[BootEntryStatus, ...] = ()  # its entries in the ESP
    failed: str | None = None  # why it was abandoned at boot, when it was


@dataclass(frozen=True)
class BootEntryStatus:
    """One boot entry as status shows it: its kernel and boot assessment."""

    entry: str
    kernel_version: str
    assessment: str  # good, counting, bad
    tries_left: int | None
    tries_done: int


def _boot(system: System) -> tuple[dict[str, tuple[BootEntryStatus, ...]], dict[str, str]]:
    from deploy import bootcheck, bootentries

    entries = {
        d: tuple(BootEntryStatus(e.file, e.kernel_version, e.assessment, e.left, e.done)
                 for e in sorted(es, key=lambda e: e.kernel_version))
        for d, es in bootentries.states(system.esp).items()
    }
    return entries, bootcheck.failed(system)


def status(system: System, measure: bool = True) -> list[DeploymentStatus]:
    """Every recorded deployment, oldest first."""
    current = system.load_state()
    booted = system.booted()
    entries, failed = _boot(system)
    sizes = exclusive_sizes(system) if measure else {}
    out = []
    for d in current.deployments:
        path = system.layout.deployment(d.id)
        if system.visible:
            shown: str | None = os.fspath(path)
        elif d.id == booted:
            shown = os.fspath(system.sysroot / "usr")
        else:
            shown = None
        root = system.layout.root_of(d.id)
        has_root = os.path.isdir(root)
        root_shown = os.fspath(root) if has_root and system.visible else (
            "/" if has_root and d.id == booted else None)
        out.append(
            DeploymentStatus(
                id=d.id, image=d.image, version=d.version, packages=len(d.packages),
                created=d.created, default=d.id == current.default, booted=d.id == booted,
                pinned=d.pinned, bad=d.id in current.bad, path=shown,
                subvol=system.layout.subvol_path(d.id),
                exclusive_bytes=sizes.get(d.id),
                root=root_shown, root_subvol=system.layout.root_subvol_path(d.id) if has_root else None,
                boot=entries.get(d.id, ()), failed=failed.get(d.id),
            )
        )
    return out


def _idents(packages: Iterable[InstalledPackage]) -> list[Nevra]:
    return [p.ident for p in packages]


def default_pair(current: State, booted: str | None) -> tuple[str, str]:
    """What `diff` compares without arguments: what the next boot changes, or the last update."""
    if current.default is None:
        raise DeploymentError("nothing is deployed")
    if booted is not None and booted != current.default and current.find(booted):
        return booted, current.default
    previous = previous_of(current, current.default)
    if previous is None:
        raise DeploymentError(f"deployment {current.default} has no earlier deployment to compare with")
    return previous.id, current.default


def compared_pair(system: System, old: str | None, new: str | None) -> tuple[str, str]:
    """The two deployments a comparison names (none: see default_pair; one id: it vs the
    default), each checked to exist."""
    current = system.load_state()
    if old is None:
        old, new = default_pair(current, system.booted())
    elif new is None:
        if current.default is None:
            raise DeploymentError("nothing is deployed")
        new = current.default
    for d in (old, new):
        current.get(d)
    assert new is not None
    return old, new


def diff(system: System, old: str | None = None, new: str | None = None) -> PackageDiff:
    """Compare two deployments' header files (defaults: see compared_pair)."""
    old, new = compared_pair(system, old, new)
    return package_diff(
        old, _idents(installed_packages(system.layout.deployment(old))),
        new, _idents(installed_packages(system.layout.deployment(new))),
    )
