"""A package's header as `rpm -i` records it in its database, made from a header file.

rpm stores in its Packages table the package's main header (the immutable region kept
byte for byte) with the signature header's tags merged in under their header names
(lib/package.c, headerMergeLegacySigs) and the install tags added (lib/psm.c, dbAdd:
FILESTATES, INSTALLTID, INSTALLTIME, INSTALLCOLOR; lib/relocation.c: INSTPREFIXES for a
relocatable package). The tags added here are appended after the original entries and
data, each aligned as its type needs, which is a header rpm reads as it reads its own
(`rpmdb --importdb` takes a stream of them, magic included; the Packages table holds them
without). The header file comes from the verified store, so its bytes are trusted; only its
structure is checked. Only the lead, the signature header and the header's index are read
into memory: the header's data (25 MB for a package of 200,000 files) is copied through in
pieces, so the memory this takes does not grow with the package.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from deploy.errors import DeploymentError
from rpmextents.errors import ExtentsError
from rpmextents.header import (
    HEADER_MAGIC,
    Header,
    HeaderEntry,
    Tag,
    TagType,
    read_exact,
    read_intro,
    read_signature,
    strings_end,
)

# (signature tag, header tag, the type rpm expects of it (rpmTagGetTagType; anything else is
# refused), required count or 0, may be in the main header already)
_MERGED = (
    (1000, 257, TagType.INT32, 1, False),            # SIZE -> SIGSIZE
    (1002, 259, TagType.BIN, 0, False),              # PGP -> SIGPGP
    (1004, 261, TagType.BIN, 16, False),             # MD5 -> SIGMD5
    (1005, 262, TagType.BIN, 0, False),              # GPG -> SIGGPG
    (1007, 1046, TagType.INT32, 1, True),            # PAYLOADSIZE -> ARCHIVESIZE
    (274, 5090, TagType.STRING_ARRAY, 0, True),      # FILESIGNATURES
    (275, 5091, TagType.INT32, 1, True),             # FILESIGNATURELENGTH
    (276, 276, TagType.STRING_ARRAY, 0, False),      # VERITYSIGNATURES
    (277, 277, TagType.INT32, 1, False),             # VERITYSIGNATUREALGO
    (269, 269, TagType.STRING, 1, False),            # SHA1 -> SHA1HEADER
    (273, 273, TagType.STRING, 1, False),            # SHA256 -> SHA256HEADER
    (267, 267, TagType.BIN, 0, False),               # DSA -> DSAHEADER
    (268, 268, TagType.BIN, 0, False),               # RSA -> RSAHEADER
    (270, 270, TagType.INT64, 1, False),             # LONGSIZE -> LONGSIGSIZE
    (271, 271, TagType.INT64, 1, False),             # LONGARCHIVESIZE
)
FILESTATES, INSTALLTIME, INSTALLCOLOR, INSTALLTID = 1029, 1008, 1127, 1128
PREFIXES, INSTPREFIXES = 1098, 1099
_ALIGN = {TagType.INT16: 2, TagType.INT32: 4, TagType.INT64: 8}


@dataclass(frozen=True)
class Install:
    """What one `rpm -i` transaction stamps on every header it records."""

    tid: int  # the transaction id, rpm's start time
    time: int  # the install time
    color: int  # the transaction color (rpm's %_transaction_color)


def _merged(sig: Header, main: Header) -> Iterator[tuple[int, TagType, int, bytes]]:
    """The signature tags rpm merges into the header: (tag, type, count, data)."""
    for stag, xtag, _, _, quirk in _MERGED:
        if xtag in main and not (quirk and stag not in sig):
            raise DeploymentError(f"{main.what}: invalid signature tag {xtag} (in both headers)")
    for stag, xtag, ttype, count, _ in _MERGED:
        e = sig.entries.get(stag)
        if e is None:
            continue
        if e.type != ttype or e.count < 1 or (count and e.count != count):
            raise DeploymentError(f"{sig.what}: invalid signature tag {stag} (type {e.type}, count {e.count})")
        yield xtag, e.type, e.count, sig.raw(stag) or b""  # never None: e is its entry


def _file_count(h: Header) -> int:
    for tag in (Tag.BASENAMES, Tag.OLDFILENAMES):
        e = h.entries.get(tag)
        if e is not None:
            return e.count
    return 0


_CHUNK = 1 << 20


class InstalledHeader:
    """The header `rpm -i` would record for the package whose header file f is open on."""

    def __init__(self, f: BinaryIO, install: Install, what: str) -> None:
        self._f, self.what = f, what
        try:  # of the header, the entries only: nothing of its data store is read here
            before, sig_blob = read_signature(f)
            sig = Header(sig_blob, f"{what}: signature header")
            intro, self._il, self._dl = read_intro(f, len(before), "header")
            self._index = read_exact(f, 16 * self._il, "header", len(before) + 16)
            main = Header(intro + self._index, f"{what}: header")
        except ExtentsError as e:
            raise DeploymentError(f"{what}: {e}") from e
        self._data_at = f.tell()
        if Tag.HEADERIMMUTABLE not in main:
            raise DeploymentError(f"{what}: the header has no immutable region")
        try:  # a signature tag's data or a string array that runs past its store
            self._extra_index, self._extra_data = self._added(sig, main, install)
        except ExtentsError as e:
            raise DeploymentError(str(e)) from e
        # bytes written without the magic (the Packages table's blob); a stream adds 8
        self.size = 8 + len(self._index) + len(self._extra_index) + self._dl + len(self._extra_data)

    def _added(self, sig: Header, main: Header, install: Install) -> tuple[bytes, bytes]:
        tags = list(_merged(sig, main))
        files = _file_count(main)
        if files:  # every file's state is "normal": the tree holds every file of the package
            tags.append((FILESTATES, TagType.CHAR, files, bytes(files)))
        prefixes = main.entries.get(PREFIXES)
        if prefixes is not None and prefixes.count > 0 and INSTPREFIXES not in main:
            tags.append((INSTPREFIXES, TagType.STRING_ARRAY, prefixes.count, self._strings(prefixes)))
        for tag, value in ((INSTALLTID, install.tid), (INSTALLTIME, install.time),
                           (INSTALLCOLOR, install.color)):
            tags.append((tag, TagType.INT32, 1, struct.pack(">I", value)))
        index, data, offset = [], [], self._dl
        for tag, ttype, count, raw in sorted(tags):
            pad = -offset % _ALIGN.get(ttype, 1)
            data.append(bytes(pad) + raw)
            offset += pad
            index.append(struct.pack(">IIiI", tag, ttype, offset, count))
            offset += len(raw)
        return b"".join(index), b"".join(data)

    def _strings(self, e: HeaderEntry) -> bytes:
        """The raw bytes of a string array entry of the header (count NUL-terminated strings)."""
        self._f.seek(self._data_at + e.offset)
        raw = self._f.read(min(self._dl - e.offset, 1 << 20))
        return raw[:strings_end(raw, 0, len(raw), e.count, self.what, e.tag)]

    def write(self, write: Callable[[bytes], object], magic: bool) -> None:
        """Write the header (with its magic for a stream, without for the Packages table)."""
        il = self._il + len(self._extra_index) // 16
        write((HEADER_MAGIC if magic else b"") + struct.pack(">II", il, self._dl + len(self._extra_data)))
        write(self._index)
        write(self._extra_index)
        self._f.seek(self._data_at)
        left = self._dl
        while left:
            chunk = self._f.read(min(left, _CHUNK))
            if not chunk:
                raise DeploymentError(f"{self.what}: truncated header data")
            write(chunk)
            left -= len(chunk)
        write(self._extra_data)
