"""The /etc merge equals the real rpm: rpm -U (update) and rpm -i (first deployment).

For every (config kind) x (vendor change) x (administrator edit) a file of one package pair
(tests/etcfixture.py): the root rpm -i'd v1 into, with the edits made, is copied; rpm -U v2
runs on one copy, deploy.etcmerge on the other (with v2's /usr built by rpmextents.extract on
btrfs), and both /etc trees must be the same: content, mode, owner, symlink targets, and
every .rpmnew/.rpmsave/.rpmorig.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcfixture import CASES, Built, build, build_usr, copy_root, prepared_root, rpm_upgrade

from deploy.etcmerge import EtcMerge, merge_etc
from fixtures.catalog import GROUP, PASSWD

from conftest import btrfs_unavailable_reason, loop_btrfs
from oracle import Snapshot, diff_snapshots, rpm_install, rpm_unavailable_reason, snapshot


@dataclass(frozen=True)
class Outcome:
    expected: Snapshot
    actual: Snapshot
    merge: EtcMerge
    host_file: Path
    host_before: bytes


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def run_merge(root: Path, usr: Path, built: Built, update: bool) -> EtcMerge:
    old, new = built.headers()
    root_fd, usr_fd = _open(root), _open(usr)
    try:
        return merge_etc(root_fd, usr_fd, [old] if update else None, [new])
    finally:
        os.close(root_fd)
        os.close(usr_fd)


def etc_only(root: Path) -> Snapshot:
    snap = snapshot(root)
    return {p: n for p, n in snap.items() if p == "/etc" or p.startswith("/etc/")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    reason = rpm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return build(tmp_path_factory.mktemp("etcfix"))


@pytest.fixture(scope="module")
def update(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """One rpm -U and one merge over every case at once."""
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("update")
    host_file = work / "host-file"
    host_file.write_bytes(b"the host's own file\n")
    with loop_btrfs() as mnt:
        base = mnt / "base"
        prepared_root(built, base, host_file)
        oracle, root = mnt / "oracle", mnt / "root"
        copy_root(base, oracle, database=True)
        copy_root(base, root)
        rpm_upgrade(built.v2, oracle)
        usr = mnt / "usr"
        build_usr(built.v2_extents, usr, root)
        merge = run_merge(root, usr, built, update=True)
        yield Outcome(etc_only(oracle), etc_only(root), merge, host_file, b"the host's own file\n")


def _case_paths(snap: Snapshot, path: str) -> dict[str, object]:
    return {p: n for p, n in snap.items() if p == path or p.startswith(path + ".rpm")}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_update_equals_rpm(update: Outcome, case: object) -> None:
    path = case.path  # type: ignore[attr-defined]
    expected, actual = _case_paths(update.expected, path), _case_paths(update.actual, path)
    assert diff_snapshots(expected, actual) == [], f"{path}: rpmimg's /etc differs from rpm -U's"


def test_update_whole_etc_equals_rpm(update: Outcome) -> None:
    problems = diff_snapshots(update.expected, update.actual)
    assert problems == [], "\n".join(problems)
    assert update.host_file.read_bytes() == update.host_before


def test_report_lists_every_rpmnew_and_rpmsave(update: Outcome) -> None:
    on_disk = {p for p in update.actual if p.endswith((".rpmnew", ".rpmsave", ".rpmorig"))}
    reported = {f"{a.path}.{a.action}" for a in update.merge.notable()
                if a.action in ("rpmnew", "rpmsave", "rpmorig")}
    assert on_disk and reported == on_disk
    for action in update.merge.actions:
        assert action.package and action.package.startswith("etcfix-")


@pytest.fixture(scope="module")
def first(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """A first deployment onto an existing /etc: rpm -i v2 over files the admin has."""
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("first")
    host_file = work / "host-file"
    host_file.write_bytes(b"host\n")
    with loop_btrfs() as mnt:
        base = mnt / "base"
        prepared_root(built, base, host_file)  # v1's files, edited, with no package database
        oracle, root = mnt / "oracle", mnt / "root"
        copy_root(base, oracle)
        copy_root(base, root)
        rpm_install([built.v2], oracle, passwd=PASSWD, group=GROUP)
        usr = mnt / "usr"
        build_usr(built.v2_extents, usr, root)
        merge = run_merge(root, usr, built, update=False)
        yield Outcome(etc_only(oracle), etc_only(root), merge, host_file, b"host\n")


def test_first_deployment_equals_rpm_install(first: Outcome) -> None:
    assert diff_snapshots(first.expected, first.actual) == []
    assert first.host_file.read_bytes() == first.host_before
    assert any(a.action == "rpmorig" for a in first.merge.actions)
    assert any(a.action == "rpmnew" for a in first.merge.actions)
