"""Package-level differences between two image versions, compared with rpm's version order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import rpm

from solver.manifest import Manifest, ManifestPackage


@dataclass(frozen=True)
class Change:
    """One name.arch whose version moved: `old` and `new` are EVR strings ("1:2.0-1")."""

    name: str
    arch: str
    old: str
    new: str


@dataclass(frozen=True)
class PackageDiff:
    added: tuple[str, ...]  # NEVRAs
    removed: tuple[str, ...]
    upgraded: tuple[Change, ...]
    downgraded: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.upgraded or self.downgraded)

    def to_json(self) -> dict[str, Any]:
        def changes(items: Iterable[Change]) -> list[dict[str, str]]:
            return [{"name": c.name, "arch": c.arch, "from": c.old, "to": c.new} for c in items]

        return {"added": list(self.added), "removed": list(self.removed),
                "upgraded": changes(self.upgraded), "downgraded": changes(self.downgraded)}

    def lines(self) -> list[str]:
        """Human-readable lines, one per change."""
        out = [f"  added      {n}" for n in self.added]
        out += [f"  removed    {n}" for n in self.removed]
        out += [f"  upgraded   {c.name}.{c.arch} {c.old} -> {c.new}" for c in self.upgraded]
        out += [f"  downgraded {c.name}.{c.arch} {c.old} -> {c.new}" for c in self.downgraded]
        return out


def _evr_text(p: ManifestPackage) -> str:
    epoch = f"{p.epoch}:" if p.epoch else ""
    return f"{epoch}{p.version}-{p.release}"


def compare_versions(a: str, b: str) -> int:
    """rpm's ordering of two version strings (-1, 0, 1); image versions use it too."""
    result: int = rpm.labelCompare(("0", a, ""), ("0", b, ""))
    return result


def package_diff(old: Manifest | None, new: Manifest) -> PackageDiff:
    """What changed from `old` to `new` (everything is added when there is no `old`)."""
    before: dict[tuple[str, str], list[ManifestPackage]] = defaultdict(list)
    after: dict[tuple[str, str], list[ManifestPackage]] = defaultdict(list)
    for p in old.packages if old else ():
        before[(p.name, p.arch)].append(p)
    for p in new.packages:
        after[(p.name, p.arch)].append(p)
    added: list[str] = []
    removed: list[str] = []
    upgraded: list[Change] = []
    downgraded: list[Change] = []
    for key in sorted(before.keys() | after.keys()):
        olds, news = before.get(key, []), after.get(key, [])
        if len(olds) == 1 and len(news) == 1:
            o, n = olds[0], news[0]
            order = rpm.labelCompare(o.evr, n.evr)
            change = Change(key[0], key[1], _evr_text(o), _evr_text(n))
            if order < 0:
                upgraded.append(change)
            elif order > 0:
                downgraded.append(change)
            continue
        # Several versions side by side (multiversion kernels): compare as sets.
        old_evrs = {_evr_text(p): p for p in olds}
        new_evrs = {_evr_text(p): p for p in news}
        removed += [old_evrs[e].nevra for e in old_evrs.keys() - new_evrs.keys()]
        added += [new_evrs[e].nevra for e in new_evrs.keys() - old_evrs.keys()]
    return PackageDiff(tuple(sorted(added)), tuple(sorted(removed)), tuple(upgraded),
                       tuple(downgraded))
