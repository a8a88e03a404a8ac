"""Trusted OpenPGP public keys, read one way for every user, and header checks by rpm itself.

A key file may be armoured (one or more `PUBLIC KEY BLOCK`s) or binary (OpenPGP
packets, as `gpg --export` writes and `gpgv` reads); either may hold several keys.
`Keyring` splits it into one transferable public key per key, which rpm's keyring
(header signatures) and gpgv (manifest signatures, as `openpgp_bytes`) both take.

rpm's bindings are loaded through `rpm_bindings`, which also silences rpm's own
logging once for the whole process: rpm would print NOKEY and digest warnings to
stderr, and every caller reports in its own words.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from host.files import ReadRefused, read_limited
from rpmextents.errors import ExtentsError, VerifyError
from rpmextents.header import Header, SigTag

# Header-only signature tags that rpm 4.18 can check without the payload.
HEADER_SIGNATURE_TAGS = (SigTag.RSA, SigTag.DSA)
# A key file larger than this is not a key (a keyring of a few hundred keys fits).
MAX_KEY_FILE = 4 << 20

_ARMOUR = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----",
    re.DOTALL,
)
# OpenPGP packet tags (RFC 4880, 4.3).
_PUBLIC_KEY, _SECRET_KEY = 6, 5


@functools.cache
def rpm_bindings() -> Any:
    """rpm's bindings, loaded on first use (importing them costs about 0.1 s), rpm's log quiet."""
    import rpm

    rpm.setVerbosity(rpm.RPMLOG_CRIT)
    return rpm


class KeyFileError(ExtentsError):
    """A key file that holds no usable OpenPGP public key."""


def _length(data: bytes, pos: int, where: str) -> tuple[int, int, int]:
    """(tag, header size, body length) of the OpenPGP packet at pos (RFC 4880, 4.2)."""
    first = data[pos]
    if not first & 0x80:
        raise KeyFileError(f"{where}: not an OpenPGP public key (armoured or binary)")
    if first & 0x40:  # new format: tag in 6 bits, a one-, two- or five-byte length
        tag = first & 0x3F
        l0 = data[pos + 1] if pos + 1 < len(data) else 0
        if 224 <= l0 < 255:  # partial body lengths: data packets, never keys
            raise KeyFileError(f"{where}: not an OpenPGP public key (partial-length packet)")
        size = 1 if l0 < 192 else 2 if l0 < 224 else 5
        raw = data[pos + 1 : pos + 1 + size]
        if size == 2 and len(raw) == 2:
            return tag, 3, ((raw[0] - 192) << 8) + raw[1] + 192
        if size == 5 and len(raw) == 5:
            return tag, 6, int.from_bytes(raw[1:], "big")
    else:  # old format: tag in 4 bits, the size of the length in 2
        tag, kind = (first >> 2) & 0x0F, first & 0x03
        if kind == 3:
            raise KeyFileError(f"{where}: not an OpenPGP public key (indefinite-length packet)")
        size = (1, 2, 4)[kind]
        raw = data[pos + 1 : pos + 1 + size]
        if size > 1 and len(raw) == size:
            return tag, 1 + size, int.from_bytes(raw, "big")
    if size == 1 and len(raw) == 1:
        return tag, 2, raw[0]
    raise KeyFileError(f"{where}: truncated OpenPGP packet at offset {pos}")


def _packets(data: bytes, where: str) -> Iterator[tuple[int, int]]:
    """(tag, start offset) of each OpenPGP packet in data; KeyFileError on a broken framing."""
    pos = 0
    while pos < len(data):
        tag, head, length = _length(data, pos, where)
        if pos + head + length > len(data):
            raise KeyFileError(f"{where}: truncated OpenPGP packet at offset {pos}")
        yield tag, pos
        pos += head + length


def split_keys(data: bytes, where: str) -> list[bytes]:
    """The transferable public keys in binary OpenPGP data, one per primary key packet."""
    if not data:
        raise KeyFileError(f"{where}: empty key file")
    starts: list[int] = []
    for tag, start in _packets(data, where):
        if not starts and tag == _SECRET_KEY:
            raise KeyFileError(f"{where}: is a secret key; give the public key")
        if not starts and tag != _PUBLIC_KEY:
            raise KeyFileError(f"{where}: not an OpenPGP public key (first packet has tag {tag})")
        if tag == _PUBLIC_KEY:
            starts.append(start)
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def _dearmour(data: bytes, where: str) -> bytes:
    out = bytearray()
    for block in _ARMOUR.finditer(data):
        lines = block.group(1).splitlines()
        # Armour headers ("Comment: ...") end at the first blank line.
        body_start = next((i + 1 for i, line in enumerate(lines) if not line.strip()), 0)
        body = [ln.strip() for ln in lines[body_start:] if ln.strip() and not ln.startswith(b"=")]
        try:
            out += base64.b64decode(b"".join(body), validate=True)
        except binascii.Error as e:
            raise KeyFileError(f"{where}: damaged armoured key: {e}") from e
    if not out:
        raise KeyFileError(f"{where}: no public key block found")
    return bytes(out)


def read_keys(data: bytes, where: str) -> list[bytes]:
    """Binary transferable public keys from an armoured or binary key file's bytes."""
    if b"-----BEGIN PGP" in data:
        data = _dearmour(data, where)
    return split_keys(data, where)


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armour(key: bytes) -> bytes:
    """One binary public key as an armoured PUBLIC KEY BLOCK (what rpm's bindings take)."""
    text = base64.b64encode(key)
    lines = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    crc = base64.b64encode(_crc24(key).to_bytes(3, "big"))
    return (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + lines + b"\n=" + crc
            + b"\n-----END PGP PUBLIC KEY BLOCK-----\n")


@dataclass(frozen=True)
class Keyring:
    """Trusted OpenPGP public keys, each as binary packets; `sources` names where they came from."""

    keys: tuple[bytes, ...]
    sources: tuple[str, ...] = ()

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> Keyring:
        """Every key in the files (armoured or binary), each one rpm can use; KeyFileError
        names a bad file."""
        keyring = cls.read_files(paths)
        keyring.rpm_keyring()  # fail now on a key rpm can't use, not after a long fetch
        return keyring

    @classmethod
    def read_files(cls, paths: Iterable[str | os.PathLike[str]]) -> Keyring:
        """Every key in the files, as from_files reads them, without asking rpm whether it
        can use them: for gpgv alone, which then costs no rpm library (8 MB resident)."""
        keys: list[bytes] = []
        sources: list[str] = []
        for p in paths:
            where = os.fspath(p)
            try:
                data = read_limited(p, MAX_KEY_FILE)
            except ReadRefused as e:
                raise KeyFileError(f"{e}; not a key file") from e
            except OSError as e:
                raise KeyFileError(f"{where}: cannot read key: {e.strerror}") from e
            keys += read_keys(data, where)
            sources.append(where)
        return cls(tuple(keys), tuple(sources))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Keyring:
        keyring = cls(tuple(read_keys(data, where)), (where,))
        keyring.rpm_keyring()
        return keyring

    def openpgp_bytes(self) -> bytes:
        """The keys as one binary keyring, as gpgv's --keyring reads it."""
        return b"".join(self.keys)

    def rpm_keyring(self) -> Any:
        """The keys in an rpm.keyring, for rpm's header signature checks."""
        rpm = rpm_bindings()
        keyring = rpm.keyring()
        where = ", ".join(self.sources) or "keyring"
        for key in self.keys:
            try:
                keyring.addKey(rpm.pubkey(armour(key)))
            except (rpm.error, ValueError, TypeError) as e:
                raise KeyFileError(f"{where}: not a usable OpenPGP public key ({e})") from e
        return keyring


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
    rpm = rpm_bindings()
    ts = rpm.TransactionSet()
    if keyring is None:
        ts.setVSFlags(rpm.RPMVSF_MASK_NOSIGNATURES)
        status = "not checked"
    else:
        if signature_kind(signature) is None:
            raise VerifyError(f"{path}: not signed with a header signature rpm can check")
        ts.setKeyring(keyring.rpm_keyring())
        status = "verified"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ts.hdrFromFdno(fd)
    except rpm.error as e:
        raise VerifyError(f"{path}: {_reason(str(e))}") from e
    finally:
        os.close(fd)
    return status


def _reason(rpm_error: str) -> str:
    if "public key not available" in rpm_error:
        return "signed with a key that is not in the keyring"
    if "not trusted" in rpm_error:
        return "signed with a key that is not trusted"
    return f"header digest or signature check failed ({rpm_error})"
