"""The output directory: image versions published atomically, `latest` swapped, old ones pruned.

    OUTPUT/pool/…                                 extents RPMs (see solver.pool)
    OUTPUT/images/NAME/VERSION/manifest.json      + manifest.json.asc, changes.json
    OUTPUT/images/NAME/latest -> VERSION

A version directory is assembled under a dot-name and renamed into place when
complete; `latest` is a new symlink renamed over the old one. Readers therefore see
a version entirely or not at all. Dot-names left by a killed run are removed by the
next one, under the output's lock.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from host.files import fsync_dir, write_new
from host.lock import LockHeld, file_lock
from imagespec.manifest import ImageManifest, parse
from imagespec.published import CHANGES, IMAGES, LATEST, MANIFEST, SIGNATURE
from rpmextents.nevra import vercmp
from solver.errors import PublishError
from solver.pool import PackagePool

_VERSION = re.compile(r"^(\d{8})\.(\d+)$")


class ImageStore:
    """One output directory, shared by every image composed into it."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.images = output / IMAGES
        self.pool = PackagePool(output)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output's lock; a second compose into the same output fails at once."""
        self.output.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(file_lock(self.output / ".lock"))
            except LockHeld as e:
                raise PublishError(f"{os.fspath(self.output)}: another compose is writing to "
                                   f"this output ({e.holder})") from None
            yield

    def remove_leftovers(self) -> list[str]:
        """Remove what a killed run left: dot-named version dirs, symlinks and pool scratch."""
        removed: list[str] = []
        if self.images.is_dir():
            for image in self.images.iterdir():
                if not image.is_dir():
                    continue
                for item in image.iterdir():
                    if item.name.startswith(".tmp-"):
                        _remove(item)
                        removed.append(os.fspath(item.relative_to(self.output)))
        if self.pool.scratch.exists():
            shutil.rmtree(self.pool.scratch)
        return removed

    def names(self) -> list[str]:
        if not self.images.is_dir():
            return []
        return sorted(p.name for p in self.images.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[str]:
        """Published versions of an image, oldest first."""
        directory = self.images / name
        if not directory.is_dir():
            return []
        found = [p.name for p in directory.iterdir()
                 if _VERSION.match(p.name) and (p / MANIFEST).is_file() and not p.is_symlink()]
        return _sorted_versions(found)

    def latest(self, name: str) -> str | None:
        link = self.images / name / LATEST
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        return target if (self.images / name / target / MANIFEST).is_file() else None

    def manifest_path(self, name: str, version: str) -> Path:
        return self.images / name / version / MANIFEST

    def manifest(self, name: str, version: str) -> ImageManifest:
        path = self.manifest_path(name, version)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise PublishError(f"image {name!r} has no version {version!r} in "
                               f"{os.fspath(self.output)}") from e
        return parse(data, os.fspath(path))

    def next_version(self, name: str, now: datetime) -> str:
        """YYYYMMDD.N: N counts from 1 each UTC day, above any version already there."""
        day = now.strftime("%Y%m%d")
        taken = [int(m.group(2)) for v in self.versions(name)
                 if (m := _VERSION.match(v)) and m.group(1) == day]
        latest = self.latest(name)
        candidate = f"{day}.{max(taken, default=0) + 1}"
        if latest and vercmp(candidate, latest) <= 0:
            raise PublishError(f"image {name!r}: latest version {latest} is newer than today's "
                               f"{candidate}; is the clock right?")
        return candidate

    def publish(self, manifest: ImageManifest, changes: dict[str, Any],
                sign: Callable[[Path, Path], None] | None) -> Path:
        """Make a new version visible in one rename, then point `latest` at it."""
        image = self.images / manifest.name
        image.mkdir(parents=True, exist_ok=True)
        final = image / manifest.version
        if final.exists():
            raise PublishError(f"{os.fspath(final)} already exists")
        staging = image / f".tmp-{manifest.version}-{os.getpid()}"
        staging.mkdir()
        write_new(staging / MANIFEST, manifest.dumps())
        write_new(staging / CHANGES, (json.dumps(changes, indent=2) + "\n").encode())
        if sign is not None:
            sign(staging / MANIFEST, staging / SIGNATURE)
        fsync_dir(staging)
        os.rename(staging, final)
        self._point_latest(image, manifest.version)
        return final / MANIFEST

    def _point_latest(self, image: Path, version: str) -> None:
        staged = image / f".tmp-latest-{os.getpid()}"
        staged.unlink(missing_ok=True)
        os.symlink(version, staged)
        os.replace(staged, image / LATEST)
        fsync_dir(image)

    def prune(self, name: str, keep: int) -> list[str]:
        """Remove all but the `keep` newest versions (never `latest`'s target); returns them."""
        if keep < 1:
            raise PublishError(f"--keep must be at least 1, not {keep}")
        versions = self.versions(name)
        latest = self.latest(name)
        doomed = [v for v in versions[:-keep] if v != latest]
        for version in doomed:
            # Renamed first so that no reader ever sees a half-removed version.
            gone = self.images / name / f".tmp-prune-{version}-{os.getpid()}"
            os.rename(self.images / name / version, gone)
            _remove(gone)
        return doomed

    def referenced(self) -> set[str]:
        """Pool paths (relative to the output) that any published version of any image uses."""
        used: set[str] = set()
        for name in self.names():
            for version in self.versions(name):
                for p in self.manifest(name, version).packages:
                    for location in (p.location, *((p.zstd.location,) if p.zstd else ())):
                        used.add(os.path.normpath(
                            os.path.join(IMAGES, name, version, location)))
        return used

    def collect_pool(self) -> list[str]:
        """Remove pool entries no published version references; returns what was removed."""
        used = self.referenced()
        removed: list[str] = []
        for rel in self.pool.entries():
            if rel not in used:
                (self.output / rel).unlink()
                removed.append(rel)
        return removed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _sorted_versions(versions: list[str]) -> list[str]:
    return sorted(versions, key=functools.cmp_to_key(vercmp))

