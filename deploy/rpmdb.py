"""The rpm database of a deployment: lib/sysimage/rpm in its /usr, derived from the header files.

The header files in lib/sysimage/packages (lead, signature and header of each package) stay
the source of truth; the database only lets rpm answer -qa, -qf, -ql, -V on the booted
system. Each package's header is recorded as `rpm -i` records it (deploy.rpmdbheader: the
signature tags merged, the install tags added), and rpm itself makes every index.

A new database is made by rpm (`rpmdb --initdb`, its schema), its index tables are dropped,
the headers written into its Packages table (one row each, streamed from the header file),
and `rpmdb --initdb` run again: rpm finds the indexes missing and builds them all from the
Packages table (rpmdb.c, buildIndexes), with no transaction, file-set, dependency or fsync
work. The cost follows the headers' bytes, and a package of 200,000 files needs little more
memory than its header. A full deploy makes the database in a thread while it merges /etc
(building: sqlite and rpm, a process of its own, work outside the interpreter, on the other
core). The finished file is synced once.

An update starts from the previous deployment's database (the /usr snapshot holds it): a
copy has the packages that went deleted by their record number in every table (those of the
records its Name index lists under their names whose header gives their N-V-R.A), and the
packages that came are imported by rpm's `rpmdb --importdb` into a database of their own
(on tmpfs when they are small: rpm commits and syncs after every package), whose records and
index rows are then added to the copy in one transaction, numbered as rpm numbers them.
Either way the database is made under a directory beside it and renamed over rpmdb.sqlite
only when complete, so a failed or interrupted build never leaves a half-written database in place.
It is left in rollback-journal mode (no -wal/-shm) so that rpm reads it from a read-only
/usr.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import DeploymentError
from deploy.rpmdbheader import Install, InstalledHeader
from host import kernel
from host.alongside import alongside
from host.files import make_private_dir, remove_tree
from host.kernel import NO_REFLINK
from host.log import get as logger
from host.run import CommandError, run, running
from rpmextents.errors import ExtentsError, FormatError
from rpmextents.header import HEADER_MAGIC, Header, read_intro
from rpmextents.nevra import nevra_of

if TYPE_CHECKING:
    import sqlite3

log = logger(__name__)

DB_DIR = "lib/sysimage/rpm"  # in the /usr tree
DBPATH = "/usr/" + DB_DIR  # as rpm sees it on the booted system
DB_FILE = "rpmdb.sqlite"
_QUIET = ["--define", "_db_backend sqlite"]
_STAGE = ".rpmimg-new-"  # prefix of the directory a database is made in
_TABLE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Header bytes of the added packages up to which their database is made on tmpfs.
IMPORT_IN_MEMORY = 32 << 20
# A full build's database is made in memory when its headers total at most this: about 1.2
# times as much tmpfs (the 347-package benchmark corpus: 5.9 MB of headers, a 6.9 MB
# database), which a memory cgroup counts while the build lasts.
BUILD_IN_MEMORY = 16 << 20
_MEMORY_DIR = "/dev/shm"
FILL_CACHE_KIB = 256  # sqlite page cache while a new database is filled
# The largest header record read back (rpm's own limit on a header's size, hdrblob.c).
_BLOB_MAX = 256 << 20
_BATCH = 500  # record numbers a DELETE names at once


def _db_dir(tree: Path) -> Path:
    """tree's database directory, made when missing; a symlink or file there is replaced."""
    d = tree / DB_DIR
    parent = d.parent
    if parent.is_symlink() or not parent.is_dir() or parent.resolve() != (tree / "lib/sysimage").resolve():
        raise DeploymentError(f"{parent}: not a directory of the tree; refusing to write the rpm database")
    if os.path.lexists(d) and (d.is_symlink() or not d.is_dir()):
        d.unlink()
    d.mkdir(0o755, exist_ok=True)
    return d


@contextlib.contextmanager
def _staging(d: Path) -> Iterator[Path]:
    """A new directory beside the database (inside its directory), removed afterwards."""
    for old in d.glob(f"{_STAGE}*"):  # left by an interrupted run
        remove_tree(old, ignore_errors=True)
    stage = make_private_dir(d, _STAGE)
    try:
        yield stage
    finally:
        remove_tree(stage, ignore_errors=True)


@functools.cache
def _color() -> int:
    """rpm's transaction color on this machine (3 on x86_64: 32- and 64-bit files)."""
    try:
        out = run(["rpm", "--eval", "%{?_transaction_color}"], timeout=60).stdout.strip()
    except CommandError as e:
        raise DeploymentError(f"rpm cannot be run: {e}") from e
    return int(out) if out.isdigit() else 0


def _rpmdb(stage: Path, *args: str, stdin_path: Path | None = None) -> None:
    try:
        run(["rpmdb", "--dbpath", os.fspath(stage), *_QUIET, *args], stdin_path=stdin_path,
            timeout=3600)
    except CommandError as e:
        raise DeploymentError(f"{stage}: rpm could not write the database: {e}") from e


def _headers(header_files: Sequence[Path], install: Install) -> Iterator[InstalledHeader]:
    for path in header_files:
        try:
            with open(path, "rb") as f:
                yield InstalledHeader(f, install, os.fspath(path))
        except OSError as e:
            raise DeploymentError(f"{path}: cannot read the header file: {e}") from e


def _fill(stage: Path, header_files: Sequence[Path], install: Install) -> None:
    """A new database in stage recording header_files in its Packages table: rpm's schema,
    its index tables dropped (rpm builds them from the Packages table, see building)."""
    import sqlite3  # only where a database is written: `verify` reads it through rpm

    _rpmdb(stage, "--initdb")
    conn = sqlite3.connect(stage / DB_FILE)
    try:
        # Rows written once, in order, and never read back here: sqlite's default page cache
        # (2 MB) only held them until the commit, 2 MB of a corpus deploy's peak of 27 MB.
        conn.execute(f"PRAGMA cache_size=-{FILL_CACHE_KIB}")
        # A scratch database, synced once when placed: no journal on disk, no sync per commit,
        # and the tables dropped in the one transaction (each alone would commit, and sync).
        conn.execute("PRAGMA journal_mode=MEMORY").fetchall()
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        with conn:
            for table in _tables(conn):
                if table not in ("Packages", "sqlite_sequence"):
                    conn.execute(f'DROP TABLE "{table}"')  # its indexes go with it
            for h in _headers(header_files, install):
                row = conn.execute("INSERT INTO Packages (blob) VALUES (zeroblob(?))", (h.size,))
                with conn.blobopen("Packages", "blob", row.lastrowid or 0) as blob:
                    h.write(blob.write, magic=False)
    finally:
        conn.close()


def _import(stage: Path, header_files: Sequence[Path], install: Install) -> None:
    """Add header_files to the database in stage: `rpmdb --importdb` makes a database of
    them alone aside (in memory when they are small), whose rows are then added to stage's
    in one transaction. rpm commits after every package it imports, a sync each, and each
    commit writes every index page the package touched: in the small database those are
    few, and in memory they cost no disk. When stage's tables are not the ones rpm makes
    now (a database of another rpm), rpm imports into stage's database itself."""
    if not header_files:
        return
    small = sum(os.stat(p).st_size for p in header_files) <= IMPORT_IN_MEMORY
    aside = _aside(stage, small)
    try:
        stream = aside / "headers.stream"
        with open(stream, "wb") as out:
            for h in _headers(header_files, install):
                h.write(out.write, magic=True)
        _rpmdb(aside, "--importdb", stdin_path=stream)
        if not _add_rows(stage / DB_FILE, aside / DB_FILE, len(header_files)):
            _rpmdb(stage, "--importdb", stdin_path=stream)
    finally:
        remove_tree(aside, ignore_errors=True)


def _aside(stage: Path, small: bool) -> Path:
    """A new private directory for the database of the added packages: on the shared-memory
    tmpfs when they are small and there is one (rpm commits after every package, which costs
    a sync each on a disk), else in stage."""
    return (_in_memory() if small else None) or make_private_dir(stage, "added-")


_MEMORY_PREFIX = "rpmimg-rpmdb-"


def _in_memory() -> Path | None:
    """A new private directory on the shared-memory tmpfs, named after this process, or
    None where there is none. What killed processes left there is removed first."""
    if os.path.isdir(_MEMORY_DIR):
        sweep_memory()
        try:
            return make_private_dir(_MEMORY_DIR, f"{_MEMORY_PREFIX}{os.getpid()}-")
        except OSError as e:
            log.debug("no directory in %s for the rpm database: %s", _MEMORY_DIR, e)
    return None


def sweep_memory() -> list[str]:
    """Remove the directories _in_memory made for processes that no longer run (killed:
    tmpfs holds them until the next boot); their names. Only this user's directories are
    touched, and none is followed: the tmpfs is writable by everyone."""
    gone: list[str] = []
    try:
        names = os.listdir(_MEMORY_DIR)
    except OSError:
        return gone
    for name in names:
        pid, _, rest = name.removeprefix(_MEMORY_PREFIX).partition("-")
        if not name.startswith(_MEMORY_PREFIX) or not pid.isdigit() or not rest or running(int(pid)):
            continue
        path = os.path.join(_MEMORY_DIR, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            remove_tree(path, ignore_errors=True)
            gone.append(name)
    return gone


def _add_rows(db: Path, added: Path, expected: int) -> bool:
    """Add every package of the database added (rpm's own records of the new packages, and
    their index rows) to db, numbered after db's as rpm numbers them, in one transaction;
    False (and nothing added) when the two databases' tables differ."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=MEMORY").fetchall()  # a scratch copy, synced when placed
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("ATTACH DATABASE ? AS added", (os.fspath(added),))
        tables = sorted(t for t in _tables(conn) if not t.startswith("sqlite_"))
        if tables != sorted(t for t in _tables(conn, "added") if not t.startswith("sqlite_")):
            log.info("%s: not the tables rpm makes now; rpm imports the new packages into it", db)
            return False
        with conn:
            conn.execute("CREATE TEMP TABLE numbers (theirs INTEGER PRIMARY KEY, ours INTEGER)")
            rows = conn.execute("SELECT hnum FROM added.Packages ORDER BY hnum").fetchall()
            if len(rows) != expected:
                raise DeploymentError(f"{added}: rpm recorded {len(rows)} packages, not {expected}")
            for (theirs_hnum,) in rows:
                ours = conn.execute("INSERT INTO main.Packages (blob) SELECT blob FROM added.Packages"
                                    " WHERE hnum = ?", (theirs_hnum,)).lastrowid
                conn.execute("INSERT INTO temp.numbers VALUES (?, ?)", (theirs_hnum, ours))
            for table in tables:
                if table == "Packages":
                    continue
                conn.execute(f'INSERT INTO main."{table}" (key, hnum, idx) SELECT t.key, n.ours, t.idx'
                             f' FROM added."{table}" t JOIN temp.numbers n ON t.hnum = n.theirs'
                             " ORDER BY t.rowid")
        conn.execute("DETACH DATABASE added")
        return True
    except sqlite3.Error as e:
        raise DeploymentError(f"{db}: the new packages' records cannot be added: {e}") from e
    finally:
        conn.close()


def _tables(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    tables = [str(r[0]) for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type='table'")]
    for table in tables:
        if not _TABLE.fullmatch(table):
            raise DeploymentError(f"unexpected table {table!r} in the rpm database")
    return tables


def _instances(db: Path, nvras: Sequence[str]) -> list[int]:
    """Record numbers of the installed packages named N-V-R.A (every match of each): the
    rows the Name index lists under each name whose header gives that N-V-R.A. A query of
    the file, not an `rpm -q` process; the headers are parsed as rpm would, bounded."""
    import sqlite3

    wanted: dict[str, set[str]] = {}
    for nvra in nvras:
        name = nvra.rsplit("-", 2)[0]
        wanted.setdefault(name, set()).add(nvra)
    found: list[int] = []
    conn = sqlite3.connect(db)
    try:
        for name, these in wanted.items():
            rows = conn.execute(  # one record in memory at a time
                "SELECT hnum, length(blob), CASE WHEN length(blob) <= ? THEN blob END FROM Packages"
                " WHERE hnum IN (SELECT hnum FROM Name WHERE key = ?) ORDER BY hnum",
                (_BLOB_MAX, name))
            for hnum, size, blob in rows:
                if blob is None:
                    raise DeploymentError(f"{db}: record {hnum} of {name} is {size} bytes, more than"
                                          f" a header may be ({_BLOB_MAX})")
                if _record_nvra(db, hnum, bytes(blob)) in these:
                    found.append(int(hnum))
    except sqlite3.Error as e:
        raise DeploymentError(f"{db}: the rpm database cannot be read: {e}") from e
    finally:
        conn.close()
    return found


def _record_nvra(db: Path, hnum: int, blob: bytes) -> str:
    """N-V-R.A of a Packages record (a header without its magic), its sizes checked first."""
    whole = HEADER_MAGIC + blob
    try:
        _, il, dl = read_intro(io.BytesIO(whole), 0, f"record {hnum}")
        if len(whole) != 16 + 16 * il + dl:
            raise FormatError(f"record {hnum} is {len(blob)} bytes, its header {8 + 16 * il + dl}")
        return nevra_of(Header(whole, f"record {hnum}")).nvra
    except ExtentsError as e:
        raise DeploymentError(f"{db}: record {hnum} is not a package header: {e}") from e


def _erase(db: Path, instances: Sequence[int]) -> None:
    """Delete the packages numbered instances from the Packages table and every index
    (one statement a table: most index tables have no index on hnum, each is read once)."""
    import sqlite3

    if not instances:
        return
    numbers = sorted(set(instances))
    conn = sqlite3.connect(db)
    try:
        # A scratch copy, synced once when placed: no journal on disk, no sync of its own.
        conn.execute("PRAGMA journal_mode=MEMORY").fetchall()
        conn.execute("PRAGMA synchronous=OFF")
        with conn:
            for table in _tables(conn):
                columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
                if "hnum" in columns:
                    for i in range(0, len(numbers), _BATCH):  # within sqlite's limit on parameters
                        batch = numbers[i : i + _BATCH]
                        conn.execute(f'DELETE FROM "{table}" WHERE hnum IN ({",".join("?" * len(batch))})',
                                     batch)
    finally:
        conn.close()


def _count(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM Packages").fetchone()[0])
    finally:
        conn.close()


def _settle(db: Path) -> None:
    """Fold db's write-ahead log into it: the file alone is then the whole database (readers
    of a read-only /usr need no -wal or -shm)."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        conn.close()


def _place(stage: Path, d: Path, expected: int | None) -> None:
    """Check (unless expected is None: checked already) and settle the database made in
    stage, then rename it over d's. Not synced here: every caller syncs the whole tree
    before anything names it (build._finish, verify's repair), as the tree's other files."""
    db = stage / DB_FILE
    if expected is not None:
        import sqlite3

        try:
            found = _count(db)
        except sqlite3.Error as e:
            raise DeploymentError(f"{db}: the new rpm database cannot be read: {e}") from e
        if found != expected:
            raise DeploymentError(f"{db}: the new rpm database records {found} packages, not {expected}")
        _settle(db)
    for name in (f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", ".rpm.lock"):
        (d / name).unlink(missing_ok=True)  # a stale log must never meet the new file
    os.rename(db, d / DB_FILE)


_SQLITE_MAGIC = b"SQLite format 3\0"
_VERSIONS = slice(18, 20)  # the file format's write and read versions: 1 rollback journal, 2 WAL


def _rollback_journal(db: Path) -> None:
    """Turn a closed database rpm left in WAL mode, its log checkpointed (rpm truncates it
    when it closes the database), back to rollback-journal mode, as sqlite's own
    `PRAGMA journal_mode=DELETE` does: the two version bytes of its header set to 1 and the
    empty log and its index removed (the sqlite file format, section 1.3.3)."""
    wal, shm = db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")
    with open(db, "r+b") as f:
        head = f.read(100)
        if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
            raise DeploymentError(f"{db}: not an sqlite database")
        if head[_VERSIONS] == b"\2\2":
            if os.path.lexists(wal) and os.lstat(wal).st_size:
                raise DeploymentError(f"{db}: rpm left changes in its write-ahead log")
            f.seek(_VERSIONS.start)
            f.write(b"\1\1")
        elif head[_VERSIONS] != b"\1\1":
            raise DeploymentError(f"{db}: an sqlite file format this rpmimg does not know")
    wal.unlink(missing_ok=True)
    shm.unlink(missing_ok=True)


def _install() -> Install:
    now = int(time.time())
    return Install(tid=now, time=now, color=_color())


class Importing:
    """A new database made on tmpfs by `rpmdb --importdb` while the tree is built: each
    package's header goes to rpm as soon as the package is laid out, so that rpm's work,
    in a process of its own on the other core, overlaps the extraction instead of following
    it, and this process loads no sqlite (1.3 MB resident). It stands aside (building()
    then makes the database as before) where there is no tmpfs, or once the headers
    outgrow BUILD_IN_MEMORY; abandon() ends it, whatever state it is in."""

    def __init__(self) -> None:
        self._install = _install()
        self._bytes = 0
        self._broken: OSError | None = None
        self.count = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._aside = _in_memory()
        if self._aside is None:
            return
        with open(self._aside / "errors", "wb") as errors:  # rpm's stderr, read if it fails
            try:
                self._proc = subprocess.Popen(
                    ["rpmdb", "--dbpath", os.fspath(self._aside), *_QUIET, "--importdb"],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
            except OSError as e:
                log.debug("rpmdb --importdb not started: %s", e)
                self.abandon()

    @property
    def active(self) -> bool:
        return self._proc is not None

    def add(self, package: Path, what: str) -> None:
        """Hand rpm the header of the package file (or header file) package, as rpm -i
        records it; what names it in errors."""
        if self._proc is None:
            return
        with open(package, "rb") as f:
            h = InstalledHeader(f, self._install, what)
            self._bytes += h.size
            if self._bytes > BUILD_IN_MEMORY:
                log.debug("the headers outgrow %d bytes: the database is made on the disk", BUILD_IN_MEMORY)
                self.abandon()
                return
            if self._broken is None:
                assert self._proc.stdin is not None
                try:
                    h.write(self._proc.stdin.write, magic=True)
                except OSError as e:  # rpm ended: finish() says why
                    self._broken = e
        self.count += 1

    def finish(self, stage: Path, expected: int) -> None:
        """Wait for rpm, check what it recorded (expected packages), and put the database,
        in rollback-journal mode, into stage."""
        proc, aside = self._proc, self._aside
        assert proc is not None and proc.stdin is not None and aside is not None
        try:
            try:
                proc.stdin.close()
            except OSError as e:
                self._broken = self._broken or e
            if proc.wait(timeout=3600) != 0 or self._broken is not None:
                said = (aside / "errors").read_bytes().decode("utf-8", "replace").strip().splitlines()
                raise DeploymentError(f"{aside}: rpm could not write the database: "
                                      + (said[-1] if said else f"exit status {proc.returncode}"))
            if self.count != expected:
                raise DeploymentError(f"{aside}: {self.count} headers handed to rpm, not {expected}")
            found = len(installed_in(aside))
            if found != expected:
                raise DeploymentError(f"{aside / DB_FILE}: rpm recorded {found} packages, not {expected}")
            _rollback_journal(aside / DB_FILE)
            _copy(aside / DB_FILE, stage / DB_FILE)
        finally:
            self.abandon()

    def abandon(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if self._aside is not None:
            remove_tree(self._aside, ignore_errors=True)
            self._aside = None


def build(tree: Path, header_files: Sequence[Path]) -> None:
    """Make the database of tree from nothing, recording header_files."""
    with building(tree, header_files):
        pass


@contextlib.contextmanager
def building(tree: Path, header_files: Sequence[Path], imported: Importing | None = None) -> Iterator[None]:
    """build(), made in a thread while the block runs (the headers written in by sqlite, the
    indexes by rpm in a process of its own: mostly outside the interpreter), or finished
    there by imported, which was handed every header of header_files already; the database
    is in place when the block ends, and its staging gone however it ends."""
    d = _db_dir(tree)
    install = _install()
    with _staging(d) as stage:
        checked: list[bool] = []  # counted and settled by imported

        def index() -> None:
            if imported is not None and imported.active:
                imported.finish(stage, len(header_files))
                checked.append(True)
                return
            # Made aside (on tmpfs when the headers are small: rpm's index build writes its
            # write-ahead log page by page and syncs it 55 times for the benchmark corpus,
            # 0.4 s on btrfs against 0.2 s in memory), then copied into stage.
            small = sum(os.stat(p).st_size for p in header_files) <= BUILD_IN_MEMORY
            aside = _in_memory() if small else None
            try:
                _fill(aside or stage, header_files, install)
                _rpmdb(aside or stage, "--initdb")  # "Generating 18 missing index(es)": rpm's buildIndexes
                if aside is not None:
                    _settle(aside / DB_FILE)
                    _copy(aside / DB_FILE, stage / DB_FILE)
            finally:
                if aside is not None:
                    remove_tree(aside, ignore_errors=True)

        # rpm is done with stage before it goes, whatever happened.
        with alongside(index, "rpmdb-indexes"):
            yield
        _place(stage, d, None if checked else len(header_files))
    for name in os.listdir(d):  # what an older rpmimg or rpm left beside the database
        if name != DB_FILE and not name.startswith(_STAGE):
            p = d / name
            remove_tree(p)


@contextlib.contextmanager
def updating(tree: Path, removed: Sequence[str], added: Sequence[Path],
             every: Sequence[Path]) -> Iterator[None]:
    """update(), made in a thread while the block runs (rpm's import in a process of its own,
    sqlite's work outside the interpreter, as building() is); in place when the block ends.
    A tree whose database update() can't find is given one built from every (header files).
    """
    def change() -> None:
        try:
            update(tree, removed, added)
        except FileNotFoundError:
            log.info("%s has no rpm database: building it from every header", tree)
            build(tree, every)

    with alongside(change, "rpmdb-update"):
        yield


def update(tree: Path, removed: Sequence[str], added: Sequence[Path]) -> None:
    """Erase the packages named removed (N-V-R.A) and record added, in a copy of the database
    the tree already holds (the previous deployment's), renamed over it when complete."""
    current = tree / DB_DIR / DB_FILE
    if not current.is_file() or current.is_symlink():
        raise FileNotFoundError(current)
    d = _db_dir(tree)
    with _staging(d) as stage:
        _clone(current, stage / DB_FILE)
        before = _count(stage / DB_FILE)
        gone = _instances(stage / DB_FILE, removed)
        _erase(stage / DB_FILE, gone)
        _import(stage, added, _install())
        _place(stage, d, before - len(set(gone)) + len(added))


def _clone(src: Path, dst: Path) -> None:
    """Copy src to dst sharing its data (FICLONE): sqlite then writes only the pages the
    update changes. A copy by sendfile (Python 3.11's shutil.copyfile) writes every byte."""
    with open(src, "rb") as s, open(dst, "xb") as d:
        try:
            kernel.clone_file(s.fileno(), d.fileno())
        except OSError as e:
            if e.errno not in NO_REFLINK:
                raise
            _copy_fd(s.fileno(), d.fileno())


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as s, open(dst, "xb") as d:
        _copy_fd(s.fileno(), d.fileno())


def _copy_fd(src: int, dst: int) -> None:
    """Every byte of src from its offset to dst's (by sendfile, as shutil.copyfile does:
    deploy and verify do not load shutil, see host.files)."""
    while os.sendfile(dst, src, None, 1 << 30):
        pass


def installed(usr: Path) -> list[str]:
    """N-V-R.A of every package the database of a /usr tree records (read-only query)."""
    return installed_in(usr / DB_DIR)


def installed_in(dbpath: Path) -> list[str]:
    """N-V-R.A of every package the database in dbpath records (read-only query)."""
    try:
        out = run(["rpm", "--dbpath", os.fspath(dbpath), *_QUIET, "-qa",
                   "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n"], timeout=600).stdout
    except CommandError as e:
        raise DeploymentError(f"{dbpath}: the rpm database cannot be read: {e}") from e
    return sorted(out.decode("utf-8", "surrogateescape").splitlines())
