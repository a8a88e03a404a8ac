"""Where a package's path lands in a deployment, which is only a /usr.

The one rule for both sides: /usr/X becomes X in the deployment's tree; a path
outside /usr goes under share/factory/ with its original path (systemd's place for
vendor defaults, so /etc/foo.conf becomes /usr/share/factory/etc/foo.conf). Compose
lists such paths in the manifest's curation report; the client places them so.
"""

from __future__ import annotations

from rpmextents.tree import Relocation

FACTORY = "share/factory"
# A deployment is the image's /usr; what a package places elsewhere goes under share/factory.
USR_TREE = Relocation(top="/usr", outside=f"/usr/{FACTORY}")


def relocate(path: str) -> tuple[str, bool]:
    """The package path's place relative to the /usr tree (symlinks not resolved), and
    whether it lies outside /usr."""
    return USR_TREE.tree_path(path), not USR_TREE.holds(path)


def outside_usr(path: str) -> bool:
    """Whether a package path lies outside /usr (and so lands under share/factory)."""
    return not USR_TREE.holds(path)
