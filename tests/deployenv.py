"""Fixtures for the deploy tests (load with `pytest_plugins = ("deployenv",)`): signed
packages published as two image versions, and a btrfs sysroot."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from deploytools import NEW_CONTENT, V0, V1, V2, ZSTD_DATA, Images, sign_all
from imagepub import publish

from fixtures import catalog
from fixtures.build import fixture_packages, signing_key
from fixtures.rpmbuild import build_package
from fixtures.spec import FileSpec

from oracle import seed_accounts

BULK = catalog.PackageSpec(
    name="bulk",
    files=tuple(FileSpec(f"/usr/lib/bulk/part-{i}", size=(1 << 20) + i * 4096) for i in range(24)),
)


def _updated_specs() -> list[catalog.PackageSpec]:
    sizes = catalog.fixture("sizes")
    files = tuple(
        FileSpec(f.path, content=NEW_CONTENT, mtime=f.mtime) if f.path.endswith("size-4097") else f
        for f in sizes.files
    )
    zstd = catalog.fixture("payload-zstd")
    zfiles = tuple(
        FileSpec(f.path, content=ZSTD_DATA) if f.path.endswith("data.bin") else f
        for f in zstd.files
    )
    newcomer = catalog.PackageSpec(
        name="newcomer", files=(FileSpec("/usr/share/newcomer/file", content=b"new\n"),)
    )
    return [
        dataclasses.replace(sizes, version="1.1", files=files),
        dataclasses.replace(zstd, version="2.0", files=zfiles),
        newcomer,
    ]


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    key = signing_key()
    work = tmp_path_factory.mktemp("images")
    v1_dir, v2_dir = work / "rpms-v1", work / "rpms-v2"
    v1_dir.mkdir()
    v1 = []
    for _, path in sorted(fixture_packages().items()):
        v1.append(Path(shutil.copy(path, v1_dir / path.name)))
    # Real images are large next to their per-package metadata; so is this one, with "bulk".
    v1.append(build_package(BULK, v1_dir))
    updates = [build_package(s, v2_dir) for s in _updated_specs()]
    # "signed" already carries a signature; rpmsign would add a second one.
    sign_all([p for p in v1 if not p.name.startswith("signed-")] + updates, key)
    replaced = {"sizes", "payload-zstd", "empty"}
    v2 = [p for p in v1 if _name(p) not in replaced] + updates
    output = work / "output"
    m0 = publish(output, "demo", V0, [p for p in v1 if _name(p) == "empty"], key)
    m1 = publish(output, "demo", V1, v1, key)
    m2 = publish(output, "demo", V2, v2, key)  # last: "latest" points here
    unsigned = publish(work / "unsigned", "demo", "20261124.1", [fixture_packages()["epoch"]], key)
    return Images(
        output, m1, m2, tuple(v1), tuple(v2), key, ("sizes", "payload-zstd", "newcomer"), m0, unsigned,
    )


def _name(rpm: Path) -> str:
    return rpm.name.rsplit("-", 2)[0]


@pytest.fixture
def sysroot(btrfs: Path) -> Path:
    """A fresh 1 GiB btrfs top level as the target system, with the fixtures' accounts."""
    seed_accounts(btrfs, catalog.PASSWD, catalog.GROUP)
    return btrfs


