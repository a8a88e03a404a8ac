"""Test images with a boot section, and a model of systemd-boot's entry choice."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from imagepub import publish, sign_file

from fixtures.signing import SigningKey
from imagespec.manifest import BootEntry, BootFile, parse

KVER = "6.1.0-rpmimg"


def publish_bootable(output: Path, version: str, rpms: list[Path], key: SigningKey,
                     kernels: dict[str, tuple[bytes, bytes]]) -> Path:
    """Publish rpms as image "boot" version with a boot section: {kver: (kernel, initrd)}."""
    manifest = publish(output, "boot", version, rpms, key)
    boot = []
    for kver, (kernel, initrd) in sorted(kernels.items()):
        files = []
        for kind, data in (("vmlinuz", kernel), ("initrd", initrd)):
            rel = f"boot/{kver}/{kind}"
            (manifest.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            (manifest.parent / rel).write_bytes(data)
            files.append(BootFile(rel, hashlib.sha256(data).hexdigest(), len(data)))
        boot.append(BootEntry(kver, files[0], files[1], hashlib.sha256(initrd).hexdigest()))
    m = dataclasses.replace(parse(manifest.read_bytes()), boot=tuple(boot))
    manifest.write_bytes(m.dumps())
    sign_file(manifest, key)
    return manifest


@dataclass(frozen=True)
class Entry:
    file: str
    sort_key: str
    version: str
    linux: str
    initrd: str
    options: str
    tries_left: int | None


_COUNTER = re.compile(r"\+([0-9]+)(?:-[0-9]+)?\.conf$")


def _vkey(v: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.]", v)]


def read_entries(esp: Path) -> list[Entry]:
    out = []
    for f in sorted((esp / "loader/entries").glob("*.conf")):
        fields = dict(
            line.split(" ", 1) for line in f.read_text().splitlines() if " " in line
        )
        m = _COUNTER.search(f.name)
        out.append(Entry(f.name, fields.get("sort-key", ""), fields.get("version", ""),
                         fields.get("linux", ""), fields.get("initrd", ""),
                         fields.get("options", ""), int(m.group(1)) if m else None))
    return out


def boot_order(esp: Path) -> list[Entry]:
    """Entries in systemd-boot's order (the first is the default): no tries left last, then
    by sort-key, then newest version first (what systemd-boot 252 does for these entries)."""
    return sorted(read_entries(esp), key=lambda e: (
        e.tries_left == 0, not e.sort_key, e.sort_key, [(-x if isinstance(x, int) else 0) for x in _vkey(e.version)],
    ))


def default_entry(esp: Path) -> Entry:
    """systemd-boot's default, after checking that its kernel and initrd exist."""
    first = boot_order(esp)[0]
    for f in (first.linux, first.initrd):
        assert (esp / f.lstrip("/")).is_file(), f"{first.file}: {f} missing"
    return first
