"""The /etc merge equals the real rpm: rpm -U (update) and rpm -i (first deployment).

For every (config kind) x (vendor change) x (administrator edit) a file of one package pair
(tests/etcfixture.py): the root rpm -i'd v1 into, with the edits made, is copied; rpm -U v2
runs on one copy, deploy.etcmerge on the other (with v2's /usr built by rpmextents.extract on
btrfs), and both /etc trees must be the same: content, mode, owner, symlink targets, and
every .rpmnew/.rpmsave/.rpmorig.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from etcfixture import CASES, Built, build, build_usr, copy_root, prepared_root, rpm_upgrade

from deploy.etcfs import EtcTree
from deploy.etcmerge import EtcMerge, merge_etc
from fixtures.catalog import GROUP, PASSWD
from rpmextents import Owners

from conftest import btrfs_unavailable_reason, loop_btrfs
from oracle import Snapshot, diff_snapshots, rpm_install, rpm_unavailable_reason, snapshot


@dataclass(frozen=True)
class Outcome:
    expected: Snapshot
    actual: Snapshot
    merge: EtcMerge
    host_file: Path
    host_before: bytes
    # The same merge told the owners the build resolved (as deploy tells it): its result
    # and the factory paths it looked at.
    with_owners: Snapshot = field(default_factory=dict)
    merge_with_owners: EtcMerge | None = None
    factory_looks: tuple[int, int] = (0, 0)  # (without owners, with them)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def run_merge(root: Path, usr: Path, built: Built, update: bool, owners: Owners | None = None) -> EtcMerge:
    old, new = built.headers()
    root_fd, usr_fd = _open(root), _open(usr)
    try:
        return merge_etc(root_fd, usr_fd, [old] if update else None, [new], owners=owners)
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
        oracle, root, root2 = mnt / "oracle", mnt / "root", mnt / "root2"
        copy_root(base, oracle, database=True)
        copy_root(base, root)
        copy_root(base, root2)
        for where in (oracle, root, root2):
            for case in CASES:  # the administrator gave these another group, nothing else
                if case.name in _REGROUPED:
                    os.chown(where / case.path.lstrip("/"), -1, 1, follow_symlinks=False)
        rpm_upgrade(built.v2, oracle)
        usr = mnt / "usr"
        build_usr(built.v2_extents, usr, root)
        looks = []
        for where, owners in ((root, None), (root2, Owners.from_root(root))):
            with _counting_factory_looks() as counted:
                merged = run_merge(where, usr, built, update=True, owners=owners)
            looks.append((merged, counted[0]))
        yield Outcome(etc_only(oracle), etc_only(root), looks[0][0], host_file, b"the host's own file\n",
                      etc_only(root2), looks[1][0], (looks[0][1], looks[1][1]))


# Files the vendor did not change whose group the administrator changed: rpm -U writes the
# vendor's over them (same content, so not "modified"), and so must the merge.
_REGROUPED = ("plain-same-unchanged", "none-same-unchanged")


@contextlib.contextmanager
def _counting_factory_looks() -> Iterator[list[int]]:
    """Count EtcTree.look calls on a factory tree (one relocated to /usr/share/factory)."""
    counted = [0]
    real = EtcTree.look

    def look(self: EtcTree, path: str) -> object:
        if self.tree.relocation.outside is not None:
            counted[0] += 1
        return real(self, path)

    EtcTree.look = look  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        EtcTree.look = real  # type: ignore[method-assign]


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


def test_a_merge_told_the_builds_owners_equals_rpm_and_looks_at_less_of_the_factory(update: Outcome) -> None:
    """Told the owners the build resolved, the merge knows a root file that is the vendor's
    new file as built without looking at the factory; everything else is as before."""
    problems = diff_snapshots(update.expected, update.with_owners)
    assert problems == [], "\n".join(problems)
    assert update.merge_with_owners == update.merge
    without, told = update.factory_looks
    assert told < without


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
