"""The /etc merge never writes outside the root, whatever symlinks the administrator or a
package planted; and its report (notable, JSON, the records in /usr) says what it did."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcfixture import build, build_usr, prepared_root
from test_etc_merge import run_merge

from deploy.etcbase import BASE_DIR, MERGE_RECORD, read_merge_record, write_records
from deploy.etcmerge import EtcAction, EtcMerge, merge_etc
from fixtures.rpmbuild import build_package
from fixtures.spec import Config, FileKind, FileSpec, PackageSpec
from rpmextents.header import read_prefix
from rpmextents.transcode import transcode

from conftest import btrfs_unavailable_reason, loop_btrfs
from oracle import rpm_unavailable_reason, snapshot


@pytest.fixture
def fs() -> Iterator[Path]:
    for reason in (btrfs_unavailable_reason(), rpm_unavailable_reason()):
        if reason:
            pytest.skip(reason)
    with loop_btrfs(size=256 << 20) as mnt:
        yield mnt


def _host_dir(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    (host / "plain-same-unchanged.conf").write_text("host's\n")
    (host / "evil.conf").write_text("host's\n")
    return host


@pytest.mark.parametrize("target", ["/", "host", "../../host"])
def test_admin_symlinked_directory_stays_in_the_root(fs: Path, tmp_path: Path, target: str) -> None:
    """etc/m -> / (or -> a host directory): the vendor's files land inside the root, as rpm
    --root puts them, and nothing outside the root changes."""
    built = build(tmp_path / "pkgs")
    host = _host_dir(tmp_path)
    root = fs / "root"
    prepared_root(built, root, host / "evil.conf")
    m = root / "etc/m"
    os.rename(m, root / "etc/m-was")
    m.symlink_to(os.fspath(host) if target == "host" else target)
    host_before, top_before = snapshot(host), sorted(os.listdir("/"))
    usr = fs / "usr"
    build_usr(built.v2_extents, usr, root)
    merge = run_merge(root, usr, built, update=True)
    assert "/etc/m" not in {a.path for a in merge.actions}
    assert snapshot(host) == host_before
    assert sorted(os.listdir("/")) == top_before
    assert m.is_symlink()  # rpm keeps a symlink standing for a directory; so do we
    inside = root / ("." if target == "/" else os.fspath(host).lstrip("/") if target == "host" else "host")
    assert (inside / "plain-changed-unchanged.conf").read_text().startswith("vendor v2")


def test_root_etc_symlink_to_host(fs: Path, tmp_path: Path) -> None:
    """The root's etc itself a symlink to the host's directory: resolved inside the root."""
    built = build(tmp_path / "pkgs")
    host = _host_dir(tmp_path)
    root = fs / "root"
    root.mkdir()
    (root / "etc").symlink_to(host)
    before = snapshot(host)
    usr = fs / "usr"
    build_usr(built.v2_extents, usr, root)
    merge = run_merge(root, usr, built, update=False)
    assert snapshot(host) == before
    assert (root / os.fspath(host).lstrip("/") / "m/plain-same-unchanged.conf").is_file()
    assert merge.actions and merge.base == ()


def test_package_symlink_does_not_lead_out(fs: Path, tmp_path: Path) -> None:
    """A package's /etc/evil -> <host dir>, another's /etc/evil/x.conf: written below the root."""
    host = _host_dir(tmp_path)
    link = PackageSpec("evil-link", files=(FileSpec("/etc/evil", kind=FileKind.SYMLINK, target=os.fspath(host)),))
    conf = PackageSpec("evil-conf", files=(
        FileSpec("/etc/evil/evil.conf", content=b"vendor\n", config=Config.NOREPLACE),
    ))
    pkgs = tmp_path / "pkgs"
    paths = [build_package(link, pkgs), build_package(conf, pkgs)]
    root, usr = fs / "root", fs / "usr"
    (root / "etc").mkdir(parents=True)
    before = snapshot(host)
    headers = []
    for i, p in enumerate(paths):
        ext = pkgs / f"{i}.ext.rpm"
        transcode(p, ext)
        build_usr(ext, usr, root)
        with open(p, "rb") as f:
            headers.append(read_prefix(f).header)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    usr_fd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY)
    try:
        merge_etc(root_fd, usr_fd, None, headers)
    finally:
        os.close(root_fd)
        os.close(usr_fd)
    assert snapshot(host) == before
    assert (root / "etc/evil").is_symlink()
    assert (root / os.fspath(host).lstrip("/") / "evil.conf").read_bytes() == b"vendor\n"


def test_notable_and_json() -> None:
    actions = (
        EtcAction("/etc/a", "vendor", "a-1-1.noarch", "the vendor's version"),
        EtcAction("/etc/b", "rpmnew", "b-1-1.noarch", "kept"),
        EtcAction("/etc/c", "rpmsave", None, "saved"),
        EtcAction("/etc/d", "kept", "d-1-1.noarch", "kept"),
        EtcAction("/etc/e", "kept-vendor-changed", "e-1-1.noarch", "kept"),
        EtcAction("/etc/f", "removed", "f-1-1.noarch", "gone"),
        EtcAction("/etc/g", "rpmorig", "g-1-1.noarch", "saved"),
    )
    merge = EtcMerge(actions)
    assert [a.path for a in merge.notable()] == ["/etc/b", "/etc/c", "/etc/e", "/etc/g"]
    assert EtcMerge.from_json(json.loads(json.dumps(merge.to_json()))) == merge
    for bad in ({"x": 1}, [{"path": "/etc/a", "action": "nuked", "package": None, "detail": ""}],
                [{"path": 1, "action": "kept", "package": None, "detail": ""}]):
        with pytest.raises(ValueError):
            EtcMerge.from_json(bad)


def test_records_in_usr(fs: Path, tmp_path: Path) -> None:
    built = build(tmp_path / "pkgs")
    root, usr = fs / "root", fs / "usr"
    prepared_root(built, root, tmp_path / "nowhere")
    build_usr(built.v2_extents, usr, root)
    merge = run_merge(root, usr, built, update=True)
    usr_fd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_records(usr_fd, merge, "7")
    finally:
        os.close(usr_fd)
    record = read_merge_record(usr)
    assert record is not None and record.merge == merge and record.merged_from == "7"
    assert json.loads((usr / MERGE_RECORD).read_text())["actions"][0]["path"].startswith("/etc/")
    (usr / MERGE_RECORD).write_text('{"merged_from": 7, "actions": []}')
    with pytest.raises(ValueError, match="etc-merge.json: merged_from"):
        read_merge_record(usr)
    base = usr / BASE_DIR
    assert (base / "old-deployment").read_text() == "7\n"
    lines = (base / "entries").read_text().splitlines()
    assert "f 644 0 0 " in next(x for x in lines if x.endswith(" m/plain-same-unchanged.conf"))
    assert any(x.startswith("l 777 0 0 ") and x.endswith(" m/plain-same-symlink.conf") for x in lines)
    merged = (base / "merged").read_text().splitlines()
    assert "m/plain-changed-edited.conf" in merged and "m/plain-changed-edited.conf.rpmsave" in merged
    assert "m/plain-same-unchanged.conf" not in merged
    # An .rpmnew leaves the administrator's file in place: a later edit of it is no conflict.
    assert "m/noreplace-changed-edited.conf.rpmnew" in merged
    assert "m/noreplace-changed-edited.conf" not in merged and "m/plain-same-edited.conf" not in merged


def test_blocked_paths_are_reported_and_the_merge_goes_on(fs: Path, tmp_path: Path) -> None:
    """A directory where the vendor has a file, a file where the vendor has a directory's
    parent: reported as blocked, left as they are; every other path is merged."""
    built = build(tmp_path / "pkgs")
    root, usr = fs / "root", fs / "usr"
    prepared_root(built, root, tmp_path / "nowhere")
    blocker = root / "etc/m/none-changed-unchanged.conf"
    blocker.unlink()
    blocker.mkdir()
    (blocker / "admin's").write_text("x\n")
    build_usr(built.v2_extents, usr, root)
    merge = run_merge(root, usr, built, update=True)
    by_path = {a.path: a for a in merge.actions}
    assert by_path["/etc/m/none-changed-unchanged.conf"].action == "blocked"
    assert (blocker / "admin's").read_text() == "x\n"
    assert by_path["/etc/m/none-changed-unchanged.conf"] in merge.notable()
    assert (root / "etc/m/plain-changed-unchanged.conf").read_text().startswith("vendor v2")
