"""The keys a client trusts, and manifests accepted only when signed by one of them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from deploy.sources import Source
from imagespec.errors import SignatureError
from imagespec.manifest import ImageManifest, parse
from imagespec.published import SIGNATURE
from imagespec.signature import verify_detached
from rpmextents.keyring import Keyring

KEY_DIRS = ("etc/rpmimg/keys.d", "usr/lib/rpmimg/keys.d")


def trusted_key_files(sysroot: Path, keyrings: Sequence[Path] = ()) -> list[Path]:
    """Key files given on the command line, then those in the sysroot's keys.d directories."""
    files = list(keyrings)
    for name in KEY_DIRS:
        d = sysroot / name
        if d.is_dir():
            files.extend(sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")))
    return files


def fetch_verified_manifest(source: Source, key_files: Sequence[Path]) -> tuple[ImageManifest, str, str]:
    """The manifest from source, refused unless signed by a trusted key.

    Returns the manifest, its sha256 and the signing key's fingerprint.
    """
    data, signature = source.fetch_manifest()
    where = source.manifest_location
    if signature is None:
        raise SignatureError(f"{where}: manifest is not signed (no {SIGNATURE} beside it)")
    fingerprint = verify_detached(data, signature, Keyring.from_files(key_files), where)
    return parse(data, where), hashlib.sha256(data).hexdigest(), fingerprint
