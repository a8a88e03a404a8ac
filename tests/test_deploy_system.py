"""A deployment is a whole system: its root (etc, links, mount points, fstab for the shared
/var), its accounts from sysusers.d, an rpm database the real rpm reads, rollback of /etc
with /usr, cleanup and interrupted runs that leave no root behind, and `rpmimg reset`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploytools import deploy, rpmimg, sign_all, state_of
from imagepub import publish

from deploy import rpmdb
from deploy.rootfs import LINKS, MOUNT_POINTS
from fixtures.build import signing_key
from fixtures.rpmbuild import build_package
from fixtures.signing import SigningKey
from fixtures.spec import Config, FileKind, FileSpec, PackageSpec, Scriptlet

from oracle import snapshot

pytest_plugins = ("deployenv",)

SVC_USERS = b'g svcgroup -\nu svcuser - "Service user"\n'
EXTRA_USERS = b'u extrauser - "Extra user"\n'


def _svc(version: str) -> PackageSpec:
    return PackageSpec(name="svc", version=version, files=(
        FileSpec("/usr/lib/sysusers.d/svc.conf", content=SVC_USERS),
        FileSpec("/usr/share/svc", kind=FileKind.DIR),
        FileSpec("/usr/share/svc/data", content=f"svc {version}\n".encode(), user="svcuser",
                 group="svcgroup", mode=0o640),
        FileSpec("/etc/svc.conf", content=b"setting=1\n", config=Config.NOREPLACE, mode=0o600),
        FileSpec("/etc/svc.d", kind=FileKind.DIR),
        FileSpec("/etc/svc.d/plain", content=f"plain {version}\n".encode()),
    ))


EXTRA = PackageSpec(name="extra", files=(
    FileSpec("/usr/lib/sysusers.d/extra.conf", content=EXTRA_USERS),
    FileSpec("/usr/share/extra/file", content=b"extra\n", user="extrauser", group="extrauser"),
))
LEGACY = PackageSpec(name="legacy", files=(FileSpec("/usr/share/legacy/file", content=b"x\n"),),
                     scriptlets=(Scriptlet("pre", "getent passwd legacy || useradd -r legacy\n"),))


@dataclass(frozen=True)
class SystemImages:
    key: SigningKey
    versions: tuple[Path, ...]  # v1..v4: svc 1, svc 2, svc 2 + extra (a new user), svc 3 + extra
    legacy: Path
    manifests_packages: tuple[tuple[str, ...], ...]


@pytest.fixture(scope="module")
def system_images(tmp_path_factory: pytest.TempPathFactory) -> SystemImages:
    key = signing_key()
    work = tmp_path_factory.mktemp("system-images")
    rpms = {label: build_package(spec, work / "rpms" / label) for label, spec in (
        ("svc1", _svc("1")), ("svc2", _svc("2")), ("svc3", _svc("3")), ("extra", EXTRA),
        ("legacy", LEGACY))}
    sign_all(list(rpms.values()), key)
    sets = (["svc1"], ["svc2"], ["svc2", "extra"], ["svc3", "extra"])
    out = work / "out"
    versions = tuple(publish(out, "sys", str(i + 1), [rpms[x] for x in labels], key)
                     for i, labels in enumerate(sets))
    legacy = publish(work / "legacy", "legacy", "1", [rpms["svc1"], rpms["legacy"]], key)
    nvras = tuple(tuple(sorted(rpms[x].name.removesuffix(".rpm") for x in labels)) for labels in sets)
    return SystemImages(key, versions, legacy, nvras)


def _id(r: dict[str, object]) -> str:
    """The id of the deployment a deploy/reset/rollback --json names."""
    ref = r["deployment"]
    assert isinstance(ref, dict)
    return str(ref["id"])


def _root(sysroot: Path, r: dict[str, object]) -> Path:
    return sysroot / "@rpmimg/roots" / _id(r)


def _usr(sysroot: Path, r: dict[str, object]) -> Path:
    return sysroot / "@rpmimg/deployments" / _id(r)


def _accounts(root: Path, name: str) -> dict[str, str]:
    return {line.split(":")[0]: line.split(":")[2]
            for line in (root / "etc" / name).read_text().splitlines() if line}


def _etc_bytes(root: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root / "etc"):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data: bytes | str = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else ""
            out[os.path.relpath(p, root)] = (st.st_mode, data)
    return out


@contextlib.contextmanager
def booted_view(sysroot: Path, r: dict[str, object]) -> Iterator[Path]:
    """The deployment's root with its /usr mounted, as the kernel command line boots it."""
    root = _root(sysroot, r)
    subprocess.run(["mount", "--bind", "-o", "ro", _usr(sysroot, r), root / "usr"], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", root / "usr"], check=True)


def _rpm(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpm", "--root", root, "--dbpath", "/usr/lib/sysimage/rpm", *args],
                          capture_output=True, text=True, check=False)


def test_root_layout_fstab_status_and_command_line(sysroot: Path, system_images: SystemImages) -> None:
    r = deploy(sysroot, system_images.versions[0], system_images.key).json()
    root = _root(sysroot, r)
    assert r["root"] == os.fspath(root)
    for name, target in LINKS.items():
        assert os.readlink(root / name) == target
    for name in MOUNT_POINTS:
        assert (root / name).is_dir() and not os.listdir(root / name)
    assert (root / "tmp").stat().st_mode & 0o1777 == 0o1777
    # The sysroot's accounts were adopted, the image's vendor defaults added.
    assert "rpmimg-user" in _accounts(root, "passwd")
    assert (root / "etc/svc.conf").read_bytes() == b"setting=1\n"
    uuid = subprocess.run(["findmnt", "-no", "UUID", sysroot], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert f"UUID={uuid} /var btrfs subvol=/@rpmimg/var 0 0" in (root / "etc/fstab").read_text().splitlines()
    assert (sysroot / "@rpmimg/var/home").is_dir()
    assert r["kernel_arguments"] == (
        f"root=UUID={uuid} rootflags=subvol=/@rpmimg/roots/{_id(r)} rw"
        f" mount.usr=UUID={uuid} mount.usrflags=subvol=/@rpmimg/deployments/{_id(r)},ro")
    assert r["kernel_arguments"] in (sysroot / "@rpmimg/usr-default.conf").read_text()
    rows = rpmimg("status", "--sysroot", sysroot, "--json").json()["deployments"]
    assert [(row["root"], row["path"]) for row in rows] == [  # type: ignore[index]
        (os.fspath(root), os.fspath(_usr(sysroot, r)))]
    assert f"root: {root}" in rpmimg("status", "--sysroot", sysroot, "--verbose", "--no-size").out


def test_admin_fstab_lines_for_managed_mounts_are_commented_out(sysroot: Path, system_images: SystemImages) -> None:
    (sysroot / "etc").mkdir(exist_ok=True)
    (sysroot / "etc/fstab").write_text("UUID=old / btrfs defaults 0 0\nUUID=data /data xfs defaults 0 2\n")
    r = deploy(sysroot, system_images.versions[0], system_images.key).json()
    lines = (_root(sysroot, r) / "etc/fstab").read_text().splitlines()
    assert "UUID=data /data xfs defaults 0 2" in lines
    assert "# rpmimg: mounted by the block below: UUID=old / btrfs defaults 0 0" in lines
    r2 = deploy(sysroot, system_images.versions[1], system_images.key).json()
    # The snapshot keeps one block, not two.
    assert (_root(sysroot, r2) / "etc/fstab").read_text().count("# rpmimg: begin") == 1


def test_rollback_gives_back_the_old_etc_byte_for_byte(sysroot: Path, system_images: SystemImages) -> None:
    imgs = system_images
    first = deploy(sysroot, imgs.versions[0], imgs.key).json()
    old_root = _root(sysroot, first)
    (old_root / "etc/svc.conf").write_bytes(b"setting=admin\n")  # edited on the running system
    before = _etc_bytes(old_root)
    second = deploy(sysroot, imgs.versions[2], imgs.key).json()
    new_root = _root(sysroot, second)
    # The update started from the old root (the admin's edit is there) and changed /etc.
    assert (new_root / "etc/svc.conf").read_bytes() == b"setting=admin\n"
    assert "extrauser" in _accounts(new_root, "passwd")
    (new_root / "etc/svc.conf").write_bytes(b"setting=newer edit\n")
    (new_root / "etc/new-file").write_bytes(b"made after the update\n")
    assert _etc_bytes(new_root) != before
    r = rpmimg("rollback", "--sysroot", sysroot, "--json").json()
    assert _id(r) == _id(first)
    assert _etc_bytes(old_root) == before
    assert snapshot(old_root / "etc") == snapshot(old_root / "etc")
    assert f"rootflags=subvol=/@rpmimg/roots/{_id(first)} " in (
        sysroot / "@rpmimg/usr-default.conf").read_text()


def test_account_ids_stay_over_three_updates(sysroot: Path, system_images: SystemImages) -> None:
    imgs = system_images
    results = [deploy(sysroot, v, imgs.key).json() for v in imgs.versions]
    roots = [_root(sysroot, r) for r in results]
    svc_ids = {_accounts(root, "passwd")["svcuser"] for root in roots}
    assert len(svc_ids) == 1
    assert {_accounts(root, "group")["svcgroup"] for root in roots} == {_accounts(roots[0], "group")["svcgroup"]}
    assert "extrauser" not in _accounts(roots[1], "passwd")
    assert _accounts(roots[2], "passwd")["extrauser"] == _accounts(roots[3], "passwd")["extrauser"]
    # New ids collide with nothing already there.
    for root in roots:
        ids = list(_accounts(root, "passwd").values())
        assert len(ids) == len(set(ids))
    for r, root in zip(results, roots, strict=True):
        st = os.lstat(_usr(sysroot, r) / "share/svc/data")
        assert (str(st.st_uid), str(st.st_gid)) == (
            _accounts(root, "passwd")["svcuser"], _accounts(root, "group")["svcgroup"])
    st = os.lstat(_usr(sysroot, results[3]) / "share/extra/file")
    assert str(st.st_uid) == _accounts(roots[3], "passwd")["extrauser"]
    # systemd-sysusers on the booted system has nothing left to do.
    with booted_view(sysroot, results[3]) as root:
        before = {n: (root / "etc" / n).read_bytes() for n in ("passwd", "group", "shadow", "gshadow")}
        subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
        assert {n: (root / "etc" / n).read_bytes() for n in before} == before


def test_scriptlet_accounts_without_sysusers_are_reported(sysroot: Path, system_images: SystemImages) -> None:
    r = deploy(sysroot, system_images.legacy, system_images.key).json()
    assert r["accounts_by_scriptlet"] == ["legacy-1.0-1.x86_64"]
    out = rpmimg("deploy", "--sysroot", sysroot, "--keyring", system_images.key.public, "--switch",
                 system_images.versions[0]).out
    assert "creates accounts in a scriptlet" not in out


def test_real_rpm_reads_the_database(sysroot: Path, system_images: SystemImages) -> None:
    imgs = system_images
    results = [deploy(sysroot, v, imgs.key).json() for v in imgs.versions[:3]]
    for r, expected in zip(results, imgs.manifests_packages[:3], strict=True):
        with booted_view(sysroot, r) as root:
            qa = _rpm(root, "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n")
            assert sorted(qa.stdout.split()) == list(expected), qa.stderr
            assert _rpm(root, "-qf", "/usr/share/svc/data").stdout.startswith("svc-")
            assert "/etc/svc.conf" in _rpm(root, "-ql", "svc").stdout.split()
            assert _rpm(root, "-qc", "svc").stdout.split() == ["/etc/svc.conf"]
            va = _rpm(root, "-Va")
            lines = [line for line in va.stdout.splitlines() if line.strip()]
            assert not [line for line in lines if " /usr" in line or " /etc" in line], va.stdout
    # The database is read-only on a read-only /usr and lists no more than the image.
    assert (_usr(sysroot, results[2]) / "lib/sysimage/rpm/rpmdb.sqlite").is_file()
    assert not (_usr(sysroot, results[2]) / "lib/sysimage/rpm/rpmdb.sqlite-wal").exists()


def test_verify_checks_the_rpm_database(sysroot: Path, system_images: SystemImages) -> None:
    r = deploy(sysroot, system_images.versions[2], system_images.key).json()
    assert rpmimg("verify", "--sysroot", sysroot, "--json").code == 0
    db = _usr(sysroot, r) / "lib/sysimage/rpm/rpmdb.sqlite"
    subprocess.run(["btrfs", "property", "set", _usr(sysroot, r), "ro", "false"], check=True)
    subprocess.run(["rpm", "--dbpath", db.parent, "-e", "--justdb", "--nodeps", "extra"],
                   check=True, capture_output=True)
    subprocess.run(["btrfs", "property", "set", _usr(sysroot, r), "ro", "true"], check=True)
    bad = rpmimg("verify", "--sysroot", sysroot, check=False)
    assert bad.code != 0
    assert "rpmdb,missing" in bad.out and "(extra-1.0-1.x86_64)" in bad.out
    fixed = rpmimg("verify", "--sysroot", sysroot, "--repair", "--keyring", system_images.key.public, "--json")
    assert fixed.json()["mismatches"] == []
    assert "extra-1.0-1.x86_64" in rpmdb.installed(_usr(sysroot, r))


def test_cleanup_removes_roots_and_a_killed_run_leaves_none(
    sysroot: Path, system_images: SystemImages, tmp_path: Path
) -> None:
    imgs = system_images
    first = deploy(sysroot, imgs.versions[0], imgs.key).json()
    log = tmp_path / "checkpoints.log"
    for point in range(1, 200):
        killed = deploy(sysroot, imgs.versions[1], imgs.key, check=False,
                        env={"RPMIMG_KILL_AT": str(point), "RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
        if killed.code == 0:
            break
        again = rpmimg("cleanup", "--sysroot", sysroot, "--keep", "5", "--json", check=False)
        assert again.code == 0, (point, again.err)
        # Every root left is the root of a recorded deployment, and every deployment has one.
        recorded = sorted(str(d["id"]) for d in state_of(sysroot)["deployments"])  # type: ignore[attr-defined]
        assert sorted(os.listdir(sysroot / "@rpmimg/roots")) == recorded, point
        assert sorted(os.listdir(sysroot / "@rpmimg/deployments")) == recorded, point
        assert not list((sysroot / "@rpmimg/staging").glob("root-*")), point
        if len(recorded) == 2:
            break
    labels = log.read_text()
    for label in ("root created", "accounts created", "etc merged", "rpm database written", "root in place"):
        assert label in labels
    second = {"deployment": {"id": max(os.listdir(sysroot / "@rpmimg/roots"), key=int)}}
    assert sorted(os.listdir(sysroot / "@rpmimg/roots")) == sorted([_id(first), _id(second)])
    rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1")
    assert os.listdir(sysroot / "@rpmimg/roots") == [_id(second)]
    # A root the state does not explain makes mutating commands refuse, as a deployment does.
    kernel_root = sysroot / "@rpmimg/roots/77"
    subprocess.run(["btrfs", "subvolume", "create", kernel_root], check=True, capture_output=True)
    refused = rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1", check=False)
    assert refused.code != 0 and "77 (root)" in refused.err
    assert kernel_root.exists()


def test_reset_makes_a_fresh_root_and_keeps_the_old(sysroot: Path, system_images: SystemImages) -> None:
    imgs = system_images
    deploy(sysroot, imgs.versions[0], imgs.key)
    second = deploy(sysroot, imgs.versions[2], imgs.key).json()
    old_root = _root(sysroot, second)
    (old_root / "etc/svc.conf").write_bytes(b"setting=admin\n")
    before = _etc_bytes(old_root)
    r = rpmimg("reset", "--sysroot", sysroot, "--json").json()
    assert _id(r) != _id(second) and r["deployment"]["version"] == "3"  # type: ignore[index]
    new_root = sysroot / "@rpmimg/roots" / _id(r)
    assert _etc_bytes(old_root) == before
    assert (new_root / "etc/svc.conf").read_bytes() == b"setting=1\n"
    # Fresh: nothing adopted from the sysroot, accounts only from the image's sysusers.d.
    assert "rpmimg-user" not in _accounts(new_root, "passwd")
    assert {"svcuser", "extrauser"} <= set(_accounts(new_root, "passwd"))
    # As a first deployment of the same image would have it, but for ids already allocated.
    fresh = {k: v for k, v in _etc_bytes(new_root).items()
             if k not in ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/passwd-",
                          "etc/group-", "etc/shadow-", "etc/gshadow-")}
    assert sorted(fresh) == ["etc/fstab", "etc/svc.conf", "etc/svc.d", "etc/svc.d/plain"]
    state = rpmimg("status", "--sysroot", sysroot, "--json").json()["deployments"]
    assert [d["id"] for d in state] == ["1", "2", _id(r)]  # type: ignore[index]


def test_reset_var_is_fresh_unless_kept_and_cleanup_removes_an_unused_one(
    sysroot: Path, system_images: SystemImages
) -> None:
    imgs = system_images
    first = deploy(sysroot, imgs.versions[0], imgs.key).json()
    (sysroot / "@rpmimg/var/lib-file").write_text("shared\n")
    kept = rpmimg("reset", "--sysroot", sysroot, "--keep-var", "--json").json()
    assert kept["var_subvol"] == "/@rpmimg/var"
    assert "subvol=/@rpmimg/var 0 0" in (sysroot / "@rpmimg/roots" / _id(kept) / "etc/fstab").read_text()
    fresh = rpmimg("reset", "--sysroot", sysroot, "--json").json()
    var = f"/@rpmimg/var-{_id(fresh)}"
    assert fresh["var_subvol"] == var
    assert os.listdir(sysroot / var.lstrip("/")) == []
    assert f"subvol={var} 0 0" in (sysroot / "@rpmimg/roots" / _id(fresh) / "etc/fstab").read_text()
    # An update of the reset deployment shares its /var.
    after = deploy(sysroot, imgs.versions[1], imgs.key).json()
    assert f"subvol={var} 0 0" in (_root(sysroot, after) / "etc/fstab").read_text()
    assert (sysroot / "@rpmimg/var/lib-file").read_text() == "shared\n"
    assert _id(first) in os.listdir(sysroot / "@rpmimg/roots")
    # Rolled back past the reset, updated from there and cleaned up: the reset's /var goes
    # with the last root that mounted it.
    rpmimg("rollback", "--sysroot", sysroot)
    rpmimg("rollback", "--sysroot", sysroot)
    later = deploy(sysroot, imgs.versions[3], imgs.key).json()
    assert "subvol=/@rpmimg/var 0 0" in (_root(sysroot, later) / "etc/fstab").read_text()
    rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1")
    assert os.listdir(sysroot / "@rpmimg/roots") == [_id(later)]
    assert not (sysroot / var.lstrip("/")).exists()
    assert (sysroot / "@rpmimg/var/lib-file").exists()


def test_compose_names_packages_creating_accounts_without_sysusers(system_images: SystemImages) -> None:
    from imagespec.manifest import parse
    from solver.pool import PackagePool

    m = parse(system_images.legacy.read_bytes())
    output = system_images.legacy.parents[3]  # OUTPUT/images/NAME/VERSION/manifest.json
    pool = PackagePool(output)
    notes = {p.name: pool.notes(os.path.relpath(system_images.legacy.parent / p.location, output))
             for p in m.packages}
    assert notes["legacy"].accounts_by_scriptlet and not notes["svc"].accounts_by_scriptlet
    # The manifest's curation report carries the list; an empty one is left out.
    report = dataclasses.replace(m.report, accounts_by_scriptlet=("legacy-1.0-1.x86_64",))
    again = parse(dataclasses.replace(m, report=report).dumps())
    assert again.report.accounts_by_scriptlet == ("legacy-1.0-1.x86_64",)
    assert "accounts_by_scriptlet" not in m.dumps().decode()


def _corpus_rpms(*names: str) -> list[Path]:
    """The named packages of a cached benchmark corpus (benchmarks/debcorpus.py), or skip."""
    from benchmarks.debcorpus import cache_root

    done = sorted(cache_root().glob("*/corpus.json"))
    if not done:
        pytest.skip(f"no benchmark corpus cached under {cache_root()} (python -m benchmarks.debcorpus builds it)")
    base = done[-1].parent / "base"
    found = []
    for name in names:
        matches = [p for p in base.rglob(f"{name}-*.rpm")
                   if subprocess.run(["rpm", "-qp", "--qf", "%{NAME}", p], capture_output=True,
                                     text=True).stdout == name]
        if not matches:
            pytest.skip(f"{name}: not in the cached corpus {base}")
        found.append(matches[0])
    return found


def test_systemd_and_dbus_accounts_from_the_corpus(
    sysroot: Path, system_images: SystemImages, tmp_path: Path
) -> None:
    """Debian's own sysusers.d (systemd's basic.conf and friends, dbus's messagebus)."""
    rpms = _corpus_rpms("systemd", "dbus-system-bus-common", "dbus-daemon", "dbus")
    key = system_images.key
    out = tmp_path / "out"
    svc = build_package(_svc("9"), tmp_path / "svc")
    sign_all([svc], key)
    v1 = publish(out, "corpus", "1", rpms, key)
    v2 = publish(out, "corpus", "2", [*rpms, svc], key)
    first = deploy(sysroot, v1, key, "--allow-unsigned-packages").json()
    second = deploy(sysroot, v2, key, "--allow-unsigned-packages").json()
    one, two = _root(sysroot, first), _root(sysroot, second)
    users = _accounts(one, "passwd")
    assert "messagebus" in users and "systemd-network" in users, sorted(users)
    assert {k: v for k, v in _accounts(two, "passwd").items() if k in users} == users
    assert _accounts(two, "group")["messagebus"] == _accounts(one, "group")["messagebus"]
    # Every file the packages give to a sysusers.d account has that account's id in /usr.
    listed = subprocess.run(["rpm", "-qp", "--qf", "[%{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\\n]", *rpms],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    owned = [line.split(" ", 2) for line in listed if not line.startswith("root root ")]
    owned = [o for o in owned if o[2].startswith("/usr/")]
    # (Debian gives dbus's launch helper its group in a maintainer script, so the converted
    # packages may own nothing by a system account: the fixtures above show that case.)
    for user, group, path in owned:
        st = os.lstat(_usr(sysroot, second) / path.removeprefix("/usr/"))
        assert (str(st.st_uid), str(st.st_gid)) == (
            _accounts(two, "passwd")[user], _accounts(two, "group")[group]), path
    with booted_view(sysroot, second) as root:
        before = {n: (root / "etc" / n).read_bytes() for n in ("passwd", "group", "shadow", "gshadow")}
        subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
        assert {n: (root / "etc" / n).read_bytes() for n in before} == before


@pytest.mark.slow
def test_rpm_va_over_the_corpus_image_is_clean_under_usr_and_etc(
    system_images: SystemImages, tmp_path: Path
) -> None:
    """The row ostree-based systems fail: rpm -Va on the whole corpus image."""
    from benchmarks.debcorpus import cache_root

    from conftest import loop_btrfs

    _corpus_rpms("systemd")
    base = sorted(cache_root().glob("*/corpus.json"))[-1].parent / "base"
    rpms = sorted(base.rglob("*.rpm"))
    manifest = publish(tmp_path / "out", "corpus", "1", rpms, system_images.key)
    with loop_btrfs(6 << 30) as sysroot:
        _rpm_va_clean(sysroot, manifest, system_images.key, rpms, tmp_path)


def _rpm_va_clean(sysroot: Path, manifest: Path, key: SigningKey, rpms: list[Path], tmp_path: Path) -> None:
    r = deploy(sysroot, manifest, key, "--allow-unsigned-packages").json()
    with booted_view(sysroot, r) as root:
        qa = _rpm(root, "-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n").stdout.split()
        expected = sorted(subprocess.run(
            ["rpm", "-qp", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n", *rpms],
            capture_output=True, text=True, check=True).stdout.split())
        assert sorted(qa) == expected
        assert _rpm(root, "-qf", "/usr/bin/bash").stdout.startswith("bash-")
        assert _rpm(root, "-q", "--changelog", "bash").returncode == 0
        va = _rpm(root, "-Va").stdout.splitlines()
    bad = [line for line in va if " /usr/" in line or " /etc/" in line]
    assert not bad, "\n".join(bad[:40])
    (tmp_path / "rpm-Va.txt").write_text("\n".join(va) + "\n")  # the README lists what remains


def test_reset_with_nothing_deployed_is_one_line(sysroot: Path) -> None:
    r = rpmimg("reset", "--sysroot", sysroot, check=False)
    assert r.code != 0 and r.err.strip() == "rpmimg: error: nothing is deployed, so there is nothing to reset"
    assert not (sysroot / "@rpmimg/roots").exists() or os.listdir(sysroot / "@rpmimg/roots") == []
