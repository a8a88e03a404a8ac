"""The real `rpm -i` as the oracle for every "equals rpm -i" test.

    rpm_install([pkg], expected_root, passwd=PASSWD, group=GROUP)
    extract(..., actual_root)            # with seed_accounts(actual_root, PASSWD, GROUP)
    assert_same_tree(expected_root, actual_root)

Snapshots record, per path below the root: type, full st_mode, uid, gid, size,
sha256 of regular files, symlink target, mtime (not for directories: rpm -i leaves
those at install time), rdev of devices, the raw security.capability xattr, and the
hardlink group (every path sharing the inode).
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

# rpm's database, which only the oracle side has; its now-empty parents go too.
DEFAULT_EXCLUDE = ("/var/lib/rpm",)

RPM_INSTALL = (
    "rpm", "--dbpath", "/var/lib/rpm", "-i",
    "--nodeps", "--noscripts", "--nosignature", "--nodigest",
    "--ignorearch", "--ignoreos", "--define", "_pkgverify_level none",
)

_CAPABILITY_XATTR = "security.capability"
SEED_MTIME_NS = 1_500_000_000 * 1_000_000_000


class OracleError(Exception):
    """rpm itself failed to install a package."""


def rpm_unavailable_reason() -> str | None:
    """Why `rpm_install` can't run here, or None if it can."""
    if shutil.which("rpm") is None:
        return "rpm is not installed"
    if os.geteuid() != 0:
        # rpm chroots into --root and chowns every file: both need root.
        return "rpm -i --root needs root"
    return None


def seed_accounts(root: Path, passwd: str | None = None, group: str | None = None) -> None:
    """Write ROOT/etc/passwd and ROOT/etc/group, which rpm -i uses to map owner names.

    Mode and mtime are fixed, so two roots seeded at different times still compare equal.
    """
    for name, text in (("passwd", passwd), ("group", group)):
        if text is None:
            continue
        etc = root / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        etc.chmod(0o755)
        path = etc / name
        path.write_text(text)
        path.chmod(0o644)
        os.utime(path, ns=(SEED_MTIME_NS, SEED_MTIME_NS))


def rpm_install(
    packages: Iterable[Path | str],
    root: Path | str,
    *,
    passwd: str | None = None,
    group: str | None = None,
) -> None:
    """Install `packages` into `root` with the real rpm, no dependencies, scripts or checks.

    Owner names rpm can't find in ROOT/etc/passwd or etc/group become root (and lose
    setuid/setgid); seed them with `passwd` and `group` (file contents).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seed_accounts(root, passwd, group)
    argv = [*RPM_INSTALL, "--root", os.fspath(root), *(os.fspath(p) for p in packages)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired as e:
        raise OracleError(f"rpm -i hung (FIFO in a package?): {' '.join(argv)}") from e
    if done.returncode != 0:
        raise OracleError(
            f"rpm -i exited {done.returncode}: {' '.join(argv)}\n{done.stderr.strip()}"
        )


class NodeType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHR = "char-device"
    BLK = "block-device"
    FIFO = "fifo"
    SOCK = "socket"


_TYPES = {
    stat.S_IFREG: NodeType.FILE,
    stat.S_IFDIR: NodeType.DIR,
    stat.S_IFLNK: NodeType.SYMLINK,
    stat.S_IFCHR: NodeType.CHR,
    stat.S_IFBLK: NodeType.BLK,
    stat.S_IFIFO: NodeType.FIFO,
    stat.S_IFSOCK: NodeType.SOCK,
}


@dataclass(frozen=True)
class Node:
    """What a tree comparison looks at for one path.

    Fields that don't apply to the type are None (size of a directory depends on
    the filesystem, so it is not recorded); `links` is empty unless the inode has
    several names in the tree.
    """

    type: NodeType
    mode: int
    uid: int
    gid: int
    size: int | None
    sha256: str | None
    target: str | None
    mtime_ns: int | None
    rdev: int | None
    caps: bytes | None
    links: frozenset[str]

    def describe(self) -> str:
        return f"{self.type.value} {_mode_text(self.mode)}"


Snapshot = dict[str, Node]


def snapshot(root: Path | str, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> Snapshot:
    """Every path below `root` (as "/usr/bin/x") and its Node; `root` itself is left out.

    `exclude` paths (absolute or relative to root) are skipped with everything below
    them, and so are their ancestors that then hold nothing else.
    """
    root = Path(root)
    excluded = {"/" + p.strip("/") for p in exclude}
    found: dict[str, os.stat_result] = {}
    _walk(os.fspath(root), "", excluded, found)

    by_inode: defaultdict[tuple[int, int], set[str]] = defaultdict(set)
    for path, st in found.items():
        if not stat.S_ISDIR(st.st_mode):
            by_inode[(st.st_dev, st.st_ino)].add(path)

    nodes: Snapshot = {}
    for path, st in found.items():
        group = by_inode.get((st.st_dev, st.st_ino), set())
        nodes[path] = _node(root, path, st, frozenset(group) if len(group) > 1 else frozenset())
    _prune_excluded_parents(nodes, excluded)
    return dict(sorted(nodes.items()))


def diff_snapshots(expected: Mapping[str, Node], actual: Mapping[str, Node]) -> list[str]:
    """One line per differing path, in path order, naming each differing field."""
    lines = []
    for path in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(path), actual.get(path)
        if got is None and want is not None:
            lines.append(f"{path}: missing (expected {want.describe()})")
        elif want is None and got is not None:
            lines.append(f"{path}: unexpected {got.describe()}")
        elif want is not None and got is not None and want != got:
            changes = [
                f"{f.name} {_show(f.name, getattr(want, f.name))} != {_show(f.name, getattr(got, f.name))}"
                for f in fields(Node)
                if getattr(want, f.name) != getattr(got, f.name)
            ]
            lines.append(f"{path}: " + "; ".join(changes))
    return lines


def assert_same_tree(
    expected_root: Path | str,
    actual_root: Path | str,
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    limit: int = 20,
) -> None:
    """Fail, listing the first `limit` differing paths, unless the two trees match."""
    exclude = tuple(exclude)
    diffs = diff_snapshots(snapshot(expected_root, exclude), snapshot(actual_root, exclude))
    if diffs:
        shown = "\n  ".join(diffs[:limit])
        more = f"\n  ... and {len(diffs) - limit} more" if len(diffs) > limit else ""
        raise AssertionError(
            f"{actual_root} differs from {expected_root} (expected) at {len(diffs)} "
            f"path(s):\n  {shown}{more}"
        )


def _walk(top: str, rel: str, excluded: set[str], found: dict[str, os.stat_result]) -> None:
    with os.scandir(top) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = f"{rel}/{entry.name}"
            if path in excluded:
                continue
            st = entry.stat(follow_symlinks=False)
            found[path] = st
            if stat.S_ISDIR(st.st_mode):
                _walk(entry.path, path, excluded, found)


def _node(root: Path, path: str, st: os.stat_result, links: frozenset[str]) -> Node:
    full = os.path.join(root, path.lstrip("/"))
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    is_file = kind is NodeType.FILE
    return Node(
        type=kind,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if kind in (NodeType.FILE, NodeType.SYMLINK) else None,
        sha256=_sha256(full) if is_file else None,
        target=os.readlink(full) if kind is NodeType.SYMLINK else None,
        mtime_ns=None if kind is NodeType.DIR else st.st_mtime_ns,
        rdev=st.st_rdev if kind in (NodeType.CHR, NodeType.BLK) else None,
        caps=_capability(full) if kind in (NodeType.FILE, NodeType.DIR) else None,
        links=links,
    )


def _prune_excluded_parents(nodes: Snapshot, excluded: set[str]) -> None:
    for path in excluded:
        parent = os.path.dirname(path)
        while parent != "/" and parent in nodes and nodes[parent].type is NodeType.DIR:
            prefix = parent + "/"
            if any(p.startswith(prefix) for p in nodes):
                break
            del nodes[parent]
            parent = os.path.dirname(parent)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _capability(path: str) -> bytes | None:
    try:
        return os.getxattr(path, _CAPABILITY_XATTR, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def _mode_text(mode: int) -> str:
    return f"{mode:#o} ({stat.filemode(mode)})"


def _show(name: str, value: object) -> str:
    if name == "mode" and isinstance(value, int):
        return _mode_text(value)
    if name == "rdev" and isinstance(value, int):
        return f"{os.major(value)},{os.minor(value)}"
    if name == "mtime_ns" and isinstance(value, int):
        return f"{value / 1e9:.9f}"
    if name == "caps" and isinstance(value, bytes):
        return value.hex()
    if name == "links" and isinstance(value, frozenset):
        return "{" + ", ".join(sorted(value)) + "}" if value else "{} (not hardlinked)"
    if name == "sha256" and isinstance(value, str):
        return value[:16] + "…"
    return repr(value) if isinstance(value, str) else str(value)
