"""deploy.delta.plan on made-up file lists: what an update from one layout to another touches."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deploy.delta import NoDelta, Placement, plan
from fixtures.build import fixture_packages
from rpmextents import Entry, ExtentsPackage
from rpmextents.files import EntryType
from rpmextents.transcode import transcode

_MODES = {EntryType.FILE: stat.S_IFREG | 0o644, EntryType.DIR: stat.S_IFDIR | 0o755,
          EntryType.SYMLINK: stat.S_IFLNK | 0o777}


def entry(index: int, path: str, kind: EntryType = EntryType.FILE, digest: str = "aa" * 32,
          linkto: str = "", hardlink: int | None = None, mode: int | None = None) -> Entry:
    return Entry(index=index, path=path, type=kind, mode=mode if mode is not None else _MODES[kind],
                 user="root", group="root", mtime=1, size=3 if kind is EntryType.FILE else 0,
                 linkto=linkto, caps=None, rdev=0, digest=digest if kind is EntryType.FILE else "",
                 digest_algo="sha256", flags=0, hardlink_key=hardlink)


def test_unchanged_packages_touch_nothing_and_a_new_version_only_what_changed() -> None:
    a1 = [entry(0, "/usr/share/a", EntryType.DIR), entry(1, "/usr/share/a/same"), entry(2, "/usr/share/a/new", digest="bb" * 32)]
    a2 = [entry(0, "/usr/share/a", EntryType.DIR), entry(1, "/usr/share/a/same"), entry(2, "/usr/share/a/new", digest="cc" * 32)]
    b = [entry(0, "/usr/bin/b")]
    same = plan(Placement.of([("A1", a1), ("B", b)]), Placement.of([("A1", a1), ("B", b)]))
    assert (same.delete, same.reset_dirs, dict(same.write), same.kept) == ((), (), {}, 4)
    update = plan(Placement.of([("A1", a1), ("B", b)]), Placement.of([("A2", a2), ("B", b)]))
    assert dict(update.write) == {"A2": frozenset({2})} and update.delete == () and update.kept == 3


def test_removed_files_then_empty_directories_deepest_first() -> None:
    old = [entry(0, "/usr/share/x/deep/file"), entry(1, "/usr/share/x/other"), entry(2, "/usr/share/keep")]
    new = [entry(2, "/usr/share/keep")]
    p = plan(Placement.of([("P1", old)]), Placement.of([("P2", new)]))
    assert p.delete == ("share/x/deep/file", "share/x/other", "share/x/deep", "share/x")
    assert dict(p.write) == {}  # "keep" is the same file in the new package


def test_a_hardlinked_file_is_written_with_its_whole_group() -> None:
    old = [entry(0, "/usr/lib/h1", hardlink=0), entry(1, "/usr/lib/h2", hardlink=0), entry(2, "/usr/lib/h3", hardlink=0)]
    # Another package used to win at h2; it is gone, so h2 is the group's again: all three are linked anew.
    other = [entry(0, "/usr/lib/h2", digest="dd" * 32)]
    p = plan(Placement.of([("H", old), ("O", other)]), Placement.of([("H", old)]))
    assert dict(p.write) == {"H": frozenset({0, 1, 2})}


@pytest.mark.parametrize("old_type,new_type", [(EntryType.SYMLINK, EntryType.DIR), (EntryType.DIR, EntryType.SYMLINK)])
def test_a_changing_directory_symlink_with_paths_below_means_a_full_build(old_type: EntryType, new_type: EntryType) -> None:
    def pkg(kind: EntryType) -> list[Entry]:
        return [entry(0, "/usr/lib64", kind, linkto="lib" if kind is EntryType.SYMLINK else "")]

    below = [entry(0, "/usr/lib64/libx.so")]
    with pytest.raises(NoDelta, match="/lib64: a symlink that other paths lie below changes"):
        plan(Placement.of([("L1", pkg(old_type)), ("X", below)]), Placement.of([("L2", pkg(new_type)), ("X", below)]))


def test_packages_disagreeing_on_a_changed_path_mean_a_full_build() -> None:
    link = [entry(0, "/usr/bin/tool", EntryType.SYMLINK, linkto="tool.real")]
    # The later package's file wins over the symlink; when that file changes, the update
    # does not second-guess which would win: it builds in full.
    v1, v2 = [entry(0, "/usr/bin/tool", digest="ee" * 32)], [entry(0, "/usr/bin/tool", digest="ff" * 32)]
    with pytest.raises(NoDelta, match="/bin/tool: packages disagree on what it is"):
        plan(Placement.of([("S", link), ("F1", v1)]), Placement.of([("S", link), ("F2", v2)]))
    # While it doesn't change, they may disagree.
    assert plan(Placement.of([("S", link), ("F1", v1)]), Placement.of([("S", link), ("F1", v1)])).kept == 1


def test_a_directory_losing_its_owner_but_not_its_children_is_reset() -> None:
    owner = [entry(0, "/usr/share/owned", EntryType.DIR, mode=stat.S_IFDIR | 0o750)]
    child = [entry(0, "/usr/share/owned/file")]
    p = plan(Placement.of([("O", owner), ("C", child)]), Placement.of([("C", child)]))
    assert p.reset_dirs == ("share/owned",) and p.delete == ()


def test_file_lists_of_real_packages_plan_like_their_entries(tmp_path: Path) -> None:
    """Placements of packages' own file lists (columns, no Entry per file) plan as the same
    packages' entries do: nothing for an unchanged image, a hardlink group whole when one of
    its paths comes back from another package, and not the other groups."""
    out = tmp_path / "hardlinks.rpm"
    transcode(fixture_packages()["hardlinks"], out)
    with ExtentsPackage.open(out) as pkg:
        files = pkg.entries()
    entries = list(files)
    group = {e.index for e in entries if e.path.endswith(("/a", "/b", "/c"))}
    assert len(group) == 3
    other = [entry(0, "/usr/share/hardlinks/b", digest="dd" * 32)]
    for listed in (files, entries):
        same = plan(Placement.of([("H", listed)]), Placement.of([("H", listed)]))
        assert dict(same.write) == {} and same.kept == len(Placement.of([("H", listed)]).codes)
        back = plan(Placement.of([("H", listed), ("O", other)]), Placement.of([("H", listed)]))
        assert dict(back.write) == {"H": frozenset(group)}
