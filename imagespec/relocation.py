"""Where a package's path lands in a deployment, which is only a /usr.

The one rule for both sides: /usr/X becomes X in the deployment's tree; a path
outside /usr goes under share/factory/ with its original path (systemd's place for
vendor defaults, so /etc/foo.conf becomes /usr/share/factory/etc/foo.conf). Compose
lists such paths in the manifest's curation report; the client places them so.
"""

from __future__ import annotations

FACTORY = "share/factory"


def relocate(path: str) -> tuple[str, bool]:
    """The package path's place relative to the /usr tree, and whether it lies outside /usr."""
    if path == "/usr":
        return "", False
    if path.startswith("/usr/"):
        return path[len("/usr/") :], False
    return f"{FACTORY}{path.rstrip('/')}", True


def outside_usr(path: str) -> bool:
    """Whether a package path lies outside /usr (and so lands under share/factory)."""
    return relocate(path)[1]
