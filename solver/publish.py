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

from host.lock import LockHeld, holding
from imagespec.manifest import ImageManifest, parse
from imagespec.published import (
    BOOT,
    CHANGES,
    IMAGES,
    LATEST,
    MANIFEST,
    SIGNATURE,
    boot_inputs_path,
)
from rpmextents.nevra import vercmp
from solver.confine import FILE_MODE, Output
from solver.errors import PublishError
from solver.pool import PackagePool

_VERSION = re.compile(r"^(\d{8})\.(\d+)$")
_OUR_LINK = re.compile(r"^images/[^/]+/(latest|\.tmp-latest-\d+)$")
# What compose names in the pool: `<sha256>-<nevra>.rpm` and its `.zst`, `.seek.zst` copies.
_POOL_FILE = re.compile(r"^[0-9a-f]{64}-[^/]+\.rpm(\.zst|\.seek\.zst)?$")
# ...and in pool/boot: kernels, initrds and the records of an initrd's inputs (solver.initrd).
_BOOT_FILE = re.compile(r"^[0-9a-f]{64}-(vmlinuz|initrd)-[^/]+$")


class ImageStore:
    """One output directory, shared by every image composed into it."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.images = output / IMAGES
        self.pool = PackagePool(output)
        self._out: Output | None = None

    @property
    def out(self) -> Output:
        """The confined output; only while `locked`."""
        assert self._out is not None, "ImageStore.out outside locked()"
        return self._out

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output's lock; a second compose into the same output fails at once.

        Under the lock, any symlink where compose keeps its own files is refused.
        """
        out = Output(self.output)
        try:
            with os.fdopen(out.open(".lock", os.O_RDWR | os.O_CREAT, 0o644), "r+") as f, \
                    contextlib.ExitStack() as held:
                try:
                    held.enter_context(holding(f.fileno()))
                except LockHeld as e:
                    raise PublishError(f"{os.fspath(self.output)}: another compose is writing to "
                                       f"this output ({e.holder})") from None
                self._check_tree(out)
                self._out = self.pool.out = out
                try:
                    yield
                finally:
                    self._out = self.pool.out = None
        finally:
            out.close()

    def _check_tree(self, out: Output) -> None:
        for rel in ("pool", ".cache", ".state"):
            out.refuse_symlinks(rel)
        # images/NAME/latest, and a staged one a killed run left (removed next).
        out.refuse_symlinks("images", allowed=lambda path: _OUR_LINK.match(path) is not None)
        for link in (f"images/{n}/{LATEST}" for n in self.names()):
            if (self.output / link).is_symlink() and not _VERSION.match(os.readlink(self.output / link)):
                raise PublishError(f"{os.fspath(self.output / link)}: does not name a version")

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
        if self.out.exists("pool/.tmp"):
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
        except (FileNotFoundError, OSError):
            return None
        if not _VERSION.match(target):
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
        image = f"images/{manifest.name}"
        out = self.out
        out.makedirs(image)
        final = f"{image}/{manifest.version}"
        if out.exists(final):
            raise PublishError(f"{os.fspath(self.output / final)} already exists")
        staging = f"{image}/.tmp-{manifest.version}-{os.getpid()}"
        out.makedirs(staging)
        out.write(f"{staging}/{MANIFEST}", manifest.dumps())
        out.write(f"{staging}/{CHANGES}", (json.dumps(changes, indent=2) + "\n").encode())
        if sign is not None:
            signature = self.output / staging / SIGNATURE
            sign(self.output / staging / MANIFEST, signature)
            os.chmod(signature, FILE_MODE, follow_symlinks=False)
        with out.directory(staging, create=False) as fd:
            os.fsync(fd)
        out.replace(staging, final)
        self._point_latest(image, manifest.version)
        return self.output / final / MANIFEST

    def _point_latest(self, image: str, version: str) -> None:
        staged = f".tmp-latest-{os.getpid()}"
        with self.out.directory(image, create=False) as fd:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged, dir_fd=fd)
            os.symlink(version, staged, dir_fd=fd)
            os.replace(staged, LATEST, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)

    def prune(self, name: str, keep: int) -> list[str]:
        """Remove all but the `keep` newest versions (never `latest`'s target); returns them."""
        if keep < 1:
            raise PublishError(f"--keep must be at least 1, not {keep}")
        versions = self.versions(name)
        latest = self.latest(name)
        doomed = [v for v in versions[:-keep] if v != latest]
        for version in doomed:
            # Renamed first so that no reader ever sees a half-removed version.
            gone = f"images/{name}/.tmp-prune-{version}-{os.getpid()}"
            self.out.replace(f"images/{name}/{version}", gone)
            _remove(self.output / gone)
        return doomed

    def referenced(self) -> set[str]:
        """Pool paths (relative to the output) that any published version of any image uses."""
        used: set[str] = set()
        for name in self.names():
            for version in self.versions(name):
                for p in self.manifest(name, version).packages:
                    copies = (c.location for c in (p.zstd, p.seekable) if c is not None)
                    for location in (p.location, *copies):
                        used.add(os.path.normpath(
                            os.path.join(IMAGES, name, version, location)))
                for b in self.manifest(name, version).boot:
                    for location in (b.kernel.location, b.initrd.location):
                        used.add(os.path.normpath(os.path.join(IMAGES, name, version, location)))
                    used.add(boot_inputs_path(b.inputs, b.kernel_version))
        return used

    def collect_pool(self) -> list[str]:
        """Remove pool entries no published version references; returns what was removed."""
        used = self.referenced()
        return self.remove_pool_files([rel for rel in self.pool.entries() if rel not in used])

    def remove_pool_files(self, candidates: list[str]) -> list[str]:
        """Remove pool files, but only regular files named as compose names them."""
        removed: list[str] = []
        for rel in candidates:
            base = rel.rsplit("/", 1)[-1]
            ours = _BOOT_FILE.match(base) if rel.startswith(BOOT + "/") else _POOL_FILE.match(base)
            if ours and self.out.is_regular(rel):
                self.out.unlink(rel)
                removed.append(rel)
        return removed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _sorted_versions(versions: list[str]) -> list[str]:
    return sorted(versions, key=functools.cmp_to_key(vercmp))

