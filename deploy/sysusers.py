"""System accounts of a new root from the image's sysusers.d, before its /usr is built.

The configuration is read from the stored packages (the /usr tree does not exist yet) and
applied to the root's etc/passwd, group, shadow and gshadow by `systemd-sysusers --root`.
A file of the administrator's in the root's etc/sysusers.d masks the image's file of the
same name, as systemd does. Accounts already in the root (a snapshot of the previous
deployment's) keep their ids; new ones get ids free in both files. Owners in the new /usr
then resolve through these accounts (deploy.tree).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeploymentError
from deploy.headers import read_prefix_at
from deploy.store import Store
from host.log import get as logger
from host.run import CommandError, run
from rpmextents import ExtentsPackage
from rpmextents.accounts import accounts_without_sysusers, sysusers_entries
from rpmextents.filelist import FileList, header_files
from rpmextents.files import claim_candidates
from rpmextents.nevra import nevra_of

log = logger(__name__)

MAX_CONFIG = 1 << 20
# Told each package's NEVRA and its files that may claim the package database (path, mode).
Claims = Callable[[str, Iterable[tuple[str, int]]], None]
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")


@dataclass(frozen=True)
class Accounts:
    """The accounts made for a tree: from sysusers.d files, and those only scriptlets make."""

    files: tuple[str, ...]  # the sysusers.d files applied, by name
    by_scriptlet: tuple[str, ...]  # packages creating accounts in scriptlets without sysusers.d


def image_config(store: Store, sha256s: Iterable[str],
                 each: Claims | None = None) -> tuple[dict[str, bytes], list[str]]:
    """name -> content of every sysusers.d file of the packages; and the packages that
    create accounts in scriptlets without shipping one. each, if given, is shown every
    package's NEVRA and the (path, mode) of its files that may claim the package database
    (another check on the same pass). A package with a summary (deploy.summaries) is known
    by it: its header is not read."""
    found: dict[str, bytes] = {}
    by_scriptlet = []
    for sha in dict.fromkeys(sha256s):
        kept = store.summary(sha)
        if kept is not None:
            if each is not None:
                each(kept.nevra, kept.claims)
            if kept.scriptlet_accounts:
                by_scriptlet.append(kept.nevra)
            if kept.sysusers:
                found.update(_read_config(store, sha))
            continue
        if store.remembers or store.at_hand(sha):
            pkg = store.package(sha)
            header, entries, nevra = pkg.header, pkg.entries(), pkg.nevra
        else:  # the header alone: only a package with sysusers.d files is opened whole
            header = read_prefix_at(store.path(sha)).header
            entries, nevra = header_files(header), str(nevra_of(header))
        if each is not None:
            each(nevra, claim_candidates(entries))
        if accounts_without_sysusers(header, entries):
            by_scriptlet.append(nevra)
        if ships_config(entries):
            found.update(_read_config(store, sha))
    return found, sorted(by_scriptlet)


def ships_config(entries: FileList) -> bool:
    """Whether a package ships a sysusers.d file image_config reads."""
    return any(e.size <= MAX_CONFIG for e in sysusers_entries(entries))


def _read_config(store: Store, sha: str) -> dict[str, bytes]:
    """name -> content of the sysusers.d files of a stored package."""
    found = {}
    with ExtentsPackage.open(store.path(sha)) as data:
        files = data.entries()
        for e in sysusers_entries(files):
            extent = files.extent(e.index)
            if extent is not None and e.size <= MAX_CONFIG:
                found[os.path.basename(e.path)] = b"".join(data.read_extent(extent))[: e.size]
    return found


def _admin_config(root: Path) -> dict[str, bytes]:
    d = root / "etc/sysusers.d"
    out = {}
    if d.is_dir() and not d.is_symlink():
        for p in sorted(d.iterdir()):
            if p.name.endswith(".conf") and p.is_file() and not p.is_symlink():
                out[p.name] = p.read_bytes()[:MAX_CONFIG]
            elif p.name.endswith(".conf") and p.is_symlink() and os.readlink(p) == "/dev/null":
                out[p.name] = b""
    return out


def apply(root: Path, config: dict[str, bytes]) -> tuple[str, ...]:
    """Apply the image's config (masked by the root's own files) to root; the names applied."""
    merged = {**config, **_admin_config(root)}
    names = tuple(sorted(merged))
    text = b"".join(merged[n].rstrip(b"\n") + b"\n" for n in names if merged[n])
    if not text:
        return names
    try:
        # "-" reads the configuration from stdin: the image's files are not in the root yet.
        run(["systemd-sysusers", f"--root={root}", "-"], input=text, timeout=120)
    except CommandError as e:
        raise DeploymentError(f"{root}: creating the image's system accounts failed: {e}") from e
    lock = root / "etc/.pwd.lock"  # left by the shadow locking: nothing holds it now
    if lock.is_file() and not lock.is_symlink():
        lock.unlink()
    return names


def create_accounts(root: Path, store: Store, sha256s: Iterable[str],
                    each: Claims | None = None) -> Accounts:
    config, by_scriptlet = image_config(store, sha256s, each)
    for nevra in by_scriptlet:
        log.warning("%s creates accounts in a scriptlet and ships no sysusers.d file: they will not exist",
                    nevra)
    return Accounts(apply(root, config), tuple(by_scriptlet))
