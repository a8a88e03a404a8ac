"""manifest.json: the signed description of one image version.

One model, one writer (`ImageManifest.dumps`, used by compose) and one strict parser
(`parse`, used by deploy on untrusted bytes and by compose on its own output). Every
field is checked, so the rest of either side can trust an ImageManifest: names are
safe file name components, digests are hex, sizes are sizes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from host.digest import SHA256_HEX
from imagespec.errors import ManifestError
from rpmextents.index import block_size_problem
from rpmextents.nevra import Nevra

FORMAT = 1
# rpm allows more, but a name that is a file name component is all the client needs.
_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*")
_EVR_PART = re.compile(r"[A-Za-z0-9._+~^]+")
_CHECKSUM = re.compile(r"[a-z0-9]+:[0-9a-f]+")


@dataclass(frozen=True)
class ZstdCopy:
    """A zstd-compressed copy of a package, for HTTP clients.

    A package's `zstd` copy is one whole-stream zstd of it (what a client fetches when it
    has no older version). Its `seekable` copy has `table_size` and `table_sha256`: it is
    the seekable form (rpmextents.seekable), whose last `table_size` bytes are a frame
    table with that sha256, so a client can fetch the frames of single files with HTTP
    ranges.
    """

    location: str
    sha256: str
    size: int
    table_size: int | None = None
    table_sha256: str | None = None


@dataclass(frozen=True)
class BootFile:
    """A kernel or initrd published with an image; `location` is relative to the manifest."""

    location: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BootEntry:
    """One kernel of an image and the initrd compose built for it.

    `inputs` is the sha256 of what the initrd was built from (see solver.initrd); an
    initrd with the same inputs as a previous version's is that version's file.
    """

    kernel_version: str
    kernel: BootFile
    initrd: BootFile
    inputs: str


@dataclass(frozen=True)
class ManifestPackage:
    """One extents RPM of an image; `location` is relative to the manifest."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    sha256: str
    size: int
    header_sha256: str
    block_size: int
    source_checksum: str  # "ALGO:HEX" of the original RPM, as the repository lists it
    source_size: int
    location: str
    zstd: ZstdCopy | None = None
    seekable: ZstdCopy | None = None

    @property
    def ident(self) -> Nevra:
        return Nevra(self.name, self.epoch, self.version, self.release, self.arch)

    @property
    def nevra(self) -> str:
        return str(self.ident)

    @property
    def nvra(self) -> str:
        return self.ident.nvra


@dataclass(frozen=True)
class CurationReport:
    """What clients will not do for a package: run scriptlets or triggers, or place files outside /usr."""

    scriptlets: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    outside_usr: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Packages whose scriptlets create accounts (useradd ...) without shipping sysusers.d:
    # those accounts will not exist on a client ("fix packages").
    accounts_by_scriptlet: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageManifest:
    """A signed image version: the exact set of extents RPMs that make its /usr."""

    name: str
    version: str
    arch: str
    created: str
    inputs_sha256: str
    block_size: int
    packages: tuple[ManifestPackage, ...]
    report: CurationReport
    boot: tuple[BootEntry, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT, "name": self.name, "version": self.version, "arch": self.arch,
            "created": self.created, "inputs_sha256": self.inputs_sha256,
            "block_size": self.block_size,
            "packages": [_package_json(p) for p in self.packages],
            "report": {
                "scriptlets": list(self.report.scriptlets),
                "triggers": list(self.report.triggers),
                "outside_usr": {k: list(v) for k, v in sorted(self.report.outside_usr.items())},
                **({"accounts_by_scriptlet": list(self.report.accounts_by_scriptlet)}
                   if self.report.accounts_by_scriptlet else {}),
            },
        }
        if self.boot:  # absent, not empty, for an image without a kernel: older clients parse it
            out["boot"] = [_boot_json(b) for b in self.boot]
        return out

    def dumps(self) -> bytes:
        """The manifest.json bytes compose publishes (and signs)."""
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()


def _package_json(p: ManifestPackage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name, "epoch": p.epoch, "version": p.version, "release": p.release,
        "arch": p.arch, "sha256": p.sha256, "size": p.size, "header_sha256": p.header_sha256,
        "block_size": p.block_size, "source_checksum": p.source_checksum,
        "source_size": p.source_size, "location": p.location,
    }
    for key, z in (("zstd", p.zstd), ("seekable", p.seekable)):
        if z is not None:
            out[key] = {"location": z.location, "sha256": z.sha256, "size": z.size}
            if z.table_size is not None:
                out[key] |= {"table_size": z.table_size, "table_sha256": z.table_sha256}
    return out


def _boot_json(b: BootEntry) -> dict[str, Any]:
    return {
        "kernel_version": b.kernel_version,
        "kernel": {"location": b.kernel.location, "sha256": b.kernel.sha256, "size": b.kernel.size},
        "initrd": {"location": b.initrd.location, "sha256": b.initrd.sha256, "size": b.initrd.size},
        "inputs": b.inputs,
    }


# --- the strict parser -------------------------------------------------------------------


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{where}: missing field {key!r}")
    value = obj[key]
    # bool is an int subclass; a size of `true` is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{where}: field {key!r} should be {kind.__name__}, not {value!r}")
    return value


def _matching(obj: Mapping[str, Any], key: str, pattern: re.Pattern[str], where: str) -> str:
    value: str = _field(obj, key, str, where)
    if not pattern.fullmatch(value):
        raise ManifestError(f"{where}: field {key!r} has an invalid value {value!r}")
    return value


def _size(obj: Mapping[str, Any], key: str, where: str) -> int:
    value: int = _field(obj, key, int, where)
    if value < 0:
        raise ManifestError(f"{where}: field {key!r} is negative")
    return value


def _strings(obj: Mapping[str, Any], key: str, where: str, what: str = "field") -> tuple[str, ...]:
    """obj[key], a list of strings; `where` and `what` name it ("report field 'x'")."""
    if key not in obj:
        raise ManifestError(f"{where}: missing {what} {key!r}")
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{where} {what} {key!r} should be a list of strings")
    return tuple(value)


def _zstd(obj: Mapping[str, Any], where: str, key: str = "zstd") -> ZstdCopy | None:
    """The copy under key; a `seekable` one must have its table fields."""
    z = obj.get(key)
    if z is None:
        return None
    if not isinstance(z, dict):
        raise ManifestError(f"{where}: field {key!r} should be an object")
    where += f" {key}"
    if key == "seekable" and not {"table_size", "table_sha256"} <= set(z):
        raise ManifestError(f"{where}: missing field 'table_size' or 'table_sha256'")
    unknown = set(z) - {"location", "sha256", "size", "table_size", "table_sha256"}
    if unknown:
        raise ManifestError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    size = _size(z, "size", where)
    table_size = table_sha256 = None
    if "table_size" in z or "table_sha256" in z:
        table_size = _size(z, "table_size", where)
        table_sha256 = _matching(z, "table_sha256", SHA256_HEX, where)
        if not 0 < table_size < size:
            raise ManifestError(f"{where}: table_size {table_size} does not fit the {size}-byte file")
    return ZstdCopy(
        location=_field(z, "location", str, where),
        sha256=_matching(z, "sha256", SHA256_HEX, where),
        size=size, table_size=table_size, table_sha256=table_sha256,
    )


def _package(obj: Any, index: int, manifest_block_size: int) -> ManifestPackage:
    where = f"package #{index}"
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: should be an object")
    name = _matching(obj, "name", _NAME, where)
    where = f"package {name}"
    epoch = obj.get("epoch")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise ManifestError(f"{where}: field 'epoch' should be null or a non-negative int")
    block_size = _size(obj, "block_size", where)
    if block_size != manifest_block_size:
        raise ManifestError(f"{where}: block size {block_size} differs from the image's")
    return ManifestPackage(
        name=name,
        epoch=epoch,
        version=_matching(obj, "version", _EVR_PART, where),
        release=_matching(obj, "release", _EVR_PART, where),
        arch=_matching(obj, "arch", _NAME, where),
        sha256=_matching(obj, "sha256", SHA256_HEX, where),
        size=_size(obj, "size", where),
        header_sha256=_matching(obj, "header_sha256", SHA256_HEX, where),
        block_size=block_size,
        source_checksum=_matching(obj, "source_checksum", _CHECKSUM, where),
        source_size=_size(obj, "source_size", where),
        location=_field(obj, "location", str, where),
        zstd=_zstd(obj, where),
        seekable=_zstd(obj, where, "seekable"),
    )


# A kernel version names a directory under /usr/lib/modules and a file on the ESP.
_KVER = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~-]{0,127}")
# The end of a boot entry's file name that systemd-boot reads as its tries counter.
_COUNTER_LIKE = re.compile(r".*\+[0-9]+(-[0-9]+)?")


def kernel_version_problem(kver: str) -> str | None:
    """Why kver cannot name a kernel of an image, or None. Its entry file is named
    rpmimg-ID-KVER[+LEFT[-DONE]].conf: a version ending in +N or +N-M would be read by
    systemd-boot as a tries counter on an entry that has none."""
    if not _KVER.fullmatch(kver) or kver in (".", ".."):
        return "is not a kernel version (letters, digits and ._+~- only)"
    if _COUNTER_LIKE.fullmatch(kver):
        return "ends like a boot tries counter (+N or +N-M), which systemd-boot would count down"
    return None
# Kernels and initrds are tens of MiB; anything near this is not one.
MAX_BOOT_FILE = 1 << 31


def _boot_file(obj: Mapping[str, Any], key: str, where: str) -> BootFile:
    f = _field(obj, key, dict, where)
    where += f" {key}"
    location = _field(f, "location", str, where)
    if not location or "\0" in location or "\\" in location:
        raise ManifestError(f"{where}: field 'location' has an invalid value {location!r}")
    size = _size(f, "size", where)
    if size == 0 or size > MAX_BOOT_FILE:
        raise ManifestError(f"{where}: field 'size' {size} is not the size of a {key}")
    return BootFile(location=location, sha256=_matching(f, "sha256", SHA256_HEX, where), size=size)


def _boot(obj: Mapping[str, Any], where: str) -> tuple[BootEntry, ...]:
    if "boot" not in obj:
        return ()
    raw = _field(obj, "boot", list, where)
    entries: list[BootEntry] = []
    for i, b in enumerate(raw):
        at = f"{where}: boot entry #{i}"
        if not isinstance(b, dict):
            raise ManifestError(f"{at}: should be an object")
        kver = _matching(b, "kernel_version", _KVER, at)
        problem = kernel_version_problem(kver)
        if problem:
            raise ManifestError(f"{at}: field 'kernel_version' {kver!r} {problem}")
        at = f"{where}: boot entry {kver}"
        entries.append(BootEntry(kernel_version=kver, kernel=_boot_file(b, "kernel", at),
                                 initrd=_boot_file(b, "initrd", at),
                                 inputs=_matching(b, "inputs", SHA256_HEX, at)))
    versions = [e.kernel_version for e in entries]
    if len(set(versions)) != len(versions):
        raise ManifestError(f"{where}: a kernel version is listed twice in 'boot'")
    return tuple(entries)


def _report(obj: Mapping[str, Any], where: str) -> CurationReport:
    report: dict[str, Any] = _field(obj, "report", dict, where)
    where += ": report"
    outside: dict[str, Any] = _field(report, "outside_usr", dict, where)
    return CurationReport(
        scriptlets=_strings(report, "scriptlets", where),
        triggers=_strings(report, "triggers", where),
        outside_usr={k: _strings(outside, k, f"{where} field 'outside_usr'", "of") for k in outside},
        accounts_by_scriptlet=(_strings(report, "accounts_by_scriptlet", where)
                               if "accounts_by_scriptlet" in report else ()),
    )


# A manifest nests four levels deep; anything far deeper is hostile, and Python's JSON
# parser would recurse once per level.
MAX_DEPTH = 16


# A JSON string, escapes and all (a run of plain bytes at a time), or one never closed: to
# the end (a lone backslash included). Every match ends where it must (linear time).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# Every byte but the brackets, which are all that is left to look at once strings are out.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_depth(data: bytes, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON whose arrays and objects nest deeper than limit, before parsing it.

    Brackets inside strings don't count: strings are taken out first, in C, and a string
    never closed runs to the end. Then only the brackets are walked (a byte-by-byte walk of
    the benchmark image's 250 kB manifest took 9 ms; this, 2.5 ms)."""
    depth = 0
    for byte in _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                raise ManifestError(f"{where}: JSON nested deeper than {limit} levels")
        else:
            depth -= 1


def _block_size(obj: Mapping[str, Any], where: str) -> int:
    block_size = _size(obj, "block_size", where)
    problem = block_size_problem(block_size)
    if problem is not None:
        raise ManifestError(f"{where}: block size {block_size} {problem}")
    return block_size


def parse(data: bytes, where: str = "manifest") -> ImageManifest:
    """Parse and check manifest bytes; every problem is a ManifestError naming `where`."""
    check_depth(data, where)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ManifestError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: not a JSON object")
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise ManifestError(f"{where}: unsupported manifest format {fmt!r} (expected {FORMAT})")
    block_size = _block_size(obj, where)
    raw_packages = _field(obj, "packages", list, where)
    packages = tuple(_package(p, i, block_size) for i, p in enumerate(raw_packages))
    seen: set[str] = set()
    for p in packages:
        if p.nvra in seen:
            raise ManifestError(f"{where}: package {p.nvra} is listed twice")
        seen.add(p.nvra)
    return ImageManifest(
        name=_matching(obj, "name", _NAME, where),
        version=_matching(obj, "version", _EVR_PART, where),
        arch=_matching(obj, "arch", _NAME, where),
        created=_field(obj, "created", str, where),
        inputs_sha256=_matching(obj, "inputs_sha256", SHA256_HEX, where),
        block_size=block_size,
        packages=packages,
        report=_report(obj, where),
        boot=_boot(obj, where),
    )
