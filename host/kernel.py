"""Every raw kernel call rpmimg makes: reflink, dedupe, FIEMAP, btrfs subvolumes, file capabilities.

One function per kernel interface, constants from the kernel headers (linux/fs.h, linux/fiemap.h,
linux/btrfs.h, linux/btrfs_tree.h, linux/magic.h), structures packed with explicit ``struct``
formats in native byte order, as the kernel reads them. Items read from the btrfs trees are the
on-disk format and therefore little-endian.

Every function raises ``OSError(errno, strerror, path)`` naming the file it acted on. What EXDEV,
EOPNOTSUPP, EINVAL or ENOTTY mean (fall back to copying, refuse, ...) is decided by the callers.

ioctl numbers use the generic encoding of asm-generic/ioctl.h (x86, arm, riscv, s390); the
architectures with their own encoding (powerpc, mips, sparc, alpha) are not supported.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import functools
import os
import signal
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

StrPath = str | os.PathLike[str]

# asm-generic/ioctl.h
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOW(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


# linux/fs.h
FILE_CLONE_RANGE = struct.Struct("=qQQQ")  # src_fd, src_offset, src_length, dest_offset
FILE_DEDUPE_RANGE = struct.Struct("=QQHHI")  # src_offset, src_length, dest_count, reserved1, reserved2
FILE_DEDUPE_RANGE_INFO = struct.Struct("=qQQiI")  # dest_fd, dest_offset, bytes_deduped, status, reserved
FILE_DEDUPE_RANGE_SAME = 0
FILE_DEDUPE_RANGE_DIFFERS = 1
FICLONE = _IOW(0x94, 9, struct.calcsize("=i"))
FICLONERANGE = _IOW(0x94, 13, FILE_CLONE_RANGE.size)
FIDEDUPERANGE = _IOWR(0x94, 54, FILE_DEDUPE_RANGE.size)

# linux/fiemap.h
FIEMAP = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved
FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")  # fe_logical, fe_physical, fe_length, reserved, fe_flags, reserved
FIEMAP_MAX_OFFSET = (1 << 64) - 1
FIEMAP_FLAG_SYNC = 0x0001
FS_IOC_FIEMAP = _IOWR(ord("f"), 11, FIEMAP.size)


class FiemapFlag(enum.IntFlag):
    """FIEMAP_EXTENT_* bits of one extent (linux/fiemap.h)."""

    LAST = 0x0001
    UNKNOWN = 0x0002
    DELALLOC = 0x0004
    ENCODED = 0x0008
    DATA_ENCRYPTED = 0x0080
    NOT_ALIGNED = 0x0100
    DATA_INLINE = 0x0200
    DATA_TAIL = 0x0400
    UNWRITTEN = 0x0800
    MERGED = 0x1000
    SHARED = 0x2000


# linux/btrfs.h
BTRFS_IOCTL_MAGIC = 0x94
BTRFS_VOL_NAME_MAX = 255
BTRFS_PATH_NAME_MAX = 4087
BTRFS_SUBVOL_NAME_MAX = 4039
BTRFS_INO_LOOKUP_PATH_MAX = 4080
BTRFS_SUBVOL_RDONLY = 1 << 1
BTRFS_VOL_ARGS = struct.Struct(f"=q{BTRFS_PATH_NAME_MAX + 1}s")  # fd, name
# fd, transid, flags, union {size, qgroup_inherit; unused[4]}, union {name, devid, subvolid}
BTRFS_VOL_ARGS_V2 = struct.Struct(f"=qQQ32x{BTRFS_SUBVOL_NAME_MAX + 1}s")
BTRFS_INO_LOOKUP_ARGS = struct.Struct(f"=QQ{BTRFS_INO_LOOKUP_PATH_MAX}s")  # treeid, objectid, name
U64 = struct.Struct("=Q")
BTRFS_IOC_SUBVOL_CREATE = _IOW(BTRFS_IOCTL_MAGIC, 14, BTRFS_VOL_ARGS.size)
BTRFS_IOC_SNAP_DESTROY = _IOW(BTRFS_IOCTL_MAGIC, 15, BTRFS_VOL_ARGS.size)
BTRFS_IOC_INO_LOOKUP = _IOWR(BTRFS_IOCTL_MAGIC, 18, BTRFS_INO_LOOKUP_ARGS.size)
BTRFS_IOC_SNAP_CREATE_V2 = _IOW(BTRFS_IOCTL_MAGIC, 23, BTRFS_VOL_ARGS_V2.size)
BTRFS_IOC_SUBVOL_GETFLAGS = _IOR(BTRFS_IOCTL_MAGIC, 25, U64.size)
BTRFS_IOC_SUBVOL_SETFLAGS = _IOW(BTRFS_IOCTL_MAGIC, 26, U64.size)
# struct btrfs_ioctl_get_subvol_info_args: treeid, name[256], parent_id, dirid, generation,
# flags, three uuids, ctransid, otransid, stransid, rtransid, four timespecs, reserved[8]
BTRFS_SUBVOL_INFO = struct.Struct("=Q256sQQQQ16s16s16sQQQQ64s64s")
BTRFS_IOC_GET_SUBVOL_INFO = _IOR(BTRFS_IOCTL_MAGIC, 60, BTRFS_SUBVOL_INFO.size)
# struct btrfs_ioctl_fs_info_args: max_id, num_devices, fsid[16], then what is not read here
# (node, sector and clone sizes, checksum type and size, flags, generation, metadata_uuid,
# padding to 1 KiB)
BTRFS_FS_INFO = struct.Struct("=QQ16s992x")  # 1 KiB
BTRFS_IOC_FS_INFO = _IOR(BTRFS_IOCTL_MAGIC, 31, BTRFS_FS_INFO.size)
# struct btrfs_ioctl_search_key: tree_id, min/max objectid, min/max offset, min/max transid,
# min/max type, nr_items, unused, unused1-4; the search args v2 add buf_size, then the buffer
BTRFS_SEARCH_KEY = struct.Struct("=QQQQQQQIIII32x")
BTRFS_SEARCH_HEADER = struct.Struct("=QQQII")  # transid, objectid, offset, type, len
BTRFS_IOC_TREE_SEARCH_V2 = _IOWR(BTRFS_IOCTL_MAGIC, 17, BTRFS_SEARCH_KEY.size + U64.size)
# Requests only btrfs answers (FICLONE and friends began as btrfs ioctls but are generic now).
_BTRFS_ONLY = frozenset({
    BTRFS_IOC_SUBVOL_CREATE, BTRFS_IOC_SNAP_DESTROY, BTRFS_IOC_INO_LOOKUP, BTRFS_IOC_TREE_SEARCH_V2,
    BTRFS_IOC_SNAP_CREATE_V2, BTRFS_IOC_SUBVOL_GETFLAGS, BTRFS_IOC_SUBVOL_SETFLAGS,
})

# linux/btrfs_tree.h
BTRFS_FS_TREE_OBJECTID = 5
BTRFS_FIRST_FREE_OBJECTID = 256
BTRFS_INODE_ITEM_KEY = 1
BTRFS_EXTENT_DATA_KEY = 108

# linux/magic.h
BTRFS_SUPER_MAGIC = 0x9123683E


class RangesDifferError(OSError):
    """FIDEDUPERANGE refused because the two ranges do not hold the same bytes."""


@dataclass(frozen=True, slots=True)
class TreeItem:
    """One item of a btrfs tree as BTRFS_IOC_TREE_SEARCH_V2 returns it: its key and its bytes."""

    objectid: int
    type: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class FiemapExtent:
    """One extent as FS_IOC_FIEMAP reports it: byte offsets in the file and on the device."""

    logical: int
    physical: int
    length: int
    flags: FiemapFlag


def _fd_path(fd: int) -> str:
    """The path behind fd for error messages."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"


# A file named in an error: a path, or an fd whose path is looked up only when the error happens
# (a readlink per call would slow down reflinking thousands of files).
FileRef = str | int


def _name(ref: FileRef) -> str:
    return _fd_path(ref) if isinstance(ref, int) else ref


def _error(code: int | None, strerror: str | None, path: FileRef, path2: FileRef | None = None) -> OSError:
    """OSError naming the file(s) involved; OSError() picks the subclass (FileNotFoundError...)."""
    if path2 is None:
        return OSError(code, strerror, _name(path))
    return OSError(code, strerror, _name(path), None, _name(path2))


def _ioctl(fd: int, request: int, arg: bytearray | int, path: FileRef | None = None,
           path2: FileRef | None = None) -> int:
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        # Mutable buffer: the kernel writes results into it in place, and it may exceed the
        # 1024 bytes fcntl copies for immutable arguments.
        return int(fcntl.ioctl(fd, request, arg, True))
    except OSError as e:
        strerror: str | None = e.strerror
        if e.errno == errno.ENOTTY and request in _BTRFS_ONLY:
            # The bare "Inappropriate ioctl for device" does not say what is wrong.
            strerror = f"not on a btrfs filesystem ({e.strerror})"
        raise _error(e.errno, strerror, fd if path is None else path, path2) from None


@contextlib.contextmanager
def _subvolume_expected(path: StrPath) -> Iterator[None]:
    """Explain the kernel's EINVAL for a btrfs directory that is not a subvolume."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.EINVAL and os.path.isdir(path) and not is_subvolume(path):
            raise OSError(e.errno, f"not a btrfs subvolume ({e.strerror})", os.fspath(path)) from None
        raise


@contextlib.contextmanager
def _open(path: StrPath, flags: int = os.O_RDONLY | os.O_DIRECTORY) -> Iterator[int]:
    # O_NONBLOCK so that opening a FIFO by mistake cannot hang.
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


def _parent_and_name(path: StrPath) -> tuple[str, bytes]:
    """The directory holding path and path's last component, as the btrfs ioctls take them."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    raw = os.fsencode(name)
    if raw in (b"", b".", b".."):
        raise OSError(errno.EINVAL, "not a subvolume name", os.fspath(path))
    if len(raw) > BTRFS_VOL_NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fspath(path))
    return parent, raw


# --- reflinks and dedupe ---------------------------------------------------------------------


# Errors that mean "this pair of files cannot share extents", so copying is the answer.
NO_REFLINK = (errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM)


def clone_range(src_fd: int, src_offset: int, length: int, dst_fd: int, dst_offset: int) -> None:
    """Make [dst_offset, +length) of dst share src's [src_offset, +length) (FICLONERANGE).

    Offsets and length must be block-aligned, except a length reaching the end of src; a length
    of 0 means up to the end of src.
    """
    arg = bytearray(FILE_CLONE_RANGE.pack(src_fd, src_offset, length, dst_offset))
    _ioctl(dst_fd, FICLONERANGE, arg, src_fd, dst_fd)


def clone_file(src_fd: int, dst_fd: int) -> None:
    """Make dst share all of src's data (FICLONE); dst takes src's size."""
    _ioctl(dst_fd, FICLONE, src_fd, src_fd, dst_fd)


def dedupe_range(src_fd: int, src_offset: int, length: int, dst_fd: int, dst_offset: int) -> int:
    """Share equal ranges of src and dst (FIDEDUPERANGE); returns the bytes deduplicated.

    The kernel compares the ranges first; if they differ, nothing changes and RangesDifferError
    (errno EBADE, as the kernel uses internally) is raised. Ranges reaching past the end of either
    file are shortened by the kernel, so the result can be less than length.
    """
    done = 0
    while done < length:
        arg = bytearray(FILE_DEDUPE_RANGE.size + FILE_DEDUPE_RANGE_INFO.size)
        FILE_DEDUPE_RANGE.pack_into(arg, 0, src_offset + done, length - done, 1, 0, 0)
        FILE_DEDUPE_RANGE_INFO.pack_into(
            arg, FILE_DEDUPE_RANGE.size, dst_fd, dst_offset + done, 0, 0, 0
        )
        _ioctl(src_fd, FIDEDUPERANGE, arg, src_fd, dst_fd)
        _, _, deduped, status, _ = FILE_DEDUPE_RANGE_INFO.unpack_from(arg, FILE_DEDUPE_RANGE.size)
        if status < 0:
            raise _error(-status, os.strerror(-status), src_fd, dst_fd)
        if status == FILE_DEDUPE_RANGE_DIFFERS:
            raise RangesDifferError(
                errno.EBADE,
                f"ranges differ ({length - done} bytes at {src_offset + done} and {dst_offset + done})",
                _name(src_fd), None, _name(dst_fd),
            )
        if deduped == 0:
            break  # shortened to nothing at the end of a file
        done += deduped
    return done


# --- FIEMAP ----------------------------------------------------------------------------------

_FIEMAP_BATCH = 256


def fiemap(fd: int) -> list[FiemapExtent]:
    """The extents of the file open on fd (FS_IOC_FIEMAP), its dirty data written out first."""
    extents: list[FiemapExtent] = []
    start = 0
    while True:
        arg = bytearray(FIEMAP.size + _FIEMAP_BATCH * FIEMAP_EXTENT.size)
        FIEMAP.pack_into(arg, 0, start, FIEMAP_MAX_OFFSET, FIEMAP_FLAG_SYNC, 0, _FIEMAP_BATCH, 0)
        _ioctl(fd, FS_IOC_FIEMAP, arg)
        mapped = FIEMAP.unpack_from(arg, 0)[3]
        if mapped == 0:
            return extents
        for i in range(mapped):
            logical, physical, length, flags = FIEMAP_EXTENT.unpack_from(
                arg, FIEMAP.size + i * FIEMAP_EXTENT.size
            )
            extents.append(FiemapExtent(logical, physical, length, FiemapFlag(flags)))
        last = extents[-1]
        if last.flags & FiemapFlag.LAST:
            return extents
        start = last.logical + last.length


# What `btrfs filesystem du` leaves out: inline data takes no data space, and the space of
# delayed or unknown extents is not known yet.
_DU_SKIP = FiemapFlag.UNKNOWN | FiemapFlag.DELALLOC | FiemapFlag.DATA_INLINE


def _regular_files(path: StrPath) -> Iterator[tuple[int, str, os.stat_result]]:
    """(directory fd, name, lstat) of the regular files at or below path: path itself followed
    if a symlink, symlinks below it not. The fd is valid until the next item.

    Directories are opened one at a time below path's fd, never through a symlink, so a tree
    as deep as PATH_MAX allows neither leads the walk out nor runs out of fds.
    """
    top = os.fspath(path)
    st = os.stat(top)
    if stat.S_ISREG(st.st_mode):
        parent, name = os.path.split(os.path.abspath(top))
        with _open(parent) as fd:
            yield fd, name, st
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    with _open(top) as root_fd:
        todo = [""]
        while todo:
            rel = todo.pop()
            fd = open_beneath(root_fd, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            todo.append(f"{rel}/{entry.name}" if rel else entry.name)
                        elif stat.S_ISREG(st.st_mode):
                            yield fd, entry.name, st
            finally:
                os.close(fd)


def exclusive_bytes(paths: Iterable[StrPath]) -> int:
    """Bytes of the files at or below paths that no other file shares, per FIEMAP.

    Counts like the Exclusive column of ``btrfs filesystem du -s``: extents not flagged
    FIEMAP_EXTENT_SHARED, each inode (hardlinks) and each physical extent once, skipping inline,
    delayed and unknown extents. Unlike btrfs du, dirty data is written out first, so fresh
    writes count, and an inode reachable from two of the paths counts once.
    """
    seen_inodes: set[tuple[int, int]] = set()  # st_dev differs per btrfs subvolume
    seen_extents: set[int] = set()
    total = 0
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for top in paths:
        for dir_fd, name, st in _regular_files(top):
            if (st.st_dev, st.st_ino) in seen_inodes:
                continue
            seen_inodes.add((st.st_dev, st.st_ino))
            fd = os.open(name, flags, dir_fd=dir_fd)
            try:
                for extent in fiemap(fd):
                    if extent.flags & (_DU_SKIP | FiemapFlag.SHARED) or extent.length == 0:
                        continue
                    if extent.physical in seen_extents:
                        continue
                    seen_extents.add(extent.physical)
                    total += extent.length
            finally:
                os.close(fd)
    return total


# --- btrfs subvolumes ------------------------------------------------------------------------


def subvolume_create(path: StrPath) -> None:
    """Create an empty btrfs subvolume at path (BTRFS_IOC_SUBVOL_CREATE)."""
    parent, name = _parent_and_name(path)
    with _open(parent) as fd:
        _ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, bytearray(BTRFS_VOL_ARGS.pack(0, name)), os.fspath(path))


def subvolume_snapshot(src: StrPath, dst: StrPath, readonly: bool = False) -> None:
    """Snapshot subvolume src as dst, read-only if asked, in one step (BTRFS_IOC_SNAP_CREATE_V2)."""
    parent, name = _parent_and_name(dst)
    flags = BTRFS_SUBVOL_RDONLY if readonly else 0
    with _subvolume_expected(src), _open(src) as src_fd, _open(parent) as parent_fd:
        arg = bytearray(BTRFS_VOL_ARGS_V2.pack(src_fd, 0, flags, name))
        _ioctl(parent_fd, BTRFS_IOC_SNAP_CREATE_V2, arg, os.fspath(src), os.fspath(dst))


def subvolume_delete(path: StrPath) -> None:
    """Delete the subvolume at path with everything in it, read-only or not (BTRFS_IOC_SNAP_DESTROY).

    The kernel refuses (EPERM) the filesystem's default subvolume and (ENOTEMPTY) one that holds
    other subvolumes.
    """
    parent, name = _parent_and_name(path)
    with _subvolume_expected(path), _open(parent) as fd:
        _ioctl(fd, BTRFS_IOC_SNAP_DESTROY, bytearray(BTRFS_VOL_ARGS.pack(0, name)), os.fspath(path))


def _subvolume_flags(fd: int, path: StrPath) -> int:
    arg = bytearray(U64.size)
    _ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, arg, os.fspath(path))
    flags: int = U64.unpack(arg)[0]
    return flags


def subvolume_is_readonly(path: StrPath) -> bool:
    """Whether the subvolume at path is read-only (BTRFS_IOC_SUBVOL_GETFLAGS)."""
    with _subvolume_expected(path), _open(path) as fd:
        return bool(_subvolume_flags(fd, path) & BTRFS_SUBVOL_RDONLY)


def subvolume_set_readonly(path: StrPath, ro: bool) -> None:
    """Make the subvolume at path read-only or writable (BTRFS_IOC_SUBVOL_SETFLAGS)."""
    with _subvolume_expected(path), _open(path) as fd:
        flags = _subvolume_flags(fd, path)
        flags = flags | BTRFS_SUBVOL_RDONLY if ro else flags & ~BTRFS_SUBVOL_RDONLY
        _ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, bytearray(U64.pack(flags)), os.fspath(path))


def subvolume_id(path: StrPath) -> int:
    """The id of the subvolume holding path (BTRFS_IOC_INO_LOOKUP); 5 is the top level."""
    with _open(path, os.O_RDONLY) as fd:
        # treeid 0 asks for the tree of fd itself; objectid 256 (the subvolume's root directory)
        # makes the kernel answer without resolving a path, and without CAP_SYS_ADMIN.
        arg = bytearray(BTRFS_INO_LOOKUP_ARGS.pack(0, BTRFS_FIRST_FREE_OBJECTID, b""))
        _ioctl(fd, BTRFS_IOC_INO_LOOKUP, arg, os.fspath(path))
        treeid: int = BTRFS_INO_LOOKUP_ARGS.unpack(arg)[0]
        return treeid


def subvolume_generation(path: StrPath) -> tuple[int, int]:
    """(generation, ctransid) of the subvolume holding path (BTRFS_IOC_GET_SUBVOL_INFO, no
    privileges needed): both grow with every transaction that changes anything in it."""
    with _open(path, os.O_RDONLY) as fd:
        arg = bytearray(BTRFS_SUBVOL_INFO.size)
        _ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, arg, os.fspath(path))
        fields = BTRFS_SUBVOL_INFO.unpack(arg)
        return int(fields[4]), int(fields[9])


def filesystem_uuid(path: StrPath) -> str:
    """The UUID of the btrfs holding path, as blkid and /sys/fs/btrfs name it
    (BTRFS_IOC_FS_INFO, no privileges needed)."""
    with _open(path, os.O_RDONLY) as fd:
        arg = bytearray(BTRFS_FS_INFO.size)
        _ioctl(fd, BTRFS_IOC_FS_INFO, arg, os.fspath(path))
        h = BTRFS_FS_INFO.unpack(arg)[2].hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_SEARCH_BUFFER = 16 << 10  # about 190 file extent items a search; grown for a larger item
_U64_MAX = (1 << 64) - 1


def inode_items(fd: int, last_type: int = BTRFS_EXTENT_DATA_KEY) -> list[TreeItem]:
    """The items keyed by the inode open on fd in its subvolume's tree, from its inode item
    (BTRFS_INODE_ITEM_KEY) up to the type last_type (file extents by default), in key order
    (BTRFS_IOC_TREE_SEARCH_V2; needs CAP_SYS_ADMIN).

    The tree as it is now: updates of a transaction not yet committed may not show in it
    yet (btrfs delays inode items), so sync the filesystem first to see every change."""
    ino = os.fstat(fd).st_ino
    items: list[TreeItem] = []
    min_type, min_offset = BTRFS_INODE_ITEM_KEY, 0
    size = _SEARCH_BUFFER
    arg = bytearray(BTRFS_SEARCH_KEY.size + U64.size + size)
    while True:
        # tree_id 0: the tree holding fd; every transid; as many items as fit
        BTRFS_SEARCH_KEY.pack_into(arg, 0, 0, ino, ino, min_offset, _U64_MAX, 0, _U64_MAX,
                                   min_type, last_type, 0xFFFFFFFF, 0)
        U64.pack_into(arg, BTRFS_SEARCH_KEY.size, size)
        try:
            _ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, arg)
        except OSError as e:
            # The next item alone does not fit: the kernel says how large a buffer it needs.
            needed = U64.unpack_from(arg, BTRFS_SEARCH_KEY.size)[0]
            if e.errno != errno.EOVERFLOW or needed <= size or needed > 16 << 20:
                raise
            size = needed
            arg = bytearray(BTRFS_SEARCH_KEY.size + U64.size + size)
            continue
        found = BTRFS_SEARCH_KEY.unpack_from(arg, 0)[9]
        pos = BTRFS_SEARCH_KEY.size + U64.size
        for _ in range(found):
            _, objectid, offset, type_, length = BTRFS_SEARCH_HEADER.unpack_from(arg, pos)
            pos += BTRFS_SEARCH_HEADER.size
            items.append(TreeItem(objectid, type_, offset, bytes(arg[pos:pos + length])))
            pos += length
        if found == 0:
            return items
        last = items[-1]
        if last.offset < _U64_MAX:
            min_type, min_offset = last.type, last.offset + 1
        elif last.type < last_type:
            min_type, min_offset = last.type + 1, 0
        else:
            return items


def is_subvolume(path: StrPath) -> bool:
    """Whether path (symlinks followed) is the root directory of a btrfs subvolume."""
    st = os.stat(path)
    # A subvolume's root directory is always inode 256 in its own tree.
    return (stat.S_ISDIR(st.st_mode) and st.st_ino == BTRFS_FIRST_FREE_OBJECTID
            and is_btrfs(path))


# --- libc and libcap through ctypes ------------------------------------------------------------
# ctypes rather than cffi: cffi parses its declarations with pycparser, which costs a
# process 4.6 MB of memory the first time (a third of a small deploy's own footprint).


@functools.cache
def _libcap() -> Any:
    try:
        lib = ctypes.CDLL("libcap.so.2", use_errno=True)
    except OSError as e:
        raise OSError(errno.ENOENT, f"cannot load libcap: {e}", "libcap.so.2") from None
    lib.cap_from_text.argtypes = [ctypes.c_char_p]
    lib.cap_from_text.restype = ctypes.c_void_p  # cap_t, NULL on a bad text
    lib.cap_set_fd.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.cap_set_fd.restype = ctypes.c_int
    lib.cap_free.argtypes = [ctypes.c_void_p]
    lib.cap_free.restype = ctypes.c_int
    return lib


def _last_error(path: FileRef) -> OSError:
    code = ctypes.get_errno()
    return _error(code, os.strerror(code), path)


def is_btrfs(path: StrPath) -> bool:
    """Whether path lies on a btrfs filesystem (statfs f_type)."""
    # struct statfs is 120 bytes on 64-bit Linux, f_type (__fsword_t, a long everywhere but
    # s390x) first; the buffer is larger than any variant.
    buf = (ctypes.c_long * 64)()
    if _libc().statfs(os.fsencode(path), buf) != 0:
        raise _last_error(os.fspath(path))
    return int(buf[0]) & 0xFFFFFFFF == BTRFS_SUPER_MAGIC


@functools.cache
def _libc() -> Any:
    """libc through ctypes (statfs, syncfs, unshare, prctl, openat2 by syscall)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.syncfs.argtypes = [ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    return libc


def sync_filesystem(path: StrPath) -> None:
    """Write out and commit everything pending on the filesystem holding path (syncfs)."""
    with _open(path, os.O_RDONLY) as fd:
        if _libc().syncfs(fd) != 0:
            raise _last_error(os.fspath(path))


CLONE_NEWNS = 0x00020000


def unshare_mount_namespace() -> None:
    """Move this process into a mount namespace of its own (unshare(CLONE_NEWNS))."""
    if _libc().unshare(CLONE_NEWNS) != 0:
        raise _last_error("unshare(CLONE_NEWNS)")


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send sig to this process when the thread that created it ends
    (prctl PR_SET_PDEATHSIG), so a worker cannot outlive a parent killed with SIGKILL.

    The caller checks os.getppid() afterwards: a parent that died before this call
    took effect is not signalled for."""
    if _libc().prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), ctypes.c_ulong(0), ctypes.c_ulong(0),
                     ctypes.c_ulong(0)) != 0:
        raise _last_error("prctl(PR_SET_PDEATHSIG)")


def set_capabilities(fd: int, text: str) -> None:
    """Set the file capabilities in libcap text form ("cap_net_raw=ep") on fd, as rpm does.

    rpm stores FILECAPS in this form and applies them with cap_from_text() and cap_set_fd();
    so does this. Set them after chown: changing the owner clears them.
    """
    lib = _libcap()
    caps = lib.cap_from_text(text.encode())
    if not caps:
        raise _error(errno.EINVAL, f"invalid capability text {text!r}", fd)
    try:
        if lib.cap_set_fd(fd, caps) != 0:
            code = ctypes.get_errno()
            # EINVAL here is mostly a set the kernel cannot store: a file has one effective bit,
            # so "e" must cover all of the permitted and inheritable capabilities or none.
            raise _error(code, f"cannot set capabilities {text!r}: {os.strerror(code)}", fd)
    finally:
        lib.cap_free(caps)


# --- openat2(2): path resolution confined to a directory ---------------------------------------

SYS_openat2 = 437  # the same number on every architecture (asm-generic/unistd.h, since 5.6)
OPEN_HOW = struct.Struct("=QQQ")  # flags, mode, resolve (struct open_how, linux/openat2.h)


class Resolve(enum.IntFlag):
    """RESOLVE_* flags of openat2(2)."""

    NO_XDEV = 0x01
    NO_MAGICLINKS = 0x02
    NO_SYMLINKS = 0x04
    BENEATH = 0x08
    IN_ROOT = 0x10
    CACHED = 0x20


def openat2(dir_fd: int, path: StrPath, flags: int, resolve: Resolve, mode: int = 0) -> int:
    """openat2(dir_fd, path, {flags, mode, resolve}): a new fd, or OSError naming path.

    With ``Resolve.IN_ROOT`` every absolute path, absolute symlink and ``..`` is resolved
    as if dir_fd were the root (a chroot for this one lookup); with ``Resolve.BENEATH``
    anything that would leave dir_fd fails with EXDEV. O_CLOEXEC is always added. Mode is
    only passed along with O_CREAT or O_TMPFILE, as the kernel requires.
    """
    flags |= os.O_CLOEXEC
    # O_TMPFILE includes the O_DIRECTORY bit: test for all of its bits, not any.
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if not flags & os.O_CREAT and (not tmpfile or flags & tmpfile != tmpfile):
        mode = 0
    raw = os.fsencode(path)
    if b"\0" in raw:  # C would see the path cut short at it: another file
        raise _error(errno.EINVAL, "embedded null byte", os.fspath(path))
    # Every argument a long, as syscall(2) reads them; the buffers are only read by the kernel.
    fd = int(_libc().syscall(
        ctypes.c_long(SYS_openat2), ctypes.c_long(dir_fd), raw,
        OPEN_HOW.pack(flags, mode, int(resolve)), ctypes.c_long(OPEN_HOW.size),
    ))
    if fd < 0:
        raise _last_error(os.fspath(path))
    return fd


PATH_MAX = 4096  # bytes of a path the kernel takes in one call, the terminating NUL included
# No symlink, no magic link, nothing above the starting directory: the path as written, below it.
CONFINED = Resolve.BENEATH | Resolve.NO_SYMLINKS | Resolve.NO_MAGICLINKS


def open_beneath(dir_fd: int, path: StrPath, flags: int, mode: int = 0) -> int:
    """Open path, a symlink-free relative path, below dir_fd and nowhere else.

    Resolved with ``CONFINED``: a symlink anywhere in path (the last component too) fails
    with ELOOP, a ``..`` leaving dir_fd with EXDEV, so a tree changed under our feet can't
    lead the open out of it. A path of PATH_MAX bytes or more is opened a piece at a time,
    through intermediate directory fds. "" opens dir_fd's directory itself.
    """
    raw = os.fsencode(path) or b"."
    fd, owned = dir_fd, False
    try:
        while len(raw) >= PATH_MAX:
            cut = raw.rfind(b"/", 0, PATH_MAX - 1)
            if cut <= 0:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), os.fsdecode(path))
            step = openat2(fd, os.fsdecode(raw[:cut]), os.O_PATH | os.O_DIRECTORY, CONFINED)
            if owned:
                os.close(fd)
            fd, owned, raw = step, True, raw[cut + 1:].lstrip(b"/")
        return openat2(fd, os.fsdecode(raw), flags, CONFINED, mode)
    except OSError as e:
        if owned and e.filename != os.fsdecode(path):
            raise OSError(e.errno, e.strerror, os.fsdecode(path)) from None
        raise
    finally:
        if owned:
            os.close(fd)


def open_in_root(root_fd: int, path: StrPath, flags: int) -> int:
    """Open path as a process chrooted to root_fd would (``Resolve.IN_ROOT``, no magic links)."""
    return openat2(root_fd, path, flags, Resolve.IN_ROOT | Resolve.NO_MAGICLINKS)
