"""The output directory, confined: nothing compose writes, renames or deletes leaves it.

Every directory of ours is opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
relative to the output, and files are made, renamed and removed relative to that
directory's descriptor, so a symlink planted at `pool`, `pool/XX`, `images/NAME`,
`.cache` or `.lock` is refused instead of followed. Published files and directories
get fixed modes (0644/0755) whatever the caller's umask.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from host.kernel import Resolve, openat2
from solver.errors import PublishError

FILE_MODE = 0o644
DIR_MODE = 0o755
_CONFINED = Resolve.BENEATH | Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS


class Output:
    """An open output directory; paths are relative to it and never leave it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not root.exists():
            root.mkdir(parents=True)
            os.chmod(root, DIR_MODE)
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def _refuse(self, rel: str, e: OSError) -> PublishError:
        if e.errno in (errno.ELOOP, errno.EXDEV):
            return PublishError(f"{os.fspath(self.root / rel)}: a symlink where compose expects "
                                "its own file or directory; refusing to follow it")
        if e.errno == errno.ENOTDIR:
            return PublishError(f"{os.fspath(self.root / rel)}: not a directory")
        return PublishError(f"{os.fspath(self.root / rel)}: {e.strerror}")

    def open(self, rel: str, flags: int, mode: int = FILE_MODE) -> int:
        """openat2 beneath the output without following any symlink."""
        # Mode only with O_CREAT: openat2 refuses one otherwise (EINVAL).
        try:
            return openat2(self.fd, rel, flags, _CONFINED, mode if flags & os.O_CREAT else 0)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EEXIST):
                raise
            raise self._refuse(rel, e) from e

    @contextlib.contextmanager
    def directory(self, rel: str, *, create: bool = True) -> Iterator[int]:
        """A descriptor of directory `rel` (made 0755 with its parents when `create`)."""
        if create:
            self.makedirs(rel)
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield fd
        finally:
            os.close(fd)

    def makedirs(self, rel: str) -> None:
        parts = [p for p in rel.split("/") if p and p != "."]
        for i in range(len(parts)):
            prefix = "/".join(parts[:i + 1])
            parent = "/".join(parts[:i]) or "."
            fd = self.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.mkdir(parts[i], DIR_MODE, dir_fd=fd)
                os.chmod(parts[i], DIR_MODE, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            finally:
                os.close(fd)
            os.close(self.open(prefix, os.O_RDONLY | os.O_DIRECTORY))

    def exists(self, rel: str) -> bool:
        """Whether `rel` is there (a symlink on the way or at the end is refused)."""
        try:
            os.close(self.open(rel, os.O_PATH))
        except FileNotFoundError:
            return False
        return True

    def is_regular(self, rel: str) -> bool:
        try:
            fd = self.open(rel, os.O_PATH)
        except FileNotFoundError:
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    def write(self, rel: str, data: bytes, mode: int = FILE_MODE) -> None:
        """Write and fsync a new file (callers rename it into place)."""
        fd = self.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def replace(self, src: str, dst: str) -> None:
        """Rename within the output; both parents are opened beneath it without symlinks."""
        src_dir, src_name = _split(src)
        dst_dir, dst_name = _split(dst)
        with self.directory(src_dir, create=False) as a, self.directory(dst_dir, create=False) as b:
            os.replace(src_name, dst_name, src_dir_fd=a, dst_dir_fd=b)
            os.fsync(b)

    def unlink(self, rel: str) -> None:
        parent, name = _split(rel)
        with self.directory(parent, create=False) as fd:
            os.unlink(name, dir_fd=fd)

    def refuse_symlinks(self, rel: str, *,
                        allowed: Callable[[str], bool] = lambda path: False) -> None:
        """Walk `rel` (if there) and refuse any symlink in it except `allowed` paths."""
        try:
            fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        try:
            entries = list(os.scandir(fd))
        finally:
            os.close(fd)
        for entry in entries:
            path = f"{rel}/{entry.name}"
            if entry.is_symlink():
                if not allowed(path):
                    raise self._refuse(path, OSError(errno.ELOOP, "symlink"))
            elif entry.is_dir(follow_symlinks=False):
                self.refuse_symlinks(path, allowed=allowed)


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent or ".", name
