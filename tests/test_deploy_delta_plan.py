"""deploy.delta.plan on made-up file lists: what an update from one layout to another touches."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.delta import Kept, NoDelta, Placement, Plan, plan, plan_part, plan_update, same_result
from fixtures.build import fixture_packages
from rpmextents import Entry, ExtentsPackage
from rpmextents.files import EntryType, FileList
from rpmextents.header import Header
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


# --- the plan against its definition: old's tree, changed as the plan says, is new's -------

_UNIVERSE = {  # image path -> its type (one type a path: disagreeing packages are tested above)
    "/usr/a": EntryType.DIR, "/usr/a/b": EntryType.DIR, "/usr/c": EntryType.DIR,
    "/usr/a/f1": EntryType.FILE, "/usr/a/b/f2": EntryType.FILE, "/usr/c/f3": EntryType.FILE,
    "/usr/f4": EntryType.FILE, "/usr/a/b/deep/f5": EntryType.FILE,
    "/usr/a/l1": EntryType.SYMLINK, "/usr/c/l2": EntryType.SYMLINK,  # never anything's parent
}


@st.composite
def _package(draw: st.DrawFn) -> list[Entry]:
    paths = draw(st.lists(st.sampled_from(sorted(_UNIVERSE)), unique=True, max_size=6))
    out = []
    for i, path in enumerate(paths):
        kind = _UNIVERSE[path]
        bits = draw(st.sampled_from([0o755, 0o700] if kind is EntryType.DIR else [0o644, 0o600]))
        out.append(entry(i, path, kind, digest=draw(st.sampled_from(["aa" * 32, "bb" * 32])),
                         linkto=draw(st.sampled_from(["x", "y"])) if kind is EntryType.SYMLINK else "",
                         mode=_MODES[kind] & ~0o7777 | (0o777 if kind is EntryType.SYMLINK else bits)))
    return out


def _pool(draw: st.DrawFn, package: st.SearchStrategy[list[Entry]], most: int
          ) -> tuple[list[list[Entry]], list[str], list[str]]:
    """Packages P0, P1, ..., their keys, and the old image: some of them in some order."""
    pool = draw(st.lists(package, min_size=1, max_size=most))
    keys = [f"P{i}" for i in range(len(pool))]
    return pool, keys, draw(st.permutations(keys).flatmap(lambda ks: st.lists(st.sampled_from(ks), unique=True)))


@st.composite
def _update(draw: st.DrawFn) -> tuple[list[tuple[str, list[Entry]]], list[tuple[str, list[Entry]]]]:
    pool, keys, old = _pool(draw, _package(), 5)
    new = draw(st.permutations(keys).flatmap(lambda ks: st.lists(st.sampled_from(ks), unique=True)))
    return [(k, pool[int(k[1:])]) for k in old], [(k, pool[int(k[1:])]) for k in new]


_PARENT = "made as a parent"


def _fresh(layout: Placement) -> dict[str, object]:
    """What a fresh build of a layout leaves: each placed path's entry, and the directories
    only made as parents."""
    tree: dict[str, object] = {path: layout.entry(code) for path, code in layout.codes.items()}
    for path in layout.parents:
        tree.setdefault(path, _PARENT)
    return tree


def _applied(old: Placement, new: Placement, p: object) -> dict[str, object] | None:
    """old's tree changed as plan p says, as deploy.delta.remove and the extraction of the
    entries to write do; None where the removal would refuse (a directory not empty)."""
    tree = _fresh(old)
    for path in p.delete:  # type: ignore[attr-defined]
        if any(other.startswith(path + "/") for other in tree):
            return None
        tree.pop(path, None)
    for path in p.reset_dirs:  # type: ignore[attr-defined]
        tree[path] = _PARENT
    by_key = dict(new.packages)
    for key, indices in p.write.items():  # type: ignore[attr-defined]
        for i in indices:
            e = by_key[key][i]
            rel = e.path.removeprefix("/usr/")
            tree[rel] = e
            parts = rel.split("/")
            for n in range(1, len(parts)):
                tree.setdefault("/".join(parts[:n]), _PARENT)
    tree.setdefault("", _PARENT)
    return tree


def _as_parent(e: object) -> bool:
    """Whether an entry leaves what a directory made only as a parent is: root's, 0755."""
    return (isinstance(e, Entry) and e.type is EntryType.DIR and e.mode & 0o7777 == 0o755
            and (e.user, e.group) == ("root", "root"))


def _same(a: object, b: object) -> bool:
    if a is _PARENT or b is _PARENT:
        return a is b or _as_parent(a if b is _PARENT else b)
    return same_result(a, b)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(_update())
def test_the_plan_turns_the_old_tree_into_the_new_one(images) -> None:
    """Whatever two images are (packages shared, added, removed, reordered; directories,
    files and symlinks whose owners and metadata change), the old image's fresh tree changed
    as the plan says is the new image's fresh tree (a directory a package owns with root's
    0755 is what one made only as a parent is), or the plan refuses."""
    old_images, new_images = images
    old, new = Placement.of(old_images), Placement.of(new_images)
    try:
        p = plan(old, new)
    except NoDelta:
        return
    got = _applied(old, new, p)
    if got is None:
        return
    want = _fresh(new)
    want.setdefault("", _PARENT)
    assert sorted(got) == sorted(want)
    for path in want:
        assert _same(got[path], want[path]), (path, got[path], want[path])


# --- the update's plan, comparing only where the images can differ, is the whole plan ---------

# Paths with the types a package may give them (some disagree: those plans refuse), "/usr"
# itself, paths outside /usr (placed under share/factory, one of them where a /usr path is).
_KINDS = {
    "/usr": [EntryType.DIR], "/usr/a": [EntryType.DIR, EntryType.SYMLINK], "/usr/a/b": [EntryType.DIR],
    "/usr/a/f1": [EntryType.FILE], "/usr/a/b/f2": [EntryType.FILE], "/usr/a/b/deep/f5": [EntryType.FILE],
    "/usr/f4": [EntryType.FILE, EntryType.DIR], "/usr/a/l1": [EntryType.SYMLINK],
    "/usr/c/f3": [EntryType.FILE], "/etc": [EntryType.DIR], "/etc/e1": [EntryType.FILE],
    "/usr/share/factory/etc/e1": [EntryType.FILE], "/var/lib/v": [EntryType.DIR],
}
_GHOST_FLAG = 64


@st.composite
def _linked_package(draw: st.DrawFn) -> list[Entry]:
    """Entries of one package: some %ghost, some of its files one hardlink group."""
    paths = draw(st.lists(st.sampled_from(sorted(_KINDS)), unique=True, max_size=7))
    out: list[Entry] = []
    for i, path in enumerate(paths):
        kind = draw(st.sampled_from(_KINDS[path]))
        e = entry(i, path, kind, digest=draw(st.sampled_from(["aa" * 32, "bb" * 32])),
                  linkto=draw(st.sampled_from(["x", "y"])) if kind is EntryType.SYMLINK else "")
        ghost = draw(st.integers(0, 5)) == 0
        out.append(dataclasses.replace(e, flags=_GHOST_FLAG if ghost else 0))
    linked = [e.index for e in out if e.type is EntryType.FILE and not e.ghost and draw(st.booleans())]
    if len(linked) >= 2:
        out = [dataclasses.replace(e, hardlink_key=linked[0]) if e.index in linked else e for e in out]
    return out


@st.composite
def _ordered_update(draw: st.DrawFn) -> tuple[list[tuple[str, list[Entry]]], list[tuple[str, list[Entry]]]]:
    """Two images whose shared packages mostly keep their order (as updates do), sometimes not."""
    pool, keys, old = _pool(draw, _linked_package(), 6)
    new = [k for k in old if draw(st.integers(0, 3)) > 0]
    for k in keys:
        if k not in old and draw(st.booleans()):
            new.insert(draw(st.integers(0, len(new))), k)
    if draw(st.integers(0, 4)) == 0:
        new = draw(st.permutations(new))
    return [(k, pool[int(k[1:])]) for k in old], [(k, pool[int(k[1:])]) for k in new]


def _file_list(entries: list[Entry], split: bool) -> FileList:
    """The entries as a package header's file list: paths split at their last "/" as rpmbuild
    writes them, or (split) each below "/usr/" or "/" whole, a name holding "/"."""
    from benchmarks.rpmwriter import Header as HeaderWriter
    from benchmarks.rpmwriter import TagType as Kind
    from rpmextents.header import Tag

    parts = []
    for e in entries:
        head, _, name = e.path.rpartition("/")
        if split and e.path.startswith("/usr/") and "/" in e.path[5:]:
            head, name = "/usr", e.path[5:]
        parts.append((head + "/", name))
    dirnames = list(dict.fromkeys(d for d, _ in parts))
    w = HeaderWriter()
    w.add(Tag.DIRNAMES, Kind.STRING_ARRAY, dirnames)
    w.add(Tag.BASENAMES, Kind.STRING_ARRAY, [n for _, n in parts])
    w.add(Tag.DIRINDEXES, Kind.INT32, [dirnames.index(d) for d, _ in parts])
    w.add(Tag.FILEMODES, Kind.INT16, [e.mode for e in entries])
    w.add(Tag.FILESIZES, Kind.INT32, [e.size for e in entries])
    w.add(Tag.FILEFLAGS, Kind.INT32, [e.flags for e in entries])
    w.add(Tag.FILEMTIMES, Kind.INT32, [e.mtime for e in entries])
    w.add(Tag.FILEDIGESTS, Kind.STRING_ARRAY, [e.digest for e in entries])
    w.add(Tag.FILELINKTOS, Kind.STRING_ARRAY, [e.linkto for e in entries])
    w.add(Tag.FILEUSERNAME, Kind.STRING_ARRAY, [e.user for e in entries])
    w.add(Tag.FILEGROUPNAME, Kind.STRING_ARRAY, [e.group for e in entries])
    w.add(Tag.FILEDIGESTALGO, Kind.INT32, [8])
    w.add(Tag.FILEINODES, Kind.INT32, [e.hardlink_key + 1 if e.hardlink_key is not None else 100 + e.index
                                        for e in entries])
    files = FileList(Header(w.blob(63)))
    assert [(e.path, e.type, e.hardlink_key) for e in files] == [(e.path, e.type, e.hardlink_key) for e in entries]
    return files


def _outcome(old: list, new: list, whole: bool, kept: bool = False) -> object:
    try:
        if whole:
            p = plan(Placement.of(old), Placement.of(new))
        elif kept:
            p = _kept_plan(old, new)
        else:
            p = plan_update(old, new)
    except NoDelta:
        return NoDelta
    return p.delete, p.reset_dirs, dict(p.write)


def _kept_plan(old: list, new: list) -> Plan:
    """plan_update given no file list of the packages both images have, only their PlanParts
    (as deploy.summaries keeps them), reading a list where it asks for one."""
    lists = dict([*old, *new])
    shared = {k for k, _ in old} & {k for k, _ in new}
    kept = Kept([k for k, _ in old], {k: plan_part(e) for k, e in old})
    return plan_update([(k, None if k in shared else e) for k, e in old],
                       [(k, None if k in shared else e) for k, e in new], kept, lists.__getitem__)


@settings(max_examples=500, deadline=None)
@given(_ordered_update(), st.booleans())
def test_the_updates_plan_is_the_whole_plan(images, split: bool) -> None:
    """Whatever two images are (packages kept in order or not, added, removed; %ghost files,
    hardlink groups, paths outside /usr, paths whose packages disagree on their type), the
    plan that compares only the paths that can differ deletes, resets and writes what the
    plan comparing every path does, or both refuse: of entry lists and of file lists (their
    names split as rpmbuild writes them, or not), with the file lists of the packages both
    have or only what deploy.summaries keeps of them."""
    old, new = images
    want = _outcome(old, new, whole=True)
    assert _outcome(old, new, whole=False) == want
    assert _outcome(old, new, whole=False, kept=True) == want
    as_lists = {k: _file_list(e, split) for k, e in [*old, *new]}
    old_lists, new_lists = [(k, as_lists[k]) for k, _ in old], [(k, as_lists[k]) for k, _ in new]
    assert _outcome(old_lists, new_lists, whole=True) == want
    assert _outcome(old_lists, new_lists, whole=False) == want
    assert _outcome(old_lists, new_lists, whole=False, kept=True) == want


def test_an_update_compares_only_the_changed_packages_paths() -> None:
    """Of a hundred packages, one replaced: the plan looks at its paths and their parents
    (kept counts those left as they were), not the others', and still finds another
    package's file that the removed one had covered."""
    others = [(f"K{i}", [entry(0, f"/usr/share/k{i}", EntryType.DIR), entry(1, f"/usr/share/k{i}/f")])
              for i in range(100)]
    shadowed = ("S", [entry(0, "/usr/share/cover/f", digest="dd" * 32)])
    old_pkg = ("A1", [entry(0, "/usr/share/cover/f"), entry(1, "/usr/share/a/same"), entry(2, "/usr/share/a/gone")])
    new_pkg = ("A2", [entry(1, "/usr/share/a/same"), entry(2, "/usr/share/a/new")])
    old, new = [shadowed, *others, old_pkg], [shadowed, *others, new_pkg]
    p = plan_update(old, new)
    assert p.delete == ("share/a/gone",)
    assert dict(p.write) == {"S": frozenset({0}), "A2": frozenset({2})}
    assert p.kept == 1  # share/a/same: A2's is what A1's was
    whole = plan(Placement.of(old), Placement.of(new))
    assert (whole.delete, dict(whole.write)) == (p.delete, dict(p.write)) and whole.kept > 200


def test_shared_packages_in_another_order_are_compared_everywhere() -> None:
    """Two packages both images have, both placing one path, swap places: the other one wins
    it now, though neither package changed."""
    first, second = ("F", [entry(0, "/usr/share/both", digest="aa" * 32)]), ("G", [entry(0, "/usr/share/both", digest="bb" * 32)])
    extra = ("X", [entry(0, "/usr/share/x")])
    p = plan_update([first, second], [second, first, extra])
    assert dict(p.write) == {"F": frozenset({0}), "X": frozenset({0})}


def test_a_directory_a_removed_package_filled_stays_when_another_package_owns_it() -> None:
    """Only the removed package's file lay below a directory an unchanged package owns: the
    directory is no one's parent now, but is still placed, so it is not deleted."""
    owner = ("K", [entry(0, "/usr/share/kept", EntryType.DIR)])
    filler = ("A", [entry(0, "/usr/share/kept/f")])
    p = plan_update([owner, filler], [owner])
    assert p.delete == ("share/kept/f",) and dict(p.write) == {}
    assert (p.delete, p.reset_dirs) == (plan(Placement.of([owner, filler]), Placement.of([owner])).delete, ())
