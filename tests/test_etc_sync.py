"""First-boot /etc sync (packaging/dracut/95rpmimg/rpmimg-etc-sync.sh), run by /bin/sh on real
btrfs roots: edits made in the old root after the deploy reach the new root, conflicts with
the merge are kept and reported, and no symlink in either root leads a write out of it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcfixture import build, build_usr, prepared_root
from test_etc_merge import run_merge

from deploy.etcbase import BASE_DIR, record_base, write_records
from deploy.etcmerge import EtcAction, EtcMerge
from host import kernel

from conftest import btrfs_unavailable_reason, loop_btrfs
from oracle import rpm_unavailable_reason, snapshot

SCRIPT = Path(__file__).resolve().parent.parent / "packaging/dracut/95rpmimg/rpmimg-etc-sync.sh"


@dataclass(frozen=True)
class Roots:
    top: Path
    old: Path
    new: Path
    host: Path


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _merge_into(new: Path, actions: tuple[EtcAction, ...]) -> None:
    """Record a merge's base and actions in new/usr, as deploy does in the new /usr tree."""
    fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    try:
        merge = EtcMerge(actions, record_base(fd))
    finally:
        os.close(fd)
    usr = new / "usr"
    usr.mkdir(exist_ok=True)
    ufd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_records(ufd, merge, "1")
    finally:
        os.close(ufd)


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[Roots]:
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    host = tmp_path / "host"
    host.mkdir()
    (host / "file").write_text("the host's\n")
    with loop_btrfs(size=256 << 20) as top:
        (top / "@rpmimg/roots").mkdir(parents=True)
        old, new = top / "@rpmimg/roots/1", top / "@rpmimg/roots/2"
        kernel.subvolume_create(old)
        etc = old / "etc"
        for name in ("a.conf", "b.conf", "gone.conf", "clash.conf", "clash-del.conf", "keep.conf",
                     "dir/c.conf", "vdir/v.conf", "with space.conf", "-dash trailing "):
            _write(etc / name, f"v1 {name}\n")
        (etc / "link").symlink_to("a.conf")
        kernel.subvolume_snapshot(old, new)
        # The merge (base recorded first) changed clash.conf, clash-del.conf and replaced vdir
        # with a vendor symlink.
        _merge_into(new, (
            EtcAction("/etc/clash.conf", "vendor", "p-2-1.noarch", "x"),
            EtcAction("/etc/clash-del.conf", "vendor", "p-2-1.noarch", "x"),
            EtcAction("/etc/vdir", "vendor", "p-2-1.noarch", "x"),
        ))
        (new / "etc/clash.conf").write_text("vendor v2\n")
        (new / "etc/clash-del.conf").write_text("vendor v2\n")
        (new / "etc/vdir/v.conf").unlink()
        (new / "etc/vdir").rmdir()
        (new / "etc/vdir").symlink_to(host)
        yield Roots(top, old, new, host)


def _admin_edits_after_deploy(r: Roots) -> None:
    etc = r.old / "etc"
    (etc / "a.conf").write_text("admin's later a\n")
    (etc / "b.conf").chmod(0o600)
    (etc / "gone.conf").unlink()
    _write(etc / "newdir/x y.conf", "admin's new file\n", 0o640)
    (etc / "newdir").chmod(0o750)
    (etc / "clash.conf").write_text("admin's later clash\n")
    (etc / "clash-del.conf").unlink()
    (etc / "link").unlink()
    (etc / "link").symlink_to("b.conf")
    (etc / "with space.conf").write_text("edited\n")
    (etc / "-dash trailing ").write_text("edited too\n")
    os.utime(etc / "keep.conf", (1, 1))  # touched (ctime moves), content unchanged: not carried
    (etc / "keep.conf").chmod(0o644)
    (etc / "evil").symlink_to(r.host / "file")  # carried as a symlink, never followed
    _write(etc / "vdir/new.conf", "admin's, below a dir the update made a symlink\n")
    (etc / "dir/c.conf").unlink()
    (etc / "dir").rmdir()
    (etc / "dir").symlink_to(r.host)  # a directory replaced by a symlink to the host's


def _run(new: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", os.fspath(SCRIPT), os.fspath(new)], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}, timeout=120, check=False)


def _check_synced(r: Roots) -> str:
    etc = r.new / "etc"
    assert (etc / "a.conf").read_text() == "admin's later a\n"
    assert (etc / "b.conf").stat().st_mode & 0o7777 == 0o600
    assert not (etc / "gone.conf").exists()
    assert (etc / "newdir/x y.conf").read_text() == "admin's new file\n"
    assert (etc / "newdir/x y.conf").stat().st_mode & 0o7777 == 0o640
    assert (etc / "newdir").stat().st_mode & 0o7777 == 0o750
    assert (etc / "clash.conf").read_text() == "vendor v2\n"
    assert (etc / "clash.conf.rpmimg-edit").read_text() == "admin's later clash\n"
    assert (etc / "clash-del.conf").read_text() == "vendor v2\n"
    assert os.readlink(etc / "link") == "b.conf"
    assert (etc / "with space.conf").read_text() == "edited\n"
    assert (etc / "-dash trailing ").read_text() == "edited too\n"
    assert os.readlink(etc / "evil") == os.fspath(r.host / "file")
    assert os.readlink(etc / "dir") == os.fspath(r.host)
    assert (etc / "keep.conf").read_text() == "v1 keep.conf\n"
    log = (etc / "rpmimg/etc-sync.log").read_text()
    assert "conflict clash.conf:" in log and "conflict clash-del.conf:" in log
    assert "conflict vdir/new.conf:" in log
    assert "carried a.conf" in log and "removed gone.conf" in log and "removed dir/c.conf" in log
    assert "keep.conf" not in log
    return log


def test_edits_after_deploy_reach_the_new_root(roots: Roots) -> None:
    _admin_edits_after_deploy(roots)
    host_before = snapshot(roots.host)
    old_before = snapshot(roots.old)
    done = _run(roots.new, {"RPMIMG_OLD_ROOT": os.fspath(roots.old)})
    assert done.returncode == 0, done.stderr
    _check_synced(roots)
    assert snapshot(roots.host) == host_before  # nothing written through a symlink
    assert snapshot(roots.old) == old_before  # the old root is only read
    # Once done, never again: a later edit in the old root is not carried.
    (roots.old / "etc/keep.conf").write_text("much later\n")
    again = _run(roots.new, {"RPMIMG_OLD_ROOT": os.fspath(roots.old)})
    assert again.returncode == 0 and (roots.new / "etc/keep.conf").read_text() == "v1 keep.conf\n"


def test_finds_the_old_root_through_the_top_level(roots: Roots, tmp_path: Path) -> None:
    """As in the initrd: only NEW_ROOT is given; the script mounts the top level to reach
    @rpmimg/roots/<old-deployment>."""
    _admin_edits_after_deploy(roots)
    source = subprocess.run(["findmnt", "-no", "SOURCE", os.fspath(roots.top)], capture_output=True,
                            text=True, check=True).stdout.strip()
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    subprocess.run(["mount", "-o", "subvol=/@rpmimg/roots/2", source, os.fspath(sysroot)], check=True)
    try:
        done = _run(sysroot, {})
        assert done.returncode == 0, done.stderr
    finally:
        subprocess.run(["umount", os.fspath(sysroot)], check=True)
    _check_synced(roots)


def test_nothing_to_do_without_a_base(roots: Roots) -> None:
    """A first deployment (no etc-base) or no change at all: a log, nothing else changes."""
    subprocess.run(["rm", "-rf", os.fspath(roots.new / "usr" / BASE_DIR)], check=True)
    before = snapshot(roots.new / "etc")
    done = _run(roots.new, {"RPMIMG_OLD_ROOT": os.fspath(roots.old)})
    assert done.returncode == 0, done.stderr
    assert snapshot(roots.new / "etc") == before


def test_unchanged_old_root_carries_nothing(roots: Roots) -> None:
    before = snapshot(roots.new / "etc")
    done = _run(roots.new, {"RPMIMG_OLD_ROOT": os.fspath(roots.old)})
    assert done.returncode == 0, done.stderr
    after = snapshot(roots.new / "etc")
    assert set(after) - set(before) == {"/rpmimg", "/rpmimg/etc-sync.log"}
    assert {p: n for p, n in after.items() if not p.startswith("/rpmimg")} == before
    assert (roots.new / "etc/rpmimg/etc-sync.log").read_text().count("\n") == 1


def test_bad_record_refused(roots: Roots) -> None:
    (roots.new / "usr" / BASE_DIR / "old-deployment").write_text("../../x\n")
    done = _run(roots.new, {})
    assert done.returncode != 0 and "bad id" in done.stderr
    assert not (roots.new / "etc/rpmimg").exists()


def test_merge_then_sync_end_to_end(tmp_path: Path) -> None:
    """The real merge on a snapshot of an rpm-installed root, its records, later edits in the
    old root, then the script: each later edit lands, or is kept beside the update's file."""
    for reason in (btrfs_unavailable_reason(), rpm_unavailable_reason()):
        if reason:
            pytest.skip(reason)
    built = build(tmp_path / "pkgs")
    with loop_btrfs(size=256 << 20) as top:
        (top / "@rpmimg/roots").mkdir(parents=True)
        old, new = top / "@rpmimg/roots/1", top / "@rpmimg/roots/2"
        kernel.subvolume_create(old)
        prepared_root(built, old, tmp_path / "nowhere")
        kernel.subvolume_snapshot(old, new)
        usr = new / "usr"
        build_usr(built.v2_extents, usr, new)
        merge = run_merge(new, usr, built, update=True)
        ufd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY)
        try:
            write_records(ufd, merge, "1")
        finally:
            os.close(ufd)
        m = old / "etc/m"
        (m / "noreplace-changed-edited.conf").write_text("edited again\n")  # merge left it: .rpmnew
        (m / "plain-changed-edited.conf").write_text("edited again\n")  # merge replaced it
        (m / "plain-same-unchanged.conf").write_text("first edit, after deploy\n")  # merge left it
        done = _run(new, {"RPMIMG_OLD_ROOT": os.fspath(old)})
        assert done.returncode == 0, done.stderr
        n = new / "etc/m"
        assert (n / "noreplace-changed-edited.conf").read_text() == "edited again\n"
        assert (n / "noreplace-changed-edited.conf.rpmnew").read_text().startswith("vendor v2")
        assert (n / "plain-changed-edited.conf").read_text().startswith("vendor v2")
        assert (n / "plain-changed-edited.conf.rpmsave").read_text().startswith("admin's")
        assert (n / "plain-changed-edited.conf.rpmimg-edit").read_text() == "edited again\n"
        assert (n / "plain-same-unchanged.conf").read_text() == "first edit, after deploy\n"
        log = (new / "etc/rpmimg/etc-sync.log").read_text().splitlines()
        assert sorted(log[1:]) == sorted([
            "carried m/noreplace-changed-edited.conf",
            "carried m/plain-same-unchanged.conf",
            "conflict m/plain-changed-edited.conf: changed after the deploy and by the update;"
            " the later edit is m/plain-changed-edited.conf.rpmimg-edit",
        ])


def test_symlinked_log_directory_refused(roots: Roots) -> None:
    """NEW_ROOT/etc/rpmimg a symlink to the host's: refused before anything is done."""
    _admin_edits_after_deploy(roots)
    (roots.new / "etc/rpmimg").symlink_to(roots.host)
    before, new_before = snapshot(roots.host), snapshot(roots.new / "etc")
    done = _run(roots.new, {"RPMIMG_OLD_ROOT": os.fspath(roots.old)})
    assert done.returncode != 0 and "etc/rpmimg: not a directory" in done.stderr
    assert snapshot(roots.host) == before and snapshot(roots.new / "etc") == new_before


def test_old_etc_a_symlink_carries_nothing(roots: Roots) -> None:
    """The old root's etc itself replaced by a symlink to the host's: nothing read through it."""
    os.rename(roots.old / "etc", roots.old / "etc-was")
    (roots.old / "etc").symlink_to(roots.host)
    before = snapshot(roots.new / "etc")
    done = _run(roots.new, {"RPMIMG_OLD_ROOT": os.fspath(roots.old)})
    assert done.returncode == 0, done.stderr
    after = snapshot(roots.new / "etc")
    assert {p: n for p, n in after.items() if not p.startswith("/rpmimg")} == before
    assert "nothing:" in (roots.new / "etc/rpmimg/etc-sync.log").read_text()
