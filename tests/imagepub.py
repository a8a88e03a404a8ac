"""A test-only image publisher: what `rpmimg compose` publishes, for a given list of RPMs.

It transcodes each RPM into a content-addressed pool, writes manifest.json with the
contract's own model and writer (imagespec), signs it with gpg and points `latest` at it.
No solving and no repositories, so deploy tests can pick exactly the packages they need.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import zstandard

from fixtures.signing import SigningKey, gnupg_home
from host.digest import sha256_file
from imagespec.manifest import CurationReport, ImageManifest, ManifestPackage, ZstdCopy
from imagespec.published import IMAGES, LATEST, MANIFEST, POOL, pool_path, seekable_path, zstd_path
from imagespec.relocation import outside_usr
from rpmextents.nevra import Nevra


def sign_file(path: Path, key: SigningKey) -> Path:
    """Write path.asc, an armoured detached signature by key."""
    sig = path.with_name(path.name + ".asc")
    with gnupg_home(key) as home:
        subprocess.run(
            ["gpg", "--batch", "--yes", "--armor", "--detach-sign", "--local-user",
             key.fingerprint, "--output", os.fspath(sig), os.fspath(path)],
            env={"GNUPGHOME": os.fspath(home), "PATH": os.environ["PATH"]},
            check=True, capture_output=True,
        )
    return sig


def publish(
    output: Path, name: str, version: str, rpms: Sequence[Path], key: SigningKey | None,
    *, block_size: int = 4096, zstd: bool = True,
) -> Path:
    """Publish rpms as image `name` `version` under output; returns the manifest path."""
    version_dir = output / IMAGES / name / version
    version_dir.mkdir(parents=True, exist_ok=True)
    packages = [_pool_package(output, version_dir, rpm, block_size, zstd) for rpm in rpms]
    manifest = ImageManifest(
        name=name, version=version, arch="x86_64",
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        inputs_sha256=hashlib.sha256(json.dumps(sorted(map(str, rpms))).encode()).hexdigest(),
        block_size=block_size, packages=tuple(packages),
        report=_report(output, version_dir, packages),
    )
    path = version_dir / MANIFEST
    path.write_bytes(manifest.dumps())
    if key is not None:
        sign_file(path, key)
    latest = output / IMAGES / name / LATEST
    tmp_link = latest.with_name(".latest.tmp")
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(version)
    os.replace(tmp_link, latest)
    return path


def _pool_package(output: Path, version_dir: Path, rpm: Path, block_size: int,
                  zstd: bool) -> ManifestPackage:
    """Transcode rpm into output's pool (and its two zstd copies); its manifest entry."""
    from rpmextents import seekable
    from rpmextents.transcode import transcode

    tmp = output / POOL / "incoming.rpm"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    result = transcode(rpm, tmp, block_size=block_size)
    ident = Nevra(result.name, result.epoch, result.version, result.release, result.arch)
    dest = output / pool_path(result.sha256, ident.nvra)
    dest.parent.mkdir(exist_ok=True)
    os.replace(tmp, dest)
    copy = seek = None
    if zstd:
        rel = pool_path(result.sha256, ident.nvra)
        zdest, sdest = output / zstd_path(rel), output / seekable_path(rel)
        with open(dest, "rb") as fin, open(zdest, "wb") as fout:
            zstandard.ZstdCompressor(level=3).copy_stream(fin, fout)
        copy = ZstdCopy(os.path.relpath(zdest, version_dir), sha256_file(zdest),
                        zdest.stat().st_size)
        with open(sdest, "wb") as fout:
            table = seekable.compress(dest, fout, level=3).pack()
        seek = ZstdCopy(os.path.relpath(sdest, version_dir), sha256_file(sdest),
                        sdest.stat().st_size, len(table), hashlib.sha256(table).hexdigest())
    return ManifestPackage(
        name=result.name, epoch=result.epoch, version=result.version, release=result.release,
        arch=result.arch, sha256=result.sha256, size=result.size,
        header_sha256=result.header_sha256, block_size=result.block_size,
        source_checksum="sha256:" + sha256_file(rpm), source_size=rpm.stat().st_size,
        location=os.path.relpath(dest, version_dir), zstd=copy, seekable=seek,
    )


def _report(output: Path, version_dir: Path, packages: Sequence[ManifestPackage]) -> CurationReport:
    from rpmextents import ExtentsPackage

    scriptlets, triggers, outside = [], [], {}
    for p in packages:
        with ExtentsPackage.open(version_dir / p.location) as pkg:
            if pkg.has_scriptlets:
                scriptlets.append(pkg.nevra)
            if pkg.has_triggers:
                triggers.append(pkg.nevra)
            out = tuple(e.path for e in pkg.entries() if outside_usr(e.path))
            if out:
                outside[pkg.nevra] = out
    return CurationReport(tuple(scriptlets), tuple(triggers), outside)
