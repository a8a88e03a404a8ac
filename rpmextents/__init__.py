"""The extents RPM format: transcode, read, verify and extract.

An extents RPM keeps the original lead, signature header and header byte-identical
(so ``rpm -qp`` reads it and the header signature still verifies), followed by a
versioned index and the file data, every regular file block-aligned so that it can
be reflinked. The index holds every byte of the uncompressed cpio payload except
file data, so the payload can be rebuilt virtually and checked against the signed
header's PAYLOADDIGESTALT.

This package imports nothing else from the project.
"""

from __future__ import annotations

from rpmextents.errors import (
    CorruptPackageError,
    ExtentsError,
    FormatError,
    UnsafePathError,
    UnsupportedPackageError,
    VerifyError,
)
from rpmextents.extract import ExtractReport, Owners, extract
from rpmextents.files import PACKAGE_DB, Entry, EntryType, Extent, refuse_package_db
from rpmextents.keyring import Keyring
from rpmextents.package import ExtentsPackage, VerifyReport
from rpmextents.transcode import TranscodeResult, transcode
from rpmextents.tree import Relocation

__all__ = [
    "PACKAGE_DB",
    "CorruptPackageError",
    "Entry",
    "EntryType",
    "Extent",
    "ExtentsError",
    "ExtentsPackage",
    "ExtractReport",
    "FormatError",
    "Keyring",
    "Owners",
    "Relocation",
    "TranscodeResult",
    "UnsafePathError",
    "UnsupportedPackageError",
    "VerifyError",
    "VerifyReport",
    "extract",
    "refuse_package_db",
    "transcode",
]
