"""The rpm database of a deployment: lib/sysimage/rpm in its /usr, derived from the header files.

The header files in lib/sysimage/packages (lead, signature and header of each package) stay
the source of truth; the database only lets rpm answer -qa, -qf, -ql, -V on the booted
system. rpm itself writes it: the header files are complete packages as far as `--justdb`
is concerned (it never reads a payload), so `rpm -i --justdb` records them without touching
a file. An update starts from the previous deployment's database (the /usr snapshot holds
it) and only erases and adds the packages that changed. The database is rpm's sqlite one,
left in rollback-journal mode so that it can be read from a read-only /usr.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from deploy.errors import DeploymentError
from host.run import CommandError, run

log = logging.getLogger(__name__)

DB_DIR = "lib/sysimage/rpm"  # in the /usr tree
DBPATH = "/usr/" + DB_DIR  # as rpm sees it on the booted system
DB_FILE = "rpmdb.sqlite"
_QUIET = ["--define", "_db_backend sqlite", "--define", "__dbi_sqlite_sync 0"]
_JUSTDB = ["--justdb", "--nodeps", "--noscripts", "--notriggers", "--nodigest", "--nosignature",
           "--ignoresize", "--ignorearch", "--ignoreos", "--replacefiles", "--replacepkgs"]
# rpm reads one argument list per run; keep command lines well below ARG_MAX.
_BATCH = 500


def _rpm(tree: Path, args: Sequence[str]) -> None:
    argv = ["rpm", "--dbpath", os.fspath(tree / DB_DIR), *_QUIET, *args]
    try:
        run(argv, timeout=3600)
    except CommandError as e:
        raise DeploymentError(f"{tree / DB_DIR}: writing the rpm database failed: {e}") from e


def _settle(tree: Path) -> None:
    """Leave one self-contained file: the write-ahead log folded in, rollback-journal mode."""
    db = tree / DB_DIR / DB_FILE
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        conn.close()
    for name in (f"{DB_FILE}-wal", f"{DB_FILE}-shm", ".rpm.lock"):
        (tree / DB_DIR / name).unlink(missing_ok=True)


def _add(tree: Path, header_files: Sequence[Path]) -> None:
    for i in range(0, len(header_files), _BATCH):
        _rpm(tree, ["-i", *_JUSTDB, *map(os.fspath, header_files[i : i + _BATCH])])


def build(tree: Path, header_files: Sequence[Path]) -> None:
    """Make the database of tree from nothing, recording header_files."""
    d = tree / DB_DIR
    if os.path.lexists(d):
        shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
    os.makedirs(d, 0o755)
    _rpm(tree, ["--initdb"])
    _add(tree, header_files)
    _settle(tree)


def update(tree: Path, removed: Sequence[str], added: Sequence[Path]) -> None:
    """Erase the packages named removed (N-V-R.A) and record added, in the database the
    tree already holds (the previous deployment's); a tree without one gets it built."""
    if not (tree / DB_DIR / DB_FILE).is_file():
        raise FileNotFoundError(tree / DB_DIR / DB_FILE)
    for i in range(0, len(removed), _BATCH):
        _rpm(tree, ["-e", "--justdb", "--nodeps", "--noscripts", "--notriggers", "--allmatches",
                    *removed[i : i + _BATCH]])
    _add(tree, added)
    _settle(tree)


def installed(usr: Path) -> list[str]:
    """N-V-R.A of every package the database of a /usr tree records (read-only query)."""
    try:
        out = run(["rpm", "--dbpath", os.fspath(usr / DB_DIR), *_QUIET, "-qa",
                   "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n"], timeout=600).stdout
    except CommandError as e:
        raise DeploymentError(f"{usr / DB_DIR}: the rpm database cannot be read: {e}") from e
    return sorted(out.decode("utf-8", "surrogateescape").splitlines())
