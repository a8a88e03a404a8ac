"""Content digests that load OpenSSL only for work large enough to pay for it.

Importing hashlib loads libcrypto (OpenSSL): 3.5 MB of resident memory in every process
that does, about a sixth of what `pkg extract` or `verify` of a 10,000-file package needs
in all. CPython's own implementations of the same algorithms (_sha256, _sha512, _sha1,
_md5) load nothing but hash about 7 times slower (230 against 1,700 MB/s on a CPU with
the SHA extensions). So a process hashes its first BUILTIN_BUDGET bytes with them and
anything past that (or a job of unknown size, or larger than what is left) with hashlib:
small work never loads libcrypto, large work pays at most BUILTIN_BUDGET bytes at the
slower speed (about 60 ms), and once hashlib is loaded, by this module or by anything
else, it does everything. Either way the digests are the same.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import re
import stat
import sys
from collections.abc import Callable
from typing import Any, Protocol

BUILTIN_BUDGET = 16 << 20  # bytes this process hashes before libcrypto is worth its memory
CHUNK = 1 << 18  # as hashlib.file_digest reads
# A sha256 as rpmimg names and records it: 64 lowercase hex digits (use fullmatch).
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# hashlib name -> (module, constructor) of CPython's built-in implementation, newest first
_BUILTIN = {
    "md5": (("_md5", "md5"),),
    "sha1": (("_sha1", "sha1"),),
    "sha224": (("_sha2", "sha224"), ("_sha256", "sha224")),
    "sha256": (("_sha2", "sha256"), ("_sha256", "sha256")),
    "sha384": (("_sha2", "sha384"), ("_sha512", "sha384")),
    "sha512": (("_sha2", "sha512"), ("_sha512", "sha512")),
}

_spent = 0  # bytes promised to built-in hash objects by this process (and its parents)


class Hash(Protocol):
    """What hashlib's and the built-in hash objects have in common, as used here."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


@functools.cache
def _builtin(name: str) -> Callable[..., Any] | None:
    """CPython's own constructor for name, None where this Python was built without it."""
    for module, attr in _BUILTIN.get(name, ()):
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return None


def new(name: str, size: int | None) -> Hash:
    """A hash object for name (hashlib's names: "sha256", "md5", ...) that will hash size
    bytes in all (None: unknown, which is taken as large)."""
    global _spent
    if size is not None and "_hashlib" not in sys.modules and _spent + size <= BUILTIN_BUDGET:
        make = _builtin(name)
        if make is not None:
            _spent += size
            return make()  # type: ignore[no-any-return]
    import hashlib

    return hashlib.new(name)


def of(name: str, data: bytes | bytearray | memoryview) -> Hash:
    """The digest of data, all of it at hand."""
    h = new(name, len(data))
    h.update(data)
    return h


def file_digest(f: io.RawIOBase | io.BufferedReader, name: str) -> Hash:
    """The digest of the open file f from where it is, read in CHUNK pieces, as
    hashlib.file_digest does (but a read that would block ends it too)."""
    st = os.fstat(f.fileno())
    regular = stat.S_ISREG(st.st_mode)
    h = new(name, st.st_size if regular else None)
    # No larger than the file: a buffer of 128 KiB or more, taken and freed file after file,
    # made glibc shrink and grow its heap (and the kernel zero the pages) for every one; on
    # the benchmark corpus's 20,000 files that was half of `verify`'s system time.
    buf = bytearray(max(1, min(CHUNK, st.st_size)) if regular else CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's whole content, as hex."""
    with open(path, "rb", buffering=0) as f:
        return file_digest(f, "sha256").hexdigest()


def blake2b(data: bytes, *, digest_size: int, key: bytes) -> bytes:
    """A keyed BLAKE2b digest: CPython's own implementation, which is hashlib's too."""
    return _blake2().blake2b(data, digest_size=digest_size, key=key).digest()  # type: ignore[no-any-return]


@functools.cache
def _blake2() -> Any:
    return importlib.import_module("_blake2")


def is_sha256_hex(value: object) -> bool:
    """Whether value is a sha256 as rpmimg writes one (SHA256_HEX, the whole string)."""
    return isinstance(value, str) and SHA256_HEX.fullmatch(value) is not None
