"""The benchmark corpus builders: .deb -> RPM conversion and Packages -> rpm-md, against real oracles.

The converted RPMs are checked with the real `rpm` (-K, -qp, -i --root) and the
result compared with `dpkg-deb -x` of the same .deb; the rpm-md metadata is
solved with libsolv.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from benchmarks.deb2rpm import package_spec, read_deb, relocate, relocate_link
from benchmarks.debcorpus import changed_content
from benchmarks.debian import DebVersion, Relation, parse_relations, to_rpm_dependency
from benchmarks.debindex import read_packages, write_rpmmd
from benchmarks.rpmwriter import write_package

# Small packages that between them have hardlinks (bzip2), symlinks, /bin to relocate,
# an `=` dependency (bzip2), alternatives and conffiles (logrotate), Pre-Depends (dash).
SAMPLE_DEBS = ("bzip2", "logrotate", "dash")


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb not available")
    where = tmp_path_factory.mktemp("debs")
    os.chmod(where, 0o755)  # apt's _apt user downloads into it
    proc = subprocess.run(["apt-get", "download", "-q", *SAMPLE_DEBS], cwd=where,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"apt-get download failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {p.name.split("_")[0]: p for p in where.glob("*.deb")}


@pytest.fixture(scope="module")
def rpms(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rpms")
    return {name: write_package(package_spec(read_deb(deb)), out, level=3).path
            for name, deb in debs.items()}


def _rpm(*args: str) -> str:
    return subprocess.run(["rpm", *args], check=True, capture_output=True, text=True).stdout


def test_digests_verify(rpms: dict[str, Path]) -> None:
    out = _rpm("-Kv", *map(os.fspath, rpms.values()))
    assert out.count("Header SHA256 digest: OK") == len(rpms)
    assert out.count("Payload SHA256 digest: OK") == len(rpms)
    assert "BAD" not in out and "NOTFOUND" not in out


def test_dependencies_translated(rpms: dict[str, Path], debs: dict[str, Path]) -> None:
    bz = _rpm("-qp", "--requires", os.fspath(rpms["bzip2"])).splitlines()
    version = DebVersion.parse(read_deb(debs["bzip2"]).control["Version"])
    assert f"libbz2-1.0 = {version.rpm_version}-{version.rpm_release}" in bz
    assert "libc6 >= 2.34" in bz
    assert "rpmlib(PayloadIsZstd) <= 5.4.18-1" in bz
    provides = _rpm("-qp", "--provides", os.fspath(rpms["bzip2"])).splitlines()
    assert f"bzip2 = {version.rpm_version}-{version.rpm_release}" in provides
    lr = _rpm("-qp", "--requires", os.fspath(rpms["logrotate"])).splitlines()
    assert "(cron or anacron or cron-daemon or systemd-sysv)" in lr
    assert "rpmlib(RichDependencies) <= 4.12.0-1" in lr
    pre = _rpm("-qp", "--qf", "[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\n]", os.fspath(rpms["dash"]))
    assert "pre libc6" in pre.splitlines()


def test_file_list_relocated(rpms: dict[str, Path]) -> None:
    listing = _rpm("-qlp", os.fspath(rpms["bzip2"])).splitlines()
    assert "/usr/bin/bzip2" in listing
    assert not any(p.startswith("/bin") for p in listing)
    configs = _rpm("-qcp", os.fspath(rpms["logrotate"])).splitlines()
    assert "/etc/logrotate.conf" in configs  # /etc stays where it is, and stays %config


def test_install_matches_dpkg(rpms: dict[str, Path], debs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["rpm", "-i", "--root", os.fspath(root), "--nodeps", "--noscripts",
                    *map(os.fspath, rpms.values())], check=True, capture_output=True)
    for name, deb in debs.items():
        ref = tmp_path / f"dpkg-{name}"
        subprocess.run(["dpkg-deb", "-x", os.fspath(deb), os.fspath(ref)], check=True)
        inode_groups: dict[int, set[int]] = {}
        for dirpath, dirnames, filenames in os.walk(ref):
            for entry in [*dirnames, *filenames]:
                src = Path(dirpath, entry)
                orig = "/" + os.fspath(src.relative_to(ref))
                dst = root / relocate(orig).lstrip("/")
                s, d = src.lstat(), dst.lstat()
                assert stat.S_IFMT(s.st_mode) == stat.S_IFMT(d.st_mode), orig
                assert stat.S_IMODE(s.st_mode) == stat.S_IMODE(d.st_mode), orig
                if stat.S_ISLNK(s.st_mode):
                    assert os.readlink(dst) == relocate_link(orig, os.readlink(src)), orig
                elif stat.S_ISREG(s.st_mode):
                    assert src.read_bytes() == dst.read_bytes(), orig
                    assert int(s.st_mtime) == int(d.st_mtime), orig
                    inode_groups.setdefault(s.st_ino, set()).add(d.st_ino)
        # files hardlinked in the .deb are one inode after rpm -i, and no others are
        assert all(len(group) == 1 for group in inode_groups.values()), name
    assert os.stat(root / "usr/bin/bzcat").st_nlink == 3
    assert not (root / "bin").exists()


def test_relocate_links() -> None:
    assert relocate("/bin/sh") == "/usr/bin/sh"
    assert relocate("/lib64") == "/usr/lib64"
    assert relocate("/etc/passwd") == "/etc/passwd"
    assert relocate("/library/x") == "/library/x"
    assert relocate("/boot/vmlinuz-6.1.0-57-amd64") == "/usr/lib/modules/6.1.0-57-amd64/vmlinuz"
    assert relocate("/boot/System.map-6.1.0-57-amd64") == "/usr/lib/modules/6.1.0-57-amd64/System.map"
    assert relocate("/boot/config-6.1.0-57-amd64") == "/usr/lib/modules/6.1.0-57-amd64/config"
    assert relocate("/boot/vmlinuz-") == "/boot/vmlinuz-"
    assert relocate("/boot/grub/x") == "/boot/grub/x"
    # a relative link from /lib into /usr must still reach the same file once /lib moved
    assert relocate_link("/lib/x86_64-linux-gnu/libz.so", "../../usr/lib/x86_64-linux-gnu/libz.so.1") \
        == "libz.so.1"
    assert relocate_link("/usr/bin/x", "/bin/y") == "/usr/bin/y"
    assert relocate_link("/usr/share/a", "../b") == "../b"


@pytest.mark.parametrize("a,b", [
    ("1.0-1", "1.0-2"), ("1.0~rc1-1", "1.0-1"), ("2:1.0", "1:9.9"), ("1.0+dfsg-1", "1.0-1"),
    ("1.0a", "1.0"), ("1.0-1+b1", "1.0-1"), ("7.88.1-10+deb12u5", "7.88.1-10+deb12u14"),
    ("1.2.3", "1.2.3"), ("0.0~git20200804.5ec99f8-1", "0.0~git20191202.e7afc7f-1"),
])
def test_version_compare_agrees_with_dpkg(a: str, b: str) -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg not installed")
    ours = DebVersion.parse(a).compare(DebVersion.parse(b))
    for op, holds in (("lt", ours < 0), ("eq", ours == 0), ("gt", ours > 0)):
        dpkg = subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0
        assert dpkg == holds, (a, op, b)


def test_relations_to_rpm() -> None:
    group = parse_relations("libc6:any (>= 2.34) [amd64], a | b (<< 2:1.0-3)")
    assert str(to_rpm_dependency(group[0])) == "libc6 >= 2.34"
    assert str(to_rpm_dependency(group[1])) == "(a or b < 2:1.0-3)"
    # dpkg's missing revision is the lowest one; rpm would ignore a missing release
    assert str(to_rpm_dependency(parse_relations("x (>> 2.36)")[0])) == "x > 2.36-0"
    assert str(to_rpm_dependency(parse_relations("x (>= 2.36)")[0])) == "x >= 2.36"
    assert str(to_rpm_dependency(parse_relations("x (<< 1:2.39.5-.)")[0])) == "x < 1:2.39.5-999999"
    assert Relation.parse("x (>= 1.0)").satisfied_by("x", DebVersion.parse("1.0-1"))
    assert not Relation.parse("x (<< 1.0)").satisfied_by("x", DebVersion.parse("1.0"))


def test_update_content_is_deterministic_and_different() -> None:
    data = bytes(range(256)) * 200
    new = changed_content("/usr/lib/x.so", data)
    assert new == changed_content("/usr/lib/x.so", data)
    assert new != data and len(new) > len(data)
    assert changed_content("/usr/lib/y.so", data) != new


TINY_PACKAGES = """\
Package: app
Version: 1.0-1
Architecture: amd64
Pre-Depends: base
Depends: libfoo (>= 1:2.0), mta | mail-transport-agent, app-data (= 1.0-1), virt-a (>= 2),
 libbar (>> 2.0), libbar (<< 2.0-.)
Conflicts: oldapp
Breaks: resolv (<< 2)
Recommends: extra
Description: the application
 It needs things.

Package: app-data
Version: 1.0-1
Architecture: all
Description: data

Package: libfoo
Version: 1:1.9-1
Architecture: amd64
Description: too old

Package: libfoo
Version: 1:2.1-1
Architecture: amd64
Description: new enough

Package: libbar
Version: 2.0-3
Architecture: amd64
Description: 2.0-3 is >> 2.0 and << 2.0-. for dpkg

Package: postfix
Version: 3.7.6-0+deb12u2
Architecture: amd64
Provides: mail-transport-agent
Description: an MTA

Package: virt-old
Version: 1
Architecture: amd64
Provides: virt-a (= 1.5)
Description: provides too old a virt-a

Package: virt-new
Version: 1
Architecture: amd64
Provides: virt-a (= 3.0), resolv
Description: provides virt-a 3.0

Package: base
Version: 12.4
Architecture: amd64
Description: native package, no revision

Package: oldapp
Version: 0.1-1
Architecture: amd64
Description: conflicts with app

Package: extra
Version: 1-1
Architecture: amd64
Description: only recommended

Package: broken
Version: 1-1
Architecture: amd64
Depends: not-there (>= 1)
Description: cannot be installed
"""


def _solve(repo: Path, name: str) -> tuple[list[str], list[str]]:
    solv = pytest.importorskip("solv")
    pool = solv.Pool()
    pool.setarch("x86_64")
    r = pool.add_repo("debian")
    repodata = repo / "repodata"
    r.add_repomdxml(solv.xfopen(os.fspath(repodata / "repomd.xml")))
    r.add_rpmmd(solv.xfopen(os.fspath(repodata / "primary.xml.gz")), None)
    pool.addfileprovides()
    pool.createwhatprovides()
    jobs = pool.select(name, solv.Selection.SELECTION_NAME).jobs(solv.Job.SOLVER_INSTALL)
    solver = pool.Solver()
    solver.set_flag(solv.Solver.SOLVER_FLAG_IGNORE_RECOMMENDED, 1)
    problems = [str(p) for p in solver.solve(jobs)]
    if problems:
        return [], problems
    return sorted(str(s) for s in solver.transaction().newsolvables()), []


def test_packages_to_rpmmd_solves(tmp_path: Path) -> None:
    pkgs = read_packages(TINY_PACKAGES)
    assert len(pkgs) == 12
    write_rpmmd(pkgs, tmp_path)
    installed, problems = _solve(tmp_path, "app")
    assert not problems
    assert installed == sorted([
        "app-1.0-1.x86_64", "app-data-1.0-1.noarch", "base-12.4-0.x86_64",
        "libbar-2.0-3.x86_64", "libfoo-1:2.1-1.x86_64", "postfix-3.7.6-0+deb12u2.x86_64", "virt-new-1-0.x86_64",
    ])
    _, problems = _solve(tmp_path, "broken")
    assert any("nothing provides not-there >= 1" in p for p in problems), problems
