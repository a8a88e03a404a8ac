"""User and group names to ids, resolved like rpm: from the target system's own files.

rpm looks names up in the root it installs into; unknown names fall back to root
(uid/gid 0) with a warning. A deployment is a /usr for the sysroot, so the sysroot's
/etc/passwd and /etc/group are the target's databases.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _read_ids(path: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ids
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            ids.setdefault(fields[0], int(fields[2]))
    return ids


class Owners:
    """Name-to-id lookups against one sysroot, remembering names that had to fall back."""

    def __init__(self, sysroot: Path) -> None:
        self._users = _read_ids(sysroot / "etc/passwd")
        self._groups = _read_ids(sysroot / "etc/group")
        self._users.setdefault("root", 0)
        self._groups.setdefault("root", 0)
        self.unknown: set[str] = set()

    def _lookup(self, table: dict[str, int], name: str, kind: str) -> int:
        found = table.get(name)
        if found is not None:
            return found
        if f"{kind} {name}" not in self.unknown:
            log.warning("%s %s does not exist - using root", kind, name)
            self.unknown.add(f"{kind} {name}")
        return 0

    def uid(self, name: str) -> int:
        return self._lookup(self._users, name, "user")

    def gid(self, name: str) -> int:
        return self._lookup(self._groups, name, "group")
