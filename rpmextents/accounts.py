"""Packages and system accounts: the sysusers.d files a package ships, and scriptlets that
create accounts by hand (useradd, groupadd, adduser) without shipping one.

An image is deployed without running scriptlets, so an account a package makes in %pre or
%post never exists unless the package declares it in sysusers.d.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rpmextents.filelist import may_lead_to
from rpmextents.files import Entry, EntryType, FileList
from rpmextents.header import Header, Tag

SYSUSERS_DIR = "/usr/lib/sysusers.d/"
_SCRIPT_TAGS = (Tag.PREIN, Tag.POSTIN, Tag.PRETRANS, Tag.POSTTRANS)
_CREATES = re.compile(rb"(?:^|[\s;&|(`/])(?:useradd|groupadd|adduser|addgroup|newusers)\b")


def _is_config(path: str) -> bool:
    return path.startswith(SYSUSERS_DIR) and path.endswith(".conf") and "/" not in path[len(SYSUSERS_DIR):]


def sysusers_entries(entries: Sequence[Entry]) -> list[Entry]:
    """The package's sysusers.d configuration files (regular *.conf files, not %ghost); of a
    file list, their metadata (FileList.metadata: no extent)."""
    if isinstance(entries, FileList):  # an Entry only for the few paths that may be one
        found = (entries.metadata(i) for i, path in entries.paths_in(lambda d: may_lead_to(d, SYSUSERS_DIR))
                 if _is_config(path))
    else:
        found = (e for e in entries if _is_config(e.path))
    return [e for e in found if e.type is EntryType.FILE and not e.ghost]


def creates_accounts(header: Header) -> bool:
    """Whether an install scriptlet of the package runs an account-creating command."""
    for tag in _SCRIPT_TAGS:
        value = header.get(tag)
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        if isinstance(value, bytes) and _CREATES.search(value):
            return True
    return False


def accounts_without_sysusers(header: Header, entries: Sequence[Entry]) -> bool:
    """A package that creates accounts in a scriptlet and ships no sysusers.d file for them."""
    return creates_accounts(header) and not sysusers_entries(entries)
