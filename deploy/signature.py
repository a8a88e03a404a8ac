"""Trusted keys and detached manifest signatures, checked with gpgv.

gpgv is GnuPG's verify-only tool: it needs no trust database and only accepts
signatures made by a key in the keyrings it is given, which is exactly the policy
"signed by one of these vendor keys".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deploy import manifest as manifest_mod
from deploy.errors import SignatureError
from deploy.manifest import ImageManifest
from deploy.run import run
from deploy.sources import Source

log = logging.getLogger(__name__)

KEY_DIRS = ("etc/rpmimg/keys.d", "usr/lib/rpmimg/keys.d")

_ARMOR = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----",
    re.DOTALL,
)


def _is_public_key(path: Path) -> bool:
    """Whether path starts like an OpenPGP public key: an armoured key block, or a binary
    public-key packet (tag 6, old or new packet format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" in head:
        return True
    if not head or not head[0] & 0x80:
        return False
    tag = head[0] & 0x3F if head[0] & 0x40 else (head[0] >> 2) & 0x0F
    return tag == 6


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
            if _is_public_key(p):
                files.append(p)
            else:
                log.warning("%s: skipped: not an OpenPGP public key", p)
    return files


def dearmor(data: bytes, where: str) -> bytes:
    """Binary OpenPGP packets of every public key block in data (binary input passes through)."""
    if b"-----BEGIN PGP" not in data:
        return data
    out = bytearray()
    for block in _ARMOR.finditer(data):
        lines = block.group(1).splitlines()
        # Armor headers ("Comment: ...") end at the first blank line.
        body_start = next((i + 1 for i, line in enumerate(lines) if not line.strip()), 0)
        body = [ln.strip() for ln in lines[body_start:] if ln.strip() and not ln.startswith(b"=")]
        try:
            out += base64.b64decode(b"".join(body), validate=True)
        except binascii.Error as e:
            raise SignatureError(f"{where}: damaged armored key: {e}") from e
    if not out:
        raise SignatureError(f"{where}: no public key block found")
    return bytes(out)


def verify_detached(data: bytes, signature: bytes, key_files: Sequence[Path], what: str) -> str:
    """Check signature over data against key_files; return the signing key's fingerprint."""
    if not key_files:
        raise SignatureError(
            f"{what}: no trusted keys (give --keyring FILE or install keys in "
            "/etc/rpmimg/keys.d or /usr/lib/rpmimg/keys.d)"
        )
    if not signature.strip():
        raise SignatureError(f"{what}: signature is empty")
    with tempfile.TemporaryDirectory(prefix="rpmimg-gpgv-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        keyring = home / "trusted.gpg"
        keyring.write_bytes(b"".join(dearmor(p.read_bytes(), str(p)) for p in key_files))
        (home / "data").write_bytes(data)
        (home / "data.asc").write_bytes(signature)
        proc = run(
            [
                "gpgv", "--homedir", tmp, "--status-fd", "1", "--keyring", str(keyring),
                str(home / "data.asc"), str(home / "data"),
            ],
            allowed_codes=(0, 1, 2),
        )
    status = proc.stdout.decode(errors="replace").splitlines()
    codes = {line.split()[1]: line.split()[2:] for line in status if line.startswith("[GNUPG:] ")}
    if proc.returncode == 0 and "VALIDSIG" in codes and "GOODSIG" in codes:
        return codes["VALIDSIG"][0]
    if "BADSIG" in codes:
        raise SignatureError(f"{what}: BAD signature (the content was altered after signing)")
    if "NO_PUBKEY" in codes:
        key = codes["NO_PUBKEY"][0]
        raise SignatureError(f"{what}: signed by key {key}, which is not a trusted key")
    if "NODATA" in codes or "ERRSIG" in codes:
        raise SignatureError(f"{what}: signature is not a valid OpenPGP signature")
    detail = proc.stderr.decode(errors="replace").strip().splitlines()
    raise SignatureError(f"{what}: signature does not verify" + (f": {detail[-1]}" if detail else ""))


def fetch_verified_manifest(source: Source, key_files: Sequence[Path]) -> tuple[ImageManifest, str, str]:
    """The manifest from source, refused unless signed by a trusted key.

    Returns the manifest, its sha256 and the signing key's fingerprint.
    """
    data, signature = source.fetch_manifest()
    where = source.manifest_location
    if signature is None:
        raise SignatureError(f"{where}: manifest is not signed (no manifest.json.asc beside it)")
    fingerprint = verify_detached(data, signature, key_files, where)
    return manifest_mod.parse(data, where), hashlib.sha256(data).hexdigest(), fingerprint
