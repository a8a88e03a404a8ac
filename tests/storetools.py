"""A fixture package placed in a store as a deploy would (transcoded, named by its sha256),
and the manifest entry naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

from deploy.store import Store
from fixtures.build import fixture_packages
from host.digest import sha256_file
from imagespec.manifest import ManifestPackage
from rpmextents import ExtentsPackage
from rpmextents.transcode import transcode


def stored(store: Store, tmp_path: Path, name: str) -> ManifestPackage:
    out = tmp_path / f"{name}.rpm"
    transcode(fixture_packages()[name], out)
    sha = sha256_file(out)
    dest = store.path(sha)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(out, dest)
    with ExtentsPackage.open(dest) as pkg:
        return ManifestPackage(
            name=pkg.name, epoch=pkg.epoch, version=pkg.version, release=pkg.release,
            arch=pkg.arch, sha256=sha, size=dest.stat().st_size, header_sha256=pkg.header_sha256,
            block_size=pkg.block_size, source_checksum="sha256:" + "0" * 64, source_size=0,
            location=dest.name,
        )
