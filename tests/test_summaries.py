"""Package summaries (deploy.summaries): what a deploy asks of a package, kept with the
default deployment, says what the package's file list says; an update reads the headers of
the packages it changes only; a summaries file not as written, planted, of another rpmimg
or of another deployment stands for nothing, and a record in it not as written for its
package only: the update is built as without it."""

from __future__ import annotations

import json
import marshal
import os
import stat
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from deploytools import Images, deploy, rpmimg, state_of
from imagepub import publish
from storetools import stored

from deploy import delta, summaries
from deploy.etcmerge import EtcPart
from deploy.store import Store
from deploy.sysusers import ships_config
from deploy.tree import accounting
from fixtures.build import fixture_packages
from rpmextents import ExtentsPackage
from rpmextents.accounts import accounts_without_sysusers
from rpmextents.files import EntryType, claim_candidates

pytest_plugins = ("deployenv",)

SUMMARIES = "@rpmimg/summaries"


def test_a_summary_says_what_the_file_list_says(tmp_path: Path) -> None:
    """Of every fixture package, written and read back: its identity, owner names, paths
    outside /usr, set-id files, package database claims, sysusers and scriptlet accounts,
    /etc entries, and what the plan asks (parents, directories, every placed path)."""
    store = Store(tmp_path / "store")
    made, lists = [], {}
    for name in sorted(fixture_packages()):
        ref = stored(store, tmp_path, name)
        with ExtentsPackage.open(store.path(ref.sha256)) as pkg:
            files = pkg.entries()
            made.append(summaries.summarize(ref.sha256, ref.header_sha256, pkg))
            lists[ref.sha256] = (pkg, files, ref)
    path = tmp_path / "summaries"
    summaries.save(path, made)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = summaries.load(path, [(s.sha256, s.header_sha256) for s in made])
    assert loaded is not None
    for sha, (pkg, files, ref) in lists.items():
        s = loaded.get(sha)
        assert s is not None
        i = s.identity
        assert (i.name, i.epoch, i.version, i.release, i.arch, i.nevra, i.block_size, i.header_sha256) == (
            ref.name, ref.epoch, ref.version, ref.release, ref.arch, pkg.nevra, ref.block_size, ref.header_sha256)
        assert s.entry == pkg.file_identity
        assert s.accounting == accounting(files)
        assert s.claims == tuple(claim_candidates(files))
        assert (s.sysusers, s.scriptlet_accounts) == (ships_config(files), accounts_without_sysusers(files.header, files))
        assert s.etc_part() == EtcPart.of(files)
        assert s.plan.parent_dirs == tuple(sorted(delta._parent_dirs(files)))
        positions, rels, types = delta._placed_outline(files)
        assert s.plan.exact == (len(set(rels)) == len(rels))
        dirs = {rel: files.metadata(pos) for pos, rel, t in zip(positions, rels, types, strict=True)
                if t is EntryType.DIR}
        for rel, e in dirs.items():
            kept = s.plan.dirs.entry(rel)
            assert s.plan.dirs.index_of(rel) == e.index
            assert (kept.index, kept.path, kept.type, kept.mode, kept.user, kept.group) == (
                e.index, e.path, e.type, e.mode, e.user, e.group)
        for rel in set(rels) - set(dirs):
            assert s.plan.dirs.index_of(rel) is None
        # Every placed path: its package is among those the table names for it.
        assert all(sha in loaded.kept.owners(rel) for rel in rels)
    assert {k: sorted(v) for k, v in loaded.placed().items()} == {s.sha256: sorted(s.plan.placed) for s in made}
    for s in made:
        rels = delta._placed_outline(lists[s.sha256][1])[1]
        assert list(s.plan.placed) == [delta.path_crc(rel) for rel in rels]


def _debug_lines(result_err: str, what: str) -> list[str]:
    return [line for line in result_err.splitlines() if what in line]


def _updated(sysroot: Path, images: Images) -> tuple[dict[str, object], str]:
    """Deploy v2 onto v1 with --debug; (its JSON report, its stderr)."""
    result = deploy(sysroot, images.v2, images.key, "--debug")
    report = result.json()
    assert report["build"] == "update", report["full_reason"]
    assert rpmimg("verify", "--sysroot", sysroot).code == 0
    return report, result.err


def _shared(images: Images) -> int:
    names = lambda rpms: {p.name for p in rpms}  # noqa: E731
    return len(names(images.v1_rpms) & names(images.v2_rpms))


def test_an_update_knows_the_packages_it_keeps_by_their_summaries(sysroot: Path, images: Images) -> None:
    """The first deploy leaves the summaries of its packages; the update knows every package
    both images have by them, and leaves the summaries of its own."""
    deploy(sysroot, images.v1, images.key)
    path = sysroot / SUMMARIES
    v1 = [(p["sha256"], p["header_sha256"]) for p in state_of(sysroot)["deployments"][0]["packages"]]
    assert summaries.load(path, v1) is not None
    _, err = _updated(sysroot, images)
    n = _shared(images)
    assert _debug_lines(err, f"{n} of the {n} packages both images have known by their summaries"), err
    state = state_of(sysroot)
    default = next(d for d in state["deployments"] if d["id"] == state["default"])
    new = summaries.load(path, [(p["sha256"], p["header_sha256"]) for p in default["packages"]])
    assert new is not None and summaries.load(path, v1) is None


def test_a_full_build_takes_the_summaries_of_the_packages_its_base_has(
        sysroot: Path, images: Images, tmp_path: Path) -> None:
    """The same packages under another image name, built in full: each package's summary is
    the one kept (its header is read to extract it, not to work the summary out again), and
    the summaries it leaves say the same."""
    deploy(sysroot, images.v1, images.key)
    path = sysroot / SUMMARIES
    before = _payload(path)
    copy = publish(tmp_path / "copy", "demo-copy", "1", images.v1_rpms, images.key)
    result = deploy(sysroot, copy, images.key, "--switch", "--full", "--debug")
    assert result.json()["build"] == "full"
    n = len(images.v1_rpms)
    assert _debug_lines(result.err, f"{n} of the {n} packages known by their summaries"), result.err
    assert _payload(path) == before
    assert rpmimg("verify", "--sysroot", sysroot).code == 0


def test_a_changed_store_entry_is_read_again(sysroot: Path, images: Images) -> None:
    """A store entry changed since its summary was made (here, its times) is known by its
    header again; the others by their summaries."""
    deploy(sysroot, images.v1, images.key)
    v2 = {p["sha256"] for p in json.loads(Path(images.v2).read_text())["packages"]}
    kept = next(p for p in state_of(sysroot)["deployments"][0]["packages"] if p["sha256"] in v2)
    entry = sysroot / "@rpmimg/store" / kept["sha256"][:2] / f"{kept['sha256']}.rpm"
    os.utime(entry, ns=(1, 1))
    _, err = _updated(sysroot, images)
    n = _shared(images)
    assert _debug_lines(err, f"{n - 1} of the {n} packages both images have known by their summaries"), err


def _payload(path: Path) -> object:
    return marshal.loads(path.read_bytes()[summaries._HEAD.size:-summaries._CHECKSUM.size])


def _rewrite(path: Path, change: Callable[[tuple], tuple], key: bytes | None = None) -> None:
    """The summaries file at path with its payload changed, its length and checksum made anew
    (what only a forger could write: the records are checked when used)."""
    data = path.read_bytes()
    magic, version, old_key, _length = summaries._HEAD.unpack_from(data)
    payload = marshal.dumps(change(marshal.loads(data[summaries._HEAD.size:-4])))
    head = summaries._HEAD.pack(magic, version, key or old_key, len(payload))
    path.write_bytes(head + payload + summaries._CHECKSUM.pack(zlib.crc32(payload, zlib.crc32(head))))


def _packages(change: Callable[[int, tuple], tuple]) -> Callable[[tuple], tuple]:
    return lambda payload: (tuple(change(n, p) for n, p in enumerate(payload[0])), payload[1])


def _field(i: int, value: Callable[[object], object]) -> Callable[[int, tuple], tuple]:
    return lambda n, p: (*p[:i], value(p[i]), *p[i + 1:])


_DIRS, _ETC, _USERS = 19, 21, 11


def _spoilers() -> list[tuple[str, Callable[[Path], None], str | None]]:
    """(what, how it spoils the file, a line deploy --debug prints for it)."""
    ignored = "summaries: ignored"
    return [
        ("garbage", lambda p: p.write_bytes(os.urandom(4096)), ignored),
        ("truncated", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), ignored),
        ("a byte flipped", lambda p: p.write_bytes(_flip(p.read_bytes())), "checksum mismatch"),
        ("another rpmimg's", lambda p: _rewrite(p, lambda x: x, key=b"\1" * 32), "of another rpmimg"),
        ("another deployment's", lambda p: _rewrite(p, _packages(lambda n, x: (x[0], "0" * 64, *x[2:]))),
         "of another deployment"),
        ("a package of another shape", lambda p: _rewrite(p, _packages(_field(_USERS, lambda v: 7))), ignored),
        ("a payload of another shape", lambda p: _rewrite(p, lambda x: x[0]), ignored),
        ("a symlink", _symlinked, "summaries: not read"),
        ("group-writable", lambda p: p.chmod(0o620), ignored),
        # Records not as written: each package read by its header where the plan or the
        # /etc merge would have used one (the file is otherwise used).
        ("directories forged as files", lambda p: _rewrite(p, _packages(_field(
            _DIRS, lambda d: (d[0], d[1], b"\xa4\x81\0\0" * len(d[0]), *d[3:])))), None),
        ("directory owners forged", lambda p: _rewrite(p, _packages(_field(
            _DIRS, lambda d: (*d[:3], tuple(range(len(d[0]))), *d[4:])))), None),
        ("/etc records forged", lambda p: _rewrite(p, _packages(_field(
            _ETC, lambda rs: tuple((*r[:2], None, *r[3:]) for r in rs)))), None),
        ("/etc records leading out", lambda p: _rewrite(p, _packages(_field(
            _ETC, lambda rs: tuple((r[0], f"/etc/../{EVIL}", *r[2:]) for r in rs)))), None),
        ("/etc records of paths outside /etc", lambda p: _rewrite(p, _packages(_field(
            _ETC, lambda rs: tuple((r[0], f"/usr/bin/{EVIL}", *r[2:]) for r in rs)))), None),
    ]


EVIL = "planted-by-a-forged-summary"


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]


def _symlinked(path: Path) -> None:
    aside = path.with_name("summaries-aside")
    path.rename(aside)
    path.symlink_to(aside.name)


@pytest.mark.parametrize(("what", "spoil", "said"), _spoilers(), ids=[s[0] for s in _spoilers()])
def test_a_summaries_file_not_as_written_stands_for_nothing(
        sysroot: Path, images: Images, what: str, spoil: Callable[[Path], None], said: str | None) -> None:
    deploy(sysroot, images.v1, images.key)
    path = sysroot / SUMMARIES
    spoil(path)
    report, err = _updated(sysroot, images)
    if said is not None:
        assert said in err, err
        assert not _debug_lines(err, "known by their summaries") or _debug_lines(
            err, f"0 of the {_shared(images)} packages"), err
    # Built as an update all the same, and the update is the image: verify found it so. The
    # new default's summaries are as written again.
    state = state_of(sysroot)
    default = next(d for d in state["deployments"] if d["id"] == state["default"])
    assert not path.is_symlink()
    assert summaries.load(path, [(p["sha256"], p["header_sha256"]) for p in default["packages"]]) is not None
    assert report["kept_paths"] and report["written_paths"]
    assert not [p for p in sysroot.rglob(f"*{EVIL}*")]  # nothing a forged record named was made
