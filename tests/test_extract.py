"""transcode -> verify -> extract equals `rpm -i --root` of the original, on every fixture."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from fixtures.build import fixture_packages, large_file_package
from fixtures.catalog import GROUP, PASSWD
from host import kernel
from rpmextents import ExtentsPackage, UnsafePathError, UnsupportedPackageError
from rpmextents.extract import ExtractError, extract
from rpmextents.transcode import transcode

from conftest import SHARED_CORPUS, btrfs_unavailable_reason, loop_btrfs
from oracle import assert_same_tree, rpm_install, rpm_unavailable_reason, seed_accounts, snapshot

FIXTURES = sorted(fixture_packages())
# rpm's test suite names its one v3 package "*.rpm-v3"; it is here to be refused.
CORPUS = sorted(
    p.name for pattern in ("*.rpm", "*.rpm-v3") for p in SHARED_CORPUS.glob(pattern)
    if "corrupted" not in p.name
) if SHARED_CORPUS.is_dir() else []


@pytest.fixture(autouse=True)
def _needs_rpm() -> None:
    reason = rpm_unavailable_reason()
    if reason:
        pytest.skip(reason)


def roundtrip(original: Path, work: Path, *, accounts: bool, dest_parent: Path | None = None) -> tuple[Path, Path]:
    """Install the original with rpm and extract its extents form; return both roots."""
    extents = (dest_parent or work) / "pkg.rpm"
    transcode(original, extents)
    expected = work / "expected"
    actual = (dest_parent or work) / "actual"
    passwd, group = (PASSWD, GROUP) if accounts else (None, None)
    rpm_install([original], expected, passwd=passwd, group=group)
    if accounts:
        seed_accounts(actual, PASSWD, GROUP)
    with ExtentsPackage.open(extents) as pkg:
        pkg.verify()
        extract(pkg, actual)
    return expected, actual


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_extracts_like_rpm(name: str, tmp_path: Path) -> None:
    expected, actual = roundtrip(fixture_packages()[name], tmp_path, accounts=True)
    assert_same_tree(expected, actual)


@pytest.mark.parametrize("name", ["owners", "modes", "devices"])
def test_unknown_owners_like_rpm(name: str, tmp_path: Path) -> None:
    """Without etc/passwd, rpm maps names to root and drops set-id bits; so must we."""
    expected, actual = roundtrip(fixture_packages()[name], tmp_path, accounts=False)
    assert_same_tree(expected, actual)


@pytest.mark.parametrize("name", CORPUS or ["(corpus absent)"])
def test_corpus_extracts_like_rpm(name: str, tmp_path: Path, shared_corpus: Path) -> None:
    if name.endswith("-v3"):
        # rpm 4.18 itself refuses to install v3 packages; so do we, before writing anything.
        with pytest.raises(UnsupportedPackageError, match="v3"):
            roundtrip(shared_corpus / name, tmp_path, accounts=False)
        assert list(tmp_path.iterdir()) == []
        return
    expected, actual = roundtrip(shared_corpus / name, tmp_path, accounts=False)
    assert_same_tree(expected, actual)


def test_reflinked_tree_shares_data_with_package(btrfs: Path, tmp_path: Path) -> None:
    """On btrfs the extracted files are clones: exclusive bytes stay near zero."""
    extents = btrfs / "sizes.rpm"
    transcode(fixture_packages()["sizes"], extents)
    dest = btrfs / "tree"
    with ExtentsPackage.open(extents) as pkg:
        report = extract(pkg, dest)
        data = pkg.data_bytes
    assert report.method == "reflink" and report.copied == 0
    exclusive = kernel.exclusive_bytes([dest])
    # Files smaller than a block may be stored inline and so can't be shared.
    assert data > 1 << 20 and exclusive <= 3 * 4096, f"{exclusive} of {data} bytes not shared"
    du = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", os.fspath(dest)],
                        check=True, capture_output=True, text=True).stdout.split("\n")[1].split()
    assert int(du[1]) <= 3 * 4096


def test_copy_across_filesystems_is_reported(btrfs: Path, tmp_path: Path) -> None:
    extents = btrfs / "sizes.rpm"
    transcode(fixture_packages()["sizes"], extents)
    with ExtentsPackage.open(extents) as pkg:
        report = extract(pkg, tmp_path / "tree")  # tmp_path is not on the btrfs
        assert report.method == "copy" and report.reflinked == 0 and report.copied > 0
        with pytest.raises(ExtractError, match="cross-device"):
            extract(pkg, tmp_path / "tree2", method="reflink")


@pytest.mark.parametrize("name", ["hardlinks", "sizes"])
def test_extract_equals_rpm_on_btrfs(name: str, btrfs: Path, tmp_path: Path) -> None:
    """Reflinked, as a deploy extracts: sizes has files of whole blocks (4096, 8192: the
    clone alone makes them) and of a block and a byte (cut after the clone)."""
    if btrfs_unavailable_reason():
        pytest.skip("no btrfs")
    expected, actual = roundtrip(fixture_packages()[name], tmp_path, accounts=True, dest_parent=btrfs)
    assert_same_tree(expected, actual)


def test_climbing_symlink_stops_at_destination_like_rpm(tmp_path: Path) -> None:
    """A symlink climbing above DEST with '..' stops at DEST, as under rpm's --root chroot."""
    from fixtures.build import build_package
    from fixtures.spec import FileKind, FileSpec, PackageSpec

    outside = tmp_path / "outside"
    outside.mkdir()
    depth = "../" * 12
    # rpm follows a directory symlink only to a directory that exists: ship it too.
    evil_link = PackageSpec(name="evil-link", files=(
        FileSpec(f"/{outside.relative_to('/')}", kind=FileKind.DIR),
        FileSpec("/usr/lib/escape", kind=FileKind.SYMLINK, target=f"{depth}{outside.relative_to('/')}"),))
    evil_file = PackageSpec(name="evil-file", files=(FileSpec("/usr/lib/escape/payload", content=b"x"),))
    dest, rpms = tmp_path / "dest", []
    for spec in (evil_link, evil_file):
        rpms.append(build_package(spec, tmp_path / "rpms"))
        transcode(rpms[-1], tmp_path / f"{spec.name}.ext")
        with ExtentsPackage.open(tmp_path / f"{spec.name}.ext") as pkg:
            extract(pkg, dest)
    assert list(outside.iterdir()) == []
    assert (dest / outside.relative_to("/") / "payload").read_bytes() == b"x"
    for rpm in rpms:  # one at a time, in the order extracted (one transaction reorders them)
        rpm_install([rpm], tmp_path / "expected")
    assert_same_tree(tmp_path / "expected", dest)


def test_absolute_symlinks_resolve_inside_destination(tmp_path: Path) -> None:
    """Like rpm under --root: an absolute directory symlink points into DEST, not the host."""
    from fixtures.build import build_package
    from fixtures.spec import FileKind, FileSpec, PackageSpec

    link = PackageSpec(name="abs-link", files=(
        FileSpec("/usr/share/real", kind=FileKind.DIR),
        FileSpec("/usr/lib/alias", kind=FileKind.SYMLINK, target="/usr/share/real"),))
    through = PackageSpec(name="through", files=(FileSpec("/usr/lib/alias/file", content=b"hello"),))
    dest = tmp_path / "dest"
    for spec in (link, through):
        rpm = build_package(spec, tmp_path / "rpms")
        transcode(rpm, tmp_path / f"{spec.name}.ext")
        with ExtentsPackage.open(tmp_path / f"{spec.name}.ext") as pkg:
            extract(pkg, dest)
    assert (dest / "usr/share/real/file").read_bytes() == b"hello"


def test_file_in_place_of_directory_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "usr").mkdir(parents=True)
    (dest / "usr/lib").write_text("in the way")
    transcode(fixture_packages()["hardlinks"], tmp_path / "h.ext")
    with ExtentsPackage.open(tmp_path / "h.ext") as pkg, pytest.raises(ExtractError, match="not a directory"):
        extract(pkg, dest)


@pytest.mark.slow
def test_large_file_package_roundtrip(btrfs: Path, tmp_path: Path) -> None:
    """Over 4 GiB: rpm's stripped cpio (07070X) with LONGFILESIZES, reflinked back out."""
    original = large_file_package()
    extents = btrfs / "large.rpm"
    result = transcode(original, extents)
    assert result.data_bytes > 4 << 30
    with ExtentsPackage.open(extents) as pkg:
        pkg.verify()
        big = max(pkg.entries(), key=lambda e: e.size)
        assert big.size > 4 << 30 and big.extent is not None
        extract(pkg, btrfs / "tree")
    # Sparse input stays sparse: the extents file holds little real data.
    assert os.stat(extents).st_blocks * 512 < 64 << 20
    # rpm writes the 4 GiB of zeros for real: give it a compressing filesystem, so the
    # oracle costs megabytes of the (shared, sometimes nearly full) disk, not gigabytes.
    with loop_btrfs(size=8 << 30, options="compress-force=zstd") as oracle_fs:
        expected = oracle_fs / "expected"
        rpm_install([original], expected)
        assert snapshot(expected) == snapshot(btrfs / "tree")


def test_cli_many_packages_into_one_tree_like_rpm(tmp_path: Path) -> None:
    """`rpmimg pkg transcode A B C -o DIR` and `pkg extract DIR/* DEST` equal one `rpm -i A B C`."""
    import json
    import sys

    names = ["hardlinks", "symlinks", "sizes", "modes"]
    originals = [fixture_packages()[n] for n in names]
    rpmimg = [sys.executable, "-m", "rpmimg"]
    out = tmp_path / "extents"
    r = subprocess.run([*rpmimg, "pkg", "transcode", *map(os.fspath, originals), "-o", os.fspath(out), "--json"],
                       check=True, capture_output=True, text=True)
    assert [Path(x["output"]).name for x in json.loads(r.stdout)["packages"]] == [p.name for p in originals]
    actual = tmp_path / "actual"
    seed_accounts(actual, PASSWD, GROUP)
    subprocess.run([*rpmimg, "pkg", "extract", *(os.fspath(out / p.name) for p in originals), os.fspath(actual)],
                   check=True, capture_output=True)
    expected = tmp_path / "expected"
    rpm_install(originals, expected, passwd=PASSWD, group=GROUP)
    assert_same_tree(expected, actual)


def test_package_owning_the_root_directory(tmp_path: Path) -> None:
    """Fedora's filesystem package owns "/" itself; rpm applies its metadata to the root."""
    from fixtures.build import build_package
    from fixtures.spec import FileKind, FileSpec, PackageSpec

    spec = PackageSpec(name="rootowner", files=(
        FileSpec("/", kind=FileKind.DIR, mode=0o555),
        FileSpec("/usr", kind=FileKind.DIR, mode=0o755),
        FileSpec("/usr/lib/marker", content=b"m"),
    ))
    original = build_package(spec, tmp_path / "rpms")
    expected, actual = roundtrip(original, tmp_path, accounts=False)
    assert_same_tree(expected, actual)
    assert oct(os.stat(actual).st_mode & 0o7777) == oct(os.stat(expected).st_mode & 0o7777) == oct(0o555)


def _build_and_transcode(specs: list[object], work: Path) -> list[tuple[Path, Path]]:
    """(original, extents) of each fixtures.spec.PackageSpec, built with rpmbuild."""
    from fixtures.build import build_package

    out = []
    for spec in specs:
        rpm = build_package(spec, work / "rpms")  # type: ignore[arg-type]
        ext = work / f"{rpm.name}.ext"
        transcode(rpm, ext)
        out.append((rpm, ext))
    return out


def test_symlinks_in_a_usr_tree_resolve_in_the_image_like_rpm(tmp_path: Path) -> None:
    """A tree holding only /usr: an absolute target /usr/share/x is share/x in it (not usr/share/x),
    and a target outside /usr goes where its relocation puts it, as rpm -i --root lays them out."""
    from fixtures.spec import FileKind, FileSpec, PackageSpec
    from rpmextents import Relocation

    links = PackageSpec(name="links", files=(
        FileSpec("/usr/share/real", kind=FileKind.DIR),
        FileSpec("/usr/lib/alias", kind=FileKind.SYMLINK, target="/usr/share/real"),
        FileSpec("/etc/conf.d", kind=FileKind.DIR),
        FileSpec("/usr/lib/etc", kind=FileKind.SYMLINK, target="/etc/conf.d"),
        FileSpec("/usr/lib/up", kind=FileKind.SYMLINK, target="../../../../../usr/share/real"),
    ))
    through = PackageSpec(name="through", files=(
        FileSpec("/usr/lib/alias/file", content=b"hello"),
        FileSpec("/usr/lib/etc/x.conf", content=b"x=1"),
        FileSpec("/usr/lib/up/climbed", content=b"up"),
    ))
    dest, expected = tmp_path / "usr-tree", tmp_path / "expected"
    relocation = Relocation(top="/usr", outside="/usr/share/factory")
    for rpm, ext in _build_and_transcode([links, through], tmp_path):
        with ExtentsPackage.open(ext) as pkg:
            extract(pkg, dest, relocation=relocation)
        rpm_install([rpm], expected)
    assert (dest / "share/real/file").read_bytes() == b"hello"
    assert not (dest / "usr").exists()
    assert_same_tree(expected / "usr", dest, exclude=("/share/factory",))
    assert_same_tree(expected, dest / "share/factory", exclude=("/usr", "/var/lib/rpm"))


def test_paths_outside_a_tree_without_relocation_are_refused(tmp_path: Path) -> None:
    from fixtures.spec import FileSpec, PackageSpec
    from rpmextents import Relocation

    ((_, ext),) = _build_and_transcode([PackageSpec(name="etc", files=(FileSpec("/etc/x", content=b"x"),))], tmp_path)
    with ExtentsPackage.open(ext) as pkg, pytest.raises(UnsafePathError, match="outside /usr"):
        extract(pkg, tmp_path / "dest", relocation=Relocation(top="/usr"))
    assert list((tmp_path / "dest").iterdir()) == []


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    from fixtures.spec import FileKind, FileSpec, PackageSpec

    loop = PackageSpec(name="loop", files=(
        FileSpec("/usr/lib/a", kind=FileKind.SYMLINK, target="b"),
        FileSpec("/usr/lib/b", kind=FileKind.SYMLINK, target="/usr/lib/a"),
    ))
    below = PackageSpec(name="below", files=(FileSpec("/usr/lib/a/x", content=b"x"),))
    (_, first), (_, second) = _build_and_transcode([loop, below], tmp_path)
    dest = tmp_path / "dest"
    with ExtentsPackage.open(first) as pkg:
        extract(pkg, dest)
    with ExtentsPackage.open(second) as pkg, pytest.raises(UnsafePathError, match="too many levels"):
        extract(pkg, dest)


def test_reserved_directory_is_refused_under_any_name(tmp_path: Path) -> None:
    """Another package's symlink naming a reserved directory can't lead a write into it."""
    from fixtures.spec import FileKind, FileSpec, PackageSpec

    alias = PackageSpec(name="alias", files=(
        FileSpec("/usr/lib/alias", kind=FileKind.SYMLINK, target="/usr/lib/sysimage/packages"),))
    fake = PackageSpec(name="fake", files=(FileSpec("/usr/lib/alias/fake.rpm", content=b"x"),))
    dest = tmp_path / "dest"
    (_, first), (_, second) = _build_and_transcode([alias, fake], tmp_path)
    with ExtentsPackage.open(first) as pkg:
        extract(pkg, dest, reserved=("usr/lib/sysimage/packages",))
    with ExtentsPackage.open(second) as pkg, pytest.raises(UnsafePathError, match="no package may write"):
        extract(pkg, dest, reserved=("usr/lib/sysimage/packages",))
    assert not (dest / "usr/lib/sysimage/packages/fake.rpm").exists()


def test_a_file_made_in_another_packages_set_group_id_directory_is_owned_as_its_package_says(
        tmp_path: Path) -> None:
    """A new file takes the group of a set-group-ID directory it is made in, and the mode
    the umask leaves it: rpm sets owner and mode whatever the file was made with, and so
    does extract, even where it makes a file with its mode to spare a chown and a chmod."""
    from fixtures.spec import FileKind, FileSpec, PackageSpec

    directory = PackageSpec(name="sgdir", files=(
        FileSpec("/usr/share/sg", kind=FileKind.DIR, mode=0o2775, group="rpmimg-group"),))
    files = PackageSpec(name="sgfiles", files=(
        FileSpec("/usr/share/sg/root-file", content=b"r", mode=0o644),
        FileSpec("/usr/share/sg/user-file", content=b"u", mode=0o644, user="rpmimg-user"),
        FileSpec("/usr/share/shared", content=b"s", mode=0o666),
    ))
    built = _build_and_transcode([directory, files], tmp_path)
    expected, actual = tmp_path / "expected", tmp_path / "actual"
    rpm_install([rpm for rpm, _ in built], expected, passwd=PASSWD, group=GROUP)
    seed_accounts(actual, PASSWD, GROUP)
    mask = os.umask(0o022)
    try:
        for _, ext in built:
            with ExtentsPackage.open(ext) as pkg:
                extract(pkg, actual)
    finally:
        os.umask(mask)
    st = os.lstat(actual / "usr/share/sg/root-file")
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert os.lstat(actual / "usr/share/shared").st_mode & 0o7777 == 0o666
    assert_same_tree(expected, actual)


def test_owner_names_are_read_inside_destination(tmp_path: Path) -> None:
    """DEST/etc a symlink to a host directory: its passwd is looked up inside DEST, as under
    rpm's chroot, so the host's accounts don't decide owners."""
    from fixtures.spec import FileSpec, PackageSpec

    host_etc = tmp_path / "host-etc"
    host_etc.mkdir()
    (host_etc / "passwd").write_text("evil:x:4242:4242::/:/bin/sh\n")
    (host_etc / "group").write_text("evil:x:4242:\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "etc").symlink_to(host_etc)
    spec = PackageSpec(name="owned", files=(FileSpec("/usr/lib/owned", content=b"x", user="evil", group="evil"),))
    ((_, ext),) = _build_and_transcode([spec], tmp_path)
    with ExtentsPackage.open(ext) as pkg:
        extract(pkg, dest)
    st = os.lstat(dest / "usr/lib/owned")
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_path_of_4094_bytes_extracts(tmp_path: Path) -> None:
    """A path as long as rpm installs, into a destination whose own path makes the whole longer
    than PATH_MAX: everything happens relative to directory fds."""
    from benchmarks.rpmwriter import FileEntry, PackageSpec, write_package

    path = "/usr/share/long"
    while len(path) + 201 < 4094:
        path += "/" + "d" * 200
    path += "/" + "f" * (4094 - len(path) - 1)
    written = write_package(PackageSpec("longpath", "1", "1", "noarch", files=[
        FileEntry(path, 0o100644, mtime=1_700_000_000, data=b"deep\n"),
        FileEntry(path + "-link", 0o120777, mtime=1_700_000_000, linkto=path.rsplit("/", 1)[1]),
    ][::-1]), tmp_path, level=3).path
    ext = tmp_path / "long.ext"
    transcode(written, ext)
    dest = tmp_path / "dest"
    with ExtentsPackage.open(ext) as pkg:
        report = extract(pkg, dest)
    assert report.files == 1
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(kernel.open_beneath(root, path.lstrip("/"), os.O_RDONLY), "rb") as f:
            assert f.read() == b"deep\n"
        parent, name = path.lstrip("/").rsplit("/", 1)
        dir_fd = kernel.open_beneath(root, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            assert os.readlink(name + "-link", dir_fd=dir_fd) == name
            assert os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime == 1_700_000_000
        finally:
            os.close(dir_fd)
    finally:
        os.close(root)


@pytest.mark.parametrize(("path", "mode", "claims"), [
    ("/usr/lib/sysimage/packages/x.rpm", 0o100644, True),
    ("/usr/lib/sysimage/packages", 0o40755, True),
    ("/usr/lib/sysimage/packages", 0o120777, True),
    ("/usr/lib/sysimage", 0o120777, True),
    ("/usr/lib", 0o100644, True),
    ("/usr/lib/sysimage", 0o40755, False),
    ("/usr/lib/sysimage/packagesx", 0o100644, False),
    ("/usr/lib/sysimage/rpm/Packages", 0o100644, True),  # rpm database: derived by rpmimg
    ("/usr/lib/sysimage/rpm", 0o40755, False),  # the directory itself a package may own
    ("/usr/lib/sysimage/rpmimg/deployment.json", 0o100644, True),
    ("/usr/lib/sysimage/rpmimg", 0o120777, True),
    ("/usr/lib/sysimage/rpmimgx", 0o40755, False),
    ("/lib/sysimage/packages/x.rpm", 0o100644, False),
    ("/", 0o40755, False),
    ("/", 0o120777, True),  # every reserved directory's parent, as a symlink
    ("/usr/", 0o120777, True),
    ("/usr/lib/sysimage/rpm", 0o100644, True),  # the one a package may own, not as a file
    ("/usr/share/sysimage", 0o120777, False),
    ("/usr/lib/sysimag", 0o120777, False),
])
def test_package_database_predicate(path: str, mode: int, claims: bool) -> None:
    from rpmextents import refuse_package_db
    from rpmextents.files import package_db_path

    claim = package_db_path([("/usr/bin/x", 0o100755), (path, mode)])
    assert (claim is not None and claim[0] == path) is claims
    if claims:
        with pytest.raises(UnsafePathError, match=f"^pkg-1-1.noarch: owns {path}, "):
            refuse_package_db("pkg-1-1.noarch", [(path, mode)])


def test_package_files_reads_paths_and_modes_of_original_and_extents(tmp_path: Path) -> None:
    from rpmextents.files import package_files

    original = fixture_packages()["symlinks"]
    transcode(original, tmp_path / "s.ext")
    with ExtentsPackage.open(tmp_path / "s.ext") as pkg:
        want = [(e.path, e.mode) for e in pkg.entries()]
    assert list(package_files(original)) == list(package_files(tmp_path / "s.ext")) == want


@pytest.mark.parametrize("name", ["modes", "symlinks", "hardlinks"])
def test_only_the_chosen_entries_are_made_each_as_a_whole_extraction_makes_it(name: str, tmp_path: Path) -> None:
    extents = tmp_path / "pkg.rpm"
    transcode(fixture_packages()[name], extents)
    whole, part = tmp_path / "whole", tmp_path / "part"
    with ExtentsPackage.open(extents) as pkg:
        entries = list(pkg.entries())
        extract(pkg, whole)
        chosen = {e.index for e in entries[::2] if not e.ghost}
        # Indices past either end stand for nothing.
        extract(pkg, part, only={*chosen, -1, len(entries), 10**6})
    want, got = snapshot(whole), snapshot(part)
    chosen_paths = {entries[i].path for i in chosen}
    left_out = {e.path for e in entries if e.index not in chosen and e.type.value != "dir"} - chosen_paths
    assert chosen_paths and left_out, "the fixture should have entries on both sides"
    for path in chosen_paths:
        # A hardlinked file is linked only to the members of its group that are chosen too.
        linked = want[path].links & chosen_paths
        assert got[path].links == (linked if len(linked) > 1 else frozenset()), path
        assert dataclasses.replace(got[path], links=frozenset()) == dataclasses.replace(
            want[path], links=frozenset()), path
    assert not left_out & set(got), "entries not chosen were made"


@pytest.mark.parametrize("name", ["caps", "modes", "hardlinks", "owners"])
def test_files_written_over_existing_ones_are_as_new_ones(name: str, btrfs: Path) -> None:
    """An update extracts over its base's files: a regular file standing at a file's path
    is emptied and refilled in place. Nothing of it may stay: not its content, owner, mode,
    set-id bits, capabilities or other extended attributes; and another name of its inode
    (a hardlink outside the package) keeps the old content."""
    extents = btrfs / "pkg.rpm"
    transcode(fixture_packages()[name], extents)
    fresh, over = btrfs / "fresh", btrfs / "over"
    seed_accounts(fresh, PASSWD, GROUP)
    seed_accounts(over, PASSWD, GROUP)
    with ExtentsPackage.open(extents) as pkg:
        entries = [e for e in pkg.entries() if not e.ghost]
        extract(pkg, fresh)
        files = [e for e in entries if e.type.value == "file"]
        assert files
        for e in entries:
            if e.type.value == "dir":
                (over / e.path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for i, e in enumerate(files):
            old = over / e.path.lstrip("/")
            old.parent.mkdir(parents=True, exist_ok=True)
            if old.exists():
                continue  # another name of a hardlink group made it
            old.write_bytes(b"the base's content, longer than any fixture's file\n" * 50)
            os.chown(old, 1234, 1234)
            os.chmod(old, 0o6755)
            os.setxattr(old, "user.left-over", b"1")
            fd = os.open(old, os.O_RDONLY)
            try:
                kernel.set_capabilities(fd, "cap_net_raw=ep")
            finally:
                os.close(fd)
            if i == 0:
                os.link(old, over / "other-name")  # two names: this one must not be emptied
        extract(pkg, over)
    want, got = snapshot(fresh), snapshot(over)
    for e in entries:
        assert got[e.path] == want[e.path], e.path
        if e.type.value == "file":
            assert "user.left-over" not in os.listxattr(over / e.path.lstrip("/"), follow_symlinks=False)
    assert (over / "other-name").read_bytes().startswith(b"the base's content")
    assert os.stat(over / "other-name").st_nlink == 1


def _dir_sharing_specs() -> list[object]:
    """Packages owning the same directories with other metadata, adding to each other's
    directories, and a set-group-ID directory that parents made later in it inherit from,
    until a later owner takes the bit away."""
    from fixtures.spec import FileKind, FileSpec, PackageSpec

    def d(path: str, mode: int, mtime: int, group: str = "root") -> FileSpec:
        return FileSpec(path, kind=FileKind.DIR, mode=mode, group=group, mtime=mtime)

    return [
        PackageSpec(name="first", files=(
            d("/usr/share/d", 0o750, 1_000_000, "rpmimg-group"), FileSpec("/usr/share/d/a", content=b"a"),
            d("/usr/share/sg", 0o2775, 1_000_000, "rpmimg-group"), FileSpec("/usr/share/sg/inner/x", content=b"x"))),
        PackageSpec(name="second", files=(
            d("/usr/share/d", 0o755, 2_000_000), FileSpec("/usr/share/d/b", content=b"b"),
            FileSpec("/usr/share/sg/made/f", content=b"f"))),
        PackageSpec(name="third", files=(
            FileSpec("/usr/share/d/c", content=b"c"), d("/usr/share/sg", 0o755, 3_000_000),
            FileSpec("/usr/share/sg/later/g", content=b"g"))),
    ]


def test_directories_shared_by_packages_end_as_one_by_one_and_as_rpm(tmp_path: Path) -> None:
    """Packages extracted into one tree with their directories' metadata deferred
    (DeferredDirs) make the tree each extracted on its own makes, and rpm's: every shared
    directory has its last owner's mode and owner, and a directory made below a set-group-ID
    one has its group and bit only while the bit is there."""
    from rpmextents.extract import DeferredDirs, Tree

    from oracle import RPM_INSTALL

    built = _build_and_transcode(_dir_sharing_specs(), tmp_path)
    expected, alone, shared = tmp_path / "expected", tmp_path / "alone", tmp_path / "shared"
    # One at a time, in order, as extract is run: the directories' metadata differ, which
    # rpm calls a conflict unless told to replace.
    for dest in (expected, alone, shared):
        seed_accounts(dest, PASSWD, GROUP)
    for rpm, _ in built:
        subprocess.run([*RPM_INSTALL, "--replacefiles", "--root", os.fspath(expected), os.fspath(rpm)],
                       check=True, capture_output=True)
    for _, ext in built:
        with ExtentsPackage.open(ext) as pkg:
            extract(pkg, alone)
    later = DeferredDirs()
    with Tree(shared) as tree:
        for _, ext in built:
            with ExtentsPackage.open(ext) as pkg:
                extract(pkg, shared, tree=tree, dirs=later)
        # Nothing applied yet but to the set-group-ID directory, as its entries came.
        assert os.lstat(shared / "usr/share/d").st_mode & 0o7777 == 0o700
        later.finish(tree)
    assert_same_tree(expected, alone)
    assert_same_tree(expected, shared)
    inner, made = os.lstat(shared / "usr/share/sg/inner"), os.lstat(shared / "usr/share/sg/made")
    after = os.lstat(shared / "usr/share/sg/later")
    assert inner.st_mode & 0o2000 and made.st_mode & 0o2000 and inner.st_gid == made.st_gid != 0
    assert not after.st_mode & 0o2000 and after.st_gid == 0
    # Once each, the last owner's: its mtime, though a later package's file went in after.
    assert os.lstat(shared / "usr/share/d").st_mtime == 2_000_000
    assert os.lstat(alone / "usr/share/d").st_mtime != 2_000_000
