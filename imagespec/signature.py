"""Detached manifest signatures, checked with gpgv against the keys a client trusts.

gpgv is GnuPG's verify-only tool: it needs no trust database and only accepts
signatures made by a key in the keyrings it is given, which is exactly the policy
"signed by one of these vendor keys". Signatures are made by compose
(`solver.signing`), with gpg in a private home.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from host.run import run
from imagespec.errors import SignatureError
from rpmextents.keyring import Keyring


def verify_detached(data: bytes, signature: bytes, keyring: Keyring, what: str) -> str:
    """Check signature over data against the keyring; return the signing key's fingerprint."""
    if not keyring.keys:
        raise SignatureError(
            f"{what}: no trusted keys (give --keyring FILE or install keys in "
            "/etc/rpmimg/keys.d or /usr/lib/rpmimg/keys.d)"
        )
    if not signature.strip():
        raise SignatureError(f"{what}: signature is empty")
    with tempfile.TemporaryDirectory(prefix="rpmimg-gpgv-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        for name, content in (("trusted.gpg", keyring.openpgp_bytes()), ("data", data),
                              ("data.asc", signature)):
            (home / name).write_bytes(content)
        proc = run(
            ["gpgv", "--homedir", tmp, "--status-fd", "1", "--keyring",
             os.fspath(home / "trusted.gpg"), os.fspath(home / "data.asc"), os.fspath(home / "data")],
            allowed_codes=(0, 1, 2),
        )
    status = proc.stdout.decode(errors="replace").splitlines()
    codes = {line.split()[1]: line.split()[2:] for line in status
             if line.startswith("[GNUPG:] ") and len(line.split()) > 1}
    if proc.returncode == 0 and "VALIDSIG" in codes and "GOODSIG" in codes:
        return codes["VALIDSIG"][0]
    if "BADSIG" in codes:
        raise SignatureError(f"{what}: BAD signature (the content was altered after signing)")
    for code, reason in (("EXPKEYSIG", "made by an expired key"), ("REVKEYSIG", "made by a revoked key"),
                         ("EXPSIG", "expired")):
        if code in codes:
            raise SignatureError(f"{what}: signature {reason}")
    if "NO_PUBKEY" in codes:
        key = codes["NO_PUBKEY"][0]
        raise SignatureError(f"{what}: signed by key {key}, which is not a trusted key")
    if "NODATA" in codes or "ERRSIG" in codes:
        raise SignatureError(f"{what}: signature is not a valid OpenPGP signature")
    detail = proc.stderr.decode(errors="replace").strip().splitlines()
    raise SignatureError(f"{what}: signature does not verify" + (f": {detail[-1]}" if detail else ""))
