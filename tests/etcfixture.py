"""Packages and roots for the /etc merge tests: every (config kind, vendor change, admin edit).

One package, ``etcfix``, in two versions: v1 owns one file per combination below
/etc/m/; v2 changes each as its name says. A root is prepared by the real ``rpm -i`` of v1
and the administrator's edits; the oracle is ``rpm -U`` of v2 on a copy of that root.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fixtures.catalog import GROUP, PASSWD
from fixtures.rpmbuild import build_package
from fixtures.spec import Config, FileKind, FileSpec, PackageSpec
from rpmextents import ExtentsPackage
from rpmextents.extract import Owners, extract
from rpmextents.header import Header, read_prefix
from rpmextents.transcode import transcode
from rpmextents.tree import Relocation

from oracle import RPM_INSTALL, OracleError, rpm_install

KINDS = {"plain": Config.PLAIN, "noreplace": Config.NOREPLACE, "none": Config.NONE}
VENDOR = ("same", "changed", "removed", "mode", "owner", "tosymlink")
ADMIN = ("unchanged", "edited", "deleted", "symlink")
# Packaged symlinks: the vendor keeps, retargets, removes it or makes it a file; the
# administrator leaves, retargets, deletes it or makes it a file.
LINK_VENDOR = ("same", "changed", "removed", "tofile")
LINK_ADMIN = ("unchanged", "retargeted", "deleted", "file")
ETC = "/etc/m"


@dataclass(frozen=True)
class Case:
    kind: str
    vendor: str
    admin: str
    link: bool = False  # v1 ships a symlink, not a file

    @property
    def name(self) -> str:
        return f"{self.kind}-{'link-' if self.link else ''}{self.vendor}-{self.admin}"

    @property
    def path(self) -> str:
        return f"{ETC}/{self.name}.conf"


# %ghost files: rpm neither creates nor replaces them; the administrator may have made one.
GHOST_VENDOR = ("same", "removed", "unghosted")
GHOST_ADMIN = ("absent", "created")


CASES = (tuple(Case(k, v, a) for k, v, a in itertools.product(KINDS, VENDOR, ADMIN))
         + tuple(Case(k, v, a, True) for k, v, a in itertools.product(KINDS, LINK_VENDOR, LINK_ADMIN))
         + tuple(Case(f"ghost{k}", v, a) for k, v, a in itertools.product(KINDS, GHOST_VENDOR, GHOST_ADMIN)))


def _config(case: Case) -> Config:
    return KINDS[case.kind.removeprefix("ghost")]


def _v1_file(case: Case) -> FileSpec:
    if case.kind.startswith("ghost"):
        return FileSpec(case.path, config=_config(case), ghost=True)
    if case.link:
        return FileSpec(case.path, kind=FileKind.SYMLINK, target="v1-target", config=_config(case))
    return FileSpec(case.path, content=f"vendor v1 of {case.name}\n".encode(), config=_config(case))


def _v2_file(case: Case) -> FileSpec | None:
    v1 = _v1_file(case)
    cfg = _config(case)
    if case.vendor == "unghosted":
        return FileSpec(case.path, content=f"vendor v2 of {case.name}\n".encode(), config=cfg)
    if case.vendor == "same":
        return v1
    if case.vendor == "changed" and case.link:
        return FileSpec(case.path, kind=FileKind.SYMLINK, target="v2-target", config=cfg)
    if case.vendor in ("changed", "tofile"):
        return FileSpec(case.path, content=f"vendor v2 of {case.name}\n".encode(), config=cfg)
    if case.vendor == "mode":
        return FileSpec(case.path, content=v1.content, mode=0o600, config=cfg)
    if case.vendor == "owner":
        return FileSpec(case.path, content=v1.content, user="rpmimg-user", group="rpmimg-group", config=cfg)
    if case.vendor == "tosymlink":
        return FileSpec(case.path, kind=FileKind.SYMLINK, target="../vendor-target", config=cfg)
    return None


def package_specs() -> tuple[PackageSpec, PackageSpec]:
    dirs = (FileSpec("/etc/m", kind=FileKind.DIR),)
    v1 = PackageSpec("etcfix", "1", files=dirs + tuple(_v1_file(c) for c in CASES))
    v2_files = tuple(f for f in (_v2_file(c) for c in CASES) if f is not None)
    v2 = PackageSpec("etcfix", "2", files=dirs + v2_files)
    return v1, v2


@dataclass(frozen=True)
class Built:
    v1: Path
    v2: Path
    v2_extents: Path

    def headers(self) -> tuple[Header, Header]:
        out = []
        for p in (self.v1, self.v2):
            with open(p, "rb") as f:
                out.append(read_prefix(f).header)
        return out[0], out[1]


def build(directory: Path) -> Built:
    v1, v2 = package_specs()
    p1, p2 = build_package(v1, directory), build_package(v2, directory)
    ext = directory / "v2-extents.rpm"
    transcode(p2, ext)
    return Built(p1, p2, ext)


def admin_edit(root: Path, case: Case, host_file: Path) -> None:
    """The administrator's change to case's file, in root; a symlink points at host_file."""
    path = root / case.path.lstrip("/")
    if case.admin == "created":
        path.write_text(f"admin's {case.name}\n")
    elif case.admin == "retargeted":
        path.unlink()
        path.symlink_to("admin-target")
    elif case.admin == "file":
        path.unlink()
        path.write_text(f"admin's {case.name}\n")
    elif case.admin == "edited":
        path.write_text(f"admin's {case.name}\n")
    elif case.admin == "deleted":
        path.unlink()
    elif case.admin == "symlink":
        path.unlink()
        path.symlink_to(host_file)


def prepared_root(built: Built, root: Path, host_file: Path) -> None:
    """rpm -i v1 into root, then every case's administrator edit."""
    rpm_install([built.v1], root, passwd=PASSWD, group=GROUP)
    for case in CASES:
        admin_edit(root, case, host_file)


def rpm_upgrade(package: Path, root: Path) -> None:
    argv = [*RPM_INSTALL, "--root", os.fspath(root), os.fspath(package)]
    argv[argv.index("-i")] = "-U"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise OracleError(f"rpm -U exited {done.returncode}: {done.stderr.strip()}")


def build_usr(extents: Path, usr: Path, root: Path) -> None:
    """The new deployment's /usr: the package extracted with /etc under share/factory."""
    with ExtentsPackage.open(extents) as pkg:
        extract(pkg, usr, owners=Owners.from_root(root), relocation=Relocation("/usr", "/usr/share/factory"))


def copy_root(src: Path, dst: Path, database: bool = False) -> None:
    """An exact copy of a root (modes, owners, mtimes, symlinks); rpm's database only if asked."""
    subprocess.run(["cp", "-a", "--reflink=auto", os.fspath(src), os.fspath(dst)], check=True)
    if not database:
        shutil.rmtree(dst / "var", ignore_errors=True)
