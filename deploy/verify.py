"""`rpmimg verify`: every file of a deployment against its package headers, like `rpm -V`.

What is checked is anchored to what was signed: the package list comes from the
deployment's record, each package's header from the store entry (or the tree's header
file) that hashes to the header_sha256 of the signed manifest; the tree's header files
are themselves compared with those bytes. `verify --store` re-hashes every store entry.

`--repair` rewrites damaged entries from the store (refetching a package the store
no longer has, from the manifest the deployment came from) and verifies again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from deploy import completeness, rpmdb
from deploy.errors import DeploymentError, PackageError
from deploy.hashing import READ_FLAGS, DigestJob, Hashing
from deploy.headers import HEADER_DIR, read_prefix_at
from deploy.lock import DEFAULT_WAIT
from deploy.pathset import PathSet
from deploy.state import DeploymentRecord, PackageRecord
from deploy.system import System
from host import kernel
from host.log import get as logger
from imagespec.relocation import USR_TREE, relocate
from rpmextents import Entry, Owners
from rpmextents.errors import ExtentsError
from rpmextents.files import header_files
from rpmextents.header import Header, PackagePrefix
from rpmextents.tree import Tree

log = logger(__name__)


@dataclass(frozen=True)
class Mismatch:
    """One file that differs from its header; `what` lists rpm -V's attributes."""

    package: str
    path: str  # the path rpm knows ("/usr/bin/foo", "/etc/foo")
    location: str  # where it is in the deployment tree
    what: tuple[str, ...]  # "missing", "type", "mode", "owner", "group", "size", "digest", "link", "mtime", "rdev", "caps"


@dataclass(frozen=True)
class VerifyResult:
    """What verify found of a deployment: its files and their mismatches."""

    deployment: str
    files: int
    mismatches: tuple[Mismatch, ...]
    repaired: tuple[str, ...] = ()


# The order _check_file reports differences in (as rpm -V lists them, roughly).
CHECK_ORDER = ("writable", "unowned", "unverifiable", "extra", "missing", "type", "mode", "owner", "group", "size", "digest", "caps", "link", "rdev", "mtime")


def _check_file(f: Entry, algo: str, tree: Tree, owners: Owners,
                owned: PathSet | None = None) -> tuple[str, list[str], DigestJob | None]:
    """Compare one file entry of a header with what the tree holds.

    The path is resolved inside the tree as extraction placed it (rpmextents.tree); the
    file itself is looked at, never followed. Returns (location, what differs, the digest
    check still to run). Where the path resolves, the resolved path is added to owned.
    """
    rel, _ = relocate(f.path)
    try:
        dir_fd, name, real = tree.find(f.path)
        if owned is not None:
            owned.add(real)
        st = os.lstat(name, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return rel, ["missing"], None
    except (OSError, ExtentsError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.ELOOP, errno.ENAMETOOLONG):
            raise
        return rel, ["missing"], None  # its path does not resolve inside the tree
    fmode = f.mode
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(fmode):
        return rel, ["type"], None
    # Resolve mode, user and group exactly as extract did.
    mode, uid, gid = owners.mode_and_ids(f)
    what = []
    job = None
    if not stat.S_ISLNK(fmode) and stat.S_IMODE(st.st_mode) != mode:
        what.append("mode")
    if st.st_uid != uid:
        what.append("owner")
    if st.st_gid != gid:
        what.append("group")
    if stat.S_ISREG(fmode):
        if st.st_size != f.size:
            what.append("size")
        if f.digest:
            job = DigestJob(tree.root, real, algo, f.digest, st.st_size)
        if bool(f.caps) != _has_caps(dir_fd, name):
            what.append("caps")
    elif stat.S_ISLNK(fmode):
        if os.readlink(name, dir_fd=dir_fd) != f.linkto:
            what.append("link")
    elif (stat.S_ISCHR(fmode) or stat.S_ISBLK(fmode)) and st.st_rdev != f.rdev:
        what.append("rdev")
    if not stat.S_ISDIR(fmode) and int(st.st_mtime) != f.mtime:
        what.append("mtime")
    return rel, what, job


def _has_caps(dir_fd: int, name: str) -> bool:
    """Whether the regular file name in dir_fd carries file capabilities."""
    try:
        fd = os.open(name, READ_FLAGS | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        os.getxattr(fd, "security.capability")
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


_Finding = tuple[str, str, str, list[str], "DigestJob | None"]  # nvra, name, location, what, job


def _package_findings(nvra: str, header: Header, tree: Tree, owners: Owners,
                      owned: PathSet) -> Iterator[_Finding | None]:
    """For each file of the package (ghosts aside), what to report or hash for it, if anything;
    where each file (ghosts too) is in the tree, as extraction resolved it, goes into owned.
    One pass: resolving every path a second time for owned alone took a fifth of the time."""
    for f in header_files(header):
        if f.ghost:
            with contextlib.suppress(OSError, ExtentsError):
                owned.add(tree.find(f.path)[2])
            continue
        rel, what, job = _check_file(f, f.digest_algo, tree, owners, owned)
        yield (nvra, f.path, rel, what, job) if what or job is not None else None


class _Settling:
    """Findings waiting for their digest checks, let go of as the results come in."""

    def __init__(self) -> None:
        self.findings: collections.deque[_Finding] = collections.deque()
        self.results: collections.deque[bool] = collections.deque()
        self.mismatches: list[Mismatch] = []

    def settle(self, results: Iterable[bool]) -> None:
        """Turn every finding whose digest result is known into its mismatch, in order."""
        self.results.extend(results)
        while self.findings:
            nvra, name, rel, what, job = self.findings[0]
            if job is not None:
                if not self.results:
                    return
                if self.results.popleft():
                    what = sorted([*what, "digest"], key=CHECK_ORDER.index)
            self.findings.popleft()
            if what:
                self.mismatches.append(Mismatch(nvra, name, rel, tuple(what)))


def _header_dir(tree: Path) -> int | None:
    """An fd of the tree's header directory, opened below the tree following no symlink
    (None when there is none): header files are read through it, never through the host."""
    root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return kernel.open_beneath(root, HEADER_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    finally:
        os.close(root)


def _prefix_if(path: Path, header_sha256: str, dir_fd: int | None = None) -> PackagePrefix | None:
    """The header at the start of path (its name in dir_fd, if given), if it is the one the
    signed manifest named."""
    try:
        prefix = read_prefix_at(path, dir_fd)
    except (OSError, ExtentsError):
        return None
    return prefix if prefix.sha256() == header_sha256 else None


def _header_file(dir_fd: int | None, p: PackageRecord, expected: PackagePrefix | None) -> list[str]:
    """How the tree's header file of p (in the header directory dir_fd) differs from the signed header bytes."""
    if dir_fd is None:
        return ["missing"]
    try:
        fd = os.open(f"{p.nvra}.rpm", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return ["missing"]
    except OSError:
        return ["type"]
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ["type"]
        if expected is None or st.st_size != expected.header_end:
            return ["digest"]
        same = all(_same_bytes(f, part) for part in (expected.before_header, expected.header.blob))
        return [] if same and not f.read(1) else ["digest"]


def _same_bytes(f: BinaryIO, want: bytes, chunk: int = 1 << 20) -> bool:
    """Whether f's next len(want) bytes are want, read a chunk at a time (a header of a
    200,000-file package is 25 MB: read whole, it would be held twice)."""
    view = memoryview(want)
    for start in range(0, len(view), chunk):
        part = view[start:start + chunk]
        if f.read(len(part)) != part:
            return False
    return True


def _anchored(
    system: System, record: DeploymentRecord, tree: Path
) -> Iterator[tuple[str, Header | None, Mismatch | None]]:
    """(nvra, signed header, mismatch of its header file) for each package of the record.

    The header comes from the store entry, else from the tree's header file, whichever
    hashes to the header_sha256 the signed manifest gave; with neither, the package's
    files can't be checked and that is itself a mismatch.
    """
    headers = _header_dir(tree)
    try:
        for p in record.packages:
            location = f"{HEADER_DIR}/{p.nvra}.rpm"
            expected = _prefix_if(system.layout.store_entry(p.sha256), p.header_sha256)
            if expected is None and headers is not None:
                expected = _prefix_if(tree / location, p.header_sha256, headers)
            what = _header_file(headers, p, expected)
            if expected is None:
                what = sorted({*what, "unverifiable"}, key=CHECK_ORDER.index)
            mismatch = Mismatch(p.nvra, f"/usr/{location}", location, tuple(what)) if what else None
            yield p.nvra, expected.header if expected is not None else None, mismatch
    finally:
        if headers is not None:
            os.close(headers)


def _extra_headers(record: DeploymentRecord, tree: Path) -> list[Mismatch]:
    """Header files in the tree for packages the deployment does not have."""
    names = {f"{p.nvra}.rpm" for p in record.packages}
    headers = _header_dir(tree)
    if headers is None:
        found: list[str] = []
    else:
        try:
            found = sorted(os.listdir(headers))
        finally:
            os.close(headers)
    return [
        Mismatch(name.removesuffix(".rpm"), f"/usr/{HEADER_DIR}/{name}", f"{HEADER_DIR}/{name}", ("extra",))
        for name in found if name not in names
    ]


def accounts_root(system: System, deployment_id: str) -> Path:
    """Where the deployment's owner names resolve: its root, else (made before deployments
    had roots) the sysroot."""
    root = system.layout.root_of(deployment_id)
    return root if root.is_dir() else system.sysroot


def _database(system: System, record: DeploymentRecord, tree: Path) -> list[Mismatch]:
    """Packages the tree's rpm database lacks or has beyond the record ("rpmdb"); deployments
    made before rpmimg wrote one (no root either) are not checked."""
    where = f"/usr/{rpmdb.DB_DIR}"
    if not system.layout.root_of(record.id).is_dir():
        return []
    if not (tree / rpmdb.DB_DIR / rpmdb.DB_FILE).is_file():
        return [Mismatch("", where, rpmdb.DB_DIR, ("rpmdb", "missing"))]
    try:
        found = set(rpmdb.installed(tree))
    except DeploymentError as e:
        log.warning("%s", e)
        return [Mismatch("", where, rpmdb.DB_DIR, ("rpmdb", "unreadable"))]
    expected = {p.nvra for p in record.packages}
    return [Mismatch(n, where, rpmdb.DB_DIR, ("rpmdb", "missing")) for n in sorted(expected - found)] + [
        Mismatch(n, where, rpmdb.DB_DIR, ("rpmdb", "extra")) for n in sorted(found - expected)]


# Decides, for a package's sha256 and a file's digest check, that its content is known to
# be intact without reading it (deploy.basecheck: its extents are still the store entry's).
ContentKnown = Callable[[str, DigestJob], bool]


def _completeness(tree: Path, owned: PathSet) -> list[Mismatch]:
    out = [
        Mismatch("", f"/usr/{rel}", rel, ("unowned",))
        for rel in completeness.unowned(tree, owned)
    ]
    if not kernel.subvolume_is_readonly(tree):
        out.insert(0, Mismatch("", "/usr", ".", ("writable",)))
    return out


def verify(
    system: System, deployment_id: str | None = None,
    progress: Callable[[int, int], None] | None = None, content_known: ContentKnown | None = None,
) -> VerifyResult:
    """Verify a deployment (default: the default one) against the signed headers of the
    packages its record lists (not against whatever header files the tree holds), and
    report files no package owns and a read-only flag turned off.

    With content_known, files it vouches for are not hashed."""
    current = system.load_state()
    deployment_id = deployment_id or current.default
    if deployment_id is None:
        raise DeploymentError("nothing is deployed")
    record = current.get(deployment_id)
    tree = system.layout.deployment(deployment_id)
    owners = Owners.from_root(accounts_root(system, deployment_id))
    files, own, pending = 0, [], _Settling()
    owned = PathSet()
    with Hashing() as hashing, Tree(tree, USR_TREE) as resolver:
        for p, (nvra, header, mismatch) in zip(record.packages, _anchored(system, record, tree), strict=True):
            if mismatch is not None:
                own.append(mismatch)
            if header is None:
                continue
            for finding in _package_findings(nvra, header, resolver, owners, owned):
                files += 1
                if finding is None:
                    continue
                job = finding[4]
                if job is not None and content_known is not None and content_known(p.sha256, job):
                    finding = (*finding[:4], None)
                    if not finding[3]:
                        continue
                pending.findings.append(finding)
                if finding[4] is not None:
                    hashing.add(finding[4])
                if len(pending.findings) % 1024 == 0:
                    pending.settle(hashing.take_ready())
        # Hashing is the slow part, so it is what the progress display follows.
        pending.settle(hashing.results(progress))
    mismatches = (_completeness(tree, owned) + pending.mismatches + own + _extra_headers(record, tree)
                  + _database(system, record, tree))
    return VerifyResult(deployment=deployment_id, files=files, mismatches=tuple(mismatches))


@dataclass(frozen=True)
class StoreResult:
    """What verify --store found: the entries checked and the damaged ones."""

    entries: int
    damaged: tuple[str, ...]  # paths of entries that no longer hash to their sha256


def verify_store(system: System, progress: Callable[[int, int], None] | None = None) -> StoreResult:
    """Re-hash every store entry against the sha256 it was recorded (and is named) by."""
    from deploy.store import Store  # here: verify opens no entry as a package

    store = Store(system.layout.store)
    shas = list(store)
    damaged = []
    for i, sha in enumerate(shas):
        if store.damaged(sha):
            damaged.append(os.fspath(store.path(sha)))
        if progress is not None:
            progress(i + 1, len(shas))
    return StoreResult(entries=len(shas), damaged=tuple(damaged))


Refetch = Callable[[DeploymentRecord, str], Path]


def _ensure_stored(system: System, record: DeploymentRecord, nvra: str, refetch: Refetch) -> Path:
    from deploy.store import Store  # here: verify opens no entry as a package

    store = Store(system.layout.store)
    package = next((p for p in record.packages if p.nvra == nvra), None)
    if package is None:
        raise DeploymentError(f"deployment {record.id}: {nvra} is not one of its packages")
    if store.has(package.sha256) and store.damaged(package.sha256):
        store.remove(package.sha256)  # never re-extract damage: fetch it again
    if not store.has(package.sha256):
        refetch(record, nvra)
    if not store.has(package.sha256):
        raise PackageError(f"{nvra}: could not be brought back into the store")
    return store.path(package.sha256)


def repair(
    system: System, deployment_id: str | None, refetch: Refetch, lock_wait: float = DEFAULT_WAIT
) -> VerifyResult:
    """Re-extract every package with a mismatching file from the store, then verify again.

    Extraction reflinks, so rewriting a whole package costs no data copies; it also
    restores hardlink groups and directory metadata that a single file would not.
    """
    from deploy.lifecycle import mutating
    from deploy.tree import TreeBuilder  # the extractor: only a repair writes files
    from rpmextents import ExtentsPackage

    with mutating(system, lock_wait) as current:
        before = verify(system, deployment_id)
        if not before.mismatches:
            return before
        record = current.get(before.deployment)
        tree = system.layout.deployment(record.id)
        extra = [m for m in before.mismatches if m.what == ("extra",)]
        unowned = [m for m in before.mismatches if m.what == ("unowned",)]
        database = [m for m in before.mismatches if m.what[:1] == ("rpmdb",)]
        damaged = sorted({m.package for m in before.mismatches
                          if m.package and m not in extra and m not in database})
        stored = [_ensure_stored(system, record, nvra, refetch) for nvra in damaged]
        kernel.subvolume_set_readonly(tree, False)
        try:
            for m in extra:
                (tree / m.location).unlink(missing_ok=True)
            for m in unowned:
                completeness.remove(tree, m.location)
            with TreeBuilder(tree, accounts_root(system, record.id)) as builder:
                for path in stored:
                    with ExtentsPackage.open(path) as pkg:
                        builder.add_package(pkg)
                        builder.write_header(pkg)
            if database:  # derived from the header files: made again from them
                rpmdb.build(tree, [tree / HEADER_DIR / f"{p.nvra}.rpm" for p in record.packages])
            kernel.sync_filesystem(tree)
        finally:
            kernel.subvolume_set_readonly(tree, True)
        after = verify(system, record.id)
        fixed = {m.path for m in before.mismatches} - {m.path for m in after.mismatches}
        return dataclasses.replace(after, repaired=tuple(sorted(fixed)))


def refetcher(
    system: System, keyrings: Sequence[Path] = (), allow_unsigned_packages: bool = False,
) -> Callable[[DeploymentRecord, str], Path]:
    """For `verify --repair`: bring one package of a deployment back into the store, from
    the signed manifest the deployment was made from (its versioned location), on the
    trust terms it was deployed with."""

    def refetch(record: DeploymentRecord, nvra: str) -> Path:
        # Here: the download and signature machinery, which verify alone never needs.
        from deploy.signature import fetch_verified_manifest, package_keyring, trusted_key_files
        from deploy.sources import FetchJob, open_source

        key_files = trusted_key_files(system.sysroot, keyrings)
        source = open_source(record.source)
        m, manifest_sha, _ = fetch_verified_manifest(source, key_files)
        if manifest_sha != record.manifest_sha256:
            raise PackageError(
                f"{record.source}: the manifest changed since deployment {record.id} was made;"
                f" cannot refetch {nvra} from it"
            )
        ref = next(p for p in m.packages if p.nvra == nvra)
        dest = system.layout.downloads / f"{ref.sha256}.rpm"
        if not dest.exists():
            source.fetch([FetchJob(ref, dest)], None)
        from deploy.store import Store  # here: verify opens no entry as a package

        store = Store(system.layout.store)
        unsigned = allow_unsigned_packages or record.allow_unsigned_packages
        store.add(ref, dest, None if unsigned else package_keyring(key_files, keyrings))
        return store.path(ref.sha256)

    return refetch
