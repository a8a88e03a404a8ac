"""The host layer's helpers: running commands, durable writes, the file lock."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host import files
from host.files import write_atomically, write_new
from host.lock import LockHeld, file_lock
from host.run import CommandError, run

# --- run -----------------------------------------------------------------------------------


def test_run_returns_output_and_scrubs_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPMIMG_SECRET", "leaked")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    proc = run([sys.executable, "-c", "import os, sys; print(sorted(os.environ)); "
                "print(os.environ['LC_ALL'], os.environ.get('EXTRA')); print(repr(sys.stdin.read()))"],
               env={"EXTRA": "given"})
    names, locale, stdin = proc.stdout.decode().splitlines()
    assert "RPMIMG_SECRET" not in names and "LANG" not in names
    assert locale == "C given"
    assert stdin == "''"  # stdin is closed, so a command never waits on the terminal


def test_run_says_not_found_killed_timed_out_or_exited() -> None:
    with pytest.raises(CommandError, match=r"^no-such-tool-here: command not found$"):
        run(["no-such-tool-here"])
    with pytest.raises(CommandError, match=r"was killed by SIGKILL: dying$"):
        run([sys.executable, "-c", "import os, sys; print('dying', file=sys.stderr, flush=True); "
             "os.kill(os.getpid(), 9)"])
    with pytest.raises(CommandError, match=r"exited 3: second line$"):
        run([sys.executable, "-c", "import sys; sys.stderr.write('first\\nsecond line\\n'); sys.exit(3)"])
    with pytest.raises(CommandError, match=r"did not finish within 0.5 s"):
        run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert run([sys.executable, "-c", "raise SystemExit(2)"], allowed_codes=(0, 2)).returncode == 2


# --- files ---------------------------------------------------------------------------------


def test_write_atomically_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomically(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomically_keeps_the_old_content_when_the_rename_fails(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()  # renaming a file over a directory fails
    (target / "inside").write_text("x")
    with pytest.raises(OSError):
        write_atomically(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]  # no temp file left
    assert (target / "inside").read_text() == "x"


def test_write_atomically_of_pieces_keeps_the_old_content_when_making_them_fails(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomically(target, iter([b"n", b"", b"ew"]))
    assert target.read_bytes() == b"new"

    def pieces() -> Iterator[bytes]:
        yield b"half of it"
        raise ValueError("the writer failed")
    with pytest.raises(ValueError):
        write_atomically(target, pieces())
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_write_new_refuses_existing_files_and_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("host file")
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(FileExistsError):
        write_new(tmp_path / "link", b"x")
    with pytest.raises(FileExistsError):
        write_new(outside, b"x")
    assert outside.read_text() == "host file"


# --- lock ----------------------------------------------------------------------------------


def test_file_lock_names_the_holder_and_frees_on_exit(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom host.lock import file_lock\n"
         f"with file_lock({os.fspath(lock)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(LockHeld) as caught, file_lock(lock, wait=0.2):
            pass
        assert caught.value.holder == f"pid {holder.pid}"
    finally:
        holder.kill()
        holder.wait()
    with file_lock(lock):  # the kernel dropped the dead holder's lock
        assert lock.read_text() == f"{os.getpid()}\n"
    assert lock.read_text() == ""


def test_file_lock_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("host file")
    (tmp_path / "lock").symlink_to(outside)
    with pytest.raises(OSError) as caught, file_lock(tmp_path / "lock"):
        pass
    assert caught.value.errno == errno.ELOOP
    assert outside.read_text() == "host file"


def test_read_limited_reads_up_to_the_limit_and_refuses_more(tmp_path: Path) -> None:
    f = tmp_path / "key.asc"
    f.write_bytes(b"x" * 100)
    assert files.read_limited(f, 100) == b"x" * 100
    with pytest.raises(files.ReadRefused, match=rf"^{re.escape(str(f))} is larger than 99 bytes$"):
        files.read_limited(f, 99)


def test_read_limited_refuses_devices_and_fifos_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading without O_NONBLOCK would wait for a writer
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(files.ReadRefused) as refused:
            files.read_limited(path, 1 << 20)
        assert str(refused.value) == f"{path} is not a regular file"
    with pytest.raises(FileNotFoundError):
        files.read_limited(tmp_path / "missing", 10)
