"""The layout cache (deploy.layoutcache): an update reads the unchanged packages' headers
and file lists from one file, and a stale, planted, truncated, altered or foreign cache is
ignored (the store entries are read), never trusted for data."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploytools import Images, deploy, rpmimg
from storetools import stored

from deploy import layoutcache
from deploy.layoutcache import LayoutCache
from deploy.store import Store
from imagespec.manifest import ManifestPackage
from rpmextents import ExtentsPackage
from rpmextents.errors import ExtentsError
from rpmextents.index import HEAD

pytest_plugins = ("deployenv",)

NAMES = ("owners", "sizes", "modes")


@pytest.fixture
def cached(tmp_path: Path) -> tuple[Path, Path, list[ManifestPackage]]:
    """(store root, cache file, refs): three stored packages and a cache of them."""
    root = tmp_path / "store"
    store = Store(root)
    refs = [stored(store, tmp_path, n) for n in NAMES]
    cache = tmp_path / "layout-cache"
    layoutcache.save(cache, layoutcache.copies(store, [r.sha256 for r in refs]))
    return root, cache, refs


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """The paths ExtentsPackage.open opens from now on."""
    seen: list[Path] = []
    real = ExtentsPackage.open.__func__  # type: ignore[attr-defined]

    def counting(cls: type[ExtentsPackage], path: str | os.PathLike[str],
                 whole_checked: bool = False) -> ExtentsPackage:
        seen.append(Path(path))
        return real(cls, path, whole_checked)  # type: ignore[no-any-return]

    monkeypatch.setattr(ExtentsPackage, "open", classmethod(counting))
    yield seen


def _store(root: Path, cache: Path, refs: list[ManifestPackage]) -> Store:
    store = Store(root, remember=True)
    store.use_layout(LayoutCache.load(cache), {r.sha256: r.header_sha256 for r in refs})
    return store


def test_unchanged_entries_are_read_from_the_cache_as_from_themselves(
        cached: tuple[Path, Path, list[ManifestPackage]], opens: list[Path]) -> None:
    root, cache, refs = cached
    assert cache.stat().st_mode & 0o777 == 0o600
    store = _store(root, cache, refs)
    for ref in refs:
        assert store.check_stored(ref, content=False)
        pkg = store.package(ref.sha256)
        with ExtentsPackage.open(store.path(ref.sha256)) as real:
            assert pkg.header_bytes() == real.header_bytes()
            assert list(pkg.entries().paths()) == list(real.entries().paths())
            files, real_files = pkg.entries(), real.entries()
            assert [files.extent(i) for i in range(len(files))] == [
                real_files.extent(i) for i in range(len(real_files))]
            assert pkg.data_offset == real.data_offset and pkg.unchanged()
    assert opens == [store.path(r.sha256) for r in refs]  # this test's own reads only
    # Data is never located through a copy: opened() reads the entry itself.
    with store.opened(refs[0].sha256) as pkg:
        assert opens[-1] == store.path(refs[0].sha256) and pkg.fileno() >= 0


def test_a_changed_or_replaced_entry_is_read_again(
        cached: tuple[Path, Path, list[ManifestPackage]], opens: list[Path]) -> None:
    root, cache, refs = cached
    store = Store(root)
    replaced = store.path(refs[0].sha256)
    shutil.copy(replaced, replaced.with_suffix(".new"))
    os.rename(replaced.with_suffix(".new"), replaced)  # same bytes, another file
    touched = store.path(refs[1].sha256)
    os.utime(touched, ns=(0, 0))
    store = _store(root, cache, refs)
    for ref in refs:
        assert store.check_stored(ref, content=False)
    assert opens == [replaced, touched]


def _copy(cache: LayoutCache, sha256: str, now: os.stat_result) -> tuple[bytes, str]:
    """(bytes, header sha256) of a copy the cache has."""
    found = cache.copy(sha256, now)
    assert found is not None
    length, header_sha, chunks = found
    data = b"".join(chunks)
    assert len(data) == length
    return data, header_sha


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, n: data[offset:offset + n]


def _rewrite(cache: Path, body: Callable[[bytes], bytes]) -> None:
    """Change the cache's entries and write its checksum anew, as a forger would."""
    data = cache.read_bytes()[:-4]
    data = body(data)
    cache.write_bytes(data + zlib.crc32(data).to_bytes(4, "little"))


def _spoilers() -> list[tuple[str, Callable[[Path], None]]]:
    def truncate(cache: Path) -> None:
        with open(cache, "r+b") as f:
            f.truncate(cache.stat().st_size // 2)

    def flip(cache: Path) -> None:
        data = bytearray(cache.read_bytes())
        data[len(data) // 2] ^= 1
        cache.write_bytes(bytes(data))

    def other_format(cache: Path) -> None:
        _rewrite(cache, lambda d: d[:8] + struct.pack("<I", 1) + d[12:])

    def writable(cache: Path) -> None:
        cache.chmod(0o666)

    def other_owner(cache: Path) -> None:
        os.chown(cache, 65534, 65534)

    def a_link(cache: Path) -> None:
        target = cache.with_name("elsewhere")
        os.rename(cache, target)
        cache.symlink_to(target)

    def empty(cache: Path) -> None:
        cache.write_bytes(b"")

    return [("truncated", truncate), ("a flipped byte", flip), ("another format", other_format),
            ("writable by others", writable), ("another owner's", other_owner),
            ("a symlink", a_link), ("empty", empty)]


@pytest.mark.parametrize(("what", "spoil"), _spoilers(), ids=[w for w, _ in _spoilers()])
def test_a_cache_not_as_written_stands_for_nothing(
        cached: tuple[Path, Path, list[ManifestPackage]], opens: list[Path], what: str,
        spoil: Callable[[Path], None]) -> None:
    root, cache, refs = cached
    spoil(cache)
    assert LayoutCache.load(cache) is None, what
    store = _store(root, cache, refs)
    for ref in refs:
        assert store.check_stored(ref, content=False)
    assert len(opens) == len(refs)


def test_a_forged_copy_is_caught_by_the_manifest_and_the_entry_read(
        cached: tuple[Path, Path, list[ManifestPackage]], opens: list[Path]) -> None:
    """A cache rewritten with its checksum made anew: the first entry's copy replaced by the
    second's. Its header is not the one the manifest names for that entry: the store reads
    the entry itself, and the deploy goes on (no 'the manifest lies' refusal). An entry no
    manifest or record names a header for is never read from a copy."""
    root, cache, refs = cached
    entries = LayoutCache.load(cache)
    assert entries is not None
    store = Store(root)
    first, second = (os.stat(store.path(r.sha256)) for r in refs[:2])
    copy_of_second = _copy(entries, refs[1].sha256, second)
    entries.close()
    layoutcache.save(cache, [(refs[0].sha256, first, copy_of_second[1], len(copy_of_second[0]),
                              [copy_of_second[0]])])
    store = _store(root, cache, refs)
    assert store.check_stored(refs[0], content=False)
    assert store.package(refs[0].sha256).header_sha256 == refs[0].header_sha256
    assert opens == [store.path(refs[0].sha256)]
    # A copy that parses as the entry itself would, but for one byte of its header, read
    # without a manifest entry to check it against (as a package only the base has).
    path = store.path(refs[0].sha256)
    st = os.stat(path)
    with ExtentsPackage.open(path) as pkg:
        start = bytearray(os.pread(pkg.fileno(), pkg.data_offset, 0))
        end = pkg.header_end
    for at in range(end - 1, 0, -1):
        start[at] ^= 0x01
        try:
            ExtentsPackage(path, -1, (_reader(bytes(start)), st))
            break
        except ExtentsError:
            start[at] ^= 0x01
    layoutcache.save(cache, [(refs[0].sha256, st, refs[0].header_sha256, len(start), [bytes(start)])])
    store = _store(root, cache, refs)
    assert store.package(refs[0].sha256).header_sha256 == refs[0].header_sha256
    assert opens[-1] == path
    layoutcache.save(cache, layoutcache.copies(Store(root), [r.sha256 for r in refs]))
    store = _store(root, cache, refs[1:])
    store.package(refs[0].sha256)
    assert opens[-1] == store.path(refs[0].sha256)


def test_a_copys_index_is_read_when_asked_and_a_damaged_one_only_costs_its_sharing(
        cached: tuple[Path, Path, list[ManifestPackage]], caplog: pytest.LogCaptureFixture) -> None:
    """A package read from a copy has its header and file list at once; its extents index
    (only ever used to find stored data to share, which sharing checks again) is read and
    checked when first asked for. A copy whose index was changed (checksum made anew) is
    refused then, and the content index leaves that package out rather than fail; once the
    cache is closed, an index not read yet is an error too, never another file's bytes."""
    root, cache, refs = cached
    store = Store(root)
    path = store.path(refs[0].sha256)
    st = os.stat(path)
    with ExtentsPackage.open(path) as real:
        start = bytearray(os.pread(real.fileno(), real.data_offset, 0))
        at = real.header_end + HEAD.size + 5  # in the index's first record, past its head
        extents = [real.entries().extent(i) for i in range(len(real.entries()))]
        shared = next((i, e) for i, e in enumerate(real.entries()) if e.extent is not None and e.digest)
    start[at] ^= 0x01
    # copies() is read as save() writes (each copy's chunks come from the entry it has open)
    layoutcache.save(cache, itertools.chain(
        [(refs[0].sha256, st, refs[0].header_sha256, len(start), [bytes(start)])],
        layoutcache.copies(Store(root), [r.sha256 for r in refs[1:]])))
    store = _store(root, cache, refs)
    assert store.check_stored(refs[0], content=False)  # header and file list: as the entry's
    pkg = store.package(refs[0].sha256)
    assert pkg.entries()._extents_from is not None  # from the copy, its index not read yet
    assert list(pkg.entries().paths()) == [e.path for e in ExtentsPackage.open(path).entries()]
    with pytest.raises(ExtentsError):
        pkg.entries().extent(0)
    i, entry = shared[0], shared[1]
    assert entry.extent is not None and extents[i] == entry.extent
    with caplog.at_level("WARNING"):
        assert store.find_data(pkg.entries().digest_algo, entry.digest, entry.size) is None
    assert "skipped for deduplication" in caplog.text
    # Intact copies: their extents are the entries' own.
    store = _store(root, cache, refs)
    other = store.package(refs[1].sha256)
    assert other.entries()._extents_from is not None
    with ExtentsPackage.open(store.path(refs[1].sha256)) as real:
        assert [other.entries().extent(i) for i in range(len(other.entries()))] == [
            real.entries().extent(i) for i in range(len(real.entries()))]
        assert other.data_bytes == real.data_bytes
    third = store.package(refs[2].sha256)
    assert third.entries()._extents_from is not None
    assert store.layout is not None
    store.layout.close()
    taken = os.open("/dev/zero", os.O_RDONLY)  # most likely the number the cache had
    try:
        with pytest.raises(ExtentsError, match="copy of its index is gone"):
            third.entries().extent(0)
    finally:
        os.close(taken)


def test_a_foreign_cache_stands_for_nothing(
        cached: tuple[Path, Path, list[ManifestPackage]], opens: list[Path], tmp_path: Path) -> None:
    """The same packages stored elsewhere (another machine's store, a restored copy): other
    inodes and times, so none of its copies is used."""
    root, cache, refs = cached
    other = tmp_path / "other-store"
    shutil.copytree(root, other)
    store = _store(other, cache, refs)
    for ref in refs:
        assert store.check_stored(ref, content=False)
    assert len(opens) == len(refs)


def test_an_update_uses_the_cache_and_survives_a_forged_one(sysroot: Path, images: Images) -> None:
    """A deploy leaves the cache of the new default; an update whose cache was forged (each
    entry's copy swapped with another's, checksum made anew) still deploys and verifies."""
    deploy(sysroot, images.v1, images.key)
    cache = sysroot / "@rpmimg/layout-cache"
    loaded = LayoutCache.load(cache)
    assert loaded is not None and len(loaded._entries) > 1
    store = Store(sysroot / "@rpmimg/store")
    shas = sorted(loaded._entries)
    copies = [_copy(loaded, s, os.stat(store.path(s))) for s in shas]
    loaded.close()
    rotated = copies[1:] + copies[:1]
    layoutcache.save(cache, [(s, os.stat(store.path(s)), c[1], len(c[0]), [c[0]])
                             for s, c in zip(shas, rotated, strict=True)])
    new = deploy(sysroot, images.v2, images.key).json()
    assert new["build"] == "update"
    assert rpmimg("verify", "--sysroot", sysroot).code == 0
    # The new default's cache is as written again: every copy stands for its entry.
    again = LayoutCache.load(cache)
    assert again is not None
    for sha in again._entries:
        copy = _copy(again, sha, os.stat(store.path(sha)))
        with ExtentsPackage.open(store.path(sha)) as pkg:
            assert copy[0] == pkg.header_bytes() + os.pread(pkg.fileno(), pkg.data_offset - pkg.header_end,
                                                            pkg.header_end)
            assert copy[1] == pkg.header_sha256


def test_refresh_leaves_a_cache_that_is_already_as_written(
        cached: tuple[Path, Path, list[ManifestPackage]], tmp_path: Path) -> None:
    """A cache holding exactly the entries asked for, each unchanged since it was copied, is
    the file save() would write: refresh leaves it (same inode, same bytes). Anything else —
    an entry changed, another set or order of entries, a cache not as written, another mode —
    is written anew, to the bytes save() writes."""
    root, cache, refs = cached
    store = Store(root)
    shas = [r.sha256 for r in refs]
    fresh = tmp_path / "fresh"

    def as_saved(order: list[str]) -> bytes:
        layoutcache.save(fresh, layoutcache.copies(store, order))
        return fresh.read_bytes()

    (tmp_path / ".layout-cache.tmp-1").write_bytes(b"left by a killed run")
    before = os.stat(cache)
    assert not layoutcache.refresh(cache, store, shas + shas[:1])  # a repeated entry is one
    assert os.stat(cache).st_ino == before.st_ino and cache.read_bytes() == as_saved(shas)
    assert not (tmp_path / ".layout-cache.tmp-1").exists()

    os.utime(store.path(shas[1]), ns=(0, 0))  # a changed entry: its copy is taken again
    assert layoutcache.refresh(cache, store, shas)
    assert cache.read_bytes() == as_saved(shas)
    assert not layoutcache.refresh(cache, store, shas)

    for order in (shas[::-1], shas[:2]):
        assert layoutcache.refresh(cache, store, order)
        assert cache.read_bytes() == as_saved(order)

    for what, spoil in _spoilers():
        layoutcache.save(cache, layoutcache.copies(store, shas))
        spoil(cache)
        assert layoutcache.refresh(cache, store, shas), what
        assert not cache.is_symlink() and cache.read_bytes() == as_saved(shas), what
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600 and os.stat(cache).st_uid == os.geteuid()
    os.chmod(cache, 0o400)  # as written but for its mode
    assert layoutcache.refresh(cache, store, shas)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600


def test_a_header_digest_the_caller_knows_is_recorded_without_hashing_and_decides_nothing(
        cached: tuple[Path, Path, list[ManifestPackage]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """copies() records the header sha256 a caller gives for an entry instead of hashing
    the header again (anything but 64 hex digits given is ignored: the header is hashed);
    a copy recorded with a wrong one is still checked against the manifest by the store."""
    from host import digest

    root, _, refs = cached
    store = Store(root)
    shas = [r.sha256 for r in refs]
    hashed: list[int | None] = []
    real = digest.new

    def counted(name: str, size: int | None) -> digest.Hash:
        hashed.append(size)
        return real(name, size)

    monkeypatch.setattr(digest, "new", counted)
    given = {shas[0]: "0" * 64, shas[1]: "not a digest"}
    recorded = {sha: header for sha, _, header, _, _ in
                ((c[0], c[1], c[2], c[3], list(c[4])) for c in layoutcache.copies(store, shas, given))}
    assert recorded[shas[0]] == "0" * 64
    assert recorded[shas[1]] == refs[1].header_sha256 and recorded[shas[2]] == refs[2].header_sha256
    assert len(hashed) == 2  # the second and third entries' headers alone
    cache = tmp_path / "given"
    monkeypatch.setattr(digest, "new", real)
    layoutcache.save(cache, layoutcache.copies(store, shas, given))
    reader = _store(root, cache, refs)
    for ref in refs:
        assert reader.check_stored(ref, content=False)
        assert reader.package(ref.sha256).header_sha256 == ref.header_sha256


def test_runs_of_copies_from_the_previous_cache_are_copied_whole_to_the_same_bytes(
        cached: tuple[Path, Path, list[ManifestPackage]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache an update writes from the previous one's copies is byte for byte the cache
    written from the store entries themselves, whatever the order, with entries changed or
    added between; copies lying one after the other in the previous cache are read as one
    piece (one run of reads), not entry by entry."""
    root, cache, refs = cached
    extra = stored(Store(root), tmp_path, "hardlinks")
    shas = [r.sha256 for r in refs]
    plain = Store(root)  # no layout cache: every copy from the entry itself
    runs: list[int] = []
    real_chunks = layoutcache._chunks

    def counted(fd: int, offset: int, length: int) -> Iterator[memoryview]:
        runs.append(length)
        return real_chunks(fd, offset, length)

    out, expected = tmp_path / "from-copies", tmp_path / "from-entries"
    for order, pieces in ((shas, 1), (shas[::-1], 3), ([shas[0], extra.sha256, *shas[1:]], 3),
                          (shas[1:], 1), ([shas[0], shas[2]], 2)):
        store = _store(root, cache, [*refs, extra])
        for ref in refs:
            assert store.check_stored(ref, content=False)  # read from the cache's copies
        monkeypatch.setattr(layoutcache, "_chunks", counted)
        runs.clear()
        layoutcache.save(out, layoutcache.copies(store, order))
        monkeypatch.setattr(layoutcache, "_chunks", real_chunks)
        layoutcache.save(expected, layoutcache.copies(plain, order))
        assert out.read_bytes() == expected.read_bytes(), order
        assert len(runs) == pieces, order  # the previous cache read in that many pieces
        assert set(LayoutCache.load(out)._entries) == set(order)  # type: ignore[union-attr]
        store.layout.close()  # type: ignore[union-attr]

    # An entry changed since its copy was made is read from itself, between two runs.
    os.utime(plain.path(shas[1]), ns=(0, 0))
    store = _store(root, cache, refs)
    for ref in refs:
        assert store.check_stored(ref, content=False)
    layoutcache.save(out, layoutcache.copies(store, shas))
    layoutcache.save(expected, layoutcache.copies(plain, shas))
    assert out.read_bytes() == expected.read_bytes()
