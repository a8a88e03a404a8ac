"""What `verify` sees beyond the packages' own files: files no package owns, and a
deployment whose read-only flag was turned off.

A deployment holds its packages' files, the directories rpm made as their parents, and
rpmimg's own: the header files, the deployment record, and the rpm database directory.
Anything else was put there by something other than rpmimg.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from deploy.headers import HEADER_DIR
from deploy.pathset import PathSet
from deploy.records import RECORD_DIR
from host.files import remove_tree

# Tree-relative directories rpmimg itself keeps in every deployment.
OWN_DIRS = (HEADER_DIR, RECORD_DIR, "lib/sysimage/rpm")


def _ancestors(rel: str) -> Iterable[str]:
    while "/" in rel:
        rel = rel.rpartition("/")[0]
        yield rel


def _own(rel: str) -> bool:
    return any(rel == d or rel.startswith(d + "/") for d in OWN_DIRS)


def unowned(tree: Path, owned: Iterable[str] | PathSet) -> list[str]:
    """Tree-relative paths in tree that are neither owned (tree-relative paths of package
    files) nor parents of owned paths, nor rpmimg's own; an unowned directory is listed
    alone, not with its contents. Symlinks are never followed. A PathSet given as owned
    gains rpmimg's own directories."""
    known = owned if isinstance(owned, PathSet) else PathSet(owned)
    for d in OWN_DIRS:
        known.add(d + "/-")
    found: list[str] = []
    for top, dirs, files, _ in os.fwalk(tree, follow_symlinks=False):
        base = os.path.relpath(top, tree)
        prefix = "" if base == "." else base + "/"
        for name in sorted(files):
            rel = prefix + name
            if rel not in known and not _own(rel):
                found.append(rel)
        for name in list(dirs):
            rel = prefix + name
            if _own(rel):
                dirs.remove(name)
            elif rel not in known:
                found.append(rel)
                dirs.remove(name)
    return sorted(found)


def remove(tree: Path, rel: str) -> None:
    """Delete an unowned path (a directory with its contents) from a writable tree."""
    path = tree / rel
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        remove_tree(path)
    else:
        os.unlink(path)
