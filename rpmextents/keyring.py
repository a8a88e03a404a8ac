"""Header digests and signatures, checked by rpm itself against a keyring we choose."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpmextents.errors import Error, VerifyError
from rpmextents.header import Header, SigTag

# Header-only signature tags that rpm 4.18 can check without the payload.
HEADER_SIGNATURE_TAGS = (SigTag.RSA, SigTag.DSA)



@functools.cache
def _rpm() -> Any:
    """rpm's bindings, loaded on first use: importing them costs about 0.1 s."""
    import rpm

    rpm.setVerbosity(rpm.RPMLOG_CRIT)  # rpm's warnings go to stderr; we report in our own words
    return rpm


class KeyFileError(Error):
    """A key file that is not an armoured OpenPGP public key."""


@dataclass(frozen=True)
class Keyring:
    """Trusted OpenPGP public keys (armoured files) for rpm header signatures."""

    files: tuple[Path, ...]

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> Keyring:
        files = tuple(Path(p) for p in paths)
        keyring = cls(files)
        keyring.rpm_keyring()  # fail early on a bad key file
        return keyring

    @classmethod
    def from_directories(cls, dirs: Iterable[str | os.PathLike[str]]) -> Keyring:
        files: list[Path] = []
        for d in dirs:
            path = Path(d)
            if path.is_dir():
                files.extend(sorted(p for p in path.iterdir() if p.is_file()))
        return cls.from_files(files)

    def rpm_keyring(self) -> Any:
        rpm = _rpm()
        keyring = rpm.keyring()
        for path in self.files:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise KeyFileError(f"{path}: cannot read key: {e.strerror}") from e
            blocks = _armoured_blocks(data)
            if not blocks:
                raise KeyFileError(f"{path}: not an armoured OpenPGP public key")
            for block in blocks:
                try:
                    keyring.addKey(rpm.pubkey(block))
                except (rpm.error, ValueError, TypeError) as e:
                    raise KeyFileError(f"{path}: not a usable OpenPGP public key ({e})") from e
        return keyring


def _armoured_blocks(data: bytes) -> list[bytes]:
    begin, end = b"-----BEGIN PGP PUBLIC KEY BLOCK-----", b"-----END PGP PUBLIC KEY BLOCK-----"
    blocks = []
    pos = 0
    while (start := data.find(begin, pos)) >= 0:
        stop = data.find(end, start)
        if stop < 0:
            break
        blocks.append(data[start : stop + len(end)] + b"\n")
        pos = stop + len(end)
    return blocks


def signature_kind(signature: Header) -> str | None:
    """The header-only signature the package carries, if rpm can check one."""
    for tag in HEADER_SIGNATURE_TAGS:
        if tag in signature:
            return tag.name
    return None


def check_header(path: str | os.PathLike[str], signature: Header, keyring: Keyring | None) -> str:
    """Check the header digests and, with a keyring, the header signature.

    Returns "verified" or "not checked". rpm reads only the lead and the headers
    here, so this works on original and extents RPMs alike.
    """
    rpm = _rpm()
    ts = rpm.TransactionSet()
    if keyring is None:
        ts.setVSFlags(rpm.RPMVSF_MASK_NOSIGNATURES)
        status = "not checked"
    else:
        if signature_kind(signature) is None:
            raise VerifyError(f"{path}: not signed with a header signature rpm can check")
        ts.setKeyring(keyring.rpm_keyring())
        status = "verified"
    fd = os.open(path, os.O_RDONLY)
    try:
        ts.hdrFromFdno(fd)
    except rpm.error as e:
        reason = str(e)
        if "public key not available" in reason:
            reason = "signed with a key that is not in the keyring"
        elif "not trusted" in reason:
            reason = "signed with a key that is not trusted"
        else:
            reason = f"header digest or signature check failed ({reason})"
        raise VerifyError(f"{path}: {reason}") from e
    finally:
        os.close(fd)
    return status
