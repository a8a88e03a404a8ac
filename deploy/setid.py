"""Files whose set-user-ID or set-group-ID bit a deployment dropped.

rpm (and extraction here) gives a file whose owner name this system does not know to
root, and drops its set-id bit so the unknown name never yields a set-id root file. The
file then no longer does what it did (`chage` that can't read /etc/shadow): the deploy
report states each one plainly.
"""

from __future__ import annotations

import stat

from deploy.store import Store
from imagespec.manifest import ImageManifest
from rpmextents import Owners
from rpmextents.files import header_file_list

_SETID = stat.S_ISUID | stat.S_ISGID


def dropped(store: Store, m: ImageManifest, owners: Owners) -> tuple[str, ...]:
    """'PATH lost its setuid bit (user NAME is unknown here)' for each such file of m."""
    out: dict[str, str] = {}
    for ref in m.packages:
        # The metadata is all it needs: from the header alone unless the store has it read.
        files = store.file_list(ref.sha256)[1] if store.remembers else header_file_list(store.path(ref.sha256))
        for i in [i for i, mode in enumerate(files.modes) if mode & _SETID]:
            e = files.entry(i)
            if e.ghost:
                continue
            if e.mode & stat.S_ISUID and e.user not in owners.users:
                out[e.path] = f"{e.path} lost its setuid bit (user {e.user} is unknown here)"
            elif e.mode & stat.S_ISGID and not stat.S_ISDIR(e.mode) and e.group not in owners.groups:
                out[e.path] = f"{e.path} lost its setgid bit (group {e.group} is unknown here)"
    return tuple(out[p] for p in sorted(out))
