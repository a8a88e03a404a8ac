"""Build a deployment's /usr tree from extents RPMs with rpmextents' extraction.

A deployment is only a /usr, so paths are relocated: /usr/X becomes X in the tree,
and a path outside /usr goes under share/factory/ with its original path (systemd's
place for vendor defaults). Owner names resolve against the sysroot's /etc, the
system the deployment is for, like rpm resolves them against its --root.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from host import kernel
from imagespec.relocation import relocate
from rpmextents import Entry, ExtentsPackage, Owners, extract
from rpmextents.extract import NO_REFLINK
from rpmextents.index import align_up

HEADER_DIR = "lib/sysimage/packages"


def _extract_path(path: str) -> str:
    # extract() creates its relocated paths below the destination, as absolute paths.
    return "/" + relocate(path)[0]


def header_file_name(pkg: ExtentsPackage) -> str:
    return f"{pkg.ident.nvra}.rpm"


@dataclass
class TreeStats:
    entries: int = 0
    files: int = 0
    reflinked: int = 0
    copied: int = 0
    bytes: int = 0
    outside_usr: dict[str, list[str]] = field(default_factory=dict)
    users: set[str] = field(default_factory=lambda: {"root"})
    groups: set[str] = field(default_factory=lambda: {"root"})


class TreeBuilder:
    """Extracts packages, relocated, into a directory (a new subvolume) that becomes /usr."""

    def __init__(self, root: Path, sysroot: Path) -> None:
        self.root = root
        self.owners = Owners.from_root(sysroot)
        self.stats = TreeStats()

    def add_package(self, pkg: ExtentsPackage, only: Collection[int] | None = None) -> None:
        """Write every entry of pkg (ghosts excepted, as with rpm), or those `only` names."""
        report = extract(pkg, self.root, method="auto", owners=self.owners, relocate=_extract_path, only=only)
        self.stats.entries += report.placed
        self.stats.files += report.files
        self.stats.reflinked += report.reflinked
        self.stats.copied += report.copied
        self.stats.bytes += report.bytes

    def account(self, nevra: str, entries: Iterable[Entry]) -> None:
        """Note what a package of the image puts outside /usr and which owners it names."""
        outside = []
        for e in entries:
            if e.ghost:
                continue
            if relocate(e.path)[1]:
                outside.append(e.path)
            self.stats.users.add(e.user)
            self.stats.groups.add(e.group)
        if outside:
            self.stats.outside_usr[nevra] = outside

    @property
    def unknown_owners(self) -> tuple[str, ...]:
        return tuple(sorted(
            [f"user {u}" for u in self.stats.users if u not in self.owners.users]
            + [f"group {g}" for g in self.stats.groups if g not in self.owners.groups]
        ))

    def owner_ids(self) -> dict[str, dict[str, int | None]]:
        """The ids the image's owner names resolved to (None: unknown, so root)."""
        return {
            "users": {u: self.owners.users.get(u) for u in sorted(self.stats.users)},
            "groups": {g: self.owners.groups.get(g) for g in sorted(self.stats.groups)},
        }

    def remove_header(self, file_name: str) -> None:
        (self.root / HEADER_DIR / file_name).unlink(missing_ok=True)

    def write_header(self, pkg: ExtentsPackage) -> None:
        """Store pkg's lead, signature and header as lib/sysimage/packages/N-V-R.A.rpm.

        The bytes are reflinked from the package (they are its first header_end bytes), so
        a header file costs one block of its own at most: the one cut at header_end. Its
        mtime is the package's build time, so the same packages make the same directory.
        """
        path = self.root / HEADER_DIR / header_file_name(pkg)
        os.makedirs(path.parent, mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            end = pkg.header_end
            length = align_up(end, pkg.block_size)
            try:
                # Length 0 clones to the end of the package, when that is before the block's end.
                kernel.clone_range(pkg.fileno(), 0, 0 if length >= pkg.size else length, f.fileno(), 0)
                os.ftruncate(f.fileno(), end)
            except OSError as e:
                if e.errno not in NO_REFLINK:
                    raise
                os.ftruncate(f.fileno(), 0)
                f.write(pkg.header_bytes())
                f.flush()
            built = pkg.build_time
            if built is not None:
                os.utime(f.fileno(), (built, built))
