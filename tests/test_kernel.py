"""host.kernel against a real loop-mounted btrfs, btrfs-progs and libcap's setcap as oracles."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from host import kernel

BLOCK = 4096

# From the kernel headers (linux/fs.h, linux/btrfs.h), printed by a C program built against
# linux-libc-dev 6.1: these are ABI and never change.
HEADER_IOCTLS = {
    "FICLONE": 0x40049409,
    "FICLONERANGE": 0x4020940D,
    "FIDEDUPERANGE": 0xC0189436,
    "FS_IOC_FIEMAP": 0xC020660B,
    "BTRFS_IOC_SUBVOL_CREATE": 0x5000940E,
    "BTRFS_IOC_SNAP_DESTROY": 0x5000940F,
    "BTRFS_IOC_INO_LOOKUP": 0xD0009412,
    "BTRFS_IOC_SNAP_CREATE_V2": 0x50009417,
    "BTRFS_IOC_SUBVOL_GETFLAGS": 0x80089419,
    "BTRFS_IOC_SUBVOL_SETFLAGS": 0x4008941A,
    "BTRFS_IOC_TREE_SEARCH_V2": 0xC0709411,
}
HEADER_SIZES = {
    "FILE_CLONE_RANGE": 32,
    "FILE_DEDUPE_RANGE": 24,
    "FILE_DEDUPE_RANGE_INFO": 32,
    "FIEMAP": 32,
    "FIEMAP_EXTENT": 56,
    "BTRFS_VOL_ARGS": 4096,
    "BTRFS_VOL_ARGS_V2": 4096,
    "BTRFS_INO_LOOKUP_ARGS": 4096,
    "BTRFS_SEARCH_KEY": 104,
    "BTRFS_SEARCH_HEADER": 32,
}


@pytest.mark.parametrize(("name", "value"), sorted(HEADER_IOCTLS.items()))
def test_ioctl_number_matches_kernel_header(name: str, value: int) -> None:
    assert getattr(kernel, name) == value, f"{name} = {getattr(kernel, name):#x}, header says {value:#x}"


@pytest.mark.parametrize(("name", "size"), sorted(HEADER_SIZES.items()))
def test_struct_size_matches_kernel_header(name: str, size: int) -> None:
    assert getattr(kernel, name).size == size


# --- helpers ---------------------------------------------------------------------------------


@contextmanager
def opened(path: Path, mode: str = "rb") -> Iterator[int]:
    with open(path, mode) as f:
        yield f.fileno()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def align_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def btrfs_du_exclusive(path: Path) -> int:
    """The Exclusive column of `btrfs filesystem du -s --raw PATH`."""
    out = subprocess.run(
        ["btrfs", "filesystem", "du", "-s", "--raw", os.fspath(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    fields = out.splitlines()[-1].split()
    return int(fields[1])


# Random data: a constant pattern could be compressed or deduplicated behind our back.
DATA = os.urandom(256 * 1024 + 100)


# --- reflinks --------------------------------------------------------------------------------


def test_clone_range_shares_data(btrfs: Path) -> None:
    src = write(btrfs / "src", DATA)
    copy = write(btrfs / "copy", DATA)
    dst = btrfs / "dst"
    with opened(src) as s, opened(dst, "wb") as d:
        # The length ends unaligned at the end of src, which the kernel accepts.
        kernel.clone_range(s, 0, len(DATA), d, 0)
    assert dst.read_bytes() == DATA
    with opened(dst) as d:
        extents = kernel.fiemap(d)
    assert extents and all(e.flags & kernel.FiemapFlag.SHARED for e in extents)
    assert kernel.exclusive_bytes([src, dst]) == 0
    assert kernel.exclusive_bytes([copy]) == align_up(len(DATA))


def test_clone_range_at_offsets(btrfs: Path) -> None:
    src = write(btrfs / "src", DATA)
    dst = btrfs / "dst"
    with opened(src) as s, opened(dst, "wb") as d:
        kernel.clone_range(s, BLOCK, 2 * BLOCK, d, 8 * BLOCK)
    got = dst.read_bytes()
    assert got == bytes(8 * BLOCK) + DATA[BLOCK:3 * BLOCK]
    with opened(src) as s, opened(dst) as d:
        src_extent = kernel.fiemap(s)[0]
        dst_extent = kernel.fiemap(d)[0]
    assert dst_extent.logical == 8 * BLOCK
    assert dst_extent.physical == src_extent.physical + BLOCK


def test_clone_range_unaligned_names_both_files(btrfs: Path) -> None:
    src = write(btrfs / "src", DATA)
    dst = btrfs / "dst"
    with opened(src) as s, opened(dst, "wb") as d, pytest.raises(OSError) as e:
        kernel.clone_range(s, 100, BLOCK, d, 0)
    assert e.value.errno == errno.EINVAL
    assert (e.value.filename, e.value.filename2) == (os.fspath(src), os.fspath(dst))


def test_clone_file_shares_data(btrfs: Path) -> None:
    src = write(btrfs / "src", DATA)
    dst = write(btrfs / "dst", b"old content, longer than nothing")
    with opened(src) as s, opened(dst, "r+b") as d:
        kernel.clone_file(s, d)
    assert dst.read_bytes() == DATA
    assert kernel.exclusive_bytes([src, dst]) == 0


@pytest.mark.parametrize("call", ["clone_file", "clone_range"])
def test_clone_across_filesystems_is_exdev(btrfs: Path, tmp_path: Path, call: str) -> None:
    assert os.stat(tmp_path).st_dev != os.stat(btrfs).st_dev
    src = write(btrfs / "src", DATA)
    dst = tmp_path / "dst"
    with opened(src) as s, opened(dst, "wb") as d, pytest.raises(OSError) as e:
        if call == "clone_file":
            kernel.clone_file(s, d)
        else:
            kernel.clone_range(s, 0, align_up(len(DATA)), d, 0)
    assert e.value.errno == errno.EXDEV
    assert (e.value.filename, e.value.filename2) == (os.fspath(src), os.fspath(dst))
    assert dst.read_bytes() == b""


# --- dedupe ----------------------------------------------------------------------------------


def test_dedupe_equal_ranges_shares_them(btrfs: Path) -> None:
    a = write(btrfs / "a", DATA)
    b = write(btrfs / "b", DATA)
    assert kernel.exclusive_bytes([a, b]) == 2 * align_up(len(DATA))
    with opened(a) as fa, opened(b, "r+b") as fb:
        assert kernel.dedupe_range(fa, 0, len(DATA), fb, 0) == len(DATA)
    assert a.read_bytes() == b.read_bytes() == DATA
    assert kernel.exclusive_bytes([a, b]) == 0


def test_dedupe_part_points_at_source_extent(btrfs: Path) -> None:
    a = write(btrfs / "a", DATA)
    b = write(btrfs / "b", os.urandom(BLOCK) + DATA[BLOCK:])
    length = 16 * BLOCK
    with opened(a) as fa, opened(b, "r+b") as fb:
        assert kernel.dedupe_range(fa, BLOCK, length, fb, BLOCK) == length
        a_extent = kernel.fiemap(fa)[0]
        b_extents = kernel.fiemap(fb)
    shared = next(e for e in b_extents if e.logical == BLOCK)
    assert shared.flags & kernel.FiemapFlag.SHARED
    assert (shared.physical, shared.length) == (a_extent.physical + BLOCK, length)


def test_dedupe_different_ranges_raises_and_changes_nothing(btrfs: Path) -> None:
    other = DATA[:-1] + bytes([DATA[-1] ^ 1])
    a = write(btrfs / "a", DATA)
    b = write(btrfs / "b", other)
    with opened(a) as fa, opened(b, "r+b") as fb, pytest.raises(kernel.RangesDifferError) as e:
        kernel.dedupe_range(fa, 0, len(DATA), fb, 0)
    assert e.value.errno == errno.EBADE
    assert "ranges differ" in str(e.value)
    assert (e.value.filename, e.value.filename2) == (os.fspath(a), os.fspath(b))
    assert (a.read_bytes(), b.read_bytes()) == (DATA, other)
    assert kernel.exclusive_bytes([a, b]) == 2 * align_up(len(DATA))


# --- FIEMAP and exclusive bytes --------------------------------------------------------------


def test_fiemap_empty_and_sparse_files(btrfs: Path) -> None:
    empty = write(btrfs / "empty", b"")
    sparse = btrfs / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(1 << 20)
        f.seek(512 * 1024)
        f.write(DATA[:BLOCK])
    with opened(empty) as fd:
        assert kernel.fiemap(fd) == []
    with opened(sparse) as fd:
        extents = kernel.fiemap(fd)
    assert [(e.logical, e.length) for e in extents] == [(512 * 1024, BLOCK)]
    assert extents[-1].flags & kernel.FiemapFlag.LAST
    assert not extents[0].flags & kernel.FiemapFlag.SHARED


def test_fiemap_reads_more_extents_than_one_batch(btrfs: Path) -> None:
    path = btrfs / "holes"
    count = 300  # more than one FS_IOC_FIEMAP call returns
    with open(path, "wb") as f:
        for i in range(count):
            f.seek(2 * i * BLOCK)
            f.write(DATA[i:i + BLOCK])
    with opened(path) as fd:
        extents = kernel.fiemap(fd)
    assert [e.logical for e in extents] == [2 * i * BLOCK for i in range(count)]
    assert sum(1 for e in extents if e.flags & kernel.FiemapFlag.LAST) == 1


def test_exclusive_bytes_matches_btrfs_du(btrfs: Path) -> None:
    if shutil.which("btrfs") is None:
        pytest.skip("btrfs (btrfs-progs) not installed")
    tree = btrfs / "tree"
    kernel.subvolume_create(tree)
    (tree / "sub").mkdir()
    own = write(tree / "own", DATA)
    os.link(own, tree / "sub" / "own-link")  # a hardlink counts once
    os.symlink("own", tree / "sub" / "symlink")
    src = write(tree / "sub" / "src", os.urandom(5 * BLOCK))
    with opened(src) as s, opened(tree / "clone", "wb") as d:
        kernel.clone_file(s, d)
    write(tree / "tiny", b"inline data takes no data space")
    kernel.sync_filesystem(tree)

    assert kernel.exclusive_bytes([tree]) == btrfs_du_exclusive(tree) == align_up(len(DATA))
    assert kernel.exclusive_bytes([tree, tree / "own"]) == align_up(len(DATA))

    kernel.subvolume_snapshot(tree, btrfs / "snap", readonly=True)
    kernel.sync_filesystem(tree)
    assert kernel.exclusive_bytes([tree]) == btrfs_du_exclusive(tree) == 0


def test_exclusive_bytes_of_missing_path_names_it(btrfs: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        kernel.exclusive_bytes([btrfs / "missing"])
    assert e.value.filename == os.fspath(btrfs / "missing")


# --- subvolumes ------------------------------------------------------------------------------


def test_subvolume_lifecycle(btrfs: Path) -> None:
    sv = btrfs / "sv"
    kernel.subvolume_create(sv)
    assert kernel.is_subvolume(sv)
    assert kernel.subvolume_id(btrfs) == kernel.BTRFS_FS_TREE_OBJECTID
    sv_id = kernel.subvolume_id(sv)
    assert sv_id >= kernel.BTRFS_FIRST_FREE_OBJECTID
    assert not kernel.subvolume_is_readonly(sv)
    write(sv / "file", DATA)
    assert kernel.subvolume_id(sv / "file") == sv_id

    snap = btrfs / "snap"
    kernel.subvolume_snapshot(sv, snap, readonly=True)
    assert kernel.is_subvolume(snap)
    assert kernel.subvolume_id(snap) not in (sv_id, kernel.BTRFS_FS_TREE_OBJECTID)
    assert kernel.subvolume_is_readonly(snap)
    assert (snap / "file").read_bytes() == DATA
    assert_read_only(snap)

    kernel.subvolume_set_readonly(snap, False)
    assert not kernel.subvolume_is_readonly(snap)
    write(snap / "file", b"changed")
    write(snap / "new", b"new")
    kernel.subvolume_set_readonly(snap, True)
    assert kernel.subvolume_is_readonly(snap)
    assert_read_only(snap)
    assert (sv / "file").read_bytes() == DATA  # the snapshot's writes stayed in the snapshot

    rw = btrfs / "rw"
    kernel.subvolume_snapshot(snap, rw)
    assert not kernel.subvolume_is_readonly(rw)
    assert (rw / "new").read_bytes() == b"new"

    for path in (snap, rw, sv):  # snap is read-only and not empty
        kernel.subvolume_delete(path)
        assert not path.exists()
    assert os.listdir(btrfs) == []


def assert_read_only(subvolume: Path) -> None:
    writes: list[Callable[[], object]] = [
        lambda: open(subvolume / "file", "r+b"),
        lambda: open(subvolume / "created", "wb"),
        lambda: (subvolume / "dir").mkdir(),
        lambda: os.unlink(subvolume / "file"),
    ]
    for attempt in writes:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS


def test_is_subvolume_false_for_plain_entries(btrfs: Path, tmp_path: Path) -> None:
    (btrfs / "dir").mkdir()
    write(btrfs / "file", b"x")
    assert kernel.is_subvolume(btrfs)  # the top level is a subvolume too
    assert not kernel.is_subvolume(btrfs / "dir")
    assert not kernel.is_subvolume(btrfs / "file")
    assert not kernel.is_subvolume(tmp_path)


def test_subvolume_create_existing_names_path(btrfs: Path) -> None:
    (btrfs / "taken").mkdir()
    with pytest.raises(FileExistsError) as e:
        kernel.subvolume_create(btrfs / "taken")
    assert e.value.filename == os.fspath(btrfs / "taken")


@pytest.mark.parametrize("call", ["is_readonly", "set_readonly", "snapshot", "delete"])
def test_plain_directory_is_not_a_subvolume(btrfs: Path, call: str) -> None:
    plain = btrfs / "plain"
    plain.mkdir()
    with pytest.raises(OSError) as e:
        if call == "is_readonly":
            kernel.subvolume_is_readonly(plain)
        elif call == "set_readonly":
            kernel.subvolume_set_readonly(plain, True)
        elif call == "snapshot":
            kernel.subvolume_snapshot(plain, btrfs / "snap")
        else:
            kernel.subvolume_delete(plain)
    assert e.value.filename == os.fspath(plain)
    assert "not a btrfs subvolume" in str(e.value), str(e.value)
    assert plain.is_dir()


def test_is_btrfs(btrfs: Path, tmp_path: Path) -> None:
    assert kernel.is_btrfs(btrfs)
    assert not kernel.is_btrfs(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        kernel.is_btrfs(tmp_path / "missing")
    assert e.value.filename == os.fspath(tmp_path / "missing")


BTRFS_ONLY_CALLS: dict[str, Callable[[Path], object]] = {
    "subvolume_create": lambda p: kernel.subvolume_create(p / "new"),
    "subvolume_delete": lambda p: kernel.subvolume_delete(p / "dir"),
    "subvolume_snapshot": lambda p: kernel.subvolume_snapshot(p / "dir", p / "snap"),
    "subvolume_is_readonly": lambda p: kernel.subvolume_is_readonly(p / "dir"),
    "subvolume_set_readonly": lambda p: kernel.subvolume_set_readonly(p / "dir", True),
    "subvolume_id": lambda p: kernel.subvolume_id(p / "dir"),
}


@pytest.mark.parametrize("name", sorted(BTRFS_ONLY_CALLS))
def test_btrfs_call_on_other_filesystem_says_so(tmp_path: Path, name: str) -> None:
    if kernel.is_btrfs(tmp_path):
        pytest.skip(f"{tmp_path} is itself on btrfs")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError) as e:
        BTRFS_ONLY_CALLS[name](tmp_path)
    assert e.value.errno == errno.ENOTTY
    assert "not on a btrfs filesystem" in str(e.value)
    assert e.value.filename is not None and e.value.filename.startswith(os.fspath(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["dir"]


# --- capabilities ----------------------------------------------------------------------------


def raw_caps(path: Path) -> bytes:
    return os.getxattr(path, "security.capability")


@pytest.mark.parametrize(
    "text",
    ["cap_net_raw=ep", "cap_net_admin,cap_net_raw+ep", "cap_sys_admin=eip", "cap_chown+p",
     "cap_setuid,cap_setgid=p cap_dac_override+i"],
)
def test_set_capabilities_matches_setcap(tmp_path: Path, text: str) -> None:
    if shutil.which("setcap") is None or shutil.which("getcap") is None:
        pytest.skip("setcap/getcap (libcap2-bin) not installed")
    if os.geteuid() != 0:
        pytest.skip("setting file capabilities needs root")
    expected = write(tmp_path / "by-setcap", b"x")
    ours = write(tmp_path / "by-kernel", b"x")
    subprocess.run(["setcap", text, os.fspath(expected)], check=True, capture_output=True)
    with opened(ours) as fd:
        kernel.set_capabilities(fd, text)
    assert raw_caps(ours) == raw_caps(expected)

    def getcap(path: Path) -> str:
        out = subprocess.run(["getcap", os.fspath(path)], check=True, capture_output=True, text=True)
        return out.stdout.split(None, 1)[1].strip()

    assert getcap(ours) == getcap(expected)


def test_set_capabilities_rejects_bad_text(tmp_path: Path) -> None:
    path = write(tmp_path / "f", b"x")
    with opened(path) as fd, pytest.raises(OSError) as e:
        kernel.set_capabilities(fd, "cap_no_such_thing=ep")
    assert e.value.errno == errno.EINVAL
    assert "cap_no_such_thing=ep" in str(e.value)
    assert e.value.filename == os.fspath(path)
    with pytest.raises(OSError) as missing:
        raw_caps(path)
    assert missing.value.errno == errno.ENODATA


def test_set_capabilities_refuses_what_a_file_cannot_hold(tmp_path: Path) -> None:
    # One effective bit per file: effective for some permitted capabilities but not others.
    text = "cap_setuid=ep cap_chown+p"
    path = write(tmp_path / "f", b"x")
    with opened(path) as fd, pytest.raises(OSError) as e:
        kernel.set_capabilities(fd, text)
    assert e.value.errno == errno.EINVAL
    assert f"cannot set capabilities {text!r}" in str(e.value)
    assert e.value.filename == os.fspath(path)
    if shutil.which("setcap"):
        refused = subprocess.run(["setcap", text, os.fspath(path)], capture_output=True)
        assert refused.returncode != 0


def test_open_how_matches_kernel_header() -> None:
    # struct open_how { __u64 flags, mode, resolve; } (linux/openat2.h, OPEN_HOW_SIZE_VER0)
    assert kernel.OPEN_HOW.size == 24
    assert kernel.Resolve.IN_ROOT == 0x10 and kernel.Resolve.BENEATH == 0x08


def test_openat2_in_root_treats_absolute_links_as_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/share/foo").mkdir(parents=True)
    (root / "usr/lib").mkdir()
    (root / "etc").mkdir()
    (root / "usr/lib/foo").symlink_to("/usr/share/foo")
    (root / "usr/lib/shadow").symlink_to("../../../../../../etc/shadow")
    outside = tmp_path / "etc"
    outside.mkdir()
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        os.close(kernel.openat2(rfd, "usr/lib/foo/bar", flags, kernel.Resolve.IN_ROOT, 0o640))
        assert stat.S_IMODE((root / "usr/share/foo/bar").stat().st_mode) == 0o640
        # ".." stops at the root, as in a chroot: the host's tmp_path/etc is never reached.
        os.close(kernel.openat2(rfd, "usr/lib/shadow", os.O_WRONLY | os.O_CREAT, kernel.Resolve.IN_ROOT, 0o600))
        assert (root / "etc/shadow").is_file()
        with pytest.raises(OSError) as beneath:
            kernel.openat2(rfd, "usr/lib/foo/baz", flags, kernel.Resolve.BENEATH, 0o600)
        assert beneath.value.errno == errno.EXDEV and beneath.value.filename == "usr/lib/foo/baz"
        with pytest.raises(OSError) as nosym:
            kernel.openat2(rfd, "usr/lib/foo/baz", flags, kernel.Resolve.NO_SYMLINKS, 0o600)
        assert nosym.value.errno == errno.ELOOP
        # A directory opened with a mode given: the mode is dropped, not passed to the kernel.
        os.close(kernel.openat2(rfd, "usr", os.O_RDONLY | os.O_DIRECTORY, kernel.Resolve.BENEATH, 0o755))
    finally:
        os.close(rfd)
    assert list(outside.iterdir()) == []


def test_open_beneath_follows_nothing_and_stays_below(tmp_path: Path) -> None:
    """A symlink anywhere (last component too) is ELOOP, '..' out of the fd EXDEV; nothing outside is opened."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d/file").write_text("in")
    (tmp_path / "outside").write_text("out")
    (root / "d/link").symlink_to("file")
    (root / "dirlink").symlink_to("d")
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(kernel.open_beneath(rfd, "d/file", os.O_RDONLY)) as f:
            assert f.read() == "in"
        for path, code in (("d/link", errno.ELOOP), ("dirlink/file", errno.ELOOP), ("../outside", errno.EXDEV),
                           ("d/../../outside", errno.EXDEV), ("/outside", errno.EXDEV)):
            with pytest.raises(OSError) as caught:
                kernel.open_beneath(rfd, path, os.O_RDONLY)
            assert caught.value.errno == code, path
            assert caught.value.filename == path
    finally:
        os.close(rfd)


def test_openat2_refuses_a_path_with_a_nul_byte(tmp_path: Path) -> None:
    """C would read the path only up to the NUL: "d/file\\0x" must not open d/file."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d/file").write_text("in")
    rfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in ("d/file\0x", "d\0/file"):
            with pytest.raises(OSError) as caught:
                kernel.open_beneath(rfd, path, os.O_RDONLY)
            assert caught.value.errno == errno.EINVAL and caught.value.filename == path
            with pytest.raises(OSError):
                kernel.openat2(rfd, path, os.O_RDONLY, kernel.Resolve.IN_ROOT)
    finally:
        os.close(rfd)


def test_open_beneath_takes_paths_longer_than_path_max(tmp_path: Path) -> None:
    """Past PATH_MAX the path is opened a piece at a time, still refusing symlinks in every piece."""
    parts = ["p" * 250] * 20  # 5,019 bytes
    rfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.dup(rfd)
        for part in parts:
            os.mkdir(part, dir_fd=fd)
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.symlink("/", "escape", dir_fd=fd)
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.close(fd)
        deep = "/".join(parts)
        assert len(deep) >= kernel.PATH_MAX
        st = os.fstat(fd := kernel.open_beneath(rfd, deep + "/leaf", os.O_RDONLY))
        os.close(fd)
        assert stat.S_ISREG(st.st_mode)
        with pytest.raises(OSError) as caught:
            kernel.open_beneath(rfd, deep + "/escape/etc", os.O_RDONLY)
        assert caught.value.errno == errno.ELOOP and caught.value.filename == deep + "/escape/etc"
        # A walk of such a tree (status measures one) needs no long path either.
        assert kernel.exclusive_bytes([tmp_path]) >= 0
    finally:
        os.close(rfd)


def test_filesystem_uuid_is_blkids_from_anywhere_in_the_filesystem(btrfs: Path) -> None:
    probed = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", os.fspath(btrfs.parent / "fs.img")],
                            check=True, capture_output=True, text=True).stdout.strip()
    kernel.subvolume_create(btrfs / "sub")
    (btrfs / "sub/dir").mkdir()
    assert probed and kernel.filesystem_uuid(btrfs) == probed
    assert kernel.filesystem_uuid(btrfs / "sub/dir") == probed
    assert (Path("/sys/fs/btrfs") / probed).is_dir()
    with pytest.raises(OSError):
        kernel.filesystem_uuid("/proc")  # not a btrfs
