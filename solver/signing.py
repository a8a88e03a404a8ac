"""Detached, armoured OpenPGP signatures of manifests, made by gpg in a private GNUPGHOME.

The secret key comes from an armoured key file. `Signer` imports it into a temporary
home under a private per-user directory and checks it can sign (a secret key,
usable for signing, not expired, no passphrase) before compose fetches anything.
The home is removed, and its gpg-agent stopped, when the Signer closes, which
happens on success, failure, SIGINT and SIGTERM alike (the CLI turns SIGTERM into an
exception); a home left by a run that was killed outright is removed by the next.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from host.run import CommandError, run, running
from solver.errors import PublishError
from solver.trust import MAX_KEY, read_capped


def run_gpg(args: Sequence[str], home: Path, what: str) -> str:
    """Run gpg in `home` (through host.run); PublishError names `what` failed and why."""
    try:
        proc = run(["gpg", "--batch", "--no-tty", "--homedir", os.fspath(home), *args],
                   timeout=120)
    except CommandError as e:
        raise PublishError(f"{what}: {e}") from e
    return proc.stdout.decode(errors="replace")


def homes_root() -> Path:
    """The private per-user directory the temporary GNUPGHOMEs live in (made 0700)."""
    root = Path(tempfile.gettempdir()) / f"rpmimg-gnupg-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PublishError(f"{os.fspath(root)}: not a directory of ours; refusing to keep "
                           "secret keys there")
    os.chmod(root, 0o700)
    return root


def stop_agent(home: Path) -> None:
    """Stop whatever gpg started for `home` (its agent); never fails."""
    with contextlib.suppress(OSError, CommandError):
        run(["gpgconf", "--homedir", os.fspath(home), "--kill", "all"],
            allowed_codes=range(256), timeout=30)


def remove_stale_homes(root: Path) -> list[str]:
    """Remove homes whose run (named by its pid) is gone; returns their names."""
    removed: list[str] = []
    for entry in root.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and running(int(pid)) and int(pid) != os.getpid():
            continue
        if entry.is_dir() and not entry.is_symlink():
            stop_agent(entry)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


_OPEN: set[Signer] = set()  # live signers, for close_all
_OPEN_LOCK = threading.Lock()


def close_all() -> None:
    """Close every open Signer now (for a signal handler: threads may hold up the unwinding)."""
    with _OPEN_LOCK:
        signers = list(_OPEN)
    for signer in signers:
        signer.close()


class Signer:
    """A secret key imported into a private GNUPGHOME, checked, ready to sign manifests."""

    def __init__(self, secret_key: Path) -> None:
        self.key = secret_key
        self.what = f"signing key {os.fspath(secret_key)}"
        armoured = read_capped(secret_key, MAX_KEY, self.what)
        root = homes_root()
        remove_stale_homes(root)
        self.home = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
        with _OPEN_LOCK:
            _OPEN.add(self)
        try:
            keyfile = self.home / "key.asc"
            keyfile.write_bytes(armoured)
            run_gpg(["--import", os.fspath(keyfile)], self.home, self.what)
            keyfile.unlink()
            self.fingerprint = self._usable_key()
            probe = self.home / "probe"
            probe.write_bytes(b"rpmimg signing key check\n")
            self.sign(probe, self.home / "probe.asc")
        except BaseException:
            self.close()
            raise

    def _usable_key(self) -> str:
        listing = run_gpg(["--with-colons", "--list-secret-keys"], self.home, self.what)
        keys: list[tuple[str, str]] = []  # (validity, capabilities) of each primary key
        fingerprints: list[str] = []
        for line in listing.splitlines():
            fields = line.split(":")
            if fields[0] == "sec" and len(fields) > 11:
                keys.append((fields[1], fields[11]))
            elif fields[0] == "fpr" and len(fingerprints) < len(keys):
                fingerprints.append(fields[9])
        if not keys:
            raise PublishError(f"{self.what}: the file holds no secret key")
        for (validity, caps), fpr in zip(keys, fingerprints, strict=False):
            if validity not in ("e", "r", "d") and "S" in caps:
                return fpr
        validity = keys[0][0]
        reason = {"e": "has expired", "r": "is revoked", "d": "is disabled"}.get(
            validity, "cannot sign")
        raise PublishError(f"{self.what}: the secret key {reason}")

    def sign(self, data: Path, signature: Path) -> None:
        """Write an armoured detached signature of `data` to `signature`."""
        what = f"signing {os.fspath(data)} with {os.fspath(self.key)}"
        try:
            run_gpg(["--pinentry-mode", "loopback", "--passphrase", "", "--local-user",
                     self.fingerprint, "--armor", "--detach-sign", "--output",
                     os.fspath(signature), os.fspath(data)], self.home, what)
        except PublishError as e:
            if "passphrase" in str(e).lower() or "bad" in str(e).lower():
                raise PublishError(f"{self.what}: the secret key needs a passphrase; "
                                   "compose signs unattended with keys that have none") from e
            raise

    def close(self) -> None:
        with _OPEN_LOCK:
            if self not in _OPEN:
                return
            _OPEN.discard(self)
        stop_agent(self.home)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def sign_detached(secret_key: Path, data: Path, signature: Path) -> None:
    """Write an armoured detached signature of `data` to `signature` with `secret_key`."""
    if not secret_key.is_file():
        raise PublishError(f"signing {os.fspath(data)} with {os.fspath(secret_key)}: "
                           "the key file does not exist")
    with Signer(secret_key) as signer:
        signer.sign(data, signature)
