"""Repository keys: check that each original RPM's header signature was made by the repo's key.

rpm's own bindings do the OpenPGP work, with a private keyring holding only the
repository's keys (never the host's rpmdb keys). Keys are read as everywhere else
(rpmextents.keyring): armoured or binary, one or several per file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rpmextents.errors import ExtentsError
from rpmextents.keyring import Keyring, rpm_bindings
from solver.errors import ComposeFetchError, RepoError
from solver.trust import MAX_KEY, read_capped


class RepoKeyring:
    """The public keys of one repository, for checking package header signatures."""

    def __init__(self, data: bytes, label: str) -> None:
        self.label = label
        try:
            self.keys = Keyring.from_bytes(data, label)
        except ExtentsError as e:
            raise RepoError(str(e)) from e
        self.keyring = self.keys.rpm_keyring()

    @classmethod
    def from_file(cls, path: Path, label: str) -> RepoKeyring:
        return cls(read_capped(path, MAX_KEY, label), label)

    def check(self, path: Path, label: str) -> Any:
        """The package's header (an rpm.hdr); ComposeFetchError unless one of our keys signed it."""
        rpm = rpm_bindings()
        ts = rpm.TransactionSet()
        ts.setKeyring(self.keyring)
        ts.setVSFlags(0)  # check every digest and signature the package carries
        with open(path, "rb") as f:
            try:
                header = ts.hdrFromFdno(f.fileno())
            except rpm.error as e:
                reason = str(e)
                if "public key not available" in reason:
                    reason = f"signed with a key that is not {self.label}"
                raise ComposeFetchError(f"{label}: signature check failed: {reason}") from e
        if header[rpm.RPMTAG_RSAHEADER] is None and header[rpm.RPMTAG_DSAHEADER] is None:
            raise ComposeFetchError(f"{label}: package is not signed, but {self.label} requires signatures")
        return header
