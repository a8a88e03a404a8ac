"""The exception family of rpmextents; every message names the file and the reason."""

from __future__ import annotations


class ExtentsError(Exception):
    """Base of every error rpmextents raises on bad input."""


class FormatError(ExtentsError, ValueError):
    """A file is not what it claims to be: bad magic, short read, absurd field."""


class UnsupportedPackageError(ExtentsError):
    """A well-formed package this version cannot handle (v3 format, unknown payload)."""


class CorruptPackageError(ExtentsError):
    """An original RPM whose digests do not match; it is refused, not transcoded."""


class VerifyError(ExtentsError):
    """An extents RPM that does not verify against its signed header or the keyring."""


class UnsafePathError(ExtentsError):
    """An entry or link target that would write outside the destination."""
