"""Parsed file lists of stored packages, kept beside the store so an update reads only
the headers of the packages it has not seen.

    TOP/@rpmimg/cache/entries/<sha[:2]>/<sha256>    marshal of (VERSION, N-V-R.A, rows)

An update lays out the image it replaces and the new one (deploy.delta) and looks up
the store's file digests (deploy.store): both need every package's file list, and
parsing every header of an image costs more than the rest of a small update. A list is
written once, after its package was verified into the store, and read back instead of
the header. The cache is the store's own (root's, beside verified data): a missing,
unreadable or outdated entry is parsed again from the package and rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import marshal
import os
from pathlib import Path

from rpmextents import Entry
from rpmextents.files import EntryType, Extent

VERSION = 1
_FIELDS = tuple(f.name for f in dataclasses.fields(Entry))
_TYPES = {t.value: t for t in EntryType}


class EntryCache:
    """File lists by package sha256 under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def load(self, sha256: str) -> tuple[str, list[Entry]] | None:
        try:
            data = self.path(sha256).read_bytes()
            version, fields, nevra, rows = marshal.loads(data)
            if version != VERSION or tuple(fields) != _FIELDS:
                return None
            return nevra, [_entry(row) for row in rows]
        except (OSError, ValueError, EOFError, TypeError, KeyError):
            return None

    def save(self, sha256: str, nevra: str, entries: list[Entry]) -> None:
        """Write a verified package's list (best effort: a cache that can't be written is none)."""
        rows = [_row(e) for e in entries]
        path = self.path(sha256)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(marshal.dumps((VERSION, _FIELDS, nevra, rows)))
            os.replace(tmp, path)
        with contextlib.suppress(OSError):
            tmp.unlink()

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(OSError):
            self.path(sha256).unlink()


def _row(e: Entry) -> tuple[object, ...]:
    values = [getattr(e, name) for name in _FIELDS]
    values[_FIELDS.index("type")] = e.type.value
    values[_FIELDS.index("extent")] = None if e.extent is None else (e.extent.offset, e.extent.length)
    return tuple(values)


_TYPE_AT = _FIELDS.index("type")
_EXTENT_AT = _FIELDS.index("extent")


def _entry(row: tuple[object, ...]) -> Entry:
    values = list(row)
    values[_TYPE_AT] = _TYPES[str(values[_TYPE_AT])]
    extent = values[_EXTENT_AT]
    values[_EXTENT_AT] = None if extent is None else Extent(*extent)  # type: ignore[misc]
    return Entry(*values)  # type: ignore[arg-type]
