"""The keys a client trusts, and manifests accepted only when signed by one of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deploy.sources import Source
from host import digest
from host.log import get as logger
from imagespec.errors import SignatureError
from imagespec.manifest import ImageManifest, parse
from imagespec.published import SIGNATURE
from imagespec.signature import verify_detached
from rpmextents.errors import ExtentsError
from rpmextents.keyring import Keyring

log = logger(__name__)

KEY_DIRS = ("etc/rpmimg/keys.d", "usr/lib/rpmimg/keys.d")


def _not_a_key(path: Path) -> str | None:
    """Why a keys.d file is not a public key file, or None when it is one. (Whether rpm
    can use its keys is asked only where packages are checked: `package_keyring`.)"""
    try:
        Keyring.read_files([path])
    except ExtentsError as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def package_keyring(key_files: Sequence[Path], given: Sequence[Path]) -> Keyring:
    """The keys rpm checks package headers against: those of every trusted key file. A keys.d
    file with a key rpm can't use is skipped with a warning naming it, as one that holds no
    key is; one of the given (--keyring) files is a KeyFileError."""
    parts: list[Keyring] = []
    for path in key_files:
        try:
            parts.append(Keyring.from_files([path]))
        except ExtentsError as e:
            if path in given:
                raise
            log.warning("%s: skipped: %s", path, str(e).removeprefix(f"{path}: "))
    return Keyring(tuple(k for r in parts for k in r.keys), tuple(s for r in parts for s in r.sources))


def trusted_key_files(sysroot: Path, keyrings: Sequence[Path] = ()) -> list[Path]:
    """Key files given on the command line, then those in the sysroot's keys.d directories.

    A file in keys.d that is not a public key (a README, an editor's backup) is skipped
    with a warning naming it; --keyring files are taken as given.
    """
    files = list(keyrings)
    for name in KEY_DIRS:
        d = sysroot / name
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if not p.is_file() or p.name.startswith("."):
                continue
            reason = _not_a_key(p)
            if reason is None:
                files.append(p)
            else:
                log.warning("%s: skipped: %s", p, reason)
    return files


def fetch_verified_manifest(source: Source, key_files: Sequence[Path]) -> tuple[ImageManifest, str, str]:
    """The manifest from source, refused unless signed by a trusted key.

    Returns the manifest, its sha256 and the signing key's fingerprint.
    """
    data, signature = source.fetch_manifest()
    where = source.manifest_location
    if signature is None:
        raise SignatureError(f"{where}: manifest is not signed (no {SIGNATURE} beside it)")
    fingerprint = verify_detached(data, signature, Keyring.read_files(key_files), where)
    return parse(data, where), digest.of("sha256", data).hexdigest(), fingerprint
