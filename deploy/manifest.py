"""The image manifest that `rpmimg compose` publishes: parsing and validation.

Every field the client acts on is checked here, so the rest of the client can trust
an ImageManifest: names are safe file names, digests are hex, sizes are sizes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploy.errors import ManifestError

FORMAT = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
# rpm allows more, but a name that is a file name component is all the client needs.
_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*")
_EVR_PART = re.compile(r"[A-Za-z0-9._+~^]+")


@dataclass(frozen=True)
class ZstdCopy:
    location: str
    sha256: str
    size: int


@dataclass(frozen=True)
class PackageRef:
    """A package as the manifest lists it."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    sha256: str
    size: int
    header_sha256: str
    block_size: int
    location: str
    zstd: ZstdCopy | None

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"

    @property
    def nevra(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch is not None else ""
        return f"{self.name}-{epoch}{self.version}-{self.release}.{self.arch}"


@dataclass(frozen=True)
class Report:
    scriptlets: tuple[str, ...]
    triggers: tuple[str, ...]
    outside_usr: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class ImageManifest:
    """A signed image version: the exact set of extents RPMs that make its /usr."""

    name: str
    version: str
    arch: str
    created: str
    block_size: int
    packages: tuple[PackageRef, ...]
    report: Report


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


def _package(obj: Any, index: int, manifest_block_size: int) -> PackageRef:
    where = f"package #{index}"
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: should be an object")
    name = _matching(obj, "name", _NAME, where)
    where = f"package {name}"
    epoch = obj.get("epoch")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise ManifestError(f"{where}: field 'epoch' should be null or a non-negative int")
    zstd = None
    if obj.get("zstd") is not None:
        z = obj["zstd"]
        if not isinstance(z, dict):
            raise ManifestError(f"{where}: field 'zstd' should be an object")
        zstd = ZstdCopy(
            location=_field(z, "location", str, where + " zstd"),
            sha256=_matching(z, "sha256", _HEX64, where + " zstd"),
            size=_size(z, "size", where + " zstd"),
        )
    block_size = _size(obj, "block_size", where)
    if block_size != manifest_block_size:
        raise ManifestError(f"{where}: block size {block_size} differs from the image's")
    return PackageRef(
        name=name,
        epoch=epoch,
        version=_matching(obj, "version", _EVR_PART, where),
        release=_matching(obj, "release", _EVR_PART, where),
        arch=_matching(obj, "arch", _NAME, where),
        sha256=_matching(obj, "sha256", _HEX64, where),
        size=_size(obj, "size", where),
        header_sha256=_matching(obj, "header_sha256", _HEX64, where),
        block_size=block_size,
        location=_field(obj, "location", str, where),
        zstd=zstd,
    )


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ManifestError(f"{where}: should be a list of strings")
    return tuple(value)


def _report(obj: Any, where: str) -> Report:
    if obj is None:
        return Report((), (), {})
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: field 'report' should be an object")
    outside = obj.get("outside_usr") or {}
    if not isinstance(outside, dict):
        raise ManifestError(f"{where}: report field 'outside_usr' should be an object")
    return Report(
        scriptlets=_string_list(obj.get("scriptlets"), f"{where}: report field 'scriptlets'"),
        triggers=_string_list(obj.get("triggers"), f"{where}: report field 'triggers'"),
        outside_usr={
            str(k): _string_list(v, f"{where}: report field 'outside_usr' of {k!r}")
            for k, v in outside.items()
        },
    )


# A manifest nests four levels deep; anything far deeper is hostile, and Python's JSON
# parser would recurse once per level.
MAX_DEPTH = 16


def check_depth(data: bytes, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON whose arrays and objects nest deeper than limit, before parsing it."""
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                raise ManifestError(f"{where}: JSON nested deeper than {limit} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1


def parse(data: bytes, where: str = "manifest") -> ImageManifest:
    """Parse and validate manifest bytes (already signature-checked)."""
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
    block_size = _size(obj, "block_size", where)
    if block_size == 0 or block_size & (block_size - 1):
        raise ManifestError(f"{where}: block size {block_size} is not a power of two")
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
        block_size=block_size,
        packages=packages,
        report=_report(obj.get("report"), where),
    )


def compare_versions(a: str, b: str) -> int:
    """rpm's version comparison (-1, 0, 1) of two image versions like "20261122.1"."""
    import rpm

    result: int = rpm.labelCompare(("0", a, "0"), ("0", b, "0"))
    return result
