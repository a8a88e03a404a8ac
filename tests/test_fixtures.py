"""The fixture packages are what their definitions say: read back by rpm, installed by rpm.

Expectations are computed from the definitions in fixtures.catalog, independently of
the builder, and checked against what the real rpm reads and installs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import rpm
import zstandard

from fixtures.build import (
    CACHE_ENV,
    FileKind,
    FileSpec,
    PackageSpec,
    Payload,
    build_package,
    fixture_packages,
    gnupg_home,
    large_file_package,
    signing_key,
)
from fixtures.catalog import (
    FIXTURES,
    GROUP,
    GROUP_ID,
    LARGE_FILE,
    LARGE_FILE_SIZE,
    LONG_NAME,
    PASSWD,
    SIGNED,
    SIZES,
    USER_ID,
    fixture,
)
from fixtures.rpmbuild import SOURCE_DATE_EPOCH
from fixtures.spec import Config

from oracle import (
    SEED_MTIME_NS,
    Node,
    NodeType,
    assert_same_tree,
    diff_snapshots,
    rpm_install,
    rpm_unavailable_reason,
    snapshot,
)

NAMES = [spec.name for spec in FIXTURES]
_UNAVAILABLE = rpm_unavailable_reason()
needs_rpm_install = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")

RPMFILE_CONFIG, RPMFILE_NOREPLACE, RPMFILE_GHOST = 1 << 0, 1 << 4, 1 << 6
TYPE_BITS = {
    FileKind.FILE: stat.S_IFREG,
    FileKind.HARDLINK: stat.S_IFREG,
    FileKind.DIR: stat.S_IFDIR,
    FileKind.SYMLINK: stat.S_IFLNK,
    FileKind.CHAR_DEVICE: stat.S_IFCHR,
    FileKind.BLOCK_DEVICE: stat.S_IFBLK,
}
PAYLOAD_MAGIC = {
    Payload.GZIP: b"\x1f\x8b",
    Payload.BZIP2: b"BZh",
    Payload.XZ: b"\xfd7zXZ\x00",
    Payload.LZMA: b"\x5d\x00\x00",
    Payload.ZSTD: b"\x28\xb5\x2f\xfd",
    Payload.NONE: b"070701",
}
# linux/capability.h numbers of the capabilities the caps fixture uses.
CAP_NUMBERS = {"cap_net_bind_service": 10, "cap_net_admin": 12, "cap_net_raw": 13, "cap_sys_nice": 23}
USERS = {"root": 0, "nobody": 65534, "rpmimg-user": USER_ID}
GROUPS = {"root": 0, "disk": 6, "nogroup": 65534, "rpmimg-group": GROUP_ID}


@pytest.fixture(scope="session")
def packages() -> dict[str, Path]:
    return fixture_packages()


def read_header(path: Path) -> rpm.hdr:
    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    with open(path, "rb") as f:
        return ts.hdrFromFdno(f.fileno())


def rpm_query(path: Path, *args: str) -> str:
    done = subprocess.run(
        ["rpm", "-qp", "--nosignature", *args, os.fspath(path)],
        capture_output=True, text=True, check=True,
    )
    return done.stdout


def payload_head(path: Path, size: int) -> bytes:
    """The first bytes of the (still compressed) payload: after lead, signature and header."""
    data = path.read_bytes()
    offset = 96
    for padded in (True, False):
        entries, store = struct.unpack(">II", data[offset + 8 : offset + 16])
        offset += 16 + 16 * entries + store
        if padded:  # the signature header is padded to 8 bytes
            offset = (offset + 7) & ~7
    return data[offset : offset + size]


def encode_caps(text: str) -> bytes:
    """struct vfs_cap_data (revision 2) for libcap text like "cap_a,cap_b=ep"."""
    names, flags = text.split("=")
    bits = sum(1 << CAP_NUMBERS[n] for n in names.split(","))
    permitted = bits if "p" in flags else 0
    inheritable = bits if "i" in flags else 0
    magic = 0x02000000 | (1 if "e" in flags else 0)
    return struct.pack(
        "<5I", magic, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
        permitted >> 32, inheritable >> 32,
    )


def test_every_fixture_builds(packages: dict[str, Path]) -> None:
    assert sorted(packages) == sorted(NAMES)
    assert all(p.is_file() and p.stat().st_size > 0 for p in packages.values())


@pytest.mark.parametrize("name", NAMES)
def test_rpm_reads_the_expected_nevra(packages: dict[str, Path], name: str) -> None:
    spec = fixture(name)
    arch = spec.arch or rpm.expandMacro("%{_arch}")
    epoch = "(none)" if spec.epoch is None else str(spec.epoch)
    got = rpm_query(packages[name], "--qf", "%{NAME}|%{EPOCH}|%{VERSION}|%{RELEASE}|%{ARCH}")
    assert got == f"{name}|{epoch}|{spec.version}|{spec.release}|{arch}"
    assert packages[name].name == f"{name}-{spec.version}-{spec.release}.{arch}.rpm"


def test_digests_of_every_fixture_verify(packages: dict[str, Path]) -> None:
    done = subprocess.run(
        ["rpmkeys", "-K", "--nosignature", *map(os.fspath, packages.values())],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("digests OK") == len(packages)


@pytest.mark.parametrize("name", NAMES)
def test_header_file_list_matches_the_definition(packages: dict[str, Path], name: str) -> None:
    spec = fixture(name)
    files = {fi.name: fi for fi in rpm.files(read_header(packages[name]))}
    assert set(files) == {f.path for f in spec.files}
    for f in spec.files:
        fi, inode = files[f.path], spec.resolved(f)
        perm = 0o777 if f.kind is FileKind.SYMLINK else inode.perm
        assert fi.mode == TYPE_BITS[f.kind] | perm, f.path
        assert (fi.user, fi.group) == (inode.user, inode.group), f.path
        # Devices have no file in the build root; rpm stamps them with the build time.
        assert fi.mtime == (SOURCE_DATE_EPOCH if f.is_device else inode.mtime), f.path
        assert bool(fi.fflags & RPMFILE_GHOST) == f.ghost, f.path
        assert bool(fi.fflags & RPMFILE_CONFIG) == (f.config is not Config.NONE), f.path
        assert bool(fi.fflags & RPMFILE_NOREPLACE) == (f.config is Config.NOREPLACE), f.path
        assert _caps_set(fi.caps) == _caps_set(f.caps or ""), f.path
        if f.kind in (FileKind.FILE, FileKind.HARDLINK):
            assert fi.size == inode.length, f.path
            if not f.ghost:
                assert fi.digest == hashlib.sha256(inode.data()).hexdigest(), f.path
            links = [g for g in spec.files if spec.resolved(g) is inode]
            assert fi.nlink == len(links), f.path
        if f.kind is FileKind.SYMLINK:
            assert fi.linkto == f.target, f.path
        if f.is_device:
            assert fi.rdev == os.makedev(f.major, f.minor), f.path


def _caps_set(text: str) -> tuple[frozenset[str], str]:
    names, _, flags = text.partition("=")
    return frozenset(filter(None, names.split(","))), "".join(sorted(flags))


@pytest.mark.parametrize("payload", list(Payload))
def test_payload_is_compressed_as_asked(packages: dict[str, Path], payload: Payload) -> None:
    path = packages[f"payload-{payload.name.lower()}"]
    assert read_header(path)[rpm.RPMTAG_PAYLOADCOMPRESSOR] == payload.compressor
    magic = PAYLOAD_MAGIC[payload]
    assert payload_head(path, len(magic)) == magic


def test_signed_package_verifies_against_the_test_key(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    key = signing_key()
    assert key.public.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert key.secret.read_text().startswith("-----BEGIN PGP PRIVATE KEY BLOCK-----")
    signed = packages["signed"]
    check = ["rpmkeys", "--dbpath", os.fspath(tmp_path), "-Kv", os.fspath(signed)]

    before = subprocess.run(check, capture_output=True, text=True, check=False)
    assert before.returncode != 0 and "NOKEY" in before.stdout + before.stderr

    subprocess.run(
        ["rpmkeys", "--dbpath", os.fspath(tmp_path), "--import", os.fspath(key.public)],
        check=True,
    )
    after = subprocess.run(check, capture_output=True, text=True, check=False)
    assert after.returncode == 0, after.stdout + after.stderr
    assert f"Signature, key ID {key.keyid[-8:]}: OK" in after.stdout
    assert key.keyid in rpm_query(signed, "--qf", "%{RSAHEADER:pgpsig}").lower()


@pytest.mark.parametrize("name", sorted(set(NAMES) - SIGNED))
def test_other_fixtures_are_unsigned(packages: dict[str, Path], name: str) -> None:
    assert rpm_query(packages[name], "--qf", "%{RSAHEADER}") == "(none)"


def test_gnupg_home_signs_with_the_test_key(tmp_path: Path) -> None:
    key = signing_key()
    message = tmp_path / "message"
    message.write_text("signed by the rpmimg test key\n")
    keyring = tmp_path / "keyring.gpg"
    with gnupg_home(key) as home:
        env = {**os.environ, "GNUPGHOME": os.fspath(home)}
        subprocess.run(
            ["gpg", "--batch", "--local-user", key.fingerprint, "--detach-sign", os.fspath(message)],
            env=env, check=True, capture_output=True,
        )
        subprocess.run(
            ["gpg", "--batch", "--dearmor", "--output", os.fspath(keyring), os.fspath(key.public)],
            env=env, check=True, capture_output=True,
        )
    assert not home.exists()
    subprocess.run(
        ["gpgv", "--keyring", os.fspath(keyring), os.fspath(message) + ".sig", os.fspath(message)],
        check=True, capture_output=True,
    )


def test_relations_and_scriptlets_are_in_the_header(packages: dict[str, Path]) -> None:
    relations = fixture("relations")
    requires = rpm_query(packages["relations"], "--requires").splitlines()
    assert set(relations.requires) <= set(requires)
    for option, values in (
        ("--provides", relations.provides),
        ("--conflicts", relations.conflicts),
        ("--obsoletes", relations.obsoletes),
        ("--recommends", relations.recommends),
        ("--suggests", relations.suggests),
        ("--supplements", relations.supplements),
        ("--enhances", relations.enhances),
    ):
        assert set(values) <= set(rpm_query(packages["relations"], option).splitlines()), option
    scripts = rpm_query(packages["scriptlets"], "--scripts")
    for section in ("preinstall", "postinstall", "preuninstall", "postuninstall", "posttrans"):
        assert f"{section} scriptlet" in scripts
    assert 'print("postun")' in scripts
    assert "echo sizes installed" in rpm_query(packages["scriptlets"], "--triggers")
    assert rpm_query(packages["payload-zstd"], "--scripts") == ""


def test_builds_are_reproducible(packages: dict[str, Path], tmp_path: Path) -> None:
    # Another directory, another time, another staging path: the same bytes.
    for name in ("hardlinks", "devices", "payload-xz"):
        rebuilt = build_package(fixture(name), tmp_path / name)
        assert rebuilt.read_bytes() == packages[name].read_bytes(), name
        assert [p.name for p in (tmp_path / name).iterdir()] == [rebuilt.name]


@pytest.mark.slow  # two cold builds of every fixture
def test_cache_builds_once_then_hits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, os.fspath(tmp_path))
    first = fixture_packages()
    assert sorted(first) == sorted(NAMES)
    directory = first["empty"].parent
    assert directory.parent == tmp_path
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")]
    stamps = {n: p.stat().st_mtime_ns for n, p in first.items()}
    assert {n: p.stat().st_mtime_ns for n, p in fixture_packages().items()} == stamps

    # A damaged cache entry is rebuilt, not trusted; leftovers of a killed build go.
    first["sizes"].unlink()
    stale = tmp_path / f".{directory.name}.killed-build"
    stale.mkdir()
    again = fixture_packages()
    assert again["sizes"].is_file() and again == first
    assert not stale.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FileSpec("usr/bin/x"), "absolute"),
        (lambda: FileSpec("/usr/../etc/x"), "normalised"),
        (lambda: FileSpec("/usr/share/*"), "cannot carry"),
        (lambda: FileSpec("/usr/" + "x" * 256), "255 bytes"),
        (lambda: FileSpec("/usr/x", mode=0o10644), "permission bits"),
        (lambda: FileSpec("/usr/x", kind=FileKind.SYMLINK), "needs a target"),
        (lambda: FileSpec("/usr/x", kind=FileKind.DIR, size=3), "only regular files"),
        (lambda: FileSpec("/usr/x", kind=FileKind.CHAR_DEVICE, major=300), "8-bit"),
        (lambda: FileSpec("/usr/x", user="two words"), "owner name"),
        (lambda: PackageSpec("p", files=(FileSpec("/a"), FileSpec("/a"))), "listed twice"),
        (
            lambda: PackageSpec("p", files=(FileSpec("/a", kind=FileKind.HARDLINK, target="/b"),)),
            "links to /b",
        ),
        (
            lambda: PackageSpec(
                "p",
                files=(
                    FileSpec("/a", caps="cap_net_raw=ep"),
                    FileSpec("/b", kind=FileKind.HARDLINK, target="/a"),
                ),
            ),
            "caps per inode",
        ),
        (
            lambda: PackageSpec(
                "p", files=(FileSpec("/a", kind=FileKind.SYMLINK, target="x"), FileSpec("/a/b"))
            ),
            "is below /a",
        ),
        (lambda: PackageSpec("p", version="1-2"), "cannot contain '-'"),
    ],
)
def test_bad_definitions_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        make()


def expected_tree(spec: PackageSpec, *, seeded: bool) -> dict[str, Node]:
    """What `rpm -i` of `spec`'s package should leave, derived from the definition alone."""
    users = USERS if seeded else {"root": 0}
    groups = GROUPS if seeded else {"root": 0}
    installed = [f for f in spec.files if not f.ghost]  # rpm -i creates no %ghost
    nodes: dict[str, Node] = {}
    for f in installed:
        inode = spec.resolved(f)
        mode = TYPE_BITS[f.kind] | (0o777 if f.kind is FileKind.SYMLINK else inode.perm)
        # Names rpm can't resolve become root, dropping the matching set-id bit.
        if inode.user not in users:
            mode &= ~stat.S_ISUID
        if inode.group not in groups:
            mode &= ~stat.S_ISGID
        regular = f.kind in (FileKind.FILE, FileKind.HARDLINK)
        links = frozenset(g.path for g in installed if spec.resolved(g) is inode)
        nodes[f.path] = Node(
            type=_NODE_TYPES[f.kind],
            mode=mode,
            uid=users.get(inode.user, 0),
            gid=groups.get(inode.group, 0),
            size=inode.length if regular else len(f.target) if f.kind is FileKind.SYMLINK else None,
            sha256=hashlib.sha256(inode.data()).hexdigest() if regular else None,
            target=f.target if f.kind is FileKind.SYMLINK else None,
            mtime_ns=None if f.kind is FileKind.DIR else
            (SOURCE_DATE_EPOCH if f.is_device else inode.mtime) * 10**9,
            rdev=os.makedev(f.major, f.minor) if f.is_device else None,
            caps=encode_caps(f.caps) if f.caps else None,
            links=links if len(links) > 1 else frozenset(),
        )
    seeds = {"/etc/passwd": PASSWD, "/etc/group": GROUP} if seeded else {}
    for path, text in seeds.items():
        data = text.encode()
        nodes[path] = Node(
            NodeType.FILE, 0o100644, 0, 0, len(data), hashlib.sha256(data).hexdigest(),
            None, SEED_MTIME_NS, None, None, frozenset(),
        )
    for path in list(nodes):
        parent = os.path.dirname(path)
        while parent != "/" and parent not in nodes:
            # Directories no package owns: rpm makes them 0755 root.
            nodes[parent] = Node(
                NodeType.DIR, 0o40755, 0, 0, None, None, None, None, None, None, frozenset()
            )
            parent = os.path.dirname(parent)
    return nodes


_NODE_TYPES = {
    FileKind.FILE: NodeType.FILE,
    FileKind.HARDLINK: NodeType.FILE,
    FileKind.DIR: NodeType.DIR,
    FileKind.SYMLINK: NodeType.SYMLINK,
    FileKind.CHAR_DEVICE: NodeType.CHR,
    FileKind.BLOCK_DEVICE: NodeType.BLK,
}


@needs_rpm_install
@pytest.mark.parametrize("name", NAMES)
def test_rpm_installs_what_the_definition_says(
    packages: dict[str, Path], tmp_path: Path, name: str
) -> None:
    rpm_install([packages[name]], tmp_path, passwd=PASSWD, group=GROUP)
    diffs = diff_snapshots(expected_tree(fixture(name), seeded=True), snapshot(tmp_path))
    assert not diffs, "\n".join(diffs)


@needs_rpm_install
def test_owners_without_accounts_become_root_without_set_id_bits(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    rpm_install([packages["owners"]], tmp_path)
    tree = snapshot(tmp_path)
    diffs = diff_snapshots(expected_tree(fixture("owners"), seeded=False), tree)
    assert not diffs, "\n".join(diffs)
    assert tree["/usr/share/owners/setuid"].mode == 0o100755
    assert (tree["/usr/share/owners/user"].uid, tree["/usr/share/owners/user"].gid) == (0, 0)


@needs_rpm_install
def test_all_fixtures_install_together_with_their_properties(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    rpm_install(packages.values(), tmp_path, passwd=PASSWD, group=GROUP)
    tree = snapshot(tmp_path)

    a = tree["/usr/share/hardlinks/a"]
    assert a.links == {"/usr/share/hardlinks/a", "/usr/share/hardlinks/b", "/usr/lib/hardlinks/c"}
    assert tree["/usr/lib/hardlinks/empty-3"].links == {
        "/usr/share/hardlinks/empty-1", "/usr/share/hardlinks/empty-2", "/usr/lib/hardlinks/empty-3"
    }
    assert tree["/usr/lib/hardlinks/empty-3"].size == 0
    assert tree["/usr/share/symlinks/dangling"].target == "does-not-exist"
    assert tree["/usr/share/symlinks/absolute"].target == "/usr/share/symlinks/target"
    assert tree["/usr/bin/symlinks-relative"].target == "../share/symlinks/target"
    assert [tree[f"/usr/share/sizes/size-{n}"].size for n in SIZES] == list(SIZES)
    assert stat.S_IMODE(tree["/usr/bin/modes-setuid"].mode) == 0o4755
    assert stat.S_IMODE(tree["/usr/bin/modes-setgid"].mode) == 0o2755
    assert stat.S_IMODE(tree["/usr/share/modes/sticky"].mode) == 0o1777
    assert stat.S_IMODE(tree["/usr/share/modes/private"].mode) == 0o700
    assert tree["/usr/bin/caps-net-raw"].caps == encode_caps("cap_net_raw=ep")
    assert tree["/usr/bin/caps-none"].caps is None
    owned = tree["/usr/share/owners/setuid"]
    assert (owned.uid, owned.gid, stat.S_IMODE(owned.mode)) == (USER_ID, GROUP_ID, 0o4755)
    assert tree["/usr/share/owners/nobody"].uid == 65534
    assert tree["/usr/share/owners/unknown"].uid == 0
    assert tree["/usr/lib/devices/null"].type is NodeType.CHR
    assert tree["/usr/lib/devices/null"].rdev == os.makedev(1, 3)
    assert tree["/usr/lib/devices/loop0"].type is NodeType.BLK
    assert tree["/usr/lib/devices/loop0"].gid == 6
    assert "/usr/share/ghost-config/ghost-file" not in tree
    assert "/usr/share/ghost-config/ghost-dir" not in tree
    assert "/usr/share/ghost-config/noreplace.conf" in tree
    assert "/var/log/outside-usr.log" not in tree
    assert tree["/etc/outside-usr.conf"].type is NodeType.FILE
    assert stat.S_IMODE(tree["/var/lib/outside-usr"].mode) == 0o750
    assert len(LONG_NAME) > 200 and LONG_NAME in tree
    assert "/usr/share/names/ünïcødé-日本語-ファイル.txt" in tree
    assert "/usr/share/names/with space.txt" in tree
    assert "/var/lib/rpm" not in tree  # the database is left out of snapshots
    assert (tmp_path / "var/lib/rpm").is_dir()


COMPARED = ("hardlinks", "symlinks", "caps", "devices", "modes")


@pytest.fixture
def twin_roots(packages: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    if _UNAVAILABLE:
        pytest.skip(_UNAVAILABLE)
    roots = tmp_path / "expected", tmp_path / "actual"
    for root in roots:
        rpm_install([packages[n] for n in COMPARED], root, passwd=PASSWD, group=GROUP)
    return roots


def _break_hardlink(root: Path) -> None:
    b = root / "usr/share/hardlinks/b"
    shutil.copy2(b, root / "copy")
    os.replace(root / "copy", b)


def _rewrite(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _retarget(path: Path, target: str) -> None:
    path.unlink()
    path.symlink_to(target)


MUTATIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "mode": (
        lambda r: (r / "usr/bin/modes-setuid").chmod(0o755),
        "/usr/bin/modes-setuid: mode 0o104755 (-rwsr-xr-x) != 0o100755 (-rwxr-xr-x)",
    ),
    "content": (
        lambda r: _rewrite(r / "usr/share/hardlinks/single", b"\0" * 4097),
        "/usr/share/hardlinks/single: sha256",
    ),
    "size": (
        lambda r: _rewrite(r / "usr/share/symlinks/target", b"symlink target\n!"),
        "/usr/share/symlinks/target: size 15 != 16; sha256",
    ),
    "hardlink": (_break_hardlink, "/usr/share/hardlinks/b: links {"),
    "missing": (
        lambda r: (r / "usr/bin/caps-none").unlink(),
        "/usr/bin/caps-none: missing (expected file 0o100755",
    ),
    "unexpected": (
        lambda r: (r / "usr/share/hardlinks/new").touch(),
        "/usr/share/hardlinks/new: unexpected file",
    ),
    "mtime": (
        lambda r: os.utime(r / "usr/share/hardlinks/single", (0, 1)),
        "/usr/share/hardlinks/single: mtime_ns 1600000000.000000000 != 1.000000000",
    ),
    "owner": (
        lambda r: os.chown(r / "usr/share/symlinks/target", USER_ID, -1),
        f"/usr/share/symlinks/target: uid 0 != {USER_ID}",
    ),
    "caps": (
        lambda r: os.removexattr(r / "usr/bin/caps-net-raw", "security.capability"),
        "/usr/bin/caps-net-raw: caps 0100000200200000000000000000000000000000 != None",
    ),
    "symlink": (
        lambda r: _retarget(r / "usr/share/symlinks/relative", "elsewhere"),
        "/usr/share/symlinks/relative: size 6 != 9; target 'target' != 'elsewhere'",
    ),
    "device": (
        lambda r: _replace_device(r / "usr/lib/devices/zero", os.makedev(1, 7)),
        "/usr/lib/devices/zero: rdev 1,5 != 1,7",
    ),
}


def _replace_device(path: Path, rdev: int) -> None:
    st = path.lstat()
    path.unlink()
    os.mknod(path, st.st_mode, rdev)
    path.chmod(stat.S_IMODE(st.st_mode))  # mknod applies the umask
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_identical_installs_compare_equal(twin_roots: tuple[Path, Path]) -> None:
    assert_same_tree(*twin_roots)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_tree_comparison_names_the_difference(
    twin_roots: tuple[Path, Path], mutation: str
) -> None:
    mutate, expected_line = MUTATIONS[mutation]
    mutate(twin_roots[1])
    with pytest.raises(AssertionError) as failure:
        assert_same_tree(*twin_roots)
    message = str(failure.value)
    assert message.startswith(f"{twin_roots[1]} differs from {twin_roots[0]} (expected)")
    assert expected_line in message, message


def test_tree_comparison_reports_every_member_of_a_broken_hardlink(
    twin_roots: tuple[Path, Path],
) -> None:
    _break_hardlink(twin_roots[1])
    diffs = diff_snapshots(snapshot(twin_roots[0]), snapshot(twin_roots[1]))
    assert [d.split(":")[0] for d in diffs] == [
        "/usr/lib/hardlinks/c", "/usr/share/hardlinks/a", "/usr/share/hardlinks/b"
    ]
    assert diffs[2].endswith("!= {} (not hardlinked)")


def test_tree_comparison_lists_at_most_the_limit(
    twin_roots: tuple[Path, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    count = len(snapshot(twin_roots[0]))
    with pytest.raises(AssertionError) as failure:
        assert_same_tree(twin_roots[0], empty, limit=5)
    message = str(failure.value)
    assert f"at {count} path(s)" in message
    assert message.count(": missing (expected") == 5
    assert f"... and {count - 5} more" in message


@pytest.mark.slow
def test_large_file_package_uses_rpms_large_file_format() -> None:
    path = large_file_package()
    assert path.stat().st_size < 10 << 20  # zeros compress away
    header = read_header(path)
    assert rpm.RPMTAG_LONGFILESIZES in header.keys()
    assert rpm.RPMTAG_FILESIZES not in header.keys()
    sizes = dict(zip(header[rpm.RPMTAG_FILENAMES], header[rpm.RPMTAG_LONGFILESIZES], strict=True))
    assert sizes["/usr/share/large-file/big"] == LARGE_FILE_SIZE > 1 << 32
    assert rpm_query(path, "--qf", "%{NAME}-%{VERSION}-%{RELEASE}") == (
        f"{LARGE_FILE.name}-{LARGE_FILE.version}-{LARGE_FILE.release}"
    )
    assert "rpmlib(LargeFiles)" in rpm_query(path, "--requires")
    cpio = zstandard.ZstdDecompressor().stream_reader(payload_head(path, 1 << 16)).read(6)
    assert cpio == b"07070X"  # rpm's stripped large-file cpio headers
