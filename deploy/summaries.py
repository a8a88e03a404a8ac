"""What an update asks of each package of the default deployment, worked out once.

An update of the benchmark image changes 20 of its 347 packages, yet the store check, the
plan, the package database claims, the owner names, set-id files and paths outside /usr,
sysusers and the /etc merge each asked every package's header and file list: reading the
347 headers (from the layout cache) took 80 ms, and the plan read the file lists again.
What each of them asks of a package is a function of its header (and of this code): it is
worked out when the package enters a deployment (from the file list the build reads anyway),
kept with the deployment that becomes the default, and an update reads the header of a
package only when it is new, gone, or written from.

TOP/@rpmimg/summaries describes the packages of one deployment, in its order:

    "RPMIMGSM", u32 format, the code key (32 bytes), u32 length, the payload, CRC-32 of
    everything before it (little-endian)
    payload: marshal of (packages, table): each package a tuple of str, int, bool and
    tuples of them (see _pack), table the bytes of an array of u64, sorted:
    CRC-32 of a placed tree path << 32 | the number of the package placing it

It is used only by a deploy that starts from that deployment (an update of it, or a full
build of packages it has), and a package's summary only while its store entry is the file
it was worked out from, unchanged (inode, size, mtime, ctime, as deploy.layoutcache trusts
a copy). The code key is a digest of the format and of
the size and modification time of every module of rpmextents, imagespec and deploy (where
the summary's parts are worked out): a newer rpmimg (a new deployment of it) reads none of
an older one's. As with the layout cache, the checksum is for accidents (a crash cut the
file short, a flipped bit), not for a forger, who would be root; a file that is not as
written, or whose records are not what they should be, stands for nothing: the headers
are read, as they were before there was a summary. marshal reads only the file this code
wrote for itself (as Python reads its own .pyc files); what it gives is checked for shape
before use (a record when it is first used).
"""

from __future__ import annotations

import functools
import marshal
import os
import stat
import struct
import sys
import zlib
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.delta import DirMap, Kept, KeptError, PlanPart, crc_table, dir_entry, plan_part
from deploy.etcmerge import ETC, EtcPart
from deploy.layoutcache import Identity
from deploy.sysusers import ships_config
from deploy.tree import Accounting, SetidFile, accounting
from host import digest
from host.files import write_atomically
from host.log import get as logger
from imagespec.relocation import USR_TREE
from rpmextents.accounts import accounts_without_sysusers
from rpmextents.entry import Entry, check_path, entry_type
from rpmextents.errors import FormatError
from rpmextents.files import claim_candidates
from rpmextents.package import ExtentsPackage, PackageIdentity

log = logger(__name__)

MAGIC = b"RPMIMGSM"
FORMAT = 1
_HEAD = struct.Struct("<8sI32sI")
_CHECKSUM = struct.Struct("<I")
MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class Summary:
    """What a deploy asks of one stored package, but its data."""

    sha256: str  # the store entry's
    entry: Identity  # the store entry as it was when this was worked out
    identity: PackageIdentity  # as the store checks it against the manifest
    digest_algo: str  # of its file digests
    accounting: Accounting  # deploy.tree.accounting
    claims: tuple[tuple[str, int], ...]  # rpmextents.files.claim_candidates
    sysusers: bool  # ships a sysusers.d file deploy.sysusers reads
    scriptlet_accounts: bool  # an install scriptlet creates accounts (rpmextents.accounts)
    plan: PlanPart
    etc_records: tuple[tuple[Any, ...], ...]  # its entries below /etc (_record)

    @property
    def nevra(self) -> str:
        return self.identity.nevra

    @property
    def header_sha256(self) -> str:
        return self.identity.header_sha256

    @property
    def dirs(self) -> _Dirs:
        assert isinstance(self.plan.dirs, _Dirs)
        return self.plan.dirs

    def etc_part(self) -> EtcPart:
        """Its EtcPart (KeptError: a record not as written)."""
        entries = tuple(_entry(r, self.digest_algo) for r in self.etc_records)
        if any(e.path != ETC and not e.path.startswith(f"{ETC}/") for e in entries):
            raise KeptError("an /etc record of a path outside /etc")
        return EtcPart(self.nevra, entries)


def summarize(sha256: str, header_sha256: str, pkg: ExtentsPackage) -> Summary:
    """The summary of the stored package sha256, read as pkg (its header, checked to be
    header_sha256, is not hashed again)."""
    files, ident, block_size = pkg.entries(), pkg.ident, pkg.block_size
    part = plan_part(files)
    assert isinstance(part.dirs, DirMap)
    etc = tuple(_record(e) for e in files.entries_below(ETC))
    sysusers = ships_config(files)
    return Summary(
        sha256, pkg.file_identity, PackageIdentity(ident.name, ident.epoch, ident.version, ident.release, ident.arch,
                                       str(ident), block_size, header_sha256),
        files.digest_algo, accounting(files),
        tuple(claim_candidates(files)), sysusers,
        accounts_without_sysusers(files.header, files),
        PlanPart(tuple(map(sys.intern, part.parent_dirs)), _Dirs.of(part.dirs), part.placed, part.exact),
        etc,
    )


# An Entry as the file keeps it: (index, path, mode, user, group, mtime, size, linkto, caps
# ("" for none), rdev, digest, flags, hardlink key (-1 for none)); the package's digest
# algorithm is kept once.
_RECORD_TYPES = (int, str, int, str, str, int, int, str, str, int, str, int, int)


def _record(e: Entry) -> tuple[Any, ...]:
    return (e.index, e.path, e.mode, e.user, e.group, e.mtime, e.size, e.linkto, e.caps or "",
            e.rdev, e.digest, e.flags, -1 if e.hardlink_key is None else e.hardlink_key)


def _entry(r: Any, digest_algo: str) -> Entry:
    if (type(r) is not tuple or len(r) != len(_RECORD_TYPES)
            or any(type(v) is not t for v, t in zip(r, _RECORD_TYPES, strict=True))):
        raise KeptError("an entry record not as written")
    index, path, mode, user, group, mtime, size, linkto, caps, rdev, file_digest, flags, link = r
    try:
        etype = entry_type(mode)
        check_path(path)  # as a file list checks it: the merge writes where it says
    except KeyError:
        raise KeptError(f"{path}: an entry record of no file type") from None
    except FormatError as e:
        raise KeptError(str(e)) from None
    return Entry(index, path, etype, mode, user, group, mtime, size, linkto, caps or None, rdev,
                 file_digest, digest_algo, flags, None if link < 0 else link)


class _Dirs:
    """A package's placed directories (deploy.delta.DirEntries) as columns: their tree paths,
    indexes, modes, users and groups (and the package's path of those not /usr/<tree path>:
    relocated from outside /usr); an Entry made of one when asked (KeptError: not as
    written)."""

    def __init__(self, rels: tuple[str, ...], indexes: array[int], modes: array[int],
                 users: tuple[str, ...], groups: tuple[str, ...], moved: dict[str, str]) -> None:
        self.rels, self.indexes, self.modes = rels, indexes, modes
        self.users, self.groups, self.moved = users, groups, moved
        self._at: dict[str, int] | None = None

    @classmethod
    def of(cls, dirs: Mapping[str, Entry]) -> _Dirs:
        es = list(dirs.values())
        moved = {rel: e.path for rel, e in dirs.items() if e.path != USR_TREE.image_path(rel)}
        # Interned: most directories and owners are many packages' ("share/doc", "root"); so
        # marshal writes each once, and reads them back as one string each.
        return cls(tuple(map(sys.intern, dirs)), array("I", [e.index for e in es]),
                   array("I", [e.mode for e in es]), tuple(sys.intern(e.user) for e in es),
                   tuple(sys.intern(e.group) for e in es), moved)

    def _find(self, rel: str) -> int | None:
        if self._at is None:
            self._at = {rel: j for j, rel in enumerate(self.rels)}
        return self._at.get(rel)

    def index_of(self, rel: str) -> int | None:
        j = self._find(rel)
        return None if j is None or not stat.S_ISDIR(self.modes[j]) else self.indexes[j]

    def entry(self, rel: str) -> Entry:
        j = self._find(rel)
        if j is None or not stat.S_ISDIR(self.modes[j]) or type(self.users[j]) is not str or type(
                self.groups[j]) is not str:
            raise KeptError(f"{rel}: a directory record not as written")
        path = self.moved.get(rel) or USR_TREE.image_path(rel)
        return dir_entry(self.indexes[j], path, self.modes[j], self.users[j], self.groups[j])

    def packed(self) -> tuple[Any, ...]:
        return (self.rels, self.indexes.tobytes(), self.modes.tobytes(), self.users, self.groups,
                tuple(self.moved.items()))

    @classmethod
    def unpacked(cls, packed: Any) -> _Dirs:
        """(ValueError: not of the shape packed() makes; the owner names are checked when used.)"""
        if type(packed) is not tuple or len(packed) != 6:
            raise ValueError("directories not as written")
        rels, indexes, modes, users, groups, moved = packed
        if (not _strings(rels) or type(indexes) is not bytes or type(modes) is not bytes
                or type(users) is not tuple or type(groups) is not tuple or type(moved) is not tuple
                or any(type(m) is not tuple or len(m) != 2 or not _strings(m) for m in moved)):
            raise ValueError("directories not as written")
        columns = array("I"), array("I")
        for column, raw in zip(columns, (indexes, modes), strict=True):
            if len(raw) % column.itemsize:
                raise ValueError("directories not as written")
            column.frombytes(raw)
            if sys.byteorder != "little":
                column.byteswap()
        if not len(rels) == len(columns[0]) == len(columns[1]) == len(users) == len(groups):
            raise ValueError("directories not as written")
        return cls(rels, *columns, users, groups, dict(moved))


class Summaries:
    """The summaries of a deployment's packages, in its order, and what its plan asks of
    them (deploy.delta.Kept)."""

    def __init__(self, summaries: Sequence[Summary], table: array[int] | None = None) -> None:
        self.packages = list(summaries)
        self.by_sha = {s.sha256: s for s in self.packages}
        self.kept = Kept([s.sha256 for s in self.packages], {s.sha256: s.plan for s in self.packages}, table)

    def get(self, sha256: str) -> Summary | None:
        return self.by_sha.get(sha256)

    def placed(self) -> dict[str, array[int]]:
        """Each package's placed paths' CRC-32s, from the table."""
        found: dict[int, array[int]] = {}
        for value in self.kept.table:
            n = value & 0xFFFFFFFF
            if n not in found:
                found[n] = array("I")
            found[n].append(value >> 32)
        return {s.sha256: found.get(n, array("I")) for n, s in enumerate(self.packages)}


@functools.cache
def code_key() -> bytes:
    """A digest of the format, the interpreter and every module the summaries are worked
    out by (their size and modification time, as a timestamp .pyc is checked)."""
    import deploy
    import imagespec
    import rpmextents

    lines = [f"{MAGIC!r} {FORMAT} {sys.version}\n"]
    for package in (rpmextents, imagespec, deploy):
        for directory in package.__path__:
            with os.scandir(directory) as it:
                for e in sorted(it, key=lambda e: e.name):
                    if e.name.endswith(".py") and e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        lines.append(f"{package.__name__}/{e.name} {st.st_size} {st.st_mtime_ns}\n")
    text = "".join(lines).encode()
    h = digest.new("sha256", len(text))  # a few kB: not worth loading libcrypto for
    h.update(text)
    return h.digest()


def _pack(s: Summary) -> tuple[Any, ...]:
    a, i = s.accounting, s.identity
    return (
        s.sha256, i.header_sha256, s.entry, i.name, -1 if i.epoch is None else i.epoch, i.version,
        i.release, i.arch, i.nevra, i.block_size, s.digest_algo,
        tuple(sorted(a.users)), tuple(sorted(a.groups)), a.outside,
        tuple((f.path, f.mode, f.user, f.group) for f in a.setid),
        s.claims, s.sysusers, s.scriptlet_accounts,
        s.plan.parent_dirs, s.dirs.packed(), s.plan.exact,
        s.etc_records,
    )


_SHAPE = (str, str, tuple, str, int, str, str, str, str, int, str, tuple, tuple, tuple, tuple, tuple,
          bool, bool, tuple, tuple, bool, tuple)


def _strings(values: Any) -> bool:
    return type(values) is tuple and all(type(v) is str for v in values)


def _unpack(p: Any) -> Summary:
    """A Summary of a packed tuple (ValueError where it is not of the shape _pack makes; its
    directory and /etc records are checked when used)."""
    if type(p) is not tuple or len(p) != len(_SHAPE) or any(type(v) is not t for v, t in zip(p, _SHAPE, strict=True)):
        raise ValueError("a package not as written")
    (sha, header_sha, entry, name, epoch, version, release, arch, nevra, block_size, digest_algo,
     users, groups, outside, setid, claims, sysusers, scriptlet, parent_dirs, dirs, exact,
     etc) = p
    if (len(entry) != 4 or any(type(v) is not int for v in entry)
            or not all(map(_strings, (users, groups, outside, parent_dirs)))
            or any(type(f) is not tuple or len(f) != 4 or not _strings(f[::3]) or type(f[1]) is not int
                   or type(f[2]) is not str for f in setid)
            or any(type(c) is not tuple or len(c) != 2 or type(c[0]) is not str or type(c[1]) is not int
                   for c in claims)
            or type(etc) is not tuple):
        raise ValueError("a package not as written")
    return Summary(
        sha, entry, PackageIdentity(name, None if epoch < 0 else epoch, version, release, arch, nevra,
                                    block_size, header_sha),
        digest_algo,
        Accounting(frozenset(users), frozenset(groups), outside, tuple(SetidFile(*f) for f in setid)),
        claims, sysusers, scriptlet,
        PlanPart(parent_dirs, _Dirs.unpacked(dirs),
                 array("I"), exact),
        etc,
    )


def load(path: Path, packages: Sequence[tuple[str, str]]) -> Summaries | None:
    """The summaries at path when they are of exactly these packages ((store entry sha256,
    header sha256), in order) and of this code; else None (why logged)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if not isinstance(e, FileNotFoundError):
            log.debug("%s: not read: %s", path, e)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ValueError("not a regular file of this user writable only by it")
        if not _HEAD.size + _CHECKSUM.size <= st.st_size <= MAX_BYTES:
            raise ValueError(f"{st.st_size} bytes")
        data = os.pread(fd, st.st_size, 0)
        if len(data) != st.st_size:
            raise ValueError("shorter than it was")
        found = _parse(data, packages)
    except (OSError, ValueError, EOFError, TypeError) as e:
        log.warning("%s: ignored (%s); the packages' headers are read instead", path, e)
        return None
    finally:
        os.close(fd)
    return found


def _parse(data: bytes, packages: Sequence[tuple[str, str]]) -> Summaries | None:
    end = len(data) - _CHECKSUM.size
    if data[end:] != _CHECKSUM.pack(zlib.crc32(memoryview(data)[:end])):
        raise ValueError("checksum mismatch: not as written")
    magic, version, key, length = _HEAD.unpack_from(data)
    if magic != MAGIC or version != FORMAT:
        raise ValueError(f"not summaries of format {FORMAT}")
    if key != code_key():
        log.debug("summaries of another rpmimg: not used")
        return None
    if _HEAD.size + length != end:
        raise ValueError("its length is not its size")
    payload = marshal.loads(memoryview(data)[_HEAD.size:end])
    if type(payload) is not tuple or len(payload) != 2 or type(payload[0]) is not tuple or type(payload[1]) is not bytes:
        raise ValueError("not as written")
    packed, raw = payload
    if [(p[0], p[1]) if type(p) is tuple and len(p) > 1 else None for p in packed] != list(packages):
        log.debug("summaries of another deployment: not used")
        return None
    summaries = [_unpack(p) for p in packed]
    if len(raw) % 8:
        raise ValueError("a table not as written")
    table = array("Q")
    table.frombytes(raw)
    if sys.byteorder != "little":
        table.byteswap()
    # Sorted as written (in C when it is: a run of one); a package number past the list
    # names no package (Kept.owners skips it).
    table = array("Q", sorted(table))
    return Summaries(summaries, table)


def save(path: Path, summaries: Sequence[Summary], previous: Summaries | None = None) -> None:
    """Write the summaries of a deployment's packages (in its order) to path, under a
    temporary name renamed over it; not synced (a file a crash cut short is not as written).
    previous: the summaries loaded this run, whose table has the placed paths of the
    packages taken from it (those have none of their own)."""
    placed = previous.placed() if previous is not None else {}
    table = crc_table(s.plan.placed if len(s.plan.placed) or s.sha256 not in placed else placed[s.sha256]
                      for s in summaries)
    if sys.byteorder != "little":
        table.byteswap()
    payload = marshal.dumps((tuple(_pack(s) for s in summaries), table.tobytes()))
    head = _HEAD.pack(MAGIC, FORMAT, code_key(), len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    for left in path.parent.glob(f".{path.name}.tmp-*"):
        left.unlink(missing_ok=True)  # left by killed runs
    write_atomically(path, (head, payload, _CHECKSUM.pack(crc)), mode=0o600, sync=False)
