"""The store's cache of parsed file lists: the same entries as the header, and a damaged
or missing cache is parsed again, never trusted as something else."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from deploy.entrycache import EntryCache
from deploy.store import Store
from fixtures.build import fixture_packages
from rpmextents import ExtentsPackage, transcode


def _stored(tmp_path: Path, name: str) -> tuple[Store, str]:
    work = tmp_path / "x.rpm"
    transcode(fixture_packages()[name], work)
    sha = hashlib.sha256(work.read_bytes()).hexdigest()
    store = Store(tmp_path / "@rpmimg" / "store")
    dest = store.path(sha)
    dest.parent.mkdir(parents=True)
    shutil.move(work, dest)
    return store, sha


def test_file_lists_come_back_from_the_cache_as_parsed(tmp_path: Path) -> None:
    store, sha = _stored(tmp_path, "hardlinks")
    with ExtentsPackage.open(store.path(sha)) as pkg:
        truth = (pkg.nevra, pkg.entries())
    assert store.file_list(sha) == truth
    cache = EntryCache(tmp_path / "@rpmimg" / "cache" / "entries")
    assert cache.path(sha).is_file() and cache.load(sha) == truth
    # A new Store (the next deploy) reads the cache, not the package.
    aside = store.path(sha).rename(tmp_path / "aside.rpm")
    fresh = Store(store.root)
    assert fresh.file_list(sha) == truth
    aside.rename(store.path(sha))
    # Removing the package removes its cached list.
    fresh.remove(sha)
    assert not cache.path(sha).exists()


def test_a_damaged_cache_entry_is_parsed_again(tmp_path: Path) -> None:
    store, sha = _stored(tmp_path, "sizes")
    truth = store.file_list(sha)
    cache = EntryCache(tmp_path / "@rpmimg" / "cache" / "entries")
    for damage in (b"", b"\x00garbage", cache.path(sha).read_bytes()[:-7]):
        cache.path(sha).write_bytes(damage)
        assert cache.load(sha) is None
        assert Store(store.root).file_list(sha) == truth
        assert cache.load(sha) == truth  # rewritten
