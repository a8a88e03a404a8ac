"""The store's deduplication index: lookups stay right as packages are added, chunks are
merged and their rows reordered in place.

The file lists here are plain rows standing for FileList's four accessors the index
reads (digest_algo, len, extent, digest); the index is exercised whole, nothing of it
is replaced.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import cast

from deploy.dedupindex import DigestIndex
from rpmextents.entry import Extent
from rpmextents.files import FileList


class _Rows:
    def __init__(self, rows: list[tuple[str, Extent | None]], algo: str = "sha256") -> None:
        self.rows, self.digest_algo = rows, algo

    def __len__(self) -> int:
        return len(self.rows)

    def extent(self, i: int) -> Extent | None:
        return self.rows[i][1]

    def digest(self, i: int) -> str:
        return self.rows[i][0]


def _digest(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _add(index: DigestIndex, name: str, rows: list[tuple[str, Extent | None]], algo: str = "sha256") -> Path:
    path = Path(f"/store/{name}.rpm")
    index.add(path, cast(FileList, _Rows(rows, algo)))
    return path


def test_every_digest_is_found_where_it_was_first_stored() -> None:
    rng = random.Random(17)
    index = DigestIndex()
    first: dict[str, tuple[Path, int, int]] = {}
    for p in range(40):  # enough packages of mixed sizes for several merges
        numbers = [rng.randrange(3000) for _ in range(rng.randrange(1, 300))]
        rows: list[tuple[str, Extent | None]] = [
            (_digest(n), Extent(4096 * i, 100 + n)) for i, n in enumerate(numbers)
        ]
        path = _add(index, f"p{p}", rows)
        for i, n in enumerate(numbers):
            first.setdefault(_digest(n), (path, 4096 * i, 100 + n))
    assert len(index._chunks) < 10  # merged, not one chunk a package
    for digest, (path, offset, length) in first.items():
        found = index.get("sha256", digest)
        assert found is not None and (found.path, found.offset, found.length) == (path, offset, length)
    assert index.get("sha256", _digest(-1)) is None


def test_rows_without_data_or_digest_are_not_indexed_and_algorithms_are_kept_apart() -> None:
    index = DigestIndex()
    _add(index, "a", [(_digest(1), None), ("", Extent(0, 5)), ("zz-not-hex", Extent(0, 5)),
                      (_digest(2), Extent(8192, 7))])
    _add(index, "b", [(_digest(3), Extent(0, 9))], algo="sha512")
    assert len(index) == 2
    assert index.get("sha256", _digest(1)) is None
    found = index.get("sha256", _digest(2))
    assert found is not None and (found.offset, found.length) == (8192, 7)
    assert index.get("sha256", _digest(3)) is None
    assert index.get("sha512", _digest(3)) is not None


def test_lookups_during_adds_never_see_a_half_reordered_chunk() -> None:
    """Fetch threads look up while the main thread adds (and merges) packages."""
    import threading

    index = DigestIndex()
    base = _add(index, "base", [(_digest(n), Extent(4096 * n, 100 + n)) for n in range(2000)])
    wrong: list[str] = []
    done = threading.Event()

    def look() -> None:
        while not done.is_set():
            for n in range(0, 2000, 7):
                found = index.get("sha256", _digest(n))
                if found is None or (found.path, found.offset, found.length) != (base, 4096 * n, 100 + n):
                    wrong.append(_digest(n))

    reader = threading.Thread(target=look)
    reader.start()
    try:
        for p in range(60):
            _add(index, f"p{p}", [(_digest(10_000 * (p + 1) + n), Extent(4096 * n, 1)) for n in range(1500)])
    finally:
        done.set()
        reader.join()
    assert not wrong
