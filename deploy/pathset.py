"""A compact set of tree-relative paths and their parent directories, for `verify`'s
look for files no package owns.

A Python set of 200,000 path strings costs about 60 MB; this keeps 8 bytes a path: a
64-bit keyed hash (BLAKE2b under a key drawn for this set alone, so nobody can make a
path that collides with an owned one on purpose) in a sorted array, searched by
bisection. Parent directories, far fewer, are kept in an ordinary set of hashes.
"""

from __future__ import annotations

import bisect
import os
from array import array
from collections.abc import Iterable

from host import digest


class PathSet:
    """Paths added, and every parent directory of them; `in` after freeze()."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self._key = os.urandom(16)
        self._paths = array("Q")
        self._dirs: set[int] = set()
        self._sorted = True
        self.update(paths)

    def _hash(self, path: str) -> int:
        return int.from_bytes(digest.blake2b(os.fsencode(path), digest_size=8, key=self._key), "little")

    def add(self, path: str) -> None:
        self._paths.append(self._hash(path))
        self._sorted = False
        while "/" in path:
            path = path.rpartition("/")[0]
            h = self._hash(path)
            if h in self._dirs:
                break  # its parents are in already
            self._dirs.add(h)

    def update(self, paths: Iterable[str]) -> None:
        for p in paths:
            self.add(p)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        h = self._hash(path)
        if h in self._dirs:
            return True
        if not self._sorted:
            self._paths = array("Q", sorted(self._paths))
            self._sorted = True
        i = bisect.bisect_left(self._paths, h)
        return i < len(self._paths) and self._paths[i] == h
