"""A store that remembers what it read (an update deploy's): each entry's header and file
list are parsed once, and an entry found damaged or removed is never answered from memory."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from storetools import stored

from deploy.errors import PackageError
from deploy.store import Store
from rpmextents import ExtentsPackage
from rpmextents.errors import ExtentsError
from rpmextents.package import read_identity


def test_each_entry_is_read_once_when_remembering(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", remember=True)
    ref = stored(store, tmp_path, "owners")
    assert store.check_stored(ref, content=False)
    first = store.package(ref.sha256)
    assert store.package(ref.sha256) is first
    assert store.file_list(ref.sha256)[1] is first.entries()


def test_a_plain_store_keeps_only_the_last_entry_read_and_only_while_its_file_is_unchanged(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    ref, other = stored(store, tmp_path, "owners"), stored(store, tmp_path, "sizes")
    assert not store.at_hand(ref.sha256)
    first = store.package(ref.sha256)
    assert store.at_hand(ref.sha256) and not store.at_hand(other.sha256)
    assert store.package(ref.sha256) is first  # read last: kept
    assert store.file_list(ref.sha256)[1] is first.entries()
    store.package(other.sha256)
    again = store.package(ref.sha256)
    assert again is not first  # another entry was read in between: read anew
    os.utime(store.path(ref.sha256), ns=(0, 0))  # the file changed since it was read
    assert not store.at_hand(ref.sha256)
    assert store.package(ref.sha256) is not again
    kept = store.package(ref.sha256)
    with store.opened(ref.sha256) as pkg:  # extraction: the same header, its data open again
        assert pkg.entries() is kept.entries()
        e = next(e for e in pkg.entries() if e.extent is not None and e.size)
        assert e.extent is not None
        with ExtentsPackage.open(store.path(ref.sha256)) as fresh:  # its data reads
            assert b"".join(pkg.read_extent(e.extent)) == b"".join(fresh.read_extent(e.extent))
    assert store.package(ref.sha256) is not kept  # handed over: the store holds it no longer


def test_a_package_opened_again_after_its_file_was_replaced_is_read_anew(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    ref, other = stored(store, tmp_path, "owners"), stored(store, tmp_path, "sizes")
    path = store.path(ref.sha256)
    read = store.package(ref.sha256)
    shutil.copy(store.path(other.sha256), tmp_path / "swap.rpm")
    os.replace(tmp_path / "swap.rpm", path)  # another package under the same name
    assert not read.unchanged()
    with read.opened_again() as pkg:
        assert pkg.nevra == store.package(other.sha256).nevra != read.nevra
    with store.opened(ref.sha256) as pkg:
        assert pkg.nevra != read.nevra


def test_a_damaged_entry_is_forgotten_and_refetched(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", remember=True)
    ref = stored(store, tmp_path, "sizes")
    remembered = store.package(ref.sha256)
    path = store.path(ref.sha256)
    with open(path, "r+b") as f:  # a byte of the payload changes: the header still reads
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    assert not store.check_stored(ref, content=True)  # damaged: removed, to be fetched again
    assert not path.exists()
    ref2 = stored(store, tmp_path, "sizes")  # fetched again: the same bytes
    assert store.package(ref2.sha256) is not remembered


def test_an_entry_whose_header_no_longer_reads_is_removed_and_not_remembered(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", remember=True)
    ref = stored(store, tmp_path, "owners")
    path = store.path(ref.sha256)
    path.write_bytes(b"\0" * 200)  # not an extents RPM any more
    assert not store.check_stored(ref, content=False)
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        store.package(ref.sha256)


def test_a_store_that_remembers_nothing_checks_identity_from_the_header_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    ref = stored(store, tmp_path, "owners")
    ident = read_identity(store.path(ref.sha256))
    with ExtentsPackage.open(store.path(ref.sha256)) as pkg:
        assert (ident.nevra, ident.epoch, ident.block_size, ident.header_sha256) == (
            pkg.nevra, pkg.epoch, pkg.block_size, pkg.header_sha256)
    assert store.check_stored(ref, content=False, keep=False) and not store.at_hand(ref.sha256)
    with pytest.raises(PackageError, match="does not match the manifest entry"):
        store.check_stored(dataclasses.replace(ref, version="9.9"), content=False, keep=False)
    store.path(ref.sha256).write_bytes(b"\0" * 200)  # not an extents RPM any more
    assert not store.check_stored(ref, content=False, keep=False)
    assert not store.path(ref.sha256).exists()


def _index_digests(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The sizes of the extents-index digests worked out from now on."""
    from rpmextents import index

    sizes: list[int | None] = []
    real = index._digest.new

    def counted(name: str, size: int | None) -> object:
        sizes.append(size)
        return real(name, size)

    monkeypatch.setattr(index._digest, "new", counted)
    return sizes


def _literal_offset(path: Path) -> int:
    """Where the first literal byte of the entry's extents index is."""
    from rpmextents.index import HEAD, RECORD, parse_head

    with ExtentsPackage.open(path) as pkg:
        start = pkg.header_end
    with open(path, "rb") as f:
        f.seek(start)
        _, _, _, _, count, literal_size = parse_head(f.read(HEAD.size), start, path.stat().st_size)
    assert literal_size > 0
    return start + HEAD.size + RECORD.size * count


def test_an_entry_found_whole_is_read_without_its_index_digest_and_only_then(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry read before any check has its extents index's digest worked out; one the
    store just found to hash to its name (damaged_entries) is read without it. An entry
    damaged in its index is found damaged, so it is never read on that check's word."""
    root = tmp_path / "store"
    ref = stored(Store(root), tmp_path, "sizes")
    digests = _index_digests(monkeypatch)
    store = Store(root)
    store.package(ref.sha256)
    assert len(digests) == 1  # not checked yet: the index's own digest is checked
    store.forget(ref.sha256)
    assert store.damaged_entries([ref.sha256]) == set()
    digests.clear()
    with store.opened(ref.sha256) as pkg:
        assert pkg.data_bytes > 0  # its records read and checked
    assert digests == []  # nothing hashed: neither the index nor anything else

    path = store.path(ref.sha256)
    os.chmod(path, 0o644)
    at = _literal_offset(path)
    with open(path, "r+b") as f:  # a byte of a cpio name in the index: still parses
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x20]))
    fresh = Store(root)
    assert fresh.damaged_entries([ref.sha256]) == {ref.sha256}
    with pytest.raises(ExtentsError, match="digest mismatch"):
        fresh.package(ref.sha256)
    # And a store that found it whole before it was damaged forgets that when it removes it.
    store.remove(ref.sha256)
    assert ref.sha256 not in store._whole
