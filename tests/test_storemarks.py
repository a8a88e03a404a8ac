"""Store marks (deploy.storemarks) on real btrfs: an entry the filesystem shows unchanged since
it hashed right is not hashed again, and every way of changing it through the filesystem, or a
planted or damaged marks file, means hashing it again (and a damaged entry is found)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile import flip_byte

from deploy import storemarks
from deploy.store import Store
from deploy.storemarks import StoreMarks, fingerprint
from fixtures.build import fixture_packages
from host import kernel
from host.digest import sha256_file
from rpmextents.transcode import transcode

BLOCK = 4096


class Entries:
    """Two packages in a store on a loop btrfs, and its marks file."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.store_root = top / "store"
        self.marks = top / "store-checked.json"
        self.shas: list[str] = []
        for name in ("sizes", "payload-none"):
            out = top / f"{name}.rpm"
            transcode(fixture_packages()[name], out)
            sha = sha256_file(out)
            dest = Store(self.store_root).path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(out, dest)
            dest.chmod(0o444)
            self.shas.append(sha)
        self.sha = self.shas[0]
        self.path = Store(self.store_root).path(self.sha)
        self.hashed: list[str] = []

    def store(self) -> Store:
        return Store(self.store_root, marks=self.marks)

    def check(self, during: Callable[[], None] | None = None) -> set[str]:
        """The damaged entries, as a deploy's check finds them; what it hashed is in hashed."""
        store = self.store()
        self.hashed = []

        def hash_damaged(shas: list[str]) -> set[str]:
            self.hashed = list(shas)
            found = {sha for sha in shas if store.damaged(sha)}
            if during is not None:
                during()
            return found

        marks = StoreMarks(self.marks, self.store_root)
        found = marks.check({sha: store.path(sha) for sha in self.shas}, hash_damaged)
        marks.save(store.has)
        return found


@pytest.fixture
def entries(btrfs: Path) -> Iterator[Entries]:
    yield Entries(btrfs)


def _marked(e: Entries) -> None:
    assert e.check() == set() and sorted(e.hashed) == sorted(e.shas)  # first time: hashed
    assert e.check() == set() and e.hashed == []  # then vouched for by the marks


def _flip_keeping_times(path: Path, offset: int) -> None:
    st = path.stat()
    flip_byte(path, offset)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_tree_items_of_a_file_in_many_extents_read_in_several_searches(
    btrfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = btrfs / "fragmented"
    with open(path, "wb") as f:
        for i in range(300):  # each block written out on its own: an extent each, mostly
            f.write(bytes([i % 251]) * BLOCK)
            f.flush()
            os.fsync(f.fileno())
    kernel.sync_filesystem(btrfs)
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = kernel.inode_items(fd)
        monkeypatch.setattr(kernel, "_SEARCH_BUFFER", 1024)  # a dozen items a search
        assert kernel.inode_items(fd) == whole
        monkeypatch.setattr(kernel, "_SEARCH_BUFFER", 100)  # not even the inode item: grown
        assert kernel.inode_items(fd) == whole
    finally:
        os.close(fd)
    assert whole[0].type == kernel.BTRFS_INODE_ITEM_KEY and whole[0].objectid == path.stat().st_ino
    extents = [i for i in whole if i.type == kernel.BTRFS_EXTENT_DATA_KEY]
    assert len(extents) > 40
    # file extent items tile the file: key offset, then num_bytes at byte 45 of the item
    pos = 0
    for item in extents:
        assert item.offset == pos
        pos += int.from_bytes(item.data[45:53], "little")
    assert pos == 300 * BLOCK


def test_an_unchanged_entry_is_hashed_once_and_reads_keep_its_mark(entries: Entries) -> None:
    e = entries
    st = e.path.stat()
    os.utime(e.path, ns=(st.st_mtime_ns - 10**9, st.st_mtime_ns))  # atime before mtime
    fd = os.open(e.path, os.O_RDONLY)
    before = kernel.inode_items(fd)[0].data
    os.close(fd)
    _marked(e)  # hashing it read it, and relatime moved its atime
    e.path.read_bytes()
    kernel.sync_filesystem(e.top)
    fd = os.open(e.path, os.O_RDONLY)
    after = kernel.inode_items(fd)[0].data
    os.close(fd)
    assert e.path.stat().st_atime_ns > st.st_mtime_ns
    assert after[8:16] != before[8:16]  # the inode item was rewritten in a later transaction
    assert e.check() == set() and e.hashed == []
    assert json.loads(e.marks.read_text())["marks"].keys() == set(e.shas)
    assert e.marks.stat().st_mode & 0o777 == 0o600


def _overwrite(e: Entries) -> None:
    _flip_keeping_times(e.path, e.path.stat().st_size // 2)


def _overwrite_as_root(e: Entries) -> None:
    offset = e.path.stat().st_size // 2
    with open(e.path, "r+b") as f:  # root writes a 0444 file without chmod: only times change
        byte = f.read(offset + 1)[-1]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def _rewrite_keeping_times(path: Path, data: bytes) -> None:
    """Truncate path and write data into it, its mode and times put back as they were."""
    st = path.stat()
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)
    path.chmod(0o444)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _truncate_and_rewrite(e: Entries) -> None:
    data = bytearray(e.path.read_bytes())
    data[-1] ^= 1
    _rewrite_keeping_times(e.path, bytes(data))


def _clone_into(e: Entries) -> None:
    other = e.top / "other"
    other.write_bytes(os.urandom(BLOCK))
    st = e.path.stat()
    e.path.chmod(0o644)
    with open(other, "rb") as src, open(e.path, "r+b") as dst:
        kernel.clone_range(src.fileno(), 0, BLOCK, dst.fileno(), BLOCK)
    e.path.chmod(0o444)
    os.utime(e.path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace_by_rename(e: Entries) -> None:
    st = e.path.stat()
    forged = e.path.with_name("forged")
    shutil.copy2(e.path, forged)
    _flip_keeping_times(forged, 3 * BLOCK + 7)
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(forged, e.path)


@pytest.mark.parametrize("tamper", [_overwrite, _overwrite_as_root, _truncate_and_rewrite, _clone_into, _replace_by_rename],
                         ids=lambda f: f.__name__.strip("_"))
def test_changed_content_is_hashed_again_and_found(entries: Entries, tamper: Callable[[Entries], None]) -> None:
    e = entries
    _marked(e)
    extents = _extent_items(e.path)
    tamper(e)  # no sync: btrfs has not written the inode item or the extents yet
    assert e.check() == {e.sha} and e.hashed == [e.sha]
    assert e.sha not in json.loads(e.marks.read_text())["marks"]
    assert e.check() == {e.sha}  # and never marked while it is damaged
    # What the marks rest on: new content is new extent items, whatever the inode item says.
    assert _extent_items(e.path) != extents


def _extent_items(path: Path) -> list[kernel.TreeItem]:
    kernel.sync_filesystem(path.parent)
    fd = os.open(path, os.O_RDONLY)
    try:
        return [i for i in kernel.inode_items(fd) if i.type == kernel.BTRFS_EXTENT_DATA_KEY]
    finally:
        os.close(fd)


def _same_bytes_rewritten(e: Entries) -> None:
    _rewrite_keeping_times(e.path, e.path.read_bytes())


def _same_bytes_cloned_in(e: Entries) -> None:
    copy = e.top / "copy"
    shutil.copyfile(e.path, copy)
    e.path.chmod(0o644)
    with open(copy, "rb") as src, open(e.path, "r+b") as dst:
        kernel.clone_range(src.fileno(), 0, BLOCK, dst.fileno(), 0)
    e.path.chmod(0o444)


def _same_bytes_deduplicated(e: Entries) -> None:
    copy = e.top / "copy"
    shutil.copyfile(e.path, copy)
    with open(e.path, "rb") as src, open(copy, "r+b") as dst:  # the entry is the one that changes
        kernel.dedupe_range(dst.fileno(), 0, 2 * BLOCK, src.fileno(), 0)


def _chmod(e: Entries) -> None:
    e.path.chmod(0o644)
    e.path.chmod(0o444)


def _chattr(e: Entries) -> None:
    subprocess.run(["chattr", "+A", os.fspath(e.path)], check=True)


def _hard_link(e: Entries) -> None:
    os.link(e.path, e.top / "link")


@pytest.mark.parametrize("change", [_same_bytes_rewritten, _same_bytes_cloned_in, _same_bytes_deduplicated,
                                    _chmod, _chattr, _hard_link],
                         ids=lambda f: f.__name__.strip("_"))
def test_any_other_change_means_hashing_again(entries: Entries, change: Callable[[Entries], None]) -> None:
    e = entries
    _marked(e)
    change(e)
    assert e.check() == set() and e.hashed == [e.sha]  # hashed again, found intact: marked anew
    assert e.check() == set() and e.hashed == []


def test_a_change_while_it_is_hashed_is_not_marked(entries: Entries) -> None:
    e = entries
    assert e.check(during=lambda: _overwrite(e)) == set()  # hashed before the change
    assert e.check() == {e.sha} and e.hashed == [e.sha]


def test_a_planted_or_kept_back_marks_file_vouches_for_nothing_changed(entries: Entries) -> None:
    e = entries
    _marked(e)
    good = e.marks.read_bytes()
    _overwrite(e)
    e.marks.write_bytes(good)  # the marks from before the change, put back
    os.chmod(e.marks, 0o600)
    assert e.check() == {e.sha}
    # another entry's mark under this entry's name
    marks = json.loads(good)
    marks["marks"][e.sha] = marks["marks"][e.shas[1]]
    e.marks.write_text(json.dumps(marks))
    assert e.check() == {e.sha}


def _symlink(e: Entries, good: bytes) -> None:
    real = e.top / "elsewhere.json"
    real.write_bytes(good)
    real.chmod(0o600)
    e.marks.unlink()
    e.marks.symlink_to(real)


def _writable_by_others(e: Entries, good: bytes) -> None:
    e.marks.chmod(0o666)


def _other_owner(e: Entries, good: bytes) -> None:
    os.chown(e.marks, 1000, 1000)


def _junk(e: Entries, good: bytes) -> None:
    e.marks.write_bytes(good[:-7])


def _wrong_format(e: Entries, good: bytes) -> None:
    e.marks.write_text(json.dumps({**json.loads(good), "format": 99}))


def _a_key_not_a_sha(e: Entries, good: bytes) -> None:
    data = json.loads(good)
    data["marks"]["../x"] = "0" * 64
    e.marks.write_text(json.dumps(data))


def _a_directory(e: Entries, good: bytes) -> None:
    e.marks.unlink()
    e.marks.mkdir()


@pytest.mark.parametrize("spoil", [_symlink, _writable_by_others, _other_owner, _junk, _wrong_format,
                                   _a_key_not_a_sha, _a_directory],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_marks_file_not_as_written_is_ignored(entries: Entries, spoil: Callable[[Entries, bytes], None]) -> None:
    e = entries
    _marked(e)
    spoil(e, e.marks.read_bytes())
    if e.marks.is_dir():
        assert e.check() == set() and sorted(e.hashed) == sorted(e.shas)  # can't be written: no marks
        return
    assert e.check() == set() and sorted(e.hashed) == sorted(e.shas)
    assert not e.marks.is_symlink() and e.marks.stat().st_mode & 0o777 == 0o600  # written anew
    assert e.check() == set() and e.hashed == []


def test_an_inode_btrfs_may_write_in_place_gets_no_mark(btrfs: Path) -> None:
    nocow = btrfs / "nocow"
    nocow.touch()
    subprocess.run(["chattr", "+C", os.fspath(nocow)], check=True)
    nocow.write_bytes(os.urandom(3 * BLOCK))
    plain = btrfs / "plain"
    plain.write_bytes(os.urandom(3 * BLOCK))
    kernel.sync_filesystem(btrfs)
    assert fingerprint(nocow) is None and fingerprint(plain) is not None
    plain_link = btrfs / "plain-link"
    plain_link.symlink_to(plain)
    assert fingerprint(plain_link) is None  # never through a symlink


def test_outside_btrfs_every_entry_is_hashed(tmp_path: Path) -> None:
    if kernel.is_btrfs(tmp_path):
        pytest.skip("the temporary directory is on btrfs")
    e = Entries(tmp_path)
    assert e.check() == set() and sorted(e.hashed) == sorted(e.shas)
    assert e.check() == set() and sorted(e.hashed) == sorted(e.shas)
    assert not e.marks.exists()


def test_store_finds_damage_with_and_without_marks(entries: Entries) -> None:
    e = entries
    assert e.store().damaged_entries(e.shas) == set()
    assert storemarks.fingerprint(e.path) is not None
    _overwrite(e)
    assert e.store().damaged_entries(e.shas) == {e.sha}
    assert Store(e.store_root).damaged_entries(e.shas) == {e.sha}  # no marks: hashes all, 2 threads
