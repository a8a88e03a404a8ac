"""The rpm database a deployment gets equals what the real `rpm -i --justdb` records.

deploy.rpmdb writes the headers (as rpm would record them) into rpm's Packages table and
lets rpm build every index; an update deletes and imports in a copy. The oracle is rpm:
every tag of every recorded header and every row of every index table must be what
`rpm -i --justdb` of the same packages gives (but for the install time and transaction id,
which are the moment of each run). A broken header file leaves the previous database as it
was and nothing beside it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import rpm
from deploytools import sign_all

from deploy import rpmdb
from deploy.errors import DeploymentError
from fixtures.build import signing_key
from fixtures.rpmbuild import build_package
from fixtures.spec import Config, FileKind, FileSpec, PackageSpec, Scriptlet
from host.files import remove_tree
from rpmextents.errors import ExtentsError
from rpmextents.header import read_prefix

_STAMPS = {rpm.RPMTAG_INSTALLTIME, rpm.RPMTAG_INSTALLTID}
_JUSTDB = ["--justdb", "--nodeps", "--noscripts", "--notriggers", "--nodigest", "--nosignature",
           "--ignoresize", "--ignorearch", "--ignoreos", "--replacefiles", "--replacepkgs"]

SPECS = (
    PackageSpec(name="alpha", version="1.0", epoch=2, requires=("beta >= 1", "/bin/sh"),
                provides=("virtual(alpha) = 1",), conflicts=("gamma < 0.5",), obsoletes=("old-alpha",),
                recommends=("beta",), suggests=("delta",), supplements=("beta",), enhances=("beta",),
                files=(FileSpec("/usr/bin/alpha", content=b"#!/bin/sh\necho a\n", mode=0o755),
                       FileSpec("/usr/share/alpha", kind=FileKind.DIR),
                       FileSpec("/usr/share/alpha/data", content=b"data\n"),
                       FileSpec("/etc/alpha.conf", content=b"a=1\n", config=Config.NOREPLACE),
                       FileSpec("/usr/lib/alpha.so", kind=FileKind.SYMLINK, target="alpha.so.1")),
                scriptlets=(Scriptlet("post", "true\n"),)),
    PackageSpec(name="beta", version="1.5", files=(
        FileSpec("/usr/share/beta/one", content=b"1\n"), FileSpec("/usr/share/beta/two", content=b"2\n"),
        FileSpec("/etc/beta.conf", content=b"b\n", config=Config.PLAIN))),
    PackageSpec(name="beta", version="2.0", files=(
        FileSpec("/usr/share/beta/one", content=b"1 again\n"), FileSpec("/usr/share/beta/three", content=b"3\n"))),
    PackageSpec(name="empty", version="1", arch="noarch", requires=("alpha",)),
    PackageSpec(name="gamma", version="0.9", files=(FileSpec("/usr/share/gamma", content=b"g\n"),)),
)


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """N-V-R.A -> header file (lead, signature, header) of each fixture package; some signed."""
    work = tmp_path_factory.mktemp("rpmdb")
    rpms = [build_package(spec, work / "rpms") for spec in SPECS]
    sign_all(rpms[:2], signing_key())  # RSAHEADER etc. merged from the signature header
    out = work / "headers"
    out.mkdir()
    found = {}
    for p in rpms:
        with open(p, "rb") as f:
            (out / p.name).write_bytes(read_prefix(f).raw)
        found[p.name.removesuffix(".rpm")] = out / p.name
    return found


def _tree(tmp_path: Path, name: str) -> Path:
    tree = tmp_path / name
    (tree / "lib/sysimage").mkdir(parents=True)
    return tree


def _rpm_justdb(dbpath: Path, files: Sequence[Path]) -> None:
    dbpath.mkdir(parents=True)
    subprocess.run(["rpm", "--dbpath", dbpath, "-i", *_JUSTDB, *files], check=True, capture_output=True)


def _recorded(dbpath: Path) -> tuple[dict[str, dict[int, object]], dict[str, list[tuple[object, ...]]]]:
    """Every recorded header's tags by N-E-V-R.A, and every index table's rows with the record
    number replaced by that N-E-V-R.A (record numbers are rpm's to choose)."""
    rpm.addMacro("_dbpath", os.fspath(dbpath))
    try:
        ts = rpm.TransactionSet()
        ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
        headers, names = {}, {}
        for h in ts.dbMatch():
            names[h["dbinstance"]] = h["nevra"]
            headers[h["nevra"]] = {t: h[t] for t in h.keys() if t not in _STAMPS}
        ts.closeDB()
    finally:
        rpm.delMacro("_dbpath")
    conn = sqlite3.connect(dbpath / "rpmdb.sqlite")
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if t not in ("Packages", "sqlite_sequence", "sqlite_stat1", "Installtid")]
        rows = {t: sorted((bytes(k) if isinstance(k, bytes) else k, names[h], i)
                          for k, h, i in conn.execute(f'SELECT key, hnum, idx FROM "{t}"'))
                for t in tables}
    finally:
        conn.close()
    return headers, rows


def _assert_same_as_rpm(ours: Path, oracle: Path) -> None:
    got, want = _recorded(ours), _recorded(oracle)
    assert sorted(got[0]) == sorted(want[0])
    for nevra, tags in want[0].items():
        assert got[0][nevra] == tags, nevra
    assert set(got[1]) == set(want[1])
    for table, rows in want[1].items():
        assert got[1][table] == rows, table
    assert any(got[1][t] for t in ("Basenames", "Providename", "Requirename", "Sigmd5", "Sha1header"))


def _scratch_of_this_process() -> set[str]:
    """rpmimg's scratch directories in /dev/shm made by this process: another rpmimg at
    work at the same time (a second test run) has its own, named by its pid."""
    prefix = f"rpmimg-rpmdb-{os.getpid()}-"
    return {name for name in os.listdir(rpmdb._MEMORY_DIR) if name.startswith(prefix)}


@pytest.mark.parametrize("where", ["in memory", "on disk"])
def test_full_build_records_what_rpm_i_records(headers: dict[str, Path], tmp_path: Path, where: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Made on tmpfs when the headers are small (then copied in), else in the tree: the same
    database as rpm -i records, settled into one file, nothing left in either place."""
    if where == "on disk":
        monkeypatch.setattr(rpmdb, "BUILD_IN_MEMORY", 0)
    shm_before = _scratch_of_this_process()
    made: list[str] = []
    real_rpmdb = rpmdb._rpmdb
    monkeypatch.setattr(rpmdb, "_rpmdb", lambda stage, *a, **k: (made.append(os.fspath(stage)),
                                                                  real_rpmdb(stage, *a, **k))[1])
    files = sorted(headers.values())
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, files)
    assert made and all(m.startswith(rpmdb._MEMORY_DIR + "/") == (where == "in memory") for m in made)
    assert _scratch_of_this_process() <= shm_before
    _rpm_justdb(tmp_path / "oracle", files)
    _assert_same_as_rpm(tree / rpmdb.DB_DIR, tmp_path / "oracle")
    assert os.listdir(tree / rpmdb.DB_DIR) == [rpmdb.DB_FILE]  # no -wal, -shm, lock or stage
    conn = sqlite3.connect(f"file:{tree / rpmdb.DB_DIR / rpmdb.DB_FILE}?mode=ro", uri=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    signed = _recorded(tree / rpmdb.DB_DIR)[0]
    assert any(rpm.RPMTAG_RSAHEADER in tags for tags in signed.values())
    assert all(tags.get(rpm.RPMTAG_INSTALLCOLOR) is not None for tags in signed.values())


@pytest.mark.parametrize("aside", ["in memory", "on disk"])
def test_update_erases_and_adds_as_rpm_would_record_the_new_set(
    headers: dict[str, Path], tmp_path: Path, aside: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The added packages' database is made aside (on tmpfs when small, else beside the
    copy) and its rows added to the copy: the result is what rpm -i records, nothing left."""
    if aside == "on disk":
        monkeypatch.setattr(rpmdb, "IMPORT_IN_MEMORY", 0)
    shm_before = _scratch_of_this_process()
    old = [n for n in headers if not n.startswith(("beta-2.0", "gamma"))]
    new = [n for n in headers if not n.startswith(("beta-1.5", "empty"))]
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, [headers[n] for n in old])
    rpmdb.update(tree, sorted(set(old) - set(new)), [headers[n] for n in sorted(set(new) - set(old))])
    _rpm_justdb(tmp_path / "oracle", [headers[n] for n in new])
    _assert_same_as_rpm(tree / rpmdb.DB_DIR, tmp_path / "oracle")
    assert rpmdb.installed(tree) == sorted(new)
    assert os.listdir(tree / rpmdb.DB_DIR) == [rpmdb.DB_FILE]
    # A package already gone from the database has nothing left to erase.
    rpmdb.update(tree, ["beta-1.5-1.x86_64"], [])
    assert rpmdb.installed(tree) == sorted(new)
    assert _scratch_of_this_process() <= shm_before


def test_updating_changes_the_database_while_the_block_runs_or_builds_a_missing_one(
    headers: dict[str, Path], tmp_path: Path
) -> None:
    """updating() is update() in a thread beside the block (which does not wait for rpm); a
    tree without a database gets one of every header; an update that fails is raised when
    the block ends, the database as it was and nothing left beside it."""
    old = [n for n in headers if not n.startswith(("beta-2.0", "gamma"))]
    new = [n for n in headers if not n.startswith(("beta-1.5", "empty"))]
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, [headers[n] for n in old])
    threads: list[str] = []
    with rpmdb.updating(tree, sorted(set(old) - set(new)), [headers[n] for n in sorted(set(new) - set(old))],
                        [headers[n] for n in new]):
        threads = [t.name for t in threading.enumerate()]
    assert "rpmdb-update" in threads
    assert rpmdb.installed(tree) == sorted(new)
    assert os.listdir(tree / rpmdb.DB_DIR) == [rpmdb.DB_FILE]

    bare = _tree(tmp_path, "bare")
    with rpmdb.updating(bare, ["beta-1.5-1.x86_64"], [], [headers[n] for n in new]):
        pass
    assert rpmdb.installed(bare) == sorted(new)

    before = (tree / rpmdb.DB_DIR / rpmdb.DB_FILE).read_bytes()
    not_a_header = tmp_path / "junk-1-1.x86_64.rpm"
    not_a_header.write_bytes(b"\0" * 64)
    ran = False
    with pytest.raises((DeploymentError, ExtentsError)):
        with rpmdb.updating(tree, [], [not_a_header], []):
            ran = True
    assert ran
    assert (tree / rpmdb.DB_DIR / rpmdb.DB_FILE).read_bytes() == before
    assert os.listdir(tree / rpmdb.DB_DIR) == [rpmdb.DB_FILE]


def test_an_update_of_another_rpms_database_lets_rpm_import_into_it(
    headers: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database whose tables are not those rpm makes now (an index of another rpm version)
    gets the new packages from rpm --importdb itself, which fills every table it knows."""
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, [headers["beta-1.5-1.x86_64"], headers["empty-1-1.noarch"]])
    conn = sqlite3.connect(tree / rpmdb.DB_DIR / rpmdb.DB_FILE)
    with conn:
        conn.execute("CREATE TABLE Oldindex (key TEXT NOT NULL, hnum INTEGER NOT NULL, idx INTEGER NOT NULL)")
    conn.close()
    with caplog.at_level("INFO", logger="deploy.rpmdb"):
        rpmdb.update(tree, ["beta-1.5-1.x86_64"], [headers["beta-2.0-1.x86_64"], headers["gamma-0.9-1.x86_64"]])
    assert "not the tables rpm makes now" in caplog.text
    assert rpmdb.installed(tree) == ["beta-2.0-1.x86_64", "empty-1-1.noarch", "gamma-0.9-1.x86_64"]
    owner = subprocess.run(["rpm", "--dbpath", tree / rpmdb.DB_DIR, "-qf", "/usr/share/beta/three"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert owner == "beta-2.0-1.x86_64"


def test_update_erases_each_record_whose_header_is_the_package_named(
    headers: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records to erase are found in the file, not by rpm -q: by the Name index and each
    record's own header. A record listed under the name whose header is another version is
    kept; one recorded twice goes twice (here in two DELETE batches)."""
    monkeypatch.setattr(rpmdb, "_BATCH", 1)
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, [headers["beta-1.5-1.x86_64"], headers["beta-2.0-1.x86_64"],
                       headers["beta-1.5-1.x86_64"], headers["gamma-0.9-1.x86_64"]])
    db = tree / rpmdb.DB_DIR / rpmdb.DB_FILE
    conn = sqlite3.connect(db)
    with conn:  # gamma's record listed under beta's name too: its header says otherwise
        conn.execute("INSERT INTO Name (key, hnum, idx) SELECT 'beta', hnum, 0 FROM Name WHERE key = 'gamma'")
    conn.close()
    rpmdb.update(tree, ["beta-1.5-1.x86_64"], [])
    assert rpmdb.installed(tree) == ["beta-2.0-1.x86_64", "gamma-0.9-1.x86_64"]


@pytest.mark.parametrize("damage", ["not a header", "too large"])
def test_a_damaged_record_of_a_package_to_erase_is_refused(
    headers: dict[str, Path], tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, [headers["beta-1.5-1.x86_64"], headers["gamma-0.9-1.x86_64"]])
    db = tree / rpmdb.DB_DIR / rpmdb.DB_FILE
    if damage == "not a header":
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("UPDATE Packages SET blob = x'00000001' WHERE hnum IN"
                         " (SELECT hnum FROM Name WHERE key = 'beta')")
        conn.close()
    else:  # the bound is rpm's 256 MiB; a smaller one stands for it here
        monkeypatch.setattr(rpmdb, "_BLOB_MAX", 64)
    before = db.read_bytes()
    with pytest.raises(DeploymentError, match="record"):
        rpmdb.update(tree, ["beta-1.5-1.x86_64"], [])
    assert db.read_bytes() == before
    assert os.listdir(tree / rpmdb.DB_DIR) == [rpmdb.DB_FILE]


@pytest.mark.parametrize("damage", ["truncated", "bad magic", "absurd size", "bad offset"])
def test_a_broken_header_file_leaves_the_previous_database_in_place(
    headers: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    tree = _tree(tmp_path, "tree")
    good = sorted(headers.values())
    rpmdb.build(tree, good)
    before = (tree / rpmdb.DB_DIR / rpmdb.DB_FILE).read_bytes()
    raw = bytearray(good[0].read_bytes())
    start = len(raw) - len(read_prefix(open(good[0], "rb")).header.blob)
    if damage == "truncated":
        del raw[-100:]
    elif damage == "bad magic":
        raw[start] ^= 0xFF
    elif damage == "absurd size":
        raw[start + 8 : start + 12] = (0x7FFFFFFF).to_bytes(4, "big")
    else:  # the first data entry after the region points past the data store
        raw[start + 16 + 16 + 8 : start + 16 + 16 + 12] = (0x7FFFFFF0).to_bytes(4, "big")
    broken = tmp_path / "broken.rpm"
    broken.write_bytes(bytes(raw))
    for attempt in (lambda: rpmdb.build(tree, [*good[1:], broken]),
                    lambda: rpmdb.update(tree, [], [broken])):
        with pytest.raises(DeploymentError):
            attempt()
        assert (tree / rpmdb.DB_DIR / rpmdb.DB_FILE).read_bytes() == before
        assert os.listdir(tree / rpmdb.DB_DIR) == [rpmdb.DB_FILE]


def test_leftovers_of_an_interrupted_run_are_cleared(headers: dict[str, Path], tmp_path: Path) -> None:
    tree = _tree(tmp_path, "tree")
    d = tree / rpmdb.DB_DIR
    (d / ".rpmimg-new-crashed").mkdir(parents=True)
    (d / ".rpmimg-new-crashed/rpmdb.sqlite").write_bytes(b"half")
    (d / "rpmdb.sqlite-wal").write_bytes(b"stale log of another database")
    rpmdb.build(tree, sorted(headers.values()))
    assert os.listdir(d) == [rpmdb.DB_FILE]
    assert rpmdb.installed(tree) == sorted(headers)


def test_a_database_built_while_the_caller_works_is_in_place_when_it_is_done(
    headers: dict[str, Path], tmp_path: Path
) -> None:
    tree = _tree(tmp_path, "tree")
    d = tree / rpmdb.DB_DIR
    with rpmdb.building(tree, sorted(headers.values())):
        assert not (d / rpmdb.DB_FILE).exists()  # rpm still building it, aside
        work = tmp_path / "merged"
        work.write_text("the caller's own work meanwhile")
    assert os.listdir(d) == [rpmdb.DB_FILE]
    assert rpmdb.installed(tree) == sorted(headers)
    with pytest.raises(RuntimeError, match="merge failed"), rpmdb.building(tree, sorted(headers.values())):
        raise RuntimeError("merge failed")
    assert os.listdir(d) == [rpmdb.DB_FILE]  # the previous one, nothing beside it
    assert rpmdb.installed(tree) == sorted(headers)


def test_the_database_directory_must_be_inside_the_tree(headers: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree / "lib/sysimage").symlink_to(outside)
    with pytest.raises(DeploymentError, match="not a directory of the tree"):
        rpmdb.build(tree, sorted(headers.values()))
    assert os.listdir(outside) == []


RELOCATABLE = """Name: reloc
Version: 1
Release: 1
Summary: relocatable
License: MIT
BuildArch: noarch
Prefix: /opt/reloc
%description
relocatable
%install
mkdir -p %{buildroot}/opt/reloc
echo hi > %{buildroot}/opt/reloc/file
%files
/opt/reloc/file
"""


def test_a_relocatable_package_gets_its_install_prefixes(headers: dict[str, Path], tmp_path: Path) -> None:
    spec = tmp_path / "reloc.spec"
    spec.write_text(RELOCATABLE)
    subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {tmp_path / 'top'}", spec],
                   check=True, capture_output=True)
    (built,) = (tmp_path / "top/RPMS/noarch").glob("reloc-*.rpm")
    header = tmp_path / built.name
    with open(built, "rb") as f:
        header.write_bytes(read_prefix(f).raw)
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, [header, headers["gamma-0.9-1.x86_64"]])
    _rpm_justdb(tmp_path / "oracle", [header, headers["gamma-0.9-1.x86_64"]])
    _assert_same_as_rpm(tree / rpmdb.DB_DIR, tmp_path / "oracle")
    recorded = _recorded(tree / rpmdb.DB_DIR)[0]["reloc-1-1.noarch"]
    assert recorded[rpm.RPMTAG_INSTPREFIXES] == ["/opt/reloc"]


def _corpus_headers(tmp_path: Path) -> list[Path]:
    from benchmarks.debcorpus import cache_root

    done = sorted(cache_root().glob("*/corpus.json"))
    if not done:
        pytest.skip(f"no benchmark corpus cached under {cache_root()} (python -m benchmarks.debcorpus builds it)")
    out = tmp_path / "corpus-headers"
    out.mkdir()
    for p in sorted((done[-1].parent / "base").rglob("*.rpm")):
        with open(p, "rb") as f:
            (out / p.name).write_bytes(read_prefix(f).raw)
    return sorted(out.iterdir())


@pytest.mark.slow
def test_the_corpus_database_is_what_rpm_i_records(tmp_path: Path) -> None:
    files = _corpus_headers(tmp_path)
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, files)
    _rpm_justdb(tmp_path / "oracle", files)
    _assert_same_as_rpm(tree / rpmdb.DB_DIR, tmp_path / "oracle")


@pytest.mark.slow
def test_the_corpus_update_is_what_rpm_i_records(tmp_path: Path) -> None:
    """The corpus v1 database updated with its update set (20 packages out, 20 in) holds what
    `rpm -i --justdb` of v2 records."""
    import json

    from benchmarks.debcorpus import cache_root

    files = _corpus_headers(tmp_path)
    corpus = sorted(cache_root().glob("*/corpus.json"))[-1].parent
    pairs = [(u["old_rpm"], u["rpm"]) for u in json.loads((corpus / "corpus.json").read_text())["update"]["packages"]]
    added = []
    for _, name in pairs:
        with open(corpus / "updates" / name, "rb") as f:
            (tmp_path / name).write_bytes(read_prefix(f).raw)
        added.append(tmp_path / name)
    tree = _tree(tmp_path, "tree")
    rpmdb.build(tree, files)
    rpmdb.update(tree, [old.removesuffix(".rpm") for old, _ in pairs], added)
    gone = {old for old, _ in pairs}
    _rpm_justdb(tmp_path / "oracle", [f for f in files if f.name not in gone] + added)
    _assert_same_as_rpm(tree / rpmdb.DB_DIR, tmp_path / "oracle")


# In a fresh interpreter: fill a database with argv[2:] and print by how many KiB the
# peak RSS grew (sqlite3 loaded before).
_FILL_PEAK = """
import sys, sqlite3
from pathlib import Path
from deploy import rpmdb
def hwm():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0])
stage = Path(sys.argv[1])
paths = [Path(p) for p in sys.argv[2:]]
(stage / "warm").mkdir()
rpmdb._fill(stage / "warm", paths[:5], rpmdb._install())  # sqlite's and rpmimg's first use
(stage / "db").mkdir()
before = hwm()
rpmdb._fill(stage / "db", paths, rpmdb._install())
print(hwm() - before)
"""


def test_filling_a_database_does_not_cache_what_it_wrote(headers: dict[str, Path], tmp_path: Path) -> None:
    """The rows go to the file as they are written: the 8 MB of headers of a 400-package
    image leave no more than a few hundred KiB in sqlite's page cache (by default 2 MB)."""
    many = tmp_path / "many"
    many.mkdir()
    blob = b"".join(p.read_bytes() for p in headers.values())
    paths = []
    for i in range(max(1, (8 << 20) // len(blob))):
        for j, p in enumerate(headers.values()):
            paths.append(many / f"{i}-{j}.rpm")
            os.link(p, paths[-1])
    stage = tmp_path / "stage"
    stage.mkdir()
    out = subprocess.run([sys.executable, "-c", _FILL_PEAK, os.fspath(stage), *map(os.fspath, paths)],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) < 1024, out.stdout  # KiB
    assert rpmdb._count(stage / "db" / rpmdb.DB_FILE) == len(paths)


def test_a_built_database_is_read_by_rpm_from_a_read_only_directory(headers: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """rpm made it in WAL mode: turned to rollback-journal mode, it needs no -wal or -shm
    beside it, so rpm reads it where it can write nothing (a read-only /usr)."""
    tree = _tree(tmp_path, "tree")
    files = sorted(headers.values())
    imported = rpmdb.Importing()
    for f in files:
        imported.add(f, f.name)
    with rpmdb.building(tree, files, imported):
        pass
    db_dir = tree / rpmdb.DB_DIR
    assert (db_dir / rpmdb.DB_FILE).read_bytes()[18:20] == b"\1\1"
    subprocess.run(["mount", "--bind", db_dir, db_dir], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", db_dir], check=True)
        assert rpmdb.installed(tree) == sorted(p.name.removesuffix(".rpm") for p in headers.values())
    finally:
        subprocess.run(["umount", db_dir], check=True)
    assert os.listdir(db_dir) == [rpmdb.DB_FILE]


def _wal_database(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()  # the last connection: sqlite checkpoints and deletes the log
    assert path.read_bytes()[18:20] == b"\2\2"
    return path


def test_rollback_journal_mode_as_sqlite_sets_it(tmp_path: Path) -> None:
    db = _wal_database(tmp_path / "db.sqlite")
    (tmp_path / "db.sqlite-wal").write_bytes(b"")  # as rpm leaves them: the log truncated
    (tmp_path / "db.sqlite-shm").write_bytes(b"\0" * 32768)
    rpmdb._rollback_journal(db)
    assert os.listdir(tmp_path) == ["db.sqlite"]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    rpmdb._rollback_journal(db)  # already so: unchanged
    assert db.read_bytes()[18:20] == b"\1\1"


@pytest.mark.parametrize("case", ["log not empty", "not sqlite", "short", "unknown version"])
def test_rollback_journal_refuses_what_it_cannot_vouch_for(tmp_path: Path, case: str) -> None:
    db = _wal_database(tmp_path / "db.sqlite")
    if case == "log not empty":
        (tmp_path / "db.sqlite-wal").write_bytes(b"a committed page")
    elif case == "not sqlite":
        db.write_bytes(b"\0" * 4096)
    elif case == "short":
        db.write_bytes(db.read_bytes()[:50])
    else:
        data = bytearray(db.read_bytes())
        data[18:20] = b"\3\3"
        db.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(DeploymentError, match="db.sqlite"):
        rpmdb._rollback_journal(db)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing changed


def _rpm_processes() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()
            and _comm(p) in ("rpmdb", "rpm")}


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("case", ["all", "outgrown"])
def test_imported_while_built_records_what_rpm_i_records(headers: dict[str, Path], tmp_path: Path,
                                                         case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers handed to rpm one by one as the packages are laid out make the database rpm -i
    records; headers that outgrow BUILD_IN_MEMORY leave it to building(), same result."""
    files = sorted(headers.values())
    if case == "outgrown":
        monkeypatch.setattr(rpmdb, "BUILD_IN_MEMORY", files[0].stat().st_size + 1)
    shm_before = _scratch_of_this_process()
    imported = rpmdb.Importing()
    assert imported.active
    for f in files:
        imported.add(f, f.name)
    assert imported.active == (case == "all")
    tree = _tree(tmp_path, "tree")
    with rpmdb.building(tree, files, imported):
        pass
    _rpm_justdb(tmp_path / "oracle", files)
    _assert_same_as_rpm(tree / rpmdb.DB_DIR, tmp_path / "oracle")
    assert os.listdir(tree / rpmdb.DB_DIR) == [rpmdb.DB_FILE]
    assert _scratch_of_this_process() <= shm_before


@pytest.mark.parametrize("case", ["missing header", "damaged header", "abandoned"])
def test_imported_failures_are_one_line_and_leave_nothing(headers: dict[str, Path], tmp_path: Path,
                                                          case: str) -> None:
    files = sorted(headers.values())
    shm_before = _scratch_of_this_process()
    rpm_before = _rpm_processes()
    imported = rpmdb.Importing()
    tree = _tree(tmp_path, "tree")
    if case == "damaged header":
        bad = tmp_path / "bad.rpm"
        data = bytearray(files[0].read_bytes())
        data[-40:] = b"\xff" * 40  # the header's data store cut into
        bad.write_bytes(bytes(data[:-16]))
        with pytest.raises(DeploymentError, match="bad.rpm"):
            imported.add(bad, "bad.rpm")
        imported.abandon()  # as build() does when a package fails
    elif case == "abandoned":
        imported.add(files[0], files[0].name)
        imported.abandon()
        imported.abandon()  # twice: nothing more
    else:
        for f in files[1:]:
            imported.add(f, f.name)
        with pytest.raises(DeploymentError, match="handed to rpm, not") as e, \
                rpmdb.building(tree, files, imported):
            pass
        assert "\n" not in str(e.value)
        assert not (tree / rpmdb.DB_DIR / rpmdb.DB_FILE).exists()
    assert not imported.active
    assert _scratch_of_this_process() <= shm_before
    assert _rpm_processes() <= rpm_before


def test_directories_of_killed_processes_are_swept_and_nothing_else(tmp_path: Path) -> None:
    """A deploy killed while rpm wrote its database on tmpfs leaves a directory there until the
    next boot; the next database made there removes it, and only such directories: those
    of live processes, of other users, symlinks (the tmpfs is everyone's) stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    mem = Path(rpmdb._MEMORY_DIR)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    made = {
        "dead": mem / f"rpmimg-rpmdb-{dead.pid}-aaaa",
        "live": mem / f"rpmimg-rpmdb-{os.getpid()}-bbbb",
        "other user": mem / f"rpmimg-rpmdb-{dead.pid}-cccc",
        "symlink": mem / f"rpmimg-rpmdb-{dead.pid}-dddd",
        "not ours": mem / f"rpmimg-rpmdbx-{dead.pid}-eeee",
    }
    try:
        for what, path in made.items():
            if what == "symlink":
                path.symlink_to(outside)
            else:
                (path / "sub").mkdir(parents=True)
                (path / "sub" / "rpmdb.sqlite").write_bytes(b"x")
        os.chown(made["other user"], 65534, 65534)
        fresh = rpmdb._in_memory()
        assert fresh is not None and fresh.name.startswith(f"rpmimg-rpmdb-{os.getpid()}-")
        fresh.rmdir()
        assert not os.path.lexists(made["dead"])
        assert all(os.path.lexists(p) for what, p in made.items() if what != "dead")
        assert (outside / "keep").read_text() == "keep"
    finally:
        for path in made.values():
            remove_tree(path, ignore_errors=True)
