"""Updates built from the previous deployment: the same tree as a full build, at the cost
of what changed.

Two images of a few packages made to exercise every kind of change an update can bring:
content, mode, owner, mtime, type changes in both directions, hardlinks, directories that
lose their owner or everything below them, a path two packages write (the later wins),
files outside /usr. Each update is checked against a full build of the same packages and
against rpm -i of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploytools import deploy, rpmimg, sign_all
from imagepub import publish

from deploy import rpmdb, state
from deploy.etcbase import BASE_DIR, recorded_files, stamp_of
from deploy.headers import installed_file_lists
from deploy.store import Store
from deploy.wholesystem import tree_lists
from fixtures import catalog
from fixtures.build import signing_key
from fixtures.rpmbuild import build_package
from fixtures.signing import SigningKey
from fixtures.spec import FileKind, FileSpec
from host import kernel
from rpmextents.nevra import nevra_of

from oracle import assert_same_tree, rpm_install, seed_accounts, snapshot

pytest_plugins = ("deployenv",)

A = "/usr/share/alpha"
T1, T2 = 1_600_000_000, 1_650_000_000
BIG = 256 << 10  # "same" is big enough that rewriting it would show in the disk cost


def _f(path: str, content: bytes | None = None, **kw: object) -> FileSpec:
    return FileSpec(path, content=content if content is not None else path.encode() + b"\n", **kw)  # type: ignore[arg-type]


def _d(path: str, **kw: object) -> FileSpec:
    return FileSpec(path, kind=FileKind.DIR, **kw)  # type: ignore[arg-type]


def _alpha(version: str) -> catalog.PackageSpec:
    one = version == "1"
    files = [
        _d(A),
        FileSpec(f"{A}/same", size=BIG),
        _f(f"{A}/changes", b"one\n" if one else b"two, longer\n"),
        _f(f"{A}/mtime", mtime=T1 if one else T2),
        _f(f"{A}/owner", user="root" if one else "rpmimg-user", group="root" if one else "rpmimg-group"),
        _f(f"{A}/mode", mode=0o644 if one else 0o600),
        _d(f"{A}/mode-dir", mode=0o755 if one else 0o700),
        _f(f"{A}/mode-dir/inside"),
        _f(f"{A}/h1", b"linked\n"),
        FileSpec(f"{A}/h2", kind=FileKind.HARDLINK, target=f"{A}/h1"),
    ]
    if one:
        files += [
            _f(f"{A}/dropped"),
            _d(f"{A}/olddir"),
            _f(f"{A}/olddir/file"),
            _f(f"{A}/implicit/deep/file"),  # parents no package owns
            _f(f"{A}/to-link"),
            FileSpec(f"{A}/to-file", kind=FileKind.SYMLINK, target="same"),
            _f(f"{A}/becomes-dir"),
        ]
    else:
        files += [
            FileSpec(f"{A}/to-link", kind=FileKind.SYMLINK, target="same"),
            _f(f"{A}/to-file", b"a file now\n"),
            _d(f"{A}/becomes-dir"),
            _f(f"{A}/becomes-dir/inner"),
            _f(f"{A}/added"),
            _f(f"{A}/implicit", b"a file where rpm made a directory\n"),
        ]
    return catalog.PackageSpec(name="alpha", version=version, files=tuple(files))


# The same content in two packages of one image: the second is deduplicated against the first.
TWICE = bytes(range(256)) * 256
BETA = catalog.PackageSpec(name="beta", files=(
    _f("/usr/share/beta/twice", TWICE),
    _f("/usr/share/shared/conflict", b"beta's\n"),
    _f("/usr/share/owned-by-gamma/beta-file"),
    _f("/usr/share/beta/file"),
))
GAMMA = catalog.PackageSpec(name="gamma", files=(
    _f("/usr/share/shared/conflict", b"gamma's, which wins while gamma is installed\n"),
    _d("/usr/share/owned-by-gamma", mode=0o750, group="rpmimg-group"),
    _f("/usr/share/gamma/file"),
    _f("/usr/share/gamma/twice", TWICE),
    _f("/etc/gamma.conf"),
))
NEWPKG = catalog.PackageSpec(name="newpkg", files=(_f("/usr/share/newpkg/file"), _f("/etc/newpkg.conf")))
# A directory symlink that becomes a directory, with a file of another package below it.
LINKS_V1 = catalog.PackageSpec(name="links", files=(
    _d("/usr/share/real"), FileSpec("/usr/share/via", kind=FileKind.SYMLINK, target="real"),
))
LINKS_V2 = catalog.PackageSpec(name="links", version="2", files=(_d("/usr/share/real"), _d("/usr/share/via")))
UNDER = catalog.PackageSpec(name="under", files=(_f("/usr/share/via/file"),))


@dataclass(frozen=True)
class UpdateImages:
    key: SigningKey
    v1: Path
    v2: Path
    v2_again: Path  # v2's packages under a later version, to build in full
    v2_rpms: tuple[Path, ...]
    links_v1: Path
    links_v2: Path


def _publish(out: Path, version: str, rpms: Sequence[Path], key: SigningKey) -> Path:
    return publish(out, "upd", version, rpms, key)


@pytest.fixture(scope="module")
def update_images(tmp_path_factory: pytest.TempPathFactory) -> UpdateImages:
    key = signing_key()
    work = tmp_path_factory.mktemp("update-images")
    built = {}
    for label, spec in (("alpha1", _alpha("1")), ("alpha2", _alpha("2")), ("beta", BETA), ("gamma", GAMMA),
                        ("newpkg", NEWPKG), ("links1", LINKS_V1), ("links2", LINKS_V2), ("under", UNDER)):
        built[label] = build_package(spec, work / "rpms" / label)
    sign_all(list(built.values()), key)
    v1 = [built["alpha1"], built["beta"], built["gamma"]]  # gamma after beta: its conflict file wins
    v2 = [built["alpha2"], built["beta"], built["newpkg"]]
    out = work / "out"
    return UpdateImages(
        key=key,
        v1=_publish(out, "1", v1, key),
        v2=_publish(out, "2", v2, key),
        v2_again=_publish(out, "3", v2, key),
        v2_rpms=tuple(v2),
        links_v1=_publish(work / "links", "1", [built["links1"], built["under"]], key),
        links_v2=_publish(work / "links", "2", [built["links2"], built["under"]], key),
    )


def _tree(sysroot: Path, result: dict[str, object]) -> Path:
    return sysroot / "@rpmimg/deployments" / str(result["deployment"]["id"])


def _inode(path: Path) -> tuple[int, int]:
    """The inode and its change time: a file rewritten in place keeps its inode number
    (rpmextents.extract empties and refills a regular file), not its ctime."""
    st = os.lstat(path)
    return st.st_ino, st.st_ctime_ns


def test_update_equals_full_build_and_rpm(sysroot: Path, update_images: UpdateImages, tmp_path: Path) -> None:
    imgs = update_images
    first = deploy(sysroot, imgs.v1, imgs.key).json()
    assert (first["build"], first["full_reason"]) == ("full", "no previous deployment")
    # gamma's copy of beta's file was deduplicated while the packages entered the empty store.
    assert first["deduplicated_bytes"] == len(TWICE)
    second = deploy(sysroot, imgs.v2, imgs.key).json()
    assert second["build"] == "update", second["full_reason"]
    old, new = _tree(sysroot, first), _tree(sysroot, second)
    assert kernel.subvolume_is_readonly(new)

    # Only what changed was touched: unchanged files keep their inode as it was, changed ones don't.
    for same in ("share/alpha/same", "share/beta/file", "share/owned-by-gamma/beta-file"):
        assert _inode(old / same) == _inode(new / same), same
    for changed in ("share/alpha/changes", "share/alpha/mtime", "share/alpha/owner", "share/alpha/mode",
                    "share/shared/conflict"):
        assert _inode(old / changed) != _inode(new / changed), changed
    assert (new / "share/shared/conflict").read_bytes() == b"beta's\n"
    assert second["kept_paths"] > 0 and second["written_paths"] < 30  # type: ignore[operator]
    # The update's own disk cost is a few blocks per changed path, nothing like a new tree
    # (the rpm database's pages rpm rewrote aside: their cost is the database's).
    db = new / "lib/sysimage/rpm"
    assert kernel.exclusive_bytes([new]) - kernel.exclusive_bytes([db]) < 64 << 10

    # A full build of the same packages is the same tree, every path and attribute.
    again = deploy(sysroot, imgs.v2_again, imgs.key, "--full").json()
    assert (again["build"], again["full_reason"]) == ("full", "asked for")
    # Each deployment's own record names it; everything else is the same.
    # The rpm databases record the same packages; their bytes differ (install times). The
    # records of rpmimg's own (deployment, /etc merge) describe different builds.
    assert rpmdb.installed(_tree(sysroot, again)) == rpmdb.installed(new)
    assert_same_tree(_tree(sysroot, again), new, exclude=("/lib/sysimage/rpmimg", "/lib/sysimage/rpm"))
    # ... and so is rpm's install of them.
    expected = tmp_path / "rpm-root"
    rpm_install(imgs.v2_rpms, expected, passwd=catalog.PASSWD, group=catalog.GROUP)
    assert_same_tree(expected / "usr", new, exclude=("/lib/sysimage/packages", "/lib/sysimage/rpmimg", "/lib/sysimage/rpm", "/share/factory"))
    assert sorted(os.listdir(new / "share/factory/etc")) == ["newpkg.conf"]
    assert sorted(os.listdir(new / "lib/sysimage/packages")) == [
        "alpha-2-1.x86_64.rpm", "beta-1.0-1.x86_64.rpm", "newpkg-1.0-1.x86_64.rpm"
    ]
    # Nothing of the old image is left, down to directories only its files needed.
    gone = ("share/gamma", "share/alpha/olddir", "share/alpha/dropped")
    assert [p for p in gone if os.path.lexists(new / p)] == []
    assert (new / "share/alpha/implicit").read_bytes().startswith(b"a file")
    reset = os.lstat(new / "share/owned-by-gamma")
    assert (reset.st_mode & 0o7777, reset.st_uid, reset.st_gid) == (0o755 & ~_umask(), 0, 0)
    # The previous deployment is as it was.
    assert (old / "share/shared/conflict").read_bytes().startswith(b"gamma's")
    assert rpmimg("verify", "--sysroot", sysroot).code == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_first_deployment_records_its_etc_for_the_first_update(
    sysroot: Path, update_images: UpdateImages
) -> None:
    """The first deployment's /usr records its root's /etc as the merge left it (every
    digest true of the file while its stamp holds), with no old deployment for first-boot
    sync; the update's base record agrees with it on every file (deploy.etcbase takes the
    digests of untouched files from it: test_etc_base)."""
    imgs = update_images
    first = deploy(sysroot, imgs.v1, imgs.key).json()
    tree, root = _tree(sysroot, first), sysroot / "@rpmimg/roots" / str(first["deployment"]["id"])
    assert not (tree / BASE_DIR / "old-deployment").exists()
    recorded = recorded_files(tree)
    etc_files = {str(p.relative_to(root / "etc")) for p in (root / "etc").rglob("*")
                 if p.is_file() and not p.is_symlink()}
    assert "gamma.conf" in recorded and set(recorded) <= etc_files
    for path, (stamp, digest) in recorded.items():
        if stamp_of(os.lstat(root / "etc" / path)) == stamp:
            assert digest == hashlib.sha256((root / "etc" / path).read_bytes()).hexdigest(), path
    second = deploy(sysroot, imgs.v2, imgs.key).json()
    base = {line.split(" ", 5)[5]: line.split(" ")[4]
            for line in (_tree(sysroot, second) / BASE_DIR / "entries").read_text().splitlines()}
    assert all(base[path] == digest for path, (_, digest) in recorded.items() if path in base)


def test_update_falls_back_to_full_when_it_cannot_be_exact(sysroot: Path, update_images: UpdateImages) -> None:
    imgs = update_images
    deploy(sysroot, imgs.links_v1, imgs.key)
    # A directory symlink with another package's file below it turns into a directory.
    second = deploy(sysroot, imgs.links_v2, imgs.key).json()
    assert second["build"] == "full"
    assert second["full_reason"] == "/share/via: a symlink that other paths lie below changes"
    tree = _tree(sysroot, second)
    assert (tree / "share/via").is_dir() and not (tree / "share/via").is_symlink()
    assert (tree / "share/via/file").is_file()


def test_update_falls_back_to_full_when_owner_ids_changed(sysroot: Path, update_images: UpdateImages) -> None:
    imgs = update_images
    first = deploy(sysroot, imgs.v1, imgs.key).json()
    # Since the first deployment, rpmimg-group (which it used) got another gid in its root
    # (the system the update starts from), and rpmimg-user (which it didn't) another uid.
    seed_accounts(Path(str(first["root"])), catalog.PASSWD.replace(f":{catalog.USER_ID}:", ":4321:"),
                  catalog.GROUP.replace(f":{catalog.GROUP_ID}:", ":5432:"))
    second = deploy(sysroot, imgs.v2, imgs.key).json()
    assert second["build"] == "full"
    assert second["full_reason"] == "group rpmimg-group is 5432 now, 2345 in the previous deployment"
    st = os.lstat(_tree(sysroot, second) / "share/alpha/owner")
    assert (st.st_uid, st.st_gid) == (4321, 5432)


def test_update_plain_output_says_how_it_was_built(sysroot: Path, update_images: UpdateImages) -> None:
    imgs = update_images
    rpmimg("deploy", "--sysroot", sysroot, "--keyring", imgs.key.public, imgs.v1)
    out = rpmimg("deploy", "--sysroot", sysroot, "--keyring", imgs.key.public, imgs.v2).out
    assert "built from deployment 1:" in out and "paths written" in out, out
    snap = snapshot(sysroot / "@rpmimg/deployments/2")
    assert "/share/alpha/added" in snap


def test_update_survives_a_missing_store_entry_of_the_base(sysroot: Path, update_images: UpdateImages) -> None:
    imgs = update_images
    first = deploy(sysroot, imgs.v1, imgs.key).json()
    # A package only the first deployment used has gone from the store (damage, or by hand).
    store = sysroot / "@rpmimg/store"
    gamma = next(p for p in store.glob("*/*.rpm") if _names(p) == "gamma")
    gamma.unlink()
    second = deploy(sysroot, imgs.v2, imgs.key).json()
    assert second["build"] == "full" and "no longer in the store" in str(second["full_reason"])
    assert (_tree(sysroot, second) / "share/shared/conflict").read_bytes() == b"beta's\n"
    assert first["deployment"]["id"] != second["deployment"]["id"]


def _names(stored: Path) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}", stored],
                          capture_output=True, text=True, check=True).stdout


def test_the_etc_merge_of_an_update_takes_both_trees_lists_as_their_header_files_hold_them(
    sysroot: Path, update_images: UpdateImages
) -> None:
    """An update's /etc merge reads no header file: tree_lists gives the file lists of the
    base and of the update from their records, in the order installed_file_lists reads the
    trees' header files (a later package's /etc entry wins), or None when one is unknown."""
    imgs = update_images
    deploy(sysroot, imgs.v1, imgs.key)
    assert deploy(sysroot, imgs.v2, imgs.key).json()["build"] == "update"
    old, new = state.load(sysroot / "@rpmimg/state.json").deployments
    store = Store(sysroot / "@rpmimg/store", remember=True)
    known = {store.package(p.sha256).header_sha256: store.package(p.sha256).entries()
             for d in (old, new) for p in d.packages}
    lists = tree_lists(known, old, new)
    assert lists is not None
    for made, record in zip(lists, (old, new), strict=True):
        tree = sysroot / "@rpmimg/deployments" / record.id
        read = list(installed_file_lists(tree, {}))
        assert [str(nevra_of(f.header)) for f in made] == [str(nevra_of(f.header)) for f in read]
        assert [list(f.paths()) for f in made] == [list(f.paths()) for f in read]
    # The order is the header files', not the manifest's.
    backwards = tree_lists(known, dataclasses.replace(old, packages=old.packages[::-1]), new)
    assert backwards is not None
    assert [nevra_of(f.header).name for f in backwards[0]] == ["alpha", "beta", "gamma"]
    del known[new.packages[-1].header_sha256]
    assert tree_lists(known, old, new) is None


def _in_process_update(sysroot: Path, source: Path, key: SigningKey) -> object:
    from deploy.system import open_system
    from deploy.transaction import DeployOptions
    from deploy.transaction import deploy as deploy_now

    with open_system(sysroot) as system:
        return deploy_now(system, DeployOptions(source=os.fspath(source), keyrings=(key.public,)))


def test_an_update_that_fails_after_its_database_started_waits_for_it_and_leaves_nothing(
    sysroot: Path, update_images: UpdateImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database update starts before the changed files are written (build._update); a
    failure while they are written waits for it before the tree is discarded: no thread
    outlives the deploy, and the state, the deployments and staging are as they were."""
    import threading

    from deploy.tree import TreeBuilder

    imgs = update_images
    deploy(sysroot, imgs.v1, imgs.key)
    top = sysroot / "@rpmimg"
    before = (state.load(top / "state.json"), sorted(os.listdir(top / "deployments")),
              sorted(os.listdir(top / "staging")))
    running: list[bool] = []

    def failing(self: TreeBuilder, *args: object, **kw: object) -> object:
        running.append(any(t.name == "rpmdb-update" for t in threading.enumerate()))
        raise OSError(5, "injected failure")

    monkeypatch.setattr(TreeBuilder, "add_package", failing)
    with pytest.raises(OSError, match="injected failure"):
        _in_process_update(sysroot, imgs.v2, imgs.key)
    assert running and running[0]  # the database was being changed as files were written
    assert not any(t.name == "rpmdb-update" for t in threading.enumerate())
    assert (state.load(top / "state.json"), sorted(os.listdir(top / "deployments")),
            sorted(os.listdir(top / "staging"))) == before


def test_an_update_found_inexact_while_its_files_are_written_is_built_in_full(
    sysroot: Path, update_images: UpdateImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NoDelta raised after the database update started: it is waited for and dropped with
    the tree, and the full build that follows makes its own database, recording v2."""
    from deploy import delta
    from deploy.tree import TreeBuilder

    imgs = update_images
    deploy(sysroot, imgs.v1, imgs.key)
    staging = sorted(os.listdir(sysroot / "@rpmimg/staging"))
    real = TreeBuilder.add_package
    calls: list[bool] = []

    def inexact(self: TreeBuilder, pkg: object, *args: object, **kw: object) -> object:
        if kw.get("only") is not None and not calls:
            calls.append(True)
            raise delta.NoDelta("injected: not exact")
        return real(self, pkg, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(TreeBuilder, "add_package", inexact)
    result = _in_process_update(sysroot, imgs.v2, imgs.key)
    assert calls and result.build == "full" and "injected" in result.full_reason  # type: ignore[attr-defined]
    tree = sysroot / "@rpmimg/deployments" / result.deployment  # type: ignore[attr-defined]
    assert sorted(rpmdb.installed(tree)) == sorted(
        f"{nevra_of_file(p)}" for p in imgs.v2_rpms)
    assert sorted(os.listdir(sysroot / "@rpmimg/staging")) == staging


def nevra_of_file(rpm: Path) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}", rpm],
                          capture_output=True, text=True, check=True).stdout
