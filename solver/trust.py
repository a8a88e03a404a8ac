"""Repository keys and signed repomd.xml: which key a repository is trusted with, checked by gpg.

A repository key is a local file, or a URL pinned by fingerprint in the definition:
a key fetched from where the packages come from proves nothing unless the definition
says which key it must be. OpenPGP work runs in a throw-away GNUPGHOME (gpg for key
listing, gpgv for signatures), never in the host's keyrings.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from host.files import ReadRefused, read_limited
from host.run import CommandError, run
from imagespec.errors import SignatureError
from imagespec.signature import verify_detached as verify_signature
from rpmextents.errors import ExtentsError
from rpmextents.keyring import Keyring
from solver.definition import RepoSource
from solver.errors import ComposeFetchError, RepoError
from solver.fetch import Fetcher, FetchItem, local_path

MAX_KEY = 1 << 20  # an armoured key file; real ones are a few KiB
MAX_SIGNATURE = 64 << 10  # repomd.xml.asc
MAX_REPOMD = 16 << 20  # repomd.xml; openSUSE's is a few KiB


def read_capped(path: Path, limit: int, label: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (RepoError otherwise)."""
    try:
        return read_limited(path, limit)
    except ReadRefused as e:
        raise RepoError(f"{label}: {e}") from e
    except OSError as e:
        raise RepoError(f"{label}: cannot read {os.fspath(path)}: {e.strerror}") from e


def fetch_small(fetcher: Fetcher, url: str, dest: Path, limit: int, label: str) -> bytes:
    """A small file by URL: read in place (file://) or downloaded to `dest`, at most `limit` bytes."""
    path = local_path(url)
    if path is None:
        dest.unlink(missing_ok=True)
        try:
            path = fetcher.fetch(FetchItem(url, dest, None, label, limit=limit))
        except ComposeFetchError as e:
            raise RepoError(str(e)) from e
    return read_capped(path, limit, label)


@contextmanager
def _scratch_home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rpmimg-trust-") as tmp:
        os.chmod(tmp, 0o700)
        yield Path(tmp)


def _run(cmd: Sequence[str], label: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a gpg tool through host.run; its exit code is the caller's to judge."""
    try:
        return run(cmd, input=data, allowed_codes=range(256), timeout=60)
    except CommandError as e:
        raise RepoError(f"{label}: {e}") from e


def key_fingerprints(armoured: bytes, label: str) -> list[str]:
    """Fingerprints of the primary keys in an armoured key file (upper-case hex)."""
    with _scratch_home() as home:
        result = _run(["gpg", "--batch", "--no-tty", "--homedir", os.fspath(home),
                       "--with-colons", "--show-keys"], label, armoured)
    found: list[str] = []
    primary = False
    for line in result.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary and len(fields) > 9:
            found.append(fields[9].upper())
            primary = False
    if result.returncode != 0 or not found:
        raise RepoError(f"{label}: no usable OpenPGP public key found")
    return found


def load_repo_key(source: RepoSource, fetcher: Fetcher, cache: Path) -> bytes:
    """The armoured key of a repository, checked against the definition's pinned fingerprints."""
    assert source.gpgkey is not None
    label = f"repository {source.name!r} key {source.gpgkey}"
    url = source.gpgkey if "://" in source.gpgkey else Path(source.gpgkey).as_uri()
    remote = local_path(url) is None
    if remote and not source.gpgkey_fingerprint:
        raise RepoError(f"repository {source.name!r}: key {source.gpgkey} comes from a URL but "
                        "the definition pins no gpgkey_fingerprint for it; refusing to trust it")
    cache.mkdir(parents=True, exist_ok=True)
    armoured = fetch_small(fetcher, url, cache / f"{source.name}.asc", MAX_KEY, label)
    if source.gpgkey_fingerprint:
        found = key_fingerprints(armoured, label)
        unpinned = [f for f in found if f not in source.gpgkey_fingerprint]
        if unpinned:
            raise RepoError(f"repository {source.name!r}: key {source.gpgkey} has fingerprint "
                            f"{unpinned[0]}, which gpgkey_fingerprint does not pin")
    return armoured


def verify_detached(key: bytes, data: bytes, signature: bytes, label: str) -> str:
    """Check `signature` over `data` with the repository's key; the signing key's fingerprint."""
    try:
        return verify_signature(data, signature, Keyring.from_bytes(key, label), label)
    except (SignatureError, ExtentsError) as e:
        raise RepoError(str(e)) from e
