"""Repository keys: check that each original RPM's header signature was made by the repo's key.

rpm's own bindings do the OpenPGP work, with a private keyring holding only the
repository's keys (never the host's rpmdb keys). Keys are read as everywhere else
(rpmextents.keyring): armoured or binary, one or several per file.
"""

from __future__ import annotations

import os
from pathlib import Path

from rpmextents.errors import ExtentsError
from rpmextents.keyring import Keyring, rpm_bindings
from solver.errors import ComposeFetchError, RepoError


class RepoKeyring:
    """The public keys of one repository, for checking package header signatures."""

    def __init__(self, data: bytes, label: str) -> None:
        self.label = label
        try:
            self.keyring = Keyring.from_bytes(data, label).rpm_keyring()
        except ExtentsError as e:
            raise RepoError(str(e)) from e

    @classmethod
    def from_file(cls, path: Path, label: str) -> RepoKeyring:
        try:
            return cls(path.read_bytes(), label)
        except OSError as e:
            raise RepoError(f"{label}: cannot read key {os.fspath(path)}: {e.strerror}") from e

    def check(self, path: Path, label: str) -> None:
        """Raise ComposeFetchError unless the package carries a header signature by one of our keys."""
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
