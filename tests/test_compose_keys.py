"""Key hygiene: the sign key is checked before any fetching, and its GNUPGHOME never outlives compose."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from hostile import (
    Scene,
    needs_repo_tools,
    one_error_line,
    run_rpmimg,
)

from fixtures.command import clean_env
from fixtures.httpd import serve
from solver.signing import homes_root

pytestmark = needs_repo_tools


def _special_key(directory: Path, kind: str) -> Path:
    """A secret key that needs a passphrase, or one that expired in 2020, exported armoured."""
    with tempfile.TemporaryDirectory(prefix="rpmimg-gnupg-") as home:
        env = clean_env(Path(home), {"GNUPGHOME": home})
        if kind == "passphrase":
            gpg = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "sesame"]
            params = ("Key-Type: RSA\nKey-Length: 2048\nKey-Usage: sign\nName-Real: locked\n"
                      "Expire-Date: 0\nPassphrase: sesame\n%commit\n")
        else:
            gpg = ["gpg", "--batch", "--faked-system-time", "20200101T000000!"]
            params = ("%no-protection\nKey-Type: RSA\nKey-Length: 2048\nKey-Usage: sign\n"
                      "Name-Real: expired\nExpire-Date: 1d\n%commit\n")
        try:
            subprocess.run([*gpg, "--gen-key"], input=params.encode(), env=env, check=True,
                           capture_output=True)
            secret = subprocess.run([*gpg, "--armor", "--export-secret-keys"], env=env,
                                    check=True, capture_output=True).stdout
        finally:
            subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], env=env,
                           check=False, capture_output=True)
    path = directory / f"{kind}.asc"
    path.write_bytes(secret)
    return path


@pytest.mark.parametrize("kind", ["public", "junk", "passphrase", "expired"])
def test_unusable_sign_key_fails_before_any_fetch(scene: Scene, kind: str) -> None:
    key = {"public": lambda: scene.world.sign_key.public,
           "junk": lambda: _junk(scene.tmp),
           "passphrase": lambda: _special_key(scene.tmp, "passphrase"),
           "expired": lambda: _special_key(scene.tmp, "expired")}[kind]()
    with serve(scene.repo) as web:
        result = run_rpmimg("compose", scene.definition(web.url), "-o", scene.out,
                            "--sign-key", key)
    line = one_error_line(result)
    expected = {"public": "the file holds no secret key",
                "junk": "gpg exited ",
                "passphrase": "the secret key needs a passphrase",
                "expired": "the secret key has expired"}[kind]
    assert line.startswith(f"signing key {key}: {expected}"), line
    assert web.requests == []  # nothing fetched
    assert not (scene.out / "images").exists() and not (scene.out / "pool").exists()


def _junk(directory: Path) -> Path:
    path = directory / "junk.asc"
    path.write_bytes(os.urandom(4096))
    return path


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory, trickling package downloads so compose is caught mid-fetch."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source: object, outputfile: object) -> None:
        if self.path.endswith(".rpm"):
            time.sleep(8)
        super().copyfile(source, outputfile)  # type: ignore[arg-type]


@contextmanager
def _slow_server(root: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_SlowHandler, directory=os.fspath(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _processes_using(path: Path) -> list[int]:
    found: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if os.fsencode(path) in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_gnupg_home_is_removed_on_signal(scene: Scene, signum: int) -> None:
    with _slow_server(scene.repo) as url:
        child = subprocess.Popen(
            [sys.executable, "-m", "rpmimg", "compose", os.fspath(scene.definition(url)), "-o",
             os.fspath(scene.out), "--sign-key", os.fspath(scene.world.sign_key.secret)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        prefix = f"{child.pid}-"
        deadline = time.monotonic() + 60
        homes: list[Path] = []
        while not homes and time.monotonic() < deadline and child.poll() is None:
            homes = [h for h in homes_root().iterdir() if h.name.startswith(prefix)]
            time.sleep(0.02)
        assert homes, f"no GNUPGHOME appeared: {child.communicate()}"
        # Wait until it is fetching (the home is checked and its agent running).
        while not (scene.out / ".cache" / "packages").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _processes_using(homes[0]), "gpg-agent for the home is not running"
        child.send_signal(signum)
        # The key goes at once, even while fetch threads still wait on the trickling mirror.
        deadline = time.monotonic() + 10
        while homes[0].exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not homes[0].exists()
        _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1] == "rpmimg: interrupted"
    deadline = time.monotonic() + 5
    while _processes_using(homes[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_using(homes[0]), "its gpg-agent survived"
    assert not (scene.out / "images").exists()
    # The lock was released: the next compose runs.
    with serve(scene.repo) as web:
        done = run_rpmimg("compose", scene.definition(web.url), "-o", scene.out)
    assert done.returncode == 0, done.stderr


def test_stale_gnupg_home_is_removed_at_next_start(scene: Scene) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    stale = homes_root() / f"{pid_max + 1}-killed"
    stale.mkdir(mode=0o700)
    (stale / "private-keys-v1.d").mkdir()
    (stale / "private-keys-v1.d" / "secret.key").write_text("secret")
    result = run_rpmimg("compose", scene.definition(scene.repo.as_uri() + "/"), "-o", scene.out,
                        "--sign-key", scene.world.sign_key.secret)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert not [h for h in homes_root().iterdir() if h.name.endswith("-killed")]
