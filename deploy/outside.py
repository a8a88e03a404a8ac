"""Which files a new deployment places outside /usr that the deployment it replaces lacks.

A deploy's report lists only these (the full list is under --verbose and in --json): an
update of the same image would otherwise reprint every /etc and /var file it relocates.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from deploy.system import System
from imagespec.relocation import USR_TREE
from rpmextents.errors import ExtentsError
from rpmextents.tree import Tree


def new_outside_usr(system: System, replaced: str | None, outside: dict[str, list[str]],
                    had: Collection[str] = ()) -> dict[str, list[str]] | None:
    """outside (package -> paths) less the paths deployment `replaced` holds under
    share/factory; None when nothing was replaced or its tree is gone (nothing to compare).
    had: the packages (NEVRA) that `replaced` has too, the very same (sha256): what they place
    is in its tree already, so their paths are not looked up (an update's hundreds of
    unchanged packages cost nothing here).

    Paths resolve inside the replaced tree as extraction resolves them: a symlink it holds
    is never followed out of it, and a path it cannot resolve counts as new.
    """
    if replaced is None:
        return None
    try:
        tree = Tree(system.layout.deployment(replaced), USR_TREE)
    except FileNotFoundError:
        return None
    fresh: dict[str, list[str]] = {}
    with tree:
        for nevra, paths in outside.items():
            if nevra in had:
                continue
            new = [p for p in paths if not _holds(tree, p)]
            if new:
                fresh[nevra] = new
    return fresh


def _holds(tree: Tree, path: str) -> bool:
    try:
        dir_fd, name, _ = tree.find(path)
        os.lstat(name, dir_fd=dir_fd)
    except (OSError, ExtentsError):
        return False  # missing, or a symlink loop or escape the tree refuses: not held
    return True
