"""rpmimg's own RPMs: the spec builds with rpmbuild, reproducibly, with the file list a client needs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.rpmimg_rpm import CHECKOUT, build_rpmimg_rpms

pytestmark = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpmbuild")

CLIENT_PACKAGES = ("host", "rpmextents", "imagespec", "deploy", "rpmimg")


def _query(rpm: Path, fmt: str) -> list[str]:
    out = subprocess.run(["rpm", "-qp", "--qf", fmt, str(rpm)], check=True, capture_output=True)
    return out.stdout.decode().splitlines()


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_rpmimg_rpms(tmp_path_factory.mktemp("rpmimg-rpm"))


def test_rpmimg_package_holds_the_client_code_units_and_key_directory(rpms: list[Path]) -> None:
    main = rpms[0]
    files = dict(line.split(" ", 1)[::-1] for line in
                 _query(main, "[%{FILEMODES:octal} %{FILENAMES}\n]"))
    assert files["/usr/bin/rpmimg"] == "100755"
    assert files["/usr/lib/rpmimg/keys.d"].startswith("40")
    assert files["/usr/lib/rpmimg/health.d"].startswith("40")
    for package in CLIENT_PACKAGES:
        for source in (CHECKOUT / package).rglob("*.py"):
            assert f"/usr/lib/rpmimg/python/{source.relative_to(CHECKOUT)}" in files
            # compiled: /usr is read-only where it runs, nothing could be compiled there once
            compiled = f"/usr/lib/rpmimg/python/{source.parent.relative_to(CHECKOUT)}/__pycache__/{source.stem}.cpython-"
            assert any(f.startswith(compiled) and f.endswith(".pyc") for f in files), compiled
    methods = "/usr/lib/rpmimg/python/host/__pycache__/dataclass-methods.cpython-"
    assert any(f.startswith(methods) and f.endswith(".marshal") for f in files)
    assert not any(f.startswith("/usr/lib/rpmimg/python/solver") for f in files), \
        "the server part is only in a --with server build"
    units = [p.name for p in (CHECKOUT / "packaging" / "systemd").glob("*") if p.is_file()
             and p.suffix not in (".md", ".links")] if (CHECKOUT / "packaging" / "systemd").is_dir() else []
    for unit in units:
        assert f"/usr/lib/systemd/system/{unit}" in files
    links = CHECKOUT / "packaging" / "systemd" / "enable.links"
    for line in links.read_text().splitlines() if links.is_file() else []:
        if line.strip() and not line.startswith("#"):
            assert f"/usr/lib/systemd/system/{line.split()[0]}" in files  # the unit is enabled
    assert not any(f.startswith("/usr/lib/dracut") for f in files)
    requires = set(_query(main, "[%{REQUIRES}\n]"))
    assert {"python3", "python3-rpm", "python3-zstandard", "btrfs-progs"} <= requires
    assert "python3-cffi" not in requires  # host.kernel calls libc and libcap through ctypes


def test_dracut_subpackage_holds_the_module(rpms: list[Path]) -> None:
    files = dict(line.split(" ", 1)[::-1] for line in
                 _query(rpms[1], "[%{FILEMODES:octal} %{FILENAMES}\n]"))
    assert files["/usr/lib/dracut/modules.d/95rpmimg/module-setup.sh"] == "100755"
    assert "/usr/lib/dracut/modules.d/95rpmimg/rpmimg-etc-sync.service" in files
    assert files["/usr/lib/dracut/modules.d/95rpmimg/rpmimg-etc-sync.sh"] == "100755"
    assert _query(rpms[1], "%{NAME}") == ["rpmimg-dracut"]


def test_build_is_reproducible(rpms: list[Path], tmp_path: Path) -> None:
    again = build_rpmimg_rpms(tmp_path / "again")
    for a, b in zip(rpms, again, strict=True):
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest(), a.name


def test_packaged_cli_runs_from_its_own_tree_without_the_server(rpms: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    cpio = subprocess.run(["rpm2cpio", str(rpms[0])], check=True, capture_output=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=root, check=True)
    wrapper = (root / "usr/bin/rpmimg").read_text()
    assert wrapper.startswith("#!/usr/bin/python3")
    # The wrapper names /usr/lib/rpmimg/python; point it at the extracted tree instead.
    script = wrapper.replace("/usr/lib/rpmimg/python", str(root / "usr/lib/rpmimg/python"))
    done = subprocess.run([sys.executable, "-I", "-c", script.split("\n", 1)[1], "status", "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "status" in done.stdout
    where = subprocess.run([sys.executable, "-I", "-c", script.split("\n", 1)[1].replace(
        "sys.exit(main())", "import deploy.transaction; print(deploy.transaction.__file__)")],
        capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(root)), "the client code came from the package's tree"
