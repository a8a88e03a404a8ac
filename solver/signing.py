"""Detached, armoured OpenPGP signatures of manifests, made by gpg in a private GNUPGHOME.

The secret key comes from an armoured key file; it is imported into a temporary
home that is removed afterwards, so the host's keyrings are never read or changed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from solver.errors import PublishError

log = logging.getLogger(__name__)


def run_gpg(args: Sequence[str], home: Path, what: str) -> str:
    """Run gpg in `home` with a scrubbed environment; PublishError names `what` failed and why."""
    cmd = ["gpg", "--batch", "--no-tty", "--homedir", os.fspath(home), *args]
    log.debug("running %s", " ".join(cmd))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    try:
        result = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise PublishError(f"{what}: gpg not found") from e
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or "").strip().splitlines()
        reason = detail[-1] if detail else (
            f"killed by signal {-e.returncode}" if e.returncode < 0 else f"exited {e.returncode}")
        raise PublishError(f"{what}: gpg failed: {reason}") from e
    return result.stdout


def sign_detached(secret_key: Path, data: Path, signature: Path) -> None:
    """Write an armoured detached signature of `data` to `signature` with `secret_key`."""
    what = f"signing {os.fspath(data)} with {os.fspath(secret_key)}"
    if not secret_key.is_file():
        raise PublishError(f"{what}: the key file does not exist")
    with tempfile.TemporaryDirectory(prefix="rpmimg-gnupg-") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o700)
        try:
            run_gpg(["--import", os.fspath(secret_key)], home, what)
            listing = run_gpg(["--with-colons", "--list-secret-keys"], home, what)
            fingerprints = [line.split(":")[9] for line in listing.splitlines()
                            if line.startswith("fpr:")]
            if not fingerprints:
                raise PublishError(f"{what}: the file holds no secret key")
            run_gpg(["--pinentry-mode", "loopback", "--passphrase", "", "--local-user",
                     fingerprints[0], "--armor", "--detach-sign", "--output",
                     os.fspath(signature), os.fspath(data)], home, what)
        finally:
            # The agent gpg started for this home would otherwise outlive it.
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], check=False, capture_output=True,
                           env={**os.environ, "GNUPGHOME": os.fspath(home)})
