"""Kernels and initrds kept in @rpmimg/boot/files (deploy.bootfiles) on real btrfs: a file
fetched and hashed right is not hashed again by the next deploy while btrfs shows it
unchanged; one changed in place, replaced, or whose mark is forged or lost is hashed again,
and one that no longer hashes to its name is fetched again from the source."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hostile import flip_byte

from deploy import bootfiles
from deploy.bootfiles import ManifestKernel
from deploy.layout import Layout
from deploy.sources.local import LocalSource
from deploy.system import System
from imagespec.manifest import BootFile

KERNEL, INITRD = b"kernel " * 5000, b"initrd " * 7000


class Boot:
    """A published kernel and initrd beside a manifest, and a sysroot to fetch them into;
    records which kept files each fetch hashed."""

    def __init__(self, top: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        pub = top / "published"
        (pub / "pool/boot").mkdir(parents=True)
        (pub / "manifest.json").write_text("{}")  # LocalSource only locates it
        refs = []
        for data in (KERNEL, INITRD):
            sha = hashlib.sha256(data).hexdigest()
            (pub / "pool/boot" / sha).write_bytes(data)
            refs.append(BootFile(f"pool/boot/{sha}", sha, len(data)))
        self.published = pub
        self.kernels = [ManifestKernel("6.1.0-test", refs[0], refs[1])]
        self.kernel, self.initrd = (r.sha256 for r in refs)
        (top / "sysroot").mkdir()
        self.system = System(top / "sysroot", Layout(top=top, sysroot=top / "sysroot"), visible=True)
        self.files = bootfiles.files_dir(self.system)
        self.hashed: list[str] = []
        real = bootfiles._sha256

        def counting(path: Path) -> str:
            if not path.name.startswith("."):  # a fetched file's own check is not a re-hash
                self.hashed.append(path.name)
            return real(path)

        monkeypatch.setattr(bootfiles, "_sha256", counting)

    def fetch(self) -> list[str]:
        """Fetch the kernels into the sysroot; the kept files that were hashed again."""
        self.hashed = []
        bootfiles.fetch(self.system, LocalSource(self.published), self.kernels)
        assert (self.files / self.kernel).read_bytes() == KERNEL
        assert (self.files / self.initrd).read_bytes() == INITRD
        return sorted(self.hashed)


@pytest.fixture
def boot(btrfs: Path, monkeypatch: pytest.MonkeyPatch) -> Boot:
    return Boot(btrfs, monkeypatch)


def test_fetched_files_are_marked_and_not_hashed_again(boot: Boot) -> None:
    assert boot.fetch() == []  # fetched: hashed as they came, and marked
    marks = boot.system.layout.boot_marks
    assert marks.stat().st_mode & 0o777 == 0o600
    assert sorted(json.loads(marks.read_bytes())["marks"]) == sorted([boot.kernel, boot.initrd])
    assert boot.fetch() == []
    assert boot.fetch() == []


def test_a_file_changed_in_place_is_hashed_and_fetched_again(boot: Boot) -> None:
    boot.fetch()
    st = (boot.files / boot.initrd).stat()
    flip_byte(boot.files / boot.initrd, 100)  # same size, same times: only btrfs shows it
    os.utime(boot.files / boot.initrd, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert boot.fetch() == [boot.initrd]  # hashed, found wrong, fetched again (fetch checks)
    assert boot.fetch() == []  # the refetched file is marked


def test_a_replaced_file_or_a_forged_or_lost_mark_means_hashing_again(boot: Boot) -> None:
    boot.fetch()
    marks = boot.system.layout.boot_marks
    # Another file of the same bytes put in its place: another inode, hashed (and right).
    data = (boot.files / boot.kernel).read_bytes()
    (boot.files / boot.kernel).unlink()
    (boot.files / boot.kernel).write_bytes(data)
    assert boot.fetch() == [boot.kernel]
    assert boot.fetch() == []
    # A mark not of this file: hashed again.
    forged = json.loads(marks.read_bytes())
    forged["marks"][boot.initrd] = "0" * 64
    marks.write_text(json.dumps(forged))
    marks.chmod(0o600)
    assert boot.fetch() == [boot.initrd]
    # A marks file others may write is not believed at all.
    marks.chmod(0o666)
    assert boot.fetch() == [boot.initrd, boot.kernel]
    marks.unlink()
    assert boot.fetch() == [boot.initrd, boot.kernel]
    assert boot.fetch() == []


def test_a_symlink_in_a_files_place_is_replaced_not_followed(boot: Boot, tmp_path: Path) -> None:
    boot.fetch()
    outside = tmp_path / "elsewhere"
    outside.write_bytes(KERNEL)  # the right bytes, but not a file of boot/files
    (boot.files / boot.kernel).unlink()
    (boot.files / boot.kernel).symlink_to(outside)
    assert boot.fetch() == []  # not hashed through the link: fetched again over it
    assert not (boot.files / boot.kernel).is_symlink()
    assert outside.read_bytes() == KERNEL
