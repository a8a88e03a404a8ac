"""Files whose set-user-ID or set-group-ID bit a deployment dropped.

rpm (and extraction here) gives a file whose owner name this system does not know to
root, and drops its set-id bit so the unknown name never yields a set-id root file. The
file then no longer does what it did (`chage` that can't read /etc/shadow): the deploy
report states each one plainly.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable

from deploy.tree import SetidFile
from rpmextents import Owners


def dropped(files: Iterable[SetidFile], owners: Owners) -> tuple[str, ...]:
    """'PATH lost its setuid bit (user NAME is unknown here)' for each of the image's set-id
    files (as the build noted them, package by package) whose owner owners lacks."""
    out: dict[str, str] = {}
    for e in files:
        if e.mode & stat.S_ISUID and e.user not in owners.users:
            out[e.path] = f"{e.path} lost its setuid bit (user {e.user} is unknown here)"
        elif e.mode & stat.S_ISGID and not stat.S_ISDIR(e.mode) and e.group not in owners.groups:
            out[e.path] = f"{e.path} lost its setgid bit (group {e.group} is unknown here)"
    return tuple(out[p] for p in sorted(out))
