"""The file list's columns read fast and exactly: string arrays split in C, owners
interned, names and digests decoded a chunk at a time (issue 17), checked against a
plain reading of the same bytes, hostile headers included."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from rpmextents.errors import FormatError
from rpmextents.filelist import CHUNK, FileList, _decoded, _interned
from rpmextents.header import HEADER_MAGIC, Header, TagType

STRINGS, AFTER = 1000, 1001


def _blob(strings: list[bytes], after: bytes = b"", count: int | None = None,
          terminated: bool = True) -> bytes:
    """A header: tag STRINGS a string array of `strings`, then tag AFTER a BIN of `after`."""
    data = b"\0".join(strings) + (b"\0" if terminated and strings else b"")
    index = struct.pack(">IIiI", STRINGS, TagType.STRING_ARRAY, 0,
                        len(strings) if count is None else count)
    index += struct.pack(">IIiI", AFTER, TagType.BIN, len(data), len(after))
    data += after
    return HEADER_MAGIC + struct.pack(">II", 2, len(data)) + index + data


def _plain(blob: bytes, header: Header, n: int) -> list[int]:
    """Offsets the slow way: one find per string."""
    pos, out = header._store, []
    for _ in range(n):
        out.append(pos)
        pos = blob.index(b"\0", pos) + 1
    return out


names = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"x")), max_size=300)


@settings(max_examples=150, deadline=None)
@given(names, st.binary(max_size=600))
def test_string_offsets_match_a_plain_reading(strings: list[bytes], after: bytes) -> None:
    blob = _blob(strings, after)
    h = Header(blob)
    offsets = h.string_offsets(STRINGS)
    assert list(offsets) == _plain(blob, h, len(strings))
    assert [h.string_at(o).encode("utf-8", "surrogateescape") for o in offsets] == strings


def test_long_strings_and_a_long_array() -> None:
    """Strings longer than a scan's span, and more strings than fit one span."""
    strings = [b"a" * 3_000_000, b"", b"b" * 70_000] + [b"%06d" % i for i in range(300_000)]
    blob = _blob(strings, bytes(5000))
    h = Header(blob)
    offsets = h.string_offsets(STRINGS)
    assert len(offsets) == len(strings)
    assert offsets[1] == offsets[0] + 3_000_001 and h.string_at(offsets[-1]) == "299999"
    assert list(offsets[:5]) == _plain(blob, h, 5)


def test_an_unterminated_string_array_is_refused() -> None:
    with pytest.raises(FormatError, match="not terminated"):
        Header(_blob([b"abc", b"def"], terminated=False)).string_offsets(STRINGS)
    # a count larger than the strings there: the NULs that follow in other tags don't count
    # past the data store's end
    with pytest.raises(FormatError, match="not terminated"):
        Header(_blob([b"abc"], b"zz", count=3)).string_offsets(STRINGS)


def test_a_count_beyond_the_array_reads_into_the_next_tag_as_before() -> None:
    """rpm's own rule (each string ends at a NUL inside the store) is all that is checked."""
    blob = _blob([b"abc"], b"x\0y\0", count=3)
    h = Header(blob)
    assert list(h.string_offsets(STRINGS)) == _plain(blob, h, 3)


@pytest.mark.parametrize("values", [
    [b"root"] * 5000,
    [b"root"] * 4999 + [b"games"],
    [b"games"] + [b"root"] * 4999,
    [b"r\xe9ot", b"root", b"r\xe9ot"],  # not UTF-8: kept apart as rpm's bytes
    [b"root", b"rootroot"[:4]] * 3,
])
def test_interned_owners(values: list[bytes]) -> None:
    h = Header(_blob(values, bytes(64)))
    distinct, which = _interned(h, STRINGS, len(values), "owners", "root")
    indexes = which if which is not None else [0] * len(values)
    assert (which is None) == (len(set(values)) == 1)  # one value: no per-file index at all
    assert [distinct[i].encode("utf-8", "surrogateescape") for i in indexes] == values
    assert len(distinct) == len(set(values))


def test_interned_checks_the_count() -> None:
    with pytest.raises(FormatError, match="3 entries for 4 files"):
        _interned(Header(_blob([b"a", b"b", b"c"])), STRINGS, 4, "FILEUSERNAME", "root")


def test_decoded_crosses_chunks() -> None:
    strings = [f"name-{i}-\u00e9".encode() for i in range(CHUNK * 2 + 7)]
    h = Header(_blob(strings, bytes(16)))
    offsets = h.string_offsets(STRINGS)
    got = list(_decoded(h, offsets, 0, len(strings)))
    assert got == [s.decode() for s in strings]
    assert list(_decoded(h, offsets, CHUNK - 1, CHUNK + 2)) == got[CHUNK - 1:CHUNK + 2]


def test_entries_below_are_the_same_entries_as_a_full_walk() -> None:
    from deploy.delta import _placed_outline
    from fixtures.build import fixture_packages
    from rpmextents.files import header_files
    from rpmextents.header import read_prefix

    for name in ("outside-usr", *sorted(fixture_packages())[:6]):
        with open(fixture_packages()[name], "rb") as f:
            files = header_files(read_prefix(f).header)
        walked = list(files)
        assert walked == [files[i] for i in range(len(files))]  # __iter__ == entry(i)
        for top in ("/etc", "/etc/", "/usr/share", "/e"):
            d = top.rstrip("/")
            want = [e for e in walked if e.path == d or e.path.startswith(d + "/")]
            assert list(files.entries_below(top)) == want, (name, top)
        by_columns, by_entries = _placed_outline(files), _placed_outline(walked)
        assert (list(by_columns[0]), *by_columns[1:]) == (list(by_entries[0]), *by_entries[1:]), name
    with open(fixture_packages()["outside-usr"], "rb") as f:
        files = header_files(read_prefix(f).header)
    assert [e.path for e in files.entries_below("/etc")] == [
        "/etc/outside-usr.conf", "/etc/outside-usr.d", "/etc/outside-usr.d/defaults.conf"]


def test_outline_owner_names_and_setid_modes_agree_with_the_entries() -> None:
    """The columns the update plan, the owner accounting and sysusers read instead of
    making an Entry per file say what the entries say, %ghost files and owners included."""
    from fixtures.build import fixture_packages
    from rpmextents.accounts import sysusers_entries
    from rpmextents.files import header_files
    from rpmextents.header import read_prefix

    for name in sorted(fixture_packages()):
        with open(fixture_packages()[name], "rb") as f:
            files = header_files(read_prefix(f).header)
        walked = list(files)
        assert list(files.outline()) == [(e.path, e.type, e.ghost) for e in walked], name
        live = [e for e in walked if not e.ghost]
        assert files.owner_names() == ({e.user for e in live}, {e.group for e in live}), name
        assert sysusers_entries(files) == sysusers_entries(walked), name


def test_owner_names_leave_out_the_owners_of_ghost_files_only(tmp_path: Path) -> None:
    from benchmarks.rpmwriter import FileEntry, PackageSpec, write_package
    from rpmextents.entry import FileFlag
    from rpmextents.files import header_files
    from rpmextents.header import read_prefix

    ghost = int(FileFlag.GHOST)
    spec = PackageSpec(name="ghosts", version="1", release="1", arch="x86_64", files=(
        FileEntry("/usr/lib/ghosts", 0o40755),
        FileEntry("/usr/lib/ghosts/live", 0o100644, user="alive", group="alive", data=b"x"),
        FileEntry("/usr/lib/ghosts/gone", 0o100644, user="spook", group="spooks", flags=ghost),
        FileEntry("/usr/lib/ghosts/also", 0o100644, user="alive", group="spooks", data=b"y"),
    ))
    written = write_package(spec, tmp_path, level=1)
    with open(written.path, "rb") as f:
        files = header_files(read_prefix(f).header)
    assert files.owner_names() == ({"root", "alive"}, {"root", "alive", "spooks"})
    assert [(p, g) for p, _, g in files.outline()] == [
        ("/usr/lib/ghosts", False), ("/usr/lib/ghosts/also", False),
        ("/usr/lib/ghosts/gone", True), ("/usr/lib/ghosts/live", False)]


def _split_list(dirnames: list[str], files: list[tuple[int, str]]) -> FileList:
    """A file list whose paths are DIRNAMES[i] + BASENAMES as given, however odd the split."""
    from benchmarks.rpmwriter import Header as HeaderWriter
    from benchmarks.rpmwriter import TagType as Kind
    from rpmextents.header import Tag

    w = HeaderWriter()
    w.add(Tag.DIRNAMES, Kind.STRING_ARRAY, dirnames)
    w.add(Tag.BASENAMES, Kind.STRING_ARRAY, [name for _, name in files])
    w.add(Tag.DIRINDEXES, Kind.INT32, [k for k, _ in files])
    w.add(Tag.FILEMODES, Kind.INT16, [0o100644] * len(files))
    w.add(Tag.FILESIZES, Kind.INT32, [0] * len(files))
    w.add(Tag.FILEFLAGS, Kind.INT32, [64 if i % 3 == 0 else 0 for i in range(len(files))])
    return FileList(Header(w.blob(63)))


# Directory names that end mid-name, hold no slash at the end, or are "/" itself: rpmbuild
# writes none of them, a hostile header may.
_DIRNAMES = ["/", "/etc/", "/et", "/etc", "/etcx/", "/usr/", "/usr", "/usr/lib/", "/u", "", "/etc/a/",
             "/usr/lib/sysimage/", "/usr/lib/sysimage", "/usr/lib/sysimage/rpm/", "/usr/lib/sys",
             "/usr/lib/sysusers.d/", "/usr/lib/sysusers.d"]
_BASENAMES = ["etc", "c", "c/x", "/x", "x", "usr", "sr/x", "r", "usr/x", "etc/y", "rpm", "rpmimg",
              "rpm/x", "image/rpmimg/y", "sysimage", "lib/sysimage", "a.conf", "/a.conf", "users.d/b.conf"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_DIRNAMES) - 1), st.sampled_from(_BASENAMES)),
                min_size=1, max_size=12))
def test_entries_below_and_paths_in_agree_with_every_path(files: list[tuple[int, str]]) -> None:
    """entries_below and account's outside-/usr list ask only the directory names that may
    lead to a wanted path (paths_in): the same answer as looking at every path."""
    from deploy.tree import TreeBuilder
    from imagespec.relocation import outside_usr

    try:
        fl = _split_list(_DIRNAMES, files)
    except FormatError:
        assume(False)  # a path the file list refuses (relative, "//"): no list to ask
    walked = list(fl)
    for top in ("/etc", "/etc/", "/usr", "/e"):
        d = top.rstrip("/")
        assert list(fl.entries_below(top)) == [e for e in walked if e.path == d or e.path.startswith(d + "/")]
    # The package database claim, and the sysusers.d files, from the candidates alone.
    from rpmextents.accounts import sysusers_entries
    from rpmextents.files import claim_candidates, package_db_path

    candidates = list(claim_candidates(fl))
    assert package_db_path(candidates) == package_db_path((e.path, e.mode) for e in walked)
    assert set(candidates) <= {(e.path, e.mode) for e in walked}
    assert sysusers_entries(fl) == sysusers_entries(walked)
    # The update plan's outline, relocated by directory name, as the path-by-path one.
    from deploy.delta import _placed_outline

    by_columns, by_entries = _placed_outline(fl), _placed_outline(walked)
    assert (list(by_columns[0]), *by_columns[1:]) == (list(by_entries[0]), *by_entries[1:])
    # The update plan's parents, and its outline of some paths, by directory name too.
    from deploy.delta import _outline_within, _parent_dirs

    rels = by_entries[1]
    assert _parent_dirs(fl) == {rel.rpartition("/")[0] for rel in rels if rel}
    dirnames = fl.placed_dirnames()
    if dirnames is not None:
        assert set(dirnames) == {e.path.rpartition("/")[0] + "/" for e in walked if not e.ghost}
    some = set(rels[::2])
    within = _outline_within(fl, some, {rel.rpartition("/")[0] for rel in some})
    assert list(zip(list(within[0]), *within[1:], strict=True)) == [
        t for t in zip(list(by_entries[0]), *by_entries[1:], strict=True) if t[1] in some]
    builder = TreeBuilder.__new__(TreeBuilder)
    builder.stats = type("S", (), {"users": set(), "groups": set(), "setid": [], "outside_usr": {}})()
    builder.account("p-1-1.noarch", fl)
    want = [e.path for e in walked if not e.ghost and outside_usr(e.path)]
    assert builder.stats.outside_usr.get("p-1-1.noarch", []) == want


def test_paths_in_decodes_nothing_of_a_package_without_wanted_directories() -> None:
    fl = _split_list(["/usr/bin/", "/usr/lib/"], [(0, "a"), (1, "b"), (0, "c")])
    assert list(fl.entries_below("/etc")) == []
    asked: list[str] = []
    assert list(fl.paths_in(lambda d: asked.append(d) or False)) == []
    assert asked == ["/usr/bin/", "/usr/lib/"]
    assert list(fl.paths_in(lambda d: d == "/usr/lib/")) == [(1, "/usr/lib/b")]


_PIECES = st.lists(st.sampled_from(["/", "a", ".", "..", "b", "/.", "é"]), max_size=5).map("".join)


@settings(max_examples=600, deadline=None)
@example(["/a/"], [(0, ".")]).via("a name that is '.'")
@example(["/a/"], [(0, "b"), (0, "..")]).via("a name that is '..'")
@example(["/a/"], [(0, "b"), (0, "")]).via("an empty name")
@example(["/a/"], [(0, ""), (0, "b")]).via("an empty first name")
@example(["/a/"], [(0, "."), (0, "b")]).via("a first name that is '.'")
@example(["/a/"], [(0, ".."), (0, "b")]).via("a first name that is '..'")
@example(["/a/"], [(0, "b"), (0, "."), (0, "c")]).via("a later name that is '.'")
@example(["//"], [(0, "b")]).via("a directory name that is two slashes")
@example(["/a/"], [(0, "b/c")]).via("a name with a slash")
@given(st.lists(_PIECES, min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), _PIECES), min_size=1, max_size=6))
def test_a_file_list_takes_exactly_the_paths_check_path_takes(
        dirnames: list[str], files: list[tuple[int, str]]) -> None:
    """Most file lists' paths are taken on a look at their directory names and the names'
    bytes; whatever the split, a list is refused exactly when one of its paths (a directory
    name any file uses, and the file's name) is one check_path refuses."""
    from rpmextents.entry import check_path

    files = [(k % len(dirnames), name) for k, name in files]
    if any("\0" in d for d in dirnames):
        return
    paths = [dirnames[k] + name for k, name in files]
    try:
        for p in paths:
            check_path(p)
        want = None
    except FormatError as e:
        want = str(e)
    try:
        fl = _split_list(dirnames, files)
    except FormatError as e:
        assert want is not None, f"{paths} refused: {e}"
        return
    assert want is None, f"{paths} taken, but {want}"
    assert list(fl.paths()) == paths


def test_plain_paths_are_taken_without_a_check_of_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual split (directory names ending in "/", plain names) checks no path one by one;
    a list with one name that is not plain checks each of them."""
    import rpmextents.filelist as filelist

    checked: list[str] = []
    monkeypatch.setattr(filelist, "check_path", lambda p: checked.append(p))
    filelist._checked.cache_clear()  # directory names other lists had are not checked again
    _split_list(["/usr/bin/", "/etc/"], [(0, "ls"), (1, ".hidden"), (0, "..x")])
    assert checked == ["/usr/bin", "/etc"]  # the directory names, not the paths
    checked.clear()
    _split_list(["/usr/"], [(0, "bin/ls"), (0, "cat")])
    assert checked == ["/usr", "/usr/bin/ls", "/usr/cat"]  # its directory name, then each path
    checked.clear()
    _split_list(["/usr/bin/", "/usr/"], [(0, "ls"), (1, "cat")])
    assert checked == []  # both directory names checked before, and taken
    filelist._checked.cache_clear()


def test_metadata_and_etc_entries_leave_the_extents_index_unread() -> None:
    """The update plan, the /etc merge, set-id files and sysusers.d files ask what the header
    says of a file: none of them reads the package's extents index (99 indexes of the
    benchmark update's 347 packages were read for them); an Entry asked for its data does."""
    from rpmextents.accounts import sysusers_entries

    fl = _split_list(["/etc/", "/usr/lib/sysusers.d/"], [(0, "a.conf"), (1, "b.conf")])
    fl.modes[1] = 0o104755  # one set-uid file
    asked: list[int] = []
    fl.defer_extents(lambda: asked.append(1) or [])
    assert [e.path for e in fl.entries_below("/etc")] == ["/etc/a.conf"]
    assert fl.metadata(1).mode == 0o104755 and fl.metadata(-1).extent is None
    assert [e.path for e in sysusers_entries(fl)] == ["/usr/lib/sysusers.d/b.conf"]
    from deploy.delta import Placement

    layout = Placement.of([("k", fl)])
    assert layout.at("lib/sysusers.d/b.conf").entry.path == "/usr/lib/sysusers.d/b.conf"  # type: ignore[union-attr]
    assert asked == []
    fl.entry(0)
    assert asked == [1]


def test_a_relocations_directory_prefix_is_what_tree_path_makes_of_each_file() -> None:
    """Relocation.tree_dir gives a directory name's tree prefix only where tree_path of each
    of its (normalised) files is that prefix and the name; other names get None."""
    from rpmextents.tree import Relocation

    for relocation in (Relocation("/usr", "/usr/share/factory"), Relocation("/")):
        for d in ("/", "/usr/", "/usr/bin/", "/usrx/", "/etc/", "/usr/lib/x/"):
            prefix = relocation.tree_dir(d)
            if prefix is not None:
                assert prefix + "name" == relocation.tree_path(d + "name"), (relocation, d)
        assert relocation.tree_dir("/usr/bin/") == ("bin/" if relocation.top == "/usr" else "usr/bin/")
    assert Relocation("/usr", "/usr/share/factory").tree_dir("/etc/") is None
    assert Relocation("/usr", "/usr/share/factory").tree_dir("/usr/") == ""


def _linked_list(files: list[tuple[int, int, int, bool]], devices: bool) -> FileList:
    """A file list of (mode, device, inode, ghost) files, each in /usr/ under its own name."""
    from benchmarks.rpmwriter import Header as HeaderWriter
    from benchmarks.rpmwriter import TagType as Kind
    from rpmextents.header import Tag

    w = HeaderWriter()
    w.add(Tag.DIRNAMES, Kind.STRING_ARRAY, ["/usr/"])
    w.add(Tag.BASENAMES, Kind.STRING_ARRAY, [f"f{i}" for i in range(len(files))])
    w.add(Tag.DIRINDEXES, Kind.INT32, [0] * len(files))
    w.add(Tag.FILEMODES, Kind.INT16, [mode for mode, _, _, _ in files])
    w.add(Tag.FILESIZES, Kind.INT32, [0] * len(files))
    w.add(Tag.FILEFLAGS, Kind.INT32, [64 if ghost else 0 for _, _, _, ghost in files])
    w.add(Tag.FILEINODES, Kind.INT32, [ino for _, _, ino, _ in files])
    if devices:
        w.add(Tag.FILEDEVICES, Kind.INT32, [dev for _, dev, _, _ in files])
    return FileList(Header(w.blob(63)))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0o100644, 0o100755, 0o40755, 0o120777]), st.integers(0, 2),
                          st.integers(0, 6), st.booleans()), min_size=1, max_size=10),
       st.booleans())
@example([(0o100644, 0, 1, False), (0o100644, 1, 1, False)], True)  # one inode, two devices
@example([(0o100644, 0, 1, False), (0o100644, 0, 2, False)], True)  # distinct: no links
@example([(0o100644, 0, 3, False), (0o100644, 0, 3, False)], False)  # no FILEDEVICES
def test_hardlink_groups_are_regular_files_sharing_device_and_inode(
        files: list[tuple[int, int, int, bool]], devices: bool) -> None:
    """Each member of a group of two or more regular, non-%ghost files with the same
    (device, inode) (device 0 without FILEDEVICES, inode 0 never a link) maps to the first."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (mode, dev, ino, ghost) in enumerate(files):
        if mode & 0o170000 == 0o100000 and not ghost and ino > 0:
            groups.setdefault((dev if devices else 0, ino), []).append(i)
    expected = {i: members[0] for members in groups.values() if len(members) > 1 for i in members}
    assert _linked_list(files, devices).hardlink_keys == expected
