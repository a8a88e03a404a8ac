"""A tree's package header files, as the /etc merge reads them: a file whose bytes are a
header already read for the deploy is hashed instead of parsed again, and anything else
(a header changed in the tree, one never read) is parsed from what the file holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deploy.errors import DeploymentError
from deploy.headers import HEADER_DIR, header_identities, installed_file_lists, installed_packages
from fixtures.build import fixture_packages
from rpmextents.files import FileList, header_files
from rpmextents.header import Tag, read_prefix

NAMES = ("outside-usr", "owners", "sizes")


def _raw(name: str) -> bytes:
    with open(fixture_packages()[name], "rb") as f:
        return read_prefix(f).raw


def _tree(tmp_path: Path, files: dict[str, bytes]) -> Path:
    usr = tmp_path / "usr"
    (usr / HEADER_DIR).mkdir(parents=True)
    for name, data in files.items():
        (usr / HEADER_DIR / f"{name}.rpm").write_bytes(data)
    return usr


def _known(name: str) -> tuple[str, FileList]:
    raw = _raw(name)
    with open(fixture_packages()[name], "rb") as f:
        return hashlib.sha256(raw).hexdigest(), header_files(read_prefix(f).header)


def test_known_headers_are_taken_and_the_others_parsed(tmp_path: Path) -> None:
    usr = _tree(tmp_path, {n: _raw(n) for n in NAMES})
    sha, files = _known("owners")
    got = list(installed_file_lists(usr, {sha: files}))
    assert [g is files for g in got] == [False, True, False]  # sorted by file name
    # The same packages, in the same order, as the parsing reader gives.
    assert [g.header.get(Tag.NAME) for g in got] == [p.name for p in installed_packages(usr)]
    assert [[e.path for e in g] for g in got] == [
        [e.path for e in header_files(p.prefix.header)] for p in installed_packages(usr)]


def test_a_header_file_changed_in_the_tree_is_read_from_the_file(tmp_path: Path) -> None:
    """The file named after "owners" holds another package's header: its sha256 is not
    that of the known header, so the merge sees what the tree holds, not the cache."""
    usr = _tree(tmp_path, {"owners": _raw("sizes")})
    sha, files = _known("owners")
    (got,) = installed_file_lists(usr, {sha: files})
    assert got is not files
    assert [e.path for e in got] == [e.path for e in _known("sizes")[1]]
    # One byte more than the known header: not the same bytes, parsed again.
    usr2 = _tree(tmp_path / "2", {"owners": _raw("owners") + b"\0"})
    (again,) = installed_file_lists(usr2, {sha: files})
    assert again is not files and [e.path for e in again] == [e.path for e in files]


def test_a_symlink_or_garbage_in_place_of_a_header_is_refused(tmp_path: Path) -> None:
    usr = _tree(tmp_path, {"bad": b"not a header"})
    with pytest.raises(DeploymentError, match="bad.rpm: unreadable package header"):
        list(installed_file_lists(usr, {}))
    usr = _tree(tmp_path / "2", {})
    os.symlink(fixture_packages()["owners"], usr / HEADER_DIR / "link.rpm")
    with pytest.raises(DeploymentError, match="link.rpm: unreadable package header"):
        list(installed_file_lists(usr, {_known("owners")[0]: _known("owners")[1]}))



def _subvolume_of_headers(path: Path) -> Path:
    """A new subvolume at path holding the header files of NAMES, as a /usr tree does."""
    from host import kernel

    kernel.subvolume_create(path)
    (path / HEADER_DIR).mkdir(parents=True)
    for n in NAMES:
        (path / HEADER_DIR / f"{n}.rpm").write_bytes(_raw(n))
    return path

def test_a_snapshots_unchanged_header_files_are_taken_as_read_from_its_origin(btrfs: Path) -> None:
    """The new tree of an update is a snapshot of the old: a header file nothing changed
    since is the file read in the old tree (same inode, same times), taken as read. One
    rewritten in the snapshot, even to the same size and mtime, and one added, are read
    from what they hold."""
    from host import kernel

    old = _subvolume_of_headers(btrfs / "old")
    new = btrfs / "new"
    kernel.subvolume_snapshot(old, new)
    changed = new / HEADER_DIR / "sizes.rpm"
    st = changed.stat()
    forged = bytearray(_raw("sizes"))
    forged[-1] ^= 0xFF  # the last byte of the header's data store: still parses
    changed.write_bytes(bytes(forged))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    (new / HEADER_DIR / "added.rpm").write_bytes(_raw("owners"))
    read: dict[tuple[int, int, int, int], FileList] = {}
    before = list(installed_file_lists(old, {}, read))
    after = list(installed_file_lists(new, {}, read))
    by_name = dict(zip(["added", *NAMES], after, strict=True))
    assert by_name["outside-usr"] is before[0] and by_name["owners"] is before[1]
    assert by_name["sizes"] is not before[2]
    with open(changed, "rb") as f:
        assert by_name["sizes"].header.blob == read_prefix(f).header.blob
    assert by_name["added"] is not before[1]
    # Without the memory of the old tree's reading every file is read from the new tree.
    assert all(a is not b for a, b in zip(list(installed_file_lists(new, {})), after, strict=True))


def test_only_the_lists_the_other_tree_can_take_are_remembered(btrfs: Path) -> None:
    """A full build's new tree shares no header file with the old one: remembering every
    list of the old tree held them all to the end of the /etc merge. With keep (the other
    tree's identities), only the lists of files both trees hold are kept."""
    from host import kernel

    old = _subvolume_of_headers(btrfs / "old")
    new = btrfs / "new"
    kernel.subvolume_snapshot(old, new)
    (new / HEADER_DIR / "sizes.rpm").unlink()
    (new / HEADER_DIR / "sizes.rpm").write_bytes(_raw("sizes"))  # same bytes, another file
    os.symlink("owners.rpm", new / HEADER_DIR / "link.rpm")
    keep = header_identities(new)
    assert len(keep) == 3  # the symlink is no header file
    read: dict[tuple[int, int, int, int], FileList] = {}
    before = list(installed_file_lists(old, {}, read, keep=keep))
    assert sorted(map(id, read.values())) == sorted(map(id, before[:2]))  # not "sizes"
    # A fresh tree (a full build's): nothing of the old tree is kept.
    fresh = _subvolume_of_headers(btrfs / "fresh")
    read.clear()
    list(installed_file_lists(old, {}, read, keep=header_identities(fresh)))
    assert read == {}
    list(installed_file_lists(fresh, {}, read, keep=()))
    assert read == {}


def test_a_full_builds_notes_stand_for_its_header_files_only_when_the_tree_holds_exactly_those(
        tmp_path: Path) -> None:
    """The /etc merge of a full build takes each package's /etc entries as the build noted
    them (in the header directory's order, not the manifest's: a later package's entry wins
    there), and reads the header files again when the tree holds any other set of them."""
    from deploy.etcmerge import EtcPart, etc_entries
    from deploy.wholesystem import _new_packages

    usr = _tree(tmp_path, {n: _raw(n) for n in NAMES})
    lists = {n: _known(n)[1] for n in NAMES}
    # Noted in another order than the names'.
    written = {f"{n}.rpm": (_known(n)[0], EtcPart.of(lists[n])) for n in reversed(NAMES)}
    got = list(_new_packages(usr, {}, None, written))
    assert got == [written[f"{n}.rpm"][1] for n in NAMES]
    parsed = list(installed_file_lists(usr, {}))
    assert etc_entries(got) == etc_entries(parsed) != {}
    assert list(etc_entries(got)) == list(etc_entries(parsed))
    # A header file more, or one less, than the build noted: every file is read again.
    (usr / HEADER_DIR / "planted.rpm").write_bytes(_raw("owners"))
    got = list(_new_packages(usr, {}, None, written))
    assert [type(g) for g in got] == [FileList] * 4
    del written["sizes.rpm"]
    (usr / HEADER_DIR / "planted.rpm").unlink()
    assert [type(g) for g in _new_packages(usr, {}, None, written)] == [FileList] * 3


def test_an_old_trees_header_files_are_taken_as_the_parts_a_full_build_noted_when_they_hash_to_them(
        tmp_path: Path) -> None:
    """A full build over a root whose deployment has the same packages: the old tree's header
    files whose bytes hash to a header the build noted are taken as its /etc part, not parsed;
    any other (a header of another package, or one byte changed) is parsed, so the merge sees
    the same /etc entries either way."""
    from deploy.etcmerge import EtcPart, etc_entries

    parts = {sha: EtcPart.of(files) for sha, files in (_known(n) for n in NAMES[:2])}
    changed = bytearray(_raw("owners"))
    changed[-1] ^= 1  # the last byte of its header's data: still a header, another one
    usr = _tree(tmp_path, {**{n: _raw(n) for n in NAMES}, "x-changed": bytes(changed)})
    got = list(installed_file_lists(usr, parts))
    assert [type(g) for g in got] == [EtcPart, EtcPart, FileList, FileList]
    assert got[:2] == list(parts.values())
    parsed = list(installed_file_lists(usr, {}))
    assert etc_entries(got[:3]) == etc_entries(parsed[:3]) != {}


def test_an_intact_trees_header_files_are_named_by_its_record_not_hashed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With names (the header files' sha256 by name, as an intact deployment's record gives
    them), a named header file is looked up by its name's digest without being read for a
    hash; a file the names leave out is hashed as before."""
    from deploy import headers
    from deploy.etcmerge import EtcPart

    parts = {sha: EtcPart.of(files) for sha, files in (_known(n) for n in NAMES)}
    shas = list(parts)
    usr = _tree(tmp_path, {n: _raw(n) for n in NAMES})
    hashed: list[object] = []
    real = headers.digest.file_digest

    def counted(f: object, name: str) -> object:
        hashed.append(f)
        return real(f, name)  # type: ignore[arg-type]

    monkeypatch.setattr(headers.digest, "file_digest", counted)
    names = {f"{NAMES[0]}.rpm": shas[0], f"{NAMES[1]}.rpm": shas[1]}
    got = list(installed_file_lists(usr, parts, names=names))
    assert got == [parts[sha] for sha in shas]
    assert len(hashed) == 1  # the third file's, which names leave out
    # A name given another package's digest takes that part: names stand for the tree's
    # bytes, which is why only an intact deployment's record gives them.
    swapped = {f"{NAMES[0]}.rpm": shas[1]}
    assert next(iter(installed_file_lists(usr, parts, names=swapped))) == parts[shas[1]]


def test_a_prefix_digest_is_worked_out_once_and_only_for_immutable_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """PackagePrefix.sha256 is the sha256 of raw, hashed once per prefix of bytes; a prefix
    built over mutable bytes is hashed on every call (what it holds may have changed)."""
    import dataclasses

    from host import digest
    from rpmextents.header import Header

    with open(fixture_packages()["owners"], "rb") as f:
        prefix = read_prefix(f)
    made = []
    real = digest.new

    def counted(name: str, size: int | None) -> digest.Hash:
        made.append(name)
        return real(name, size)

    monkeypatch.setattr(digest, "new", counted)
    expected = hashlib.sha256(prefix.raw).hexdigest()
    assert [prefix.sha256() for _ in range(3)] == [expected] * 3
    assert made == ["sha256"]
    blob = bytearray(prefix.header.blob)
    mutable = dataclasses.replace(prefix, header=Header(blob))  # type: ignore[arg-type]
    assert mutable.sha256() == expected
    blob[-1] ^= 1
    assert mutable.sha256() != expected
    assert len(made) == 3


def test_an_updates_shared_file_lists_are_parsed_for_etc_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An update's merge gets both trees' file lists as sequences: a package both trees
    have is one object, whose /etc part is worked out once; the merge is the same as with
    every list parsed on its own. Lists given one at a time (a full build's) are not kept."""
    import os
    import shutil

    from deploy.etcmerge import EtcPart, merge_etc

    of = EtcPart.of
    calls: list[FileList] = []
    monkeypatch.setattr(EtcPart, "of", classmethod(lambda cls, files: calls.append(files) or of(files)))
    shared = [_known(n)[1] for n in NAMES]
    alone = _known("sizes")[1]
    from rpmextents.transcode import transcode
    from tests.etcfixture import build_usr

    root, usr = tmp_path / "root", tmp_path / "usr"
    (root / "etc").mkdir(parents=True)
    for n in NAMES:  # the new /usr, /etc under share/factory
        transcode(fixture_packages()[n], tmp_path / f"{n}.rpm", fsync=False)
        build_usr(tmp_path / f"{n}.rpm", usr, root)

    def merged(old: object, new: object) -> tuple[object, ...]:
        fresh = tmp_path / f"root-{len(os.listdir(tmp_path))}"  # each merge onto the same root
        shutil.copytree(root, fresh, symlinks=True)
        fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in (fresh, usr)]
        try:
            return merge_etc(fds[0], fds[1], old, new).actions  # type: ignore[arg-type]
        finally:
            for fd in fds:
                os.close(fd)

    once = merged([*shared[:2], alone], shared)
    assert once  # it did merge: the packages' /etc entries were created
    assert [id(f) for f in calls] == [id(f) for f in shared] + [id(alone)]
    calls.clear()
    each = merged(iter([_known(n)[1] for n in NAMES]), iter([_known(n)[1] for n in NAMES]))
    assert len(calls) == 6
    assert once == each
