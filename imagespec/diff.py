"""The package diff between two package sets, in one shape for every command that shows one.

`rpmimg compose`, `rpmimg image diff`, `changes.json` and the client's `rpmimg diff`
print the same lines and the same JSON:

    {"old": "<version or deployment>", "new": "…",
     "changes": [{"kind": "upgraded", "name": "libfoo", "arch": "x86_64",
                  "old": "1.0-1", "new": "1.1-1"}, …]}

`old` and `new` of a change are EVRs (rpm's rule: `[epoch:]version-release`); an added
package has no `old`, a removed one no `new`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imagespec.manifest import ImageManifest
from rpmextents.nevra import Nevra


class ChangeKind(enum.StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"


@dataclass(frozen=True)
class PackageChange:
    """One package's difference between two manifests: added, removed or changed."""

    kind: ChangeKind
    name: str
    arch: str
    old: str | None
    new: str | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "name": self.name, "arch": self.arch,
                "old": self.old, "new": self.new}

    def line(self) -> str:
        versions = {ChangeKind.ADDED: self.new, ChangeKind.REMOVED: self.old}.get(
            self.kind, f"{self.old} -> {self.new}")
        return f"  {self.kind:<10} {self.name}.{self.arch} {versions}"


@dataclass(frozen=True)
class PackageDiff:
    """What changed from `old` to `new` (image versions or deployment ids)."""

    old: str | None
    new: str
    changes: tuple[PackageChange, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def of_kind(self, kind: ChangeKind) -> tuple[PackageChange, ...]:
        return tuple(c for c in self.changes if c.kind == kind)

    def to_json(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "changes": [c.to_json() for c in self.changes]}

    def lines(self) -> list[str]:
        """Human-readable lines, one per change."""
        return [c.line() for c in self.changes]


def _by_name_arch(packages: Iterable[Nevra]) -> dict[tuple[str, str], dict[str, Nevra]]:
    groups: dict[tuple[str, str], dict[str, Nevra]] = {}
    for p in packages:
        groups.setdefault((p.name, p.arch), {})[p.evr] = p
    return groups


def package_changes(old: Iterable[Nevra], new: Iterable[Nevra]) -> tuple[PackageChange, ...]:
    """Package-level differences between two package sets, by name.arch, in rpm's order."""
    a, b = _by_name_arch(old), _by_name_arch(new)
    changes: list[PackageChange] = []
    for name, arch in sorted(a.keys() | b.keys()):
        olds, news = a.get((name, arch), {}), b.get((name, arch), {})
        if len(olds) == 1 and len(news) == 1:
            (o,), (n,) = olds.values(), news.values()
            order = o.compare(n)
            if order:
                kind = ChangeKind.UPGRADED if order < 0 else ChangeKind.DOWNGRADED
                changes.append(PackageChange(kind, name, arch, o.evr, n.evr))
            continue
        # Several versions side by side (multiversion kernels): each is added or removed.
        for evr in sorted(olds.keys() - news.keys()):
            changes.append(PackageChange(ChangeKind.REMOVED, name, arch, evr, None))
        for evr in sorted(news.keys() - olds.keys()):
            changes.append(PackageChange(ChangeKind.ADDED, name, arch, None, evr))
    return tuple(changes)


def package_diff(old_name: str | None, old: Iterable[Nevra], new_name: str,
                 new: Iterable[Nevra]) -> PackageDiff:
    """The diff from package set `old` (named old_name) to `new` (named new_name)."""
    return PackageDiff(old_name, new_name, package_changes(old, new))


def manifest_diff(old: ImageManifest | None, new: ImageManifest) -> PackageDiff:
    """What changed from image version `old` to `new` (everything is added without `old`)."""
    return package_diff(old.version if old else None, [p.ident for p in old.packages] if old else [],
                        new.version, [p.ident for p in new.packages])
