"""Detached manifest signatures, checked with gpgv against the keys a client trusts.

gpgv is GnuPG's verify-only tool: it needs no trust database and only accepts
signatures made by a key in the keyrings it is given, which is exactly the policy
"signed by one of these vendor keys". Signatures are made by compose
(`solver.signing`), with gpg in a private home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from host.files import private_dir
from host.run import run
from imagespec.errors import SignatureError
from rpmextents.keyring import Keyring


def verify_detached(data: bytes, signature: bytes, keyring: Keyring, what: str) -> str:
    """Check signature over data against the keyring; return the signing key's fingerprint.

    gpgv gives up on the whole keyring at some keys it can't read (an unknown key version
    or algorithm): when it finds no answer with all the keys, each is asked alone, so that
    one unreadable trusted key can't hide the one that signed.
    """
    if not keyring.keys:
        raise SignatureError(
            f"{what}: no trusted keys (give --keyring FILE or install keys in "
            "/etc/rpmimg/keys.d or /usr/lib/rpmimg/keys.d)"
        )
    if not signature.strip():
        raise SignatureError(f"{what}: signature is empty")
    first = _gpgv(data, signature, keyring.openpgp_bytes())
    if first.conclusive or len(keyring.keys) == 1:
        return first.verdict(what)
    for key in keyring.keys:
        alone = _gpgv(data, signature, key)
        if alone.conclusive:
            return alone.verdict(what)
    return first.verdict(what)


# gpgv's status codes for a signature a trusted key made that is not good, in the order they are
# reported, with what the user is told.
_KEY_VERDICTS = (
    ("BADSIG", "BAD signature (the content was altered after signing)"),
    ("EXPKEYSIG", "signature made by an expired key"),
    ("REVKEYSIG", "signature made by a revoked key"),
    ("EXPSIG", "signature expired"),
)


@dataclass(frozen=True)
class _Gpgv:
    """What one gpgv run said: its exit status, status lines (code -> arguments), stderr."""

    returncode: int
    codes: dict[str, list[str]]
    stderr: str

    @property
    def good(self) -> bool:
        return self.returncode == 0 and {"VALIDSIG", "GOODSIG"} <= self.codes.keys()

    @property
    def conclusive(self) -> bool:
        """A good signature, or one that a trusted key made and that is bad or expired."""
        return self.good or any(code in self.codes for code, _ in _KEY_VERDICTS)

    def verdict(self, what: str) -> str:
        """The signing key's fingerprint, or SignatureError saying why not."""
        codes = self.codes
        if self.good:
            return codes["VALIDSIG"][0]
        for code, reason in _KEY_VERDICTS:
            if code in codes:
                raise SignatureError(f"{what}: {reason}")
        if "NO_PUBKEY" in codes:
            key = codes["NO_PUBKEY"][0]
            raise SignatureError(f"{what}: signed by key {key}, which is not a trusted key")
        if "NODATA" in codes or "ERRSIG" in codes:
            raise SignatureError(f"{what}: signature is not a valid OpenPGP signature")
        detail = self.stderr.strip().splitlines()
        raise SignatureError(f"{what}: signature does not verify" + (f": {detail[-1]}" if detail else ""))


def _gpgv(data: bytes, signature: bytes, keys: bytes) -> _Gpgv:
    """gpgv's answer on signature over data with keys (binary OpenPGP) as its only keyring."""
    with private_dir("rpmimg-gpgv-") as home:
        tmp = os.fspath(home)
        for name, content in (("trusted.gpg", keys), ("data", data), ("data.asc", signature)):
            (home / name).write_bytes(content)
        proc = run(
            ["gpgv", "--homedir", tmp, "--status-fd", "1", "--keyring",
             os.fspath(home / "trusted.gpg"), os.fspath(home / "data.asc"), os.fspath(home / "data")],
            allowed_codes=(0, 1, 2),
        )
    status = proc.stdout.decode(errors="replace").splitlines()
    codes = {line.split()[1]: line.split()[2:] for line in status
             if line.startswith("[GNUPG:] ") and len(line.split()) > 1}
    return _Gpgv(proc.returncode, codes, proc.stderr.decode(errors="replace"))
