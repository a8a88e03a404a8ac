"""The base record of /etc (deploy.etcbase) made from an earlier record of the same root: a
file whose stamp is the record's (inode number, ctime, mode, owner) takes its digest from it;
any other is hashed, as is everything when the record is missing or does not pair up."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from deploy.etcbase import (
    BASE_DIR,
    BaseEntry,
    record_after,
    record_base,
    recorded_files,
    write_records,
)
from deploy.etcmerge import EtcMerge
from host import kernel


@pytest.fixture
def top(btrfs: Path) -> Path:
    return btrfs


def _base(root: Path, recorded: dict[str, tuple[tuple[int, int, int, int, int], str]] | None = None
          ) -> tuple[BaseEntry, ...]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return record_base(fd, recorded)
    finally:
        os.close(fd)


def _record(usr: Path, base: tuple[BaseEntry, ...]) -> None:
    usr.mkdir(exist_ok=True)
    fd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_records(fd, EtcMerge((), base), "1")
    finally:
        os.close(fd)


def test_untouched_files_take_the_recorded_digest_and_changed_ones_are_hashed(top: Path) -> None:
    old = top / "old"
    kernel.subvolume_create(old)
    for name in ("same", "written", "chmodded", "replaced", "sub/deep", "touched"):
        (old / "etc" / name).parent.mkdir(parents=True, exist_ok=True)
        (old / "etc" / name).write_text(f"{name}\n")
    os.symlink("same", old / "etc/link")
    usr = top / "usr"
    _record(usr, _base(old))
    recorded = recorded_files(usr)
    assert sorted(recorded) == ["chmodded", "replaced", "same", "sub/deep", "touched", "written"]
    # A forged digest for every file: what is taken from the record shows as forged.
    forged = {path: (stamp, "0" * 64) for path, (stamp, _) in recorded.items()}

    new = top / "new"
    kernel.subvolume_snapshot(old, new)
    (new / "etc/written").write_text("edited\n")
    os.chmod(new / "etc/chmodded", 0o600)
    (new / "etc/replaced.tmp").write_text("replaced\n")
    os.rename(new / "etc/replaced.tmp", new / "etc/replaced")
    os.utime(new / "etc/touched")  # a new mtime is a new ctime too
    fresh = _base(new)
    got = _base(new, forged)
    digests = {e.path: e.digest for e in got}
    assert digests["same"] == digests["sub/deep"] == "0" * 64
    assert [e for e in got if e.path not in ("same", "sub/deep")] == \
        [e for e in fresh if e.path not in ("same", "sub/deep")]
    # The real record gives the same base as hashing everything.
    assert _base(new, recorded) == fresh
    assert [(e.ino, e.ctime_ns) for e in _base(new, recorded)] == [(e.ino, e.ctime_ns) for e in fresh]


def test_a_fresh_root_records_its_etc_as_the_merge_left_it_for_its_first_update(top: Path) -> None:
    """A first deployment's record (no old deployment to carry edits from) holds its own
    root's /etc after the merge: what the merge did not touch keeps the base's digest
    (forged here, to show it is taken), what it wrote is hashed; no old-deployment is
    written, so first-boot sync has nothing to do."""
    import hashlib

    root = top / "root"
    (root / "etc/sub").mkdir(parents=True)
    for name in ("adopted", "vendor", "sub/deep"):
        (root / "etc" / name).write_text(f"{name}\n")
    base = tuple(dataclasses.replace(e, digest="f" * 64) if e.type == "f" else e for e in _base(root))
    (root / "etc/vendor").write_text("as the vendor ships it\n")  # the merge wrote it
    (root / "etc/new.conf").write_text("new\n")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        after = record_after(fd, EtcMerge((), base))
    finally:
        os.close(fd)
    digests = {e.path: e.digest for e in after}
    assert digests == {"adopted": "f" * 64, "sub": "-", "sub/deep": "f" * 64,
                       "vendor": hashlib.sha256(b"as the vendor ships it\n").hexdigest(),
                       "new.conf": hashlib.sha256(b"new\n").hexdigest()}
    usr = top / "usr"
    usr.mkdir()
    ufd = os.open(usr, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_records(ufd, EtcMerge((), base), None, after)
    finally:
        os.close(ufd)
    assert sorted(os.listdir(usr / BASE_DIR)) == ["entries", "stamps"]
    assert {path: digest for path, (_, digest) in recorded_files(usr).items()} == \
        {p: d for p, d in digests.items() if d != "-"}
    # Without it (a record written by an older rpmimg), nothing is recorded: the update hashes.
    other = top / "usr2"
    other.mkdir()
    ufd = os.open(other, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_records(ufd, EtcMerge((), base), None)
    finally:
        os.close(ufd)
    assert not (other / BASE_DIR).exists() and recorded_files(other) == {}


def test_a_record_that_does_not_pair_up_gives_nothing(top: Path) -> None:
    root = top / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/a").write_text("a\n")
    (root / "etc/b").write_text("b\n")
    usr = top / "usr"
    _record(usr, _base(root))
    assert len(recorded_files(usr)) == 2
    entries, stamps = usr / BASE_DIR / "entries", usr / BASE_DIR / "stamps"
    good = entries.read_bytes(), stamps.read_bytes()

    def spoiled(e: bytes, s: bytes) -> dict[str, object]:
        entries.write_bytes(e)
        stamps.write_bytes(s)
        return dict(recorded_files(usr))

    assert spoiled(good[0], good[1].splitlines(keepends=True)[0]) == {}  # a line less
    assert spoiled(good[0], good[1].replace(b" a\n", b" c\n")) == {}  # another path
    assert spoiled(good[0].replace(b"f 644", b"f 600", 1), good[1]) == {}  # another mode
    assert spoiled(good[0][:-1], good[1]) == {}  # cut short
    digest = good[0].split(b" ")[4]
    assert spoiled(good[0].replace(digest, b"x" * 64), good[1]) == {}  # not a sha256
    stamps.unlink()
    stamps.symlink_to(top / "elsewhere")
    (top / "elsewhere").write_bytes(good[1])
    entries.write_bytes(good[0])
    assert recorded_files(usr) == {}  # a symlink is not followed
    assert recorded_files(top / "nowhere") == {}


def test_the_merge_takes_a_files_sha256_from_the_base_record_while_its_stamp_holds(top: Path) -> None:
    """EtcTree.look's digest of a root file is the base record's (forged here, to show it)
    while the file keeps the stamp recorded; read again once it was changed in any way, and
    for another algorithm."""
    import hashlib

    from deploy.etcfs import EtcTree, fd_tree

    root = top / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("kept", "written", "chowned"):
        (root / "etc" / name).write_text(f"{name}\n")
    known = {f"/etc/{e.path}": ((e.mode, e.uid, e.gid, e.ino, e.ctime_ns), "f" * 64)
             for e in _base(root) if e.type == "f"}
    (root / "etc/written").write_text("edited\n")
    os.chown(root / "etc/chowned", 1, 1)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    tree = EtcTree(fd_tree(fd), known)
    try:
        def digest(name: str, algo: str = "sha256") -> str:
            disk = tree.look(f"/etc/{name}")
            assert disk is not None
            return disk.digest(algo)

        assert digest("kept") == "f" * 64
        assert digest("kept", "md5") == hashlib.md5(b"kept\n").hexdigest()
        assert digest("written") == hashlib.sha256(b"edited\n").hexdigest()
        assert digest("chowned") == hashlib.sha256(b"chowned\n").hexdigest()
    finally:
        tree.close()
        os.close(fd)
