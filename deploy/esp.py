"""The EFI system partition (or XBOOTLDR) that boot entries are written to.

Two backends behind one small interface: a mounted directory (the normal case, and the
tests), and a FAT filesystem inside an image file at a byte offset, reached through mtools
(`rpmimg install` on a machine without a vfat driver). Paths are relative to the
partition's root, `/`-separated, and made of names rpmimg chooses itself.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deploy.errors import DeployError
from deploy.faults import checkpoint
from host.files import fsync_dir, write_new
from host.run import CommandError, run

_SAFE = re.compile(r"^[A-Za-z0-9._+~-]+(/[A-Za-z0-9._+~-]+)*$")


class EspError(DeployError):
    """The ESP cannot be read or written."""


def _check(rel: str) -> str:
    if not _SAFE.match(rel) or any(p in (".", "..") for p in rel.split("/")):
        raise EspError(f"{rel!r}: not a path rpmimg writes in the ESP")
    return rel


class Esp(Protocol):
    """A boot partition rpmimg writes entries, kernels and initrds into."""

    @property
    def name(self) -> str: ...

    def listdir(self, rel: str) -> list[str]:
        """File names in directory rel (empty when it does not exist)."""
        ...

    def read(self, rel: str) -> bytes | None:
        """Content of file rel, None when it does not exist."""
        ...

    def size(self, rel: str) -> int | None:
        """Size of file rel, None when it does not exist."""
        ...

    def write(self, rel: str, src: Path | bytes) -> None:
        """Replace rel with src's content so that a crash leaves the old or the new file."""
        ...

    def rename(self, rel: str, new: str) -> None:
        """Rename rel to new (which must not exist)."""
        ...

    def remove(self, rel: str) -> None:
        """Remove rel if it exists."""
        ...

    def free(self) -> int:
        """Bytes free for new files."""
        ...


@dataclass(frozen=True)
class DirectoryEsp:
    """A mounted ESP (or any directory standing for one)."""

    root: Path

    @property
    def name(self) -> str:
        return os.fspath(self.root)

    def _path(self, rel: str) -> Path:
        return self.root / _check(rel)

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._path(rel)) if e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def read(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, rel: str) -> int | None:
        try:
            return os.lstat(self._path(rel)).st_size
        except FileNotFoundError:
            return None

    def write(self, rel: str, src: Path | bytes) -> None:
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = src if isinstance(src, bytes) else src.read_bytes()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            write_new(tmp, data)
            checkpoint("esp file written")
            os.rename(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        checkpoint("esp file renamed")

    def rename(self, rel: str, new: str) -> None:
        src, dst = self._path(rel), self._path(new)
        if os.path.lexists(dst):
            raise EspError(f"{dst}: already exists")
        os.rename(src, dst)
        fsync_dir(dst.parent)

    def remove(self, rel: str) -> None:
        path = self._path(rel)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)
        checkpoint("esp file removed")

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def leftovers(self) -> list[Path]:
        """Temporary files a killed writer left."""
        return [p for p in self.root.rglob(".*.tmp-*") if p.is_file()]


_FREE = re.compile(rb"([0-9][0-9 ]*) bytes free")
# An mdir line: 8.3 name, size (digits grouped by spaces), date, time, then the long name.
_ENTRY = re.compile(
    r"^(?P<base>.{8}) (?P<ext>.{3}) +(?P<size>[0-9][0-9 ]*) [0-9]{4}-[0-9]{2}-[0-9]{2} +"
    r"[0-9]+:[0-9]+ *(?P<long>.*?) *$"
)


@dataclass(frozen=True)
class FatImageEsp:
    """A FAT filesystem at a byte offset of an image file, written with mtools."""

    image: Path
    offset: int = 0

    @property
    def name(self) -> str:
        return f"{self.image}@@{self.offset}"

    def _m(self, *argv: str, allowed: tuple[int, ...] = (0,)) -> bytes:
        cmd = [argv[0], "-i", f"{self.image}@@{self.offset}", *argv[1:]]
        try:
            return run(cmd, env={"MTOOLS_SKIP_CHECK": "1"}, allowed_codes=allowed).stdout
        except CommandError as e:
            raise EspError(f"{self.name}: {e}") from e

    def _exists(self, rel: str) -> bool:
        return self.size(rel) is not None

    def listdir(self, rel: str) -> list[str]:
        out = run(["mdir", "-i", f"{self.image}@@{self.offset}", "-b", f"::/{_check(rel)}"],
                  env={"MTOOLS_SKIP_CHECK": "1"}, allowed_codes=(0, 1)).stdout
        names = []
        for line in out.decode(errors="replace").splitlines():
            name = line.rstrip("/").rsplit("/", 1)[-1]
            if line.startswith("::/") and not line.endswith("/") and name not in (".", ".."):
                names.append(name)
        return sorted(names)

    def read(self, rel: str) -> bytes | None:
        if not self._exists(rel):
            return None
        return self._m("mtype", f"::/{_check(rel)}")

    def size(self, rel: str) -> int | None:
        proc = run(["mdir", "-i", f"{self.image}@@{self.offset}", "-a", f"::/{_check(rel)}"],
                   env={"MTOOLS_SKIP_CHECK": "1"}, allowed_codes=(0, 1))
        if proc.returncode != 0:
            return None
        name = rel.rsplit("/", 1)[-1]
        for line in proc.stdout.decode(errors="replace").splitlines():
            m = _ENTRY.match(line)
            if not m:
                continue
            short = m["base"].strip() + ("." + m["ext"].strip() if m["ext"].strip() else "")
            if (m["long"] or short).lower() == name.lower():
                return int(m["size"].replace(" ", ""))
        return None

    def _mkdirs(self, rel: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if not self.listdir_exists(d):
                self._m("mmd", f"::/{d}")

    def listdir_exists(self, rel: str) -> bool:
        proc = run(["mdir", "-i", f"{self.image}@@{self.offset}", "-b", f"::/{_check(rel)}"],
                   env={"MTOOLS_SKIP_CHECK": "1"}, allowed_codes=(0, 1))
        return proc.returncode == 0

    def write(self, rel: str, src: Path | bytes) -> None:
        _check(rel)
        self._mkdirs(rel)
        import tempfile  # here: only an ESP image file (mtools) is written through one

        with tempfile.TemporaryDirectory(prefix="rpmimg-esp-") as d:
            local = src if isinstance(src, Path) else Path(d) / "data"
            if isinstance(src, bytes):
                local.write_bytes(src)
            # Offline image: no crash can interleave with a reader, so a plain overwrite.
            self._m("mcopy", "-o", "-n", os.fspath(local), f"::/{rel}")

    def rename(self, rel: str, new: str) -> None:
        if self._exists(new):
            raise EspError(f"{self.name}: {new}: already exists")
        self._m("mmove", f"::/{_check(rel)}", f"::/{_check(new)}")

    def remove(self, rel: str) -> None:
        if self._exists(rel):
            self._m("mdel", f"::/{_check(rel)}")

    def free(self) -> int:
        out = self._m("mdir", "::/")
        found = _FREE.search(out)
        if not found:
            raise EspError(f"{self.name}: mdir did not report the free space")
        return int(found.group(1).replace(b" ", b""))
