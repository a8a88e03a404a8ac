"""Write binary RPM v4 packages directly, as rpmbuild 4.18 lays them out.

Why not rpmbuild: a spec per package has to escape every file name (globs,
`%`, spaces, quotes), and rpmbuild runs libmagic and its dependency generators
over every file; writing the package ourselves keeps the exact file list,
owners and modes from the .deb and is several times faster. The layout (lead,
signature header with SHA1/SHA256/MD5/size and rpm's reserved space, header
with an immutable region, newc cpio payload with `./` names, hardlink sets last
with their data on the final member, zstd compression, PAYLOADDIGEST and
PAYLOADDIGESTALT) mirrors what rpmbuild writes, and `rpm -K`, `rpm -qp` and
`rpm -i` are the oracles in the tests.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from benchmarks.debian import Dependency, Sense

HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
LEAD_MAGIC = b"\xed\xab\xee\xdb"
RESERVED_SPACE = 4128  # what rpmbuild leaves in the signature header for rpmsign
MAX_CPIO = 0xFFFFFFFF
BIG_PAYLOAD = 64 << 20


class RpmWriteError(Exception):
    """A package that can't be written in this format; names the package and the reason."""


class TagType(enum.IntEnum):
    INT16 = 3
    INT32 = 4
    STRING = 6
    BIN = 7
    STRING_ARRAY = 8
    I18NSTRING = 9


class FileFlag(enum.IntFlag):
    """RPMFILE_* bits (rpmfiles.h)."""

    NONE = 0
    CONFIG = 1 << 0
    DOC = 1 << 1
    NOREPLACE = 1 << 4


@dataclass(frozen=True)
class FileEntry:
    """One file of the package: `data` is the content of a regular file, empty otherwise."""

    path: str
    mode: int
    user: str = "root"
    group: str = "root"
    mtime: int = 0
    data: bytes = b""
    linkto: str = ""
    rdev: int = 0
    flags: int = 0
    hardlink_key: str | None = None  # equal keys: one inode


@dataclass(frozen=True)
class PackageSpec:
    """What goes into the header besides the files."""

    name: str
    version: str
    release: str
    arch: str
    epoch: int | None = None
    summary: str = ""
    description: str = ""
    license: str = "unknown"
    group: str = "Unspecified"
    url: str = ""
    vendor: str = ""
    packager: str = ""
    buildtime: int = 0
    buildhost: str = "rpmimg-bench"
    sourcerpm: str = ""
    provides: Sequence[Dependency] = ()
    requires: Sequence[Dependency] = ()
    conflicts: Sequence[Dependency] = ()
    recommends: Sequence[Dependency] = ()
    suggests: Sequence[Dependency] = ()
    enhances: Sequence[Dependency] = ()
    files: Sequence[FileEntry] = field(default_factory=tuple)

    @property
    def nevra(self) -> str:
        e = f"{self.epoch}:" if self.epoch is not None else ""
        return f"{self.name}-{e}{self.version}-{self.release}.{self.arch}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"


@dataclass(frozen=True)
class WrittenPackage:
    path: Path
    size: int
    files: int
    payload_size: int
    installed_size: int


class Header:
    """Tags collected, then laid out as rpm's header blob with an immutable region."""

    def __init__(self) -> None:
        self._tags: dict[int, tuple[TagType, object]] = {}

    def add(self, tag: int, kind: TagType, value: object) -> None:
        if isinstance(value, (list, tuple)) and not value:
            return  # rpm refuses empty arrays: leave the tag out, as rpmbuild does
        self._tags[tag] = (kind, value)

    def blob(self, region_tag: int) -> bytes:
        data = bytearray()
        index = []
        for tag in sorted(self._tags):
            kind, value = self._tags[tag]
            align = {TagType.INT16: 2, TagType.INT32: 4}.get(kind, 1)
            data.extend(b"\0" * (-len(data) % align))
            offset = len(data)
            count = _encode(kind, value, data)
            index.append(struct.pack(">iIiI", tag, kind, offset, count))
        il = len(index) + 1
        region = struct.pack(">iIiI", region_tag, TagType.BIN, len(data), 16)
        data.extend(struct.pack(">iIiI", region_tag, TagType.BIN, -il * 16, 16))
        return HEADER_MAGIC + struct.pack(">II", il, len(data)) + region + b"".join(index) + bytes(data)


def _encode(kind: TagType, value: object, out: bytearray) -> int:
    if kind is TagType.BIN:
        assert isinstance(value, bytes)
        out.extend(value)
        return len(value)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if kind in (TagType.INT16, TagType.INT32):
        fmt = ">H" if kind is TagType.INT16 else ">I"
        for v in values:
            assert isinstance(v, int)
            out.extend(struct.pack(fmt, v & (0xFFFF if kind is TagType.INT16 else 0xFFFFFFFF)))
        return len(values)
    for v in values:
        assert isinstance(v, str)
        out.extend(v.encode("utf-8", "surrogateescape") + b"\0")
    return 1 if kind in (TagType.STRING, TagType.I18NSTRING) else len(values)


def _cpio_entry(name: str, ino: int, mode: int, nlink: int, mtime: int, size: int,
                rdev: int, *, prefix: str = "./") -> bytes:
    raw = (prefix + name.lstrip("/")).encode("utf-8", "surrogateescape") + b"\0"
    head = "070701" + "".join(
        f"{v:08x}" for v in (ino, mode, 0, 0, nlink, mtime, size, 0, 0,
                             os.major(rdev), os.minor(rdev), len(raw), 0)
    )
    blob = head.encode("ascii") + raw
    return blob + b"\0" * (-len(blob) % 4)


def _payload(files: Sequence[FileEntry], inodes: list[int]) -> bytes:
    """The newc cpio archive: plain entries in header order, then each hardlink set, data on its last member."""
    out = bytearray()
    sets: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        if f.hardlink_key is not None:
            sets.setdefault(f.hardlink_key, []).append(i)
            continue
        body = f.linkto.encode("utf-8", "surrogateescape") if f.linkto else f.data
        out += _cpio_entry(f.path, inodes[i], f.mode, 1, f.mtime, len(body), f.rdev)
        out += body + b"\0" * (-len(body) % 4)
    for members in sets.values():
        for n, i in enumerate(members):
            f = files[i]
            body = f.data if n == len(members) - 1 else b""
            out += _cpio_entry(f.path, inodes[i], f.mode, len(members), f.mtime, len(body), 0)
            out += body + b"\0" * (-len(body) % 4)
    out += _cpio_entry("TRAILER!!!", 0, 0, 1, 0, 0, 0, prefix="")
    return bytes(out)


def _add_deps(h: Header, tags: tuple[int, int, int], deps: Iterable[Dependency]) -> None:
    deps = list(deps)
    h.add(tags[0], TagType.STRING_ARRAY, [d.name for d in deps])
    h.add(tags[1], TagType.INT32, [d.flags for d in deps])
    h.add(tags[2], TagType.STRING_ARRAY, [d.version for d in deps])


RPMLIB_FLAGS = int(Sense.RPMLIB | Sense.LESS | Sense.EQUAL)


def _rpmlib_requires(spec: PackageSpec) -> list[Dependency]:
    needs = [("CompressedFileNames", "3.0.4-1"), ("FileDigests", "4.6.0-1"),
             ("PayloadFilesHavePrefix", "4.0-1"), ("PayloadIsZstd", "5.4.18-1")]
    if any(f.hardlink_key for f in spec.files):
        needs.append(("PartialHardlinkSets", "4.0.4-1"))
    if any(d.name.startswith("(") for d in (*spec.requires, *spec.conflicts,
                                             *spec.recommends, *spec.suggests, *spec.enhances)):
        needs.append(("RichDependencies", "4.12.0-1"))
    return [Dependency(f"rpmlib({n})", RPMLIB_FLAGS, v) for n, v in needs]


def build_header(spec: PackageSpec, payload: bytes, compressed: bytes, level: int) -> bytes:
    """The main header blob (region tag 63) for spec with the given payload."""
    files = sorted(spec.files, key=lambda f: f.path.encode("utf-8", "surrogateescape"))
    h = Header()
    h.add(100, TagType.STRING_ARRAY, ["C"])  # HEADERI18NTABLE
    h.add(1000, TagType.STRING, spec.name)
    h.add(1001, TagType.STRING, spec.version)
    h.add(1002, TagType.STRING, spec.release)
    if spec.epoch is not None:
        h.add(1003, TagType.INT32, [spec.epoch])
    h.add(1004, TagType.I18NSTRING, spec.summary or spec.name)
    h.add(1005, TagType.I18NSTRING, spec.description or spec.summary or spec.name)
    h.add(1006, TagType.INT32, [spec.buildtime])
    h.add(1007, TagType.STRING, spec.buildhost)
    h.add(1009, TagType.INT32, [sum(len(f.data) for f in _unique_inodes(files))])
    if spec.vendor:
        h.add(1011, TagType.STRING, spec.vendor)
    h.add(1014, TagType.STRING, spec.license)
    if spec.packager:
        h.add(1015, TagType.STRING, spec.packager)
    h.add(1016, TagType.I18NSTRING, spec.group)
    if spec.url:
        h.add(1020, TagType.STRING, spec.url)
    h.add(1021, TagType.STRING, "linux")
    h.add(1022, TagType.STRING, spec.arch)
    inodes = _inode_numbers(files)
    digests = [hashlib.sha256(f.data).hexdigest() if _is_reg(f) else "" for f in files]
    h.add(1028, TagType.INT32, [_file_size(f) for f in files])  # FILESIZES
    h.add(1030, TagType.INT16, [f.mode for f in files])
    h.add(1033, TagType.INT16, [f.rdev for f in files])
    h.add(1034, TagType.INT32, [f.mtime for f in files])
    h.add(1035, TagType.STRING_ARRAY, digests)
    h.add(1036, TagType.STRING_ARRAY, [f.linkto for f in files])
    h.add(1037, TagType.INT32, [f.flags for f in files])
    h.add(1039, TagType.STRING_ARRAY, [f.user for f in files])
    h.add(1040, TagType.STRING_ARRAY, [f.group for f in files])
    h.add(1044, TagType.STRING, spec.sourcerpm or f"{spec.name}-{spec.version}-{spec.release}.src.rpm")
    h.add(1045, TagType.INT32, [0xFFFFFFFF] * len(files))  # FILEVERIFYFLAGS: check everything
    _add_deps(h, (1047, 1112, 1113), spec.provides)
    _add_deps(h, (1049, 1048, 1050), [*spec.requires, *_rpmlib_requires(spec)])
    _add_deps(h, (1054, 1053, 1055), spec.conflicts)
    _add_deps(h, (5046, 5048, 5047), spec.recommends)
    _add_deps(h, (5049, 5051, 5050), spec.suggests)
    _add_deps(h, (5055, 5057, 5056), spec.enhances)
    h.add(1064, TagType.STRING, "4.18.0")
    h.add(1095, TagType.INT32, [1] * len(files))  # FILEDEVICES
    h.add(1096, TagType.INT32, [inodes[i] for i in range(len(files))])
    h.add(1097, TagType.STRING_ARRAY, [""] * len(files))  # FILELANGS
    dirnames: dict[str, int] = {}
    dirindexes, basenames = [], []
    for f in files:
        d, _, base = f.path.rpartition("/")
        dirindexes.append(dirnames.setdefault(d + "/", len(dirnames)))
        basenames.append(base)
    h.add(1116, TagType.INT32, dirindexes)
    h.add(1117, TagType.STRING_ARRAY, basenames)
    h.add(1118, TagType.STRING_ARRAY, list(dirnames))
    h.add(1124, TagType.STRING, "cpio")
    h.add(1125, TagType.STRING, "zstd")
    h.add(1126, TagType.STRING, str(level))
    h.add(1132, TagType.STRING, f"{spec.arch}-pc-linux")
    if files:
        h.add(5011, TagType.INT32, [8])  # FILEDIGESTALGO: sha256
    h.add(5062, TagType.STRING, "utf-8")
    h.add(5092, TagType.STRING_ARRAY, [hashlib.sha256(compressed).hexdigest()])
    h.add(5093, TagType.INT32, [8])
    h.add(5097, TagType.STRING_ARRAY, [hashlib.sha256(payload).hexdigest()])
    return h.blob(63)


def _file_size(f: FileEntry) -> int:
    """rpm's FILESIZES: content length, and for a symlink the length of its target (as in cpio)."""
    return len(f.linkto.encode("utf-8", "surrogateescape")) if f.linkto else len(f.data)


def _is_reg(f: FileEntry) -> bool:
    return (f.mode & 0o170000) == 0o100000


def _unique_inodes(files: Sequence[FileEntry]) -> list[FileEntry]:
    seen: set[str] = set()
    out = []
    for f in files:
        if f.hardlink_key is not None:
            if f.hardlink_key in seen:
                continue
            seen.add(f.hardlink_key)
        out.append(f)
    return out


def _inode_numbers(files: Sequence[FileEntry]) -> list[int]:
    keys: dict[str, int] = {}
    out = []
    for i, f in enumerate(files, 1):
        out.append(keys.setdefault(f.hardlink_key, i) if f.hardlink_key is not None else i)
    return out


def _signature(header: bytes, compressed: bytes, payload_size: int) -> bytes:
    s = Header()
    s.add(269, TagType.STRING, hashlib.sha1(header).hexdigest())
    s.add(273, TagType.STRING, hashlib.sha256(header).hexdigest())
    s.add(1000, TagType.INT32, [len(header) + len(compressed)])  # RPMSIGTAG_SIZE
    s.add(1004, TagType.BIN, hashlib.md5(header + compressed).digest())
    s.add(1007, TagType.INT32, [payload_size])  # RPMSIGTAG_PAYLOADSIZE
    s.add(1008, TagType.BIN, bytes(RESERVED_SPACE))
    blob = s.blob(62)
    return blob + b"\0" * (-len(blob) % 8)


def _lead(spec: PackageSpec) -> bytes:
    name = f"{spec.name}-{spec.version}-{spec.release}".encode()[:65]
    return (LEAD_MAGIC + struct.pack(">BBhh", 3, 0, 0, 1) + name.ljust(66, b"\0")
            + struct.pack(">hh", 1, 5) + bytes(16))


def write_package(spec: PackageSpec, directory: Path, *, level: int = 19) -> WrittenPackage:
    """Write spec as DIRECTORY/N-V-R.A.rpm (temp name, then rename); returns what was written."""
    files = sorted(spec.files, key=lambda f: f.path.encode("utf-8", "surrogateescape"))
    too_big = [f.path for f in files if len(f.data) > MAX_CPIO]
    if too_big:
        raise RpmWriteError(f"{spec.nevra}: {too_big[0]} is over 4 GiB (needs rpm's large-file format)")
    payload = _payload(files, _inode_numbers(files))
    # One big package (the kernel) would otherwise finish alone on one core at level 19.
    threads = (os.cpu_count() or 1) if len(payload) > BIG_PAYLOAD else 0
    compressed = zstandard.ZstdCompressor(level=level, threads=threads).compress(payload)
    header = build_header(spec, payload, compressed, level)
    dst = directory / spec.filename
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(_lead(spec))
        out.write(_signature(header, compressed, len(payload)))
        out.write(header)
        out.write(compressed)
    os.replace(tmp, dst)
    return WrittenPackage(dst, dst.stat().st_size, len(files), len(payload),
                          sum(len(f.data) for f in _unique_inodes(files)))
