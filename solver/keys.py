"""Repository keys: check that each original RPM's header signature was made by the repo's key.

rpm's own bindings do the OpenPGP work, with a private keyring holding only the
repository's keys (never the host's rpmdb keys).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import rpm

from solver.errors import FetchError, RepoError
from solver.trust import MAX_KEY, read_capped

_BLOCK = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL
)


@contextmanager
def quiet_rpm() -> Iterator[None]:
    # rpm logs NOKEY and digest warnings to stderr itself; we raise with our own message.
    rpm.setVerbosity(rpm.RPMLOG_EMERG)
    try:
        yield
    finally:
        rpm.setVerbosity(rpm.RPMLOG_WARNING)


class RepoKeyring:
    """The armoured public keys of one repository, for checking package header signatures."""

    def __init__(self, armoured: bytes, label: str) -> None:
        self.label = label
        self.keyring = rpm.keyring()
        blocks = _BLOCK.findall(armoured)
        if not blocks:
            raise RepoError(f"{label}: no armoured OpenPGP public key found")
        for block in blocks:
            try:
                self.keyring.addKey(rpm.pubkey(block))
            except (ValueError, rpm.error) as e:
                raise RepoError(f"{label}: not a usable OpenPGP public key: {e}") from e

    @classmethod
    def from_file(cls, path: Path, label: str) -> RepoKeyring:
        return cls(read_capped(path, MAX_KEY, label), label)

    def check(self, path: Path, label: str) -> rpm.hdr:
        """Raise FetchError unless the package carries a header signature by one of our keys."""
        ts = rpm.TransactionSet()
        ts.setKeyring(self.keyring)
        ts.setVSFlags(0)  # check every digest and signature the package carries
        with quiet_rpm(), open(path, "rb") as f:
            try:
                header = ts.hdrFromFdno(f.fileno())
            except rpm.error as e:
                reason = str(e)
                if "public key not available" in reason:
                    reason = f"signed with a key that is not {self.label}"
                raise FetchError(f"{label}: signature check failed: {reason}") from e
        if header[rpm.RPMTAG_RSAHEADER] is None and header[rpm.RPMTAG_DSAHEADER] is None:
            raise FetchError(f"{label}: package is not signed, but {self.label} requires signatures")
        return header
