"""transcode -> verify -> extract equals `rpm -i --root` of the original, on every fixture."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fixtures.build import fixture_packages, large_file_package
from fixtures.catalog import GROUP, PASSWD
from host import kernel
from rpmextents import ExtentsPackage, UnsafePathError, extract, transcode
from rpmextents.extract import ExtractError

from conftest import SHARED_CORPUS, btrfs_unavailable_reason, loop_btrfs
from oracle import assert_same_tree, rpm_install, rpm_unavailable_reason, seed_accounts, snapshot

FIXTURES = sorted(fixture_packages())
CORPUS = sorted(
    p.name for p in SHARED_CORPUS.glob("*.rpm") if "corrupted" not in p.name
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
        pytest.skip("v3 packages are refused (tested in test_format)")
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


def test_extract_equals_rpm_on_btrfs(btrfs: Path, tmp_path: Path) -> None:
    if btrfs_unavailable_reason():
        pytest.skip("no btrfs")
    expected, actual = roundtrip(fixture_packages()["hardlinks"], tmp_path, accounts=True, dest_parent=btrfs)
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
    assert [Path(x["output"]).name for x in json.loads(r.stdout)] == [p.name for p in originals]
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
