"""manifest.json: the signed description of one image version (the compose/deploy contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from solver.errors import PublishError

FORMAT = 1


@dataclass(frozen=True)
class ZstdCopy:
    location: str
    sha256: str
    size: int


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
    zstd: ZstdCopy

    @property
    def nevra(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch else ""
        return f"{self.name}-{epoch}{self.version}-{self.release}.{self.arch}"

    @property
    def evr(self) -> tuple[str, str, str]:
        """(epoch, version, release) as rpm.labelCompare wants them."""
        return (str(self.epoch or 0), self.version, self.release)


@dataclass(frozen=True)
class CurationReport:
    """What clients will not do for a package: run scriptlets or triggers, or place files outside /usr."""

    scriptlets: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    outside_usr: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    arch: str
    created: str
    inputs_sha256: str
    block_size: int
    packages: tuple[ManifestPackage, ...]
    report: CurationReport

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "created": self.created,
            "inputs_sha256": self.inputs_sha256,
            "block_size": self.block_size,
            "packages": [
                {
                    "name": p.name, "epoch": p.epoch, "version": p.version,
                    "release": p.release, "arch": p.arch, "sha256": p.sha256, "size": p.size,
                    "header_sha256": p.header_sha256, "block_size": p.block_size,
                    "source_checksum": p.source_checksum, "source_size": p.source_size,
                    "location": p.location,
                    "zstd": {"location": p.zstd.location, "sha256": p.zstd.sha256,
                             "size": p.zstd.size},
                }
                for p in self.packages
            ],
            "report": {
                "scriptlets": list(self.report.scriptlets),
                "triggers": list(self.report.triggers),
                "outside_usr": {k: list(v) for k, v in sorted(self.report.outside_usr.items())},
            },
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, source: str) -> Manifest:
        """Parse manifest.json text; `source` names it in errors."""
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise PublishError(f"{source}: unsupported manifest format {raw.get('format')!r}")
            report = raw["report"]
            return cls(
                name=raw["name"], version=raw["version"], arch=raw["arch"],
                created=raw["created"], inputs_sha256=raw["inputs_sha256"],
                block_size=int(raw["block_size"]),
                packages=tuple(
                    ManifestPackage(
                        name=p["name"], epoch=p["epoch"], version=p["version"],
                        release=p["release"], arch=p["arch"], sha256=p["sha256"],
                        size=int(p["size"]), header_sha256=p["header_sha256"],
                        block_size=int(p["block_size"]), source_checksum=p["source_checksum"],
                        source_size=int(p["source_size"]), location=p["location"],
                        zstd=ZstdCopy(p["zstd"]["location"], p["zstd"]["sha256"],
                                      int(p["zstd"]["size"])),
                    )
                    for p in raw["packages"]
                ),
                report=CurationReport(
                    scriptlets=tuple(report["scriptlets"]), triggers=tuple(report["triggers"]),
                    outside_usr={k: tuple(v) for k, v in report["outside_usr"].items()},
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PublishError(f"{source}: malformed manifest: {type(e).__name__}: {e}") from e
