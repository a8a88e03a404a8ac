"""Paths of an image resolved inside a directory tree, as ``rpm -i --root`` resolves them.

A package path is an *image path*: "/usr/lib/foo" means that path in the image being
installed, and so does a symlink's target. ``rpm -i --root DEST`` resolves both inside
DEST, as if chrooted there: an absolute target starts at DEST, ``..`` stops at it. A tree
may also hold only part of an image: a deployment is the image's /usr, so "/usr/share/foo"
is ``share/foo`` in the tree, and a path outside /usr is relocated (deploy places "/etc/foo"
at "/usr/share/factory/etc/foo"). ``Relocation`` says which part a tree holds; ``Tree``
resolves image paths through the symlinks the tree holds, in image space, and opens every
directory with ``openat2`` below the tree's own fd, following no symlink, so whatever the
tree contains, nothing outside it is ever created, changed or read through it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Collection
from dataclasses import dataclass

from host import kernel
from rpmextents.errors import ExtentsError, UnsafePathError

MAX_SYMLINK_HOPS = 40  # as the kernel allows
_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ExtractError(ExtentsError):
    """A package that cannot be extracted into the destination."""


def normalize(path: str) -> str:
    """An absolute image path without "//", "." or "..": ".." stops at "/", as in a chroot."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


@dataclass(frozen=True)
class Relocation:
    """Which part of an image a tree holds.

    The tree's root is the image path ``top``; a path outside it is placed below the image
    path ``outside`` (itself below top), or refused when outside is None.
    """

    top: str = "/"
    outside: str | None = None

    def __post_init__(self) -> None:
        if self.outside is not None and not self.outside.startswith(self.top.rstrip("/") + "/"):
            raise ValueError(f"{self.outside} is not below {self.top}")

    def holds(self, path: str) -> bool:
        """Whether the image path lies at or below top, where the tree holds it in place."""
        return self.top == "/" or path == self.top or path.startswith(self.top + "/")

    def tree_path(self, path: str) -> str:
        """Where an image path (normalised) lies in the tree, relative to its root, not resolving
        symlinks: "" for top itself."""
        if not self.holds(path):
            if self.outside is None:
                raise UnsafePathError(f"{path}: outside {self.top}, which the tree holds")
            path = self.outside + path.rstrip("/")
        return path[len(self.top):].lstrip("/")

    def tree_dir(self, dirname: str) -> str | None:
        """Where the files of a directory name (DIRNAMES: "/usr/bin/") lie in the tree, as
        tree_path places each ("bin/"), for one below top: a normalised file list's names
        after it hold no leading "/", so each file's tree path is this and its name. None
        for any other directory name (outside top, or top itself): ask tree_path."""
        below = self.top.rstrip("/") + "/"
        return dirname[len(self.top):].lstrip("/") if dirname.startswith(below) else None

    def image_path(self, rel: str) -> str:
        """The image path below top of a tree-relative path."""
        return f"{self.top.rstrip('/')}/{rel}" if rel else self.top


class Tree:
    """A destination directory; image paths are resolved inside it, as if chrooted.

    Directory symlinks the tree holds are followed the way rpm follows them under
    --root (absolute targets from the image's root, ".." stopping there), never out of
    the tree. Resolved directories are remembered; entries are created relative to an open
    descriptor of their parent, which saves a path lookup per file.
    """

    def __init__(self, root: str | os.PathLike[str], relocation: Relocation | None = None,
                 reserved: Collection[str] = ()) -> None:
        self.relocation = relocation or Relocation()
        self.reserved = tuple(reserved)  # tree-relative directories no package entry may reach
        self.root = os.fspath(root)
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        top = self.relocation.top
        # image path -> (canonical image path, tree-relative path) of a directory
        self._dirs: dict[str, tuple[str, str]] = {top: (top, "")}
        self._fd_rel = ""
        self._cur = self.fd
        self._outside_pending = False

    def close(self) -> None:
        self._leave()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _leave(self) -> None:
        if self._cur != self.fd:
            os.close(self._cur)
        self._cur, self._fd_rel = self.fd, ""

    def _enter(self, rel: str) -> int:
        """An fd of the resolved directory rel, valid until the next call."""
        if rel != self._fd_rel:
            parent, _, name = rel.rpartition("/")
            if rel and parent == self._fd_rel:
                # One level down (a directory just made or looked at): one name, not followed.
                fd = os.open(name, _STEP, dir_fd=self._cur)
            else:
                fd = kernel.open_beneath(self.fd, rel, os.O_PATH | os.O_DIRECTORY) if rel else self.fd
            self._leave()
            self._cur, self._fd_rel = fd, rel
        return self._cur

    def open_dir(self, rel: str, flags: int = os.O_RDONLY) -> int:
        """A new fd of the resolved directory rel, for the caller to close."""
        return kernel.open_beneath(self.fd, rel, flags | os.O_DIRECTORY | os.O_NOFOLLOW)

    def is_anchor(self, path: str) -> bool:
        """Whether the image path is the tree's top, or the image root relocated into it."""
        return path == self.relocation.top or (path == "/" and self.relocation.outside is not None)

    def forget(self, path: str) -> None:
        """Drop what is remembered about path and below (a symlink there was replaced)."""
        below = path + "/"
        for key in [k for k in self._dirs if k == path or k.startswith(below)]:
            if key != self.relocation.top:
                del self._dirs[key]

    def _known(self, path: str, create: bool) -> tuple[tuple[str, str], list[str]]:
        """The nearest remembered ancestor of path (or path) and the names below it."""
        rest: list[str] = []
        while True:
            hit = self._dirs.get(path)
            if hit is not None:
                rest.reverse()
                return hit, rest
            if path == "/":
                hit = self._outside_root(create)
                rest.reverse()
                return hit, rest
            path, _, name = path.rpartition("/")
            path = path or "/"
            rest.append(name)

    def _outside_root(self, create: bool) -> tuple[str, str]:
        """The image root, in a tree holding less than the whole image: its relocation."""
        outside = self.relocation.outside
        if outside is None:
            raise UnsafePathError(f"paths outside {self.relocation.top} have no place in this tree")
        if self._outside_pending:
            raise UnsafePathError(f"{outside} is a symlink leading outside {self.relocation.top}")
        self._outside_pending = True
        try:
            rel = self.resolve_dir(outside, create)[1]
        finally:
            self._outside_pending = False
        self._dirs["/"] = ("/", rel)
        return self._dirs["/"]

    def resolve_dir(self, path: str, create: bool = True) -> tuple[str, str]:
        """(canonical image path, tree-relative path) of the directory at image path `path`.

        Missing directories are created as rpm creates missing parents (root's, 0755) unless
        create is False (then FileNotFoundError).
        """
        want, hops = path, 0
        while True:
            (canon, rel), rest = self._known(path, create)
            for i, name in enumerate(rest):
                cand = f"{canon}/{name}" if canon != "/" else f"/{name}"
                hit = self._dirs.get(cand)
                if hit is not None:
                    canon, rel = hit
                    continue
                fd = self._enter(rel)
                try:
                    mode = os.lstat(name, dir_fd=fd).st_mode
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=fd)
                    mode = stat.S_IFDIR
                if stat.S_ISLNK(mode):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise UnsafePathError(f"{want}: too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=fd)
                    if not target:
                        raise FileNotFoundError(2, "empty symlink", cand)
                    start = target if target.startswith("/") else f"{canon}/{target}"
                    path = normalize("/".join([start, *rest[i + 1:]]))
                    break
                if not stat.S_ISDIR(mode):
                    raise ExtractError(f"{cand} is in the way: not a directory")
                canon, rel = cand, f"{rel}/{name}" if rel else name
                self._dirs[cand] = (canon, rel)
            else:
                self._dirs[want] = (canon, rel)
                return canon, rel

    def _parent(self, path: str, create: bool) -> tuple[int, str, str]:
        if self.is_anchor(path):
            rel = self.resolve_dir(path, create)[1]
            return self._enter(rel), ".", rel
        parent, _, name = path.rpartition("/")
        known = self._dirs.get(parent)  # the common case: a sibling of the last entry
        rel = known[1] if known is not None else self.resolve_dir(parent or "/", create)[1]
        fd = self._cur if rel == self._fd_rel else self._enter(rel)
        return fd, name, f"{rel}/{name}" if rel else name

    def place(self, path: str) -> tuple[int, str, str]:
        """(parent directory fd, name, tree-relative path) for creating the image path `path`.

        Missing parents are created; the fd stays valid until the next call. For the tree's
        top (or the relocated image root), the name is "." in that directory.
        """
        fd, name, rel = self._parent(path, True)
        for r in self.reserved:
            if rel == r or rel.startswith(r + "/"):
                where = self.relocation.image_path(rel)
                raise UnsafePathError(f"{path}: resolves to {where}, where no package may write")
        return fd, name, rel

    def find(self, path: str) -> tuple[int, str, str]:
        """Like place() for an existing image path; FileNotFoundError when a parent is missing."""
        return self._parent(path, False)
