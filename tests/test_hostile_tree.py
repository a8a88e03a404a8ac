"""Hostile packages against the real `rpmimg deploy`, `verify` and `status` on a loop btrfs.

Every package here is built for real (rpmbuild, or written directly for paths rpmbuild
refuses) and published as a signed image. Whatever a package's symlinks point at, nothing
outside the deployment may change: a planted host file and directory are hashed before and
after every test. A refused deploy must be one line, exit 1, leave the previous default
intact and verifying, and leave nothing in staging.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploytools import V1, V2, Result, deploy, rpmimg, state_of
from imagepub import publish

from benchmarks.rpmwriter import FileEntry, write_package
from benchmarks.rpmwriter import PackageSpec as RawSpec
from fixtures.build import signing_key
from fixtures.rpmbuild import build_package
from fixtures.signing import SigningKey
from fixtures.spec import FileKind, FileSpec, PackageSpec
from host import kernel

from oracle import assert_same_tree, rpm_install, rpm_unavailable_reason

pytest_plugins = ("deployenv",)

PACKAGES_DIR = "/usr/lib/sysimage/packages"
BASE = PackageSpec(name="base", arch="noarch", files=(
    FileSpec("/usr/bin/base", content=b"#!/bin/sh\n", mode=0o755),
    FileSpec("/usr/share/base", kind=FileKind.DIR),
    FileSpec("/usr/share/base/data", content=b"base data\n"),
))


@dataclass(frozen=True)
class Host:
    """What lies outside every sysroot: a planted file and directory, and the signing key."""

    secret: Path  # a host file a package's symlink names
    dir: Path  # a host directory a package's symlink names
    key: SigningKey
    rpms: Path  # where packages are built


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    root = tmp_path_factory.mktemp("hostile-host")
    (root / "secret").write_text("root:$6$do-not-touch:19000::::::\n")
    (root / "dir").mkdir()
    (root / "dir/inside").write_text("host content\n")
    return Host(root / "secret", root / "dir", signing_key(), root / "rpms")


def _fingerprint(path: Path) -> str:
    """A digest of path and everything below it: names, types, modes, owners, sizes, mtimes, data."""
    h = hashlib.sha256()
    for p in sorted([path, *path.rglob("*")]):
        st = p.lstat()
        h.update(f"{p}:{st.st_mode}:{st.st_uid}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if stat.S_ISREG(st.st_mode):
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def host_untouched(host: Host, sysroot: Path) -> Iterator[None]:
    """Nothing outside the deployment changes: the host's planted paths, the sysroot's /etc."""
    planted = sysroot / "etc/planted"
    planted.write_text("sysroot file\n")
    watched = (host.secret, host.dir, sysroot / "etc")
    before = [_fingerprint(p) for p in watched]
    yield
    assert [_fingerprint(p) for p in watched] == before


@pytest.fixture(autouse=True)
def _needs_rpmbuild() -> None:
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is not installed")


def _publish(host: Host, tmp_path: Path, hostile: list[Path]) -> tuple[Path, Path]:
    """Image v1 (base) and v2 (base and the hostile packages), signed; their manifests."""
    base = build_package(BASE, host.rpms)
    out = tmp_path / "output"
    return publish(out, "demo", V1, [base], host.key), publish(out, "demo", V2, [base, *hostile], host.key)


def _deploy(sysroot: Path, host: Host, manifest: Path, check: bool = True) -> Result:
    # The packages carry no header signature; the signed manifest pins each one's sha256.
    return deploy(sysroot, manifest, host.key, "--allow-unsigned-packages", check=check)


def _tree(sysroot: Path, deployment: str) -> Path:
    return sysroot / "@rpmimg/deployments" / deployment


def _assert_refused(sysroot: Path, result: Result, *words: str) -> None:
    """Exit 1 with one line naming the thing; deployment 1 still the verifying default; no leftovers."""
    assert result.code == 1, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpmimg: error: "), result.err
    for word in words:
        assert word in lines[0], lines[0]
    assert state_of(sysroot)["default"] == "1"
    assert sorted(os.listdir(sysroot / "@rpmimg/deployments")) == ["1"]
    assert [p for p in os.listdir(sysroot / "@rpmimg/staging") if p != "downloads"] == []
    assert json.loads(rpmimg("verify", "--sysroot", sysroot, "--json").out)["mismatches"] == []


def _build(host: Host, name: str, *files: FileSpec) -> Path:
    return build_package(PackageSpec(name=name, arch="noarch", files=files), host.rpms)


# --- packages claiming the package database -------------------------------------------------


@pytest.mark.parametrize("how", ["update", "full"])
@pytest.mark.parametrize("case", ["header-file", "header-dir", "parent-dir", "ghost"])
def test_package_claiming_the_package_database_is_refused(
    case: str, how: str, sysroot: Path, host: Host, tmp_path: Path
) -> None:
    """A header-file symlink (to a host file), the header directory or its parent as a symlink
    (to a host directory), a %ghost below it: refused before anything is built, by an update
    and by a full build (which checks it on the accounts' pass over the headers)."""
    name = f"claim-{case}"
    own = f"{PACKAGES_DIR}/{name}-1.0-1.noarch.rpm"
    path, spec = {
        "header-file": (own, FileSpec(own, kind=FileKind.SYMLINK, target=os.fspath(host.secret))),
        "header-dir": (PACKAGES_DIR, FileSpec(PACKAGES_DIR, kind=FileKind.SYMLINK, target=os.fspath(host.dir))),
        "parent-dir": ("/usr/lib/sysimage",
                       FileSpec("/usr/lib/sysimage", kind=FileKind.SYMLINK, target=os.fspath(host.dir))),
        "ghost": (own, FileSpec(own, ghost=True)),
    }[case]
    v1, v2 = _publish(host, tmp_path, [_build(host, name, spec)])
    _deploy(sysroot, host, v1)
    full = ("--full",) if how == "full" else ()
    result = deploy(sysroot, v2, host.key, "--allow-unsigned-packages", *full, check=False)
    _assert_refused(sysroot, result, f"{name}-1.0-1.noarch", path, "package database")


def test_symlink_leading_into_the_package_database_is_refused(sysroot: Path, host: Host, tmp_path: Path) -> None:
    """Another name for the header directory: a file written through it is refused while building."""
    alias = _build(host, "alias", FileSpec("/usr/lib/alias", kind=FileKind.SYMLINK, target=PACKAGES_DIR))
    fake = _build(host, "fake", FileSpec("/usr/lib/alias/base-9-9.noarch.rpm", content=b"not a header"))
    v1, v2 = _publish(host, tmp_path, [alias, fake])
    _deploy(sysroot, host, v1)
    result = _deploy(sysroot, host, v2, check=False)
    _assert_refused(sysroot, result, "/usr/lib/alias/base-9-9.noarch.rpm", PACKAGES_DIR)


def test_compose_refuses_a_package_claiming_the_package_database(host: Host, tmp_path: Path) -> None:
    """The server refuses it too, naming the package and the path, and publishes nothing."""
    if shutil.which("createrepo_c") is None:
        pytest.skip("createrepo_c is not installed")
    from fixtures.repos import createrepo

    repo = tmp_path / "repo"
    own = f"{PACKAGES_DIR}/claim-1.0-1.noarch.rpm"
    build_package(PackageSpec(name="claim", arch="noarch", files=(
        FileSpec(own, kind=FileKind.SYMLINK, target=os.fspath(host.secret)),)), repo / "Packages")
    createrepo(repo)
    toml = tmp_path / "demo.toml"
    toml.write_text(f'name = "demo"\narch = "x86_64"\npackages = ["claim"]\n'
                    f'[[repo]]\nname = "r"\nurl = "{repo.as_uri()}/"\n')
    out = tmp_path / "out"
    result = rpmimg("compose", toml, "-o", out, check=False)
    assert result.code == 1, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("rpmimg:")]  # after progress lines
    assert len(errors) == 1 and "Traceback" not in result.err, result.err
    assert errors[0].startswith("rpmimg: error: claim-1.0-1.noarch: ") and own in errors[0], result.err
    assert not (out / "images/demo").exists() or not any((out / "images/demo").iterdir())


# --- symlinks resolve in the image, like rpm -i --root -----------------------------------------


def test_directory_symlinks_resolve_like_rpm_and_verify(sysroot: Path, host: Host, tmp_path: Path) -> None:
    """Absolute (/usr and host paths), relative and '..'-climbing directory symlinks with files
    below them, from another package: the deployment equals rpm -i --root's /usr, what rpm put
    outside /usr is under share/factory, `verify` passes and the host is untouched."""
    if rpm_unavailable_reason():
        pytest.skip(rpm_unavailable_reason() or "")
    host_dir = os.fspath(host.dir)
    links = _build(
        host, "links",
        FileSpec("/usr/share/foo", kind=FileKind.DIR),
        FileSpec("/usr/lib/foo", kind=FileKind.SYMLINK, target="/usr/share/foo"),
        FileSpec("/usr/share/rel", kind=FileKind.DIR),
        FileSpec("/usr/lib/rel", kind=FileKind.SYMLINK, target="../share/rel"),
        # rpm follows a directory symlink only to a directory that exists: ship the targets.
        FileSpec(host_dir, kind=FileKind.DIR),
        FileSpec("/usr/lib/hostdir", kind=FileKind.SYMLINK, target=host_dir),
        FileSpec("/usr/lib/climb", kind=FileKind.SYMLINK, target="../" * 20 + host_dir.lstrip("/")),
        FileSpec("/etc/conf.d", kind=FileKind.DIR),
        FileSpec("/usr/lib/etclink", kind=FileKind.SYMLINK, target="/etc/conf.d"),
    )
    below = _build(
        host, "below",
        FileSpec("/usr/lib/foo/bar", content=b"through an absolute link\n"),
        FileSpec("/usr/lib/rel/file", content=b"through a relative link\n"),
        FileSpec("/usr/lib/hostdir/inside", content=b"not the host's\n"),
        FileSpec("/usr/lib/climb/climbed", content=b"climbed\n"),
        FileSpec("/usr/lib/etclink/x.conf", content=b"x=1\n"),
    )
    v1, v2 = _publish(host, tmp_path, [links, below])
    _deploy(sysroot, host, v1)
    result = _deploy(sysroot, host, v2).json()
    tree = _tree(sysroot, str(result["deployment"]["id"]))
    assert (tree / "share/foo/bar").read_bytes() == b"through an absolute link\n"
    assert not (tree / "usr").exists()

    expected = tmp_path / "rpm-root"
    for rpm in (build_package(BASE, host.rpms), links, below):
        rpm_install([rpm], expected)
    assert_same_tree(expected / "usr", tree,
                     exclude=("/lib/sysimage/packages", "/lib/sysimage/rpmimg", "/lib/sysimage/rpm", "/share/factory"))
    assert_same_tree(expected, tree / "share/factory", exclude=("/var/lib/rpm", "/usr"))

    verified = rpmimg("verify", "--sysroot", sysroot, "--json")
    assert json.loads(verified.out)["mismatches"] == []

    # Damage files reached through the links; --repair rewrites them through the same links.
    kernel.subvolume_set_readonly(tree, False)
    (tree / "share/foo/bar").write_bytes(b"damaged\n")
    (tree / "share/factory" / host_dir.lstrip("/") / "climbed").unlink()
    kernel.subvolume_set_readonly(tree, True)
    repaired = rpmimg("verify", "--repair", "--sysroot", sysroot, "--json", check=False)
    assert repaired.code == 0, repaired.err
    assert set(json.loads(repaired.out)["repaired"]) == {"/usr/lib/foo/bar", "/usr/lib/climb/climbed"}
    assert (tree / "share/foo/bar").read_bytes() == b"through an absolute link\n"


def test_verify_does_not_follow_a_symlink_out_of_the_deployment(sysroot: Path, host: Host, tmp_path: Path) -> None:
    """A directory of a deployment swapped for a symlink to a host copy of it: verify reports the
    files missing (the link resolves inside the deployment), not the host copy as intact."""
    v1, _ = _publish(host, tmp_path, [])
    _deploy(sysroot, host, v1)
    tree = _tree(sysroot, "1")
    decoy = tmp_path / "decoy"
    shutil.copytree(tree / "share/base", decoy, symlinks=True)
    shutil.copystat(tree / "share/base", decoy)
    kernel.subvolume_set_readonly(tree, False)
    shutil.rmtree(tree / "share/base")
    (tree / "share/base").symlink_to(decoy)
    kernel.subvolume_set_readonly(tree, True)
    result = rpmimg("verify", "--sysroot", sysroot, "--json", check=False)
    assert result.code == 1, result.err
    assert result.out, result.err
    found = {m["path"]: m["what"] for m in json.loads(result.out)["mismatches"]}
    assert found["/usr/share/base/data"] == ["missing"]
    assert found["/usr/share/base"] == ["type"]


# --- long paths --------------------------------------------------------------------------------


def _long_path(total: int) -> str:
    """An absolute path under /usr/share of exactly `total` bytes, in 200-byte components."""
    path = "/usr/share/long"
    while len(path) + 201 < total:
        path += "/" + "d" * 200
    return path + "/" + "f" * (total - len(path) - 1)


def test_path_of_4094_bytes_deploys_verifies_and_shows(sysroot: Path, host: Host, tmp_path: Path) -> None:
    """rpm -i installs a 4,094-byte path; deploy, status and verify handle it, with dir fds."""
    path = _long_path(4094)
    assert len(path.encode()) == 4094
    raw = RawSpec("longpath", "1.0", "1", "noarch", buildtime=1_700_000_000, files=[
        FileEntry(path, 0o100644, mtime=1_700_000_000, data=b"deep\n"),
    ])
    written = write_package(raw, host.rpms, level=3).path
    v1, v2 = _publish(host, tmp_path, [written])
    _deploy(sysroot, host, v1)
    result = _deploy(sysroot, host, v2).json()
    tree = _tree(sysroot, str(result["deployment"]["id"]))
    root_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = kernel.open_beneath(root_fd, path.removeprefix("/usr/"), os.O_RDONLY)
        with open(fd, "rb") as f:
            assert f.read() == b"deep\n"
    finally:
        os.close(root_fd)
    status = rpmimg("status", "--sysroot", sysroot, "--json")
    rows = json.loads(status.out)
    rows = rows["deployments"] if isinstance(rows, dict) else rows
    assert [r["id"] for r in rows] == ["1", "2"]
    verified = json.loads(rpmimg("verify", "--sysroot", sysroot, "--json").out)
    assert verified["mismatches"] == [] and verified["files"] >= 4



def test_update_from_a_tampered_deployment_stays_inside_it(sysroot: Path, host: Host, tmp_path: Path) -> None:
    """A previous deployment whose directory was swapped for a symlink to a host directory: the
    update built from its snapshot writes through that link inside the new tree, never onto the host."""
    base = build_package(BASE, host.rpms)
    newer = build_package(PackageSpec(name="base", version="1.1", arch="noarch", files=(
        *(f for f in BASE.files if f.path != "/usr/share/base/data"),
        FileSpec("/usr/share/base/data", content=b"base data 1.1\n"),
        FileSpec("/usr/share/base/inside", content=b"would overwrite the host's\n"),
    )), host.rpms / "v2")
    out = tmp_path / "output"
    v1, v2 = publish(out, "demo", V1, [base], host.key), publish(out, "demo", V2, [newer], host.key)
    _deploy(sysroot, host, v1)
    tree = _tree(sysroot, "1")
    kernel.subvolume_set_readonly(tree, False)
    shutil.rmtree(tree / "share/base")
    (tree / "share/base").symlink_to(host.dir)
    kernel.subvolume_set_readonly(tree, True)
    result = _deploy(sysroot, host, v2).json()
    # The base is checked first: the swapped directory is damage, so the update is built in
    # full from the store, and nothing is written through the link.
    assert result["build"] == "full" and "deployment 1 is damaged" in str(result["full_reason"])
    assert any(d.startswith("/usr/share/base") for d in result["base_damage"])  # type: ignore[union-attr]
    new = _tree(sysroot, str(result["deployment"]["id"]))  # type: ignore[index]
    assert (new / "share/base/inside").read_bytes() == b"would overwrite the host's\n"
    assert (new / "share/base/data").read_bytes() == b"base data 1.1\n"
    planted = host.dir / "inside"
    assert not planted.exists() or planted.read_bytes() != b"would overwrite the host's\n"
