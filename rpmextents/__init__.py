"""The extents RPM format: transcode, read, verify and extract.

An extents RPM keeps the original lead, signature header and header byte-identical
(so ``rpm -qp`` reads it and the header signature still verifies), followed by a
versioned index and the file data, every regular file block-aligned so that it can
be reflinked. The index holds every byte of the uncompressed cpio payload except
file data, so the payload can be rebuilt virtually and checked against the signed
header's PAYLOADDIGESTALT.

The names below are loaded from their modules on first use: importing one light module
(``rpmextents.errors``, ``rpmextents.nevra``) runs this file, and `status` or `verify`
should not pay for the transcoder and the extractor. The functions ``extract`` and
``transcode`` are imported from their modules (``rpmextents.extract.extract``), since
the package attributes of those names are the modules.

This package imports nothing else from the project.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpmextents.errors import (
        CorruptPackageError,
        ExtentsError,
        FormatError,
        UnsafePathError,
        UnsupportedPackageError,
        VerifyError,
    )
    from rpmextents.extract import ExtractReport, Owners
    from rpmextents.files import PACKAGE_DB, Entry, EntryType, Extent, refuse_package_db
    from rpmextents.keyring import Keyring
    from rpmextents.package import ExtentsPackage, VerifyReport
    from rpmextents.transcode import TranscodeResult
    from rpmextents.tree import Relocation

# name -> the module that defines it
_HOMES = {
    "CorruptPackageError": "errors",
    "ExtentsError": "errors",
    "FormatError": "errors",
    "UnsafePathError": "errors",
    "UnsupportedPackageError": "errors",
    "VerifyError": "errors",
    "ExtractReport": "extract",
    "Owners": "extract",
    "PACKAGE_DB": "files",
    "Entry": "files",
    "EntryType": "files",
    "Extent": "files",
    "refuse_package_db": "files",
    "Keyring": "keyring",
    "ExtentsPackage": "package",
    "VerifyReport": "package",
    "TranscodeResult": "transcode",
    "Relocation": "tree",
}

# Spelled out (not sorted(_HOMES)) so that linters see the names the imports above provide.
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
    "refuse_package_db",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
