"""Reading the lead, signature header and header of an RPM package.

The layout (rpm's lib/header.c, lib/rpmlead.c): a 96-byte lead, the signature
header padded to 8 bytes, then the main header. A header is a magic, an index of
16-byte entries (tag, type, offset, count; big-endian) and a data store.
"""

from __future__ import annotations

import enum
import itertools
import operator
import os
import struct
import sys
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from host import digest
from rpmextents.errors import FormatError, UnsupportedPackageError

LEAD_SIZE = 96
LEAD_MAGIC = b"\xed\xab\xee\xdb"
HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
# rpm refuses headers beyond these (lib/header_internal.h: hdrchkTags, hdrchkData).
MAX_TAGS = 0x10000
MAX_DATA = 256 << 20


class Tag(enum.IntEnum):
    """Main header tags used here (rpmtag.h)."""

    HEADERIMMUTABLE = 63
    NAME = 1000
    VERSION = 1001
    RELEASE = 1002
    EPOCH = 1003
    BUILDTIME = 1006
    ARCH = 1022
    PREIN = 1023
    POSTIN = 1024
    PREUN = 1025
    POSTUN = 1026
    OLDFILENAMES = 1027
    FILESIZES = 1028
    FILEMODES = 1030
    FILERDEVS = 1033
    FILEMTIMES = 1034
    FILEDIGESTS = 1035
    FILELINKTOS = 1036
    FILEFLAGS = 1037
    FILEUSERNAME = 1039
    FILEGROUPNAME = 1040
    TRIGGERSCRIPTS = 1065
    PREINPROG = 1085
    POSTINPROG = 1086
    PREUNPROG = 1087
    POSTUNPROG = 1088
    FILEDEVICES = 1095
    FILEINODES = 1096
    DIRINDEXES = 1116
    BASENAMES = 1117
    DIRNAMES = 1118
    PAYLOADFORMAT = 1124
    PAYLOADCOMPRESSOR = 1125
    PAYLOADFLAGS = 1126
    PRETRANS = 1151
    POSTTRANS = 1152
    PRETRANSPROG = 1153
    POSTTRANSPROG = 1154
    LONGFILESIZES = 5008
    LONGSIZE = 5009
    FILECAPS = 5010
    FILEDIGESTALGO = 5011
    FILETRIGGERSCRIPTS = 5066
    TRANSFILETRIGGERSCRIPTS = 5076
    PAYLOADDIGEST = 5092
    PAYLOADDIGESTALGO = 5093
    PAYLOADDIGESTALT = 5097


class SigTag(enum.IntEnum):
    """Signature header tags (rpmtag.h, RPMSIGTAG_*)."""

    SIZE = 1000
    MD5 = 1004
    PGP = 1002
    GPG = 1005
    PAYLOADSIZE = 1007
    DSA = 267
    RSA = 268
    SHA1 = 269
    LONGSIZE = 270
    LONGARCHIVESIZE = 271
    SHA256 = 273
    OPENPGP = 278


class TagType(enum.IntEnum):
    NULL = 0
    CHAR = 1
    INT8 = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    STRING = 6
    BIN = 7
    STRING_ARRAY = 8
    I18NSTRING = 9


_TAG_TYPES = {int(t): t for t in TagType}  # a lookup, not an enum call, for each index entry
_INDEX_ENTRY = struct.Struct(">IIiI")  # tag, type, offset, count
_KNOWN_TYPES = frozenset(_TAG_TYPES)
_INT32_MAX = (1 << 31) - 1


# OpenPGP hash algorithm numbers (RFC 4880) as rpm stores them, by hashlib name.
HASH_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
# File digests strong enough to stand for the content they name (two files with the same
# one are taken to be the same bytes); md5 and sha1 are not.
STRONG_HASH_ALGOS = frozenset({"sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_512"})

_INT_FORMATS = {TagType.CHAR: "B", TagType.INT8: "B", TagType.INT16: "H", TagType.INT32: "I", TagType.INT64: "Q"}
_INT_SIZES = {TagType.CHAR: 1, TagType.INT8: 1, TagType.INT16: 2, TagType.INT32: 4, TagType.INT64: 8}

TagValue = list[int] | str | list[str] | bytes


class HeaderEntry(NamedTuple):
    """One index entry. A named tuple: made three times faster than a frozen dataclass, for
    the few dozen entries of each of the two headers of every package a deploy reads."""

    tag: int
    type: TagType
    offset: int
    count: int  # type: ignore[assignment]  # the field, as rpm names it, over tuple.count


class _Index(Mapping[int, HeaderEntry]):
    """A header's index entries by tag (the last of a tag that repeats), each made when it
    is asked for: a reader asks for a few of a header's dozens of tags, and the header of
    every package an update has is parsed. All of them are checked here, as they were when
    each was made at once: a known type, an offset and count within the data store."""

    __slots__ = ("_at", "_counts", "_offsets", "_types")

    def __init__(self, index: bytes, dl: int, what: str) -> None:
        if len(index) % _INDEX_ENTRY.size:
            raise struct.error(f"an index of {len(index)} bytes is not whole entries")
        words = array("I")
        words.frombytes(index)
        if sys.byteorder == "little":
            words.byteswap()
        tags, types, offsets, counts = words[0::4], words[1::4], words[2::4], words[3::4]
        # An offset is signed (rpm's int32): read unsigned, a negative one is past 2**31 - 1.
        if tags and not (set(types) <= _KNOWN_TYPES and max(offsets) <= min(dl, _INT32_MAX)
                         and max(counts) <= dl + 1):
            for tag, typ, offset, count in _INDEX_ENTRY.iter_unpack(index):
                if typ not in _KNOWN_TYPES:
                    raise FormatError(f"{what}: tag {tag} has unknown type {typ}")
                if offset < 0 or offset > dl or count > dl + 1:
                    raise FormatError(f"{what}: tag {tag} points outside the data store")
        self._at = dict(zip(tags, range(len(tags)), strict=True))
        self._types, self._offsets, self._counts = types, offsets, counts

    def _entry(self, tag: int, i: int) -> HeaderEntry:
        return HeaderEntry(tag, _TAG_TYPES[self._types[i]], self._offsets[i], self._counts[i])

    def __getitem__(self, tag: int) -> HeaderEntry:
        return self._entry(tag, self._at[tag])

    def get(self, tag: int, default: HeaderEntry | None = None) -> HeaderEntry | None:  # type: ignore[override]
        i = self._at.get(tag)
        return default if i is None else self._entry(tag, i)

    def __contains__(self, tag: object) -> bool:
        return tag in self._at

    def __iter__(self) -> Iterator[int]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)


class Header:
    """One parsed header structure: an index of entries over a data store."""

    def __init__(self, blob: bytes, what: str = "header") -> None:
        self.blob = blob
        self.what = what
        if blob[:8] != HEADER_MAGIC:
            raise FormatError(f"bad {what} magic {blob[:8].hex()}")
        il, dl = struct.unpack_from(">II", blob, 8)
        store = 16 + 16 * il
        self._store = store
        self._dl = dl
        self.entries = _Index(blob[16:store], dl, what)

    def __contains__(self, tag: int) -> bool:
        return tag in self.entries

    def get(self, tag: int) -> TagValue | None:
        """The value of a tag, or None when the header lacks it."""
        entry = self.entries.get(tag)
        if entry is None:
            return None
        start = self._store + entry.offset
        end = self._store + self._dl
        if entry.type in _INT_FORMATS:
            size = _INT_SIZES[entry.type] * entry.count
            if start + size > end:
                raise FormatError(f"{self.what}: tag {entry.tag} runs past the data store")
            return list(struct.unpack_from(f">{entry.count}{_INT_FORMATS[entry.type]}", self.blob, start))
        if entry.type == TagType.BIN:
            if start + entry.count > end:
                raise FormatError(f"{self.what}: tag {entry.tag} runs past the data store")
            return self.blob[start : start + entry.count]
        if entry.count == 1:
            nul = self.blob.find(b"\0", start, end)
            if nul < 0:
                raise FormatError(f"{self.what}: string of tag {entry.tag} is not terminated")
            strings = [self.blob[start:nul].decode("utf-8", "surrogateescape")]
        elif entry.count:
            # count NUL-terminated strings: split off count pieces, the rest is what follows.
            pieces = self.blob[start:end].split(b"\0", entry.count)
            if len(pieces) <= entry.count:
                raise FormatError(f"{self.what}: string of tag {entry.tag} is not terminated")
            # A NUL is never part of a UTF-8 sequence: decoding them at once is decoding each.
            strings = b"\0".join(pieces[:-1]).decode("utf-8", "surrogateescape").split("\0")
        else:
            strings = []
        if entry.type == TagType.STRING:
            return strings[0] if strings else ""
        return strings

    def raw(self, tag: int) -> bytes | None:
        """The bytes of tag's data in the store, as rpm's dataLength counts them (an int's
        or a binary's size, a string's or each string of an array's NUL included), or None
        when the header lacks it; checked like get()."""
        entry = self.entries.get(tag)
        if entry is None:
            return None
        start, end = self._store + entry.offset, self._store + self._dl
        if entry.type in _INT_SIZES:
            stop = start + _INT_SIZES[entry.type] * entry.count
        elif entry.type == TagType.NULL:
            stop = start
        elif entry.type == TagType.BIN:
            stop = start + entry.count
        else:
            count = 1 if entry.type == TagType.STRING else entry.count
            stop = strings_end(self.blob, start, end, count, self.what, entry.tag)
        if stop > end:
            raise FormatError(f"{self.what}: tag {entry.tag} runs past the data store")
        return self.blob[start:stop]

    def string(self, tag: int, default: str = "") -> str:
        value = self.get(tag)
        if value is None:
            return default
        if isinstance(value, list) and value and isinstance(value[0], str):
            return str(value[0])  # an I18NSTRING is read as an array
        if not isinstance(value, str):
            raise FormatError(f"{self.what}: tag {tag} is not a string")
        return value

    def strings(self, tag: int) -> list[str]:
        value = self.get(tag)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or (value and not isinstance(value[0], str)):
            raise FormatError(f"{self.what}: tag {tag} is not a string array")
        return [str(v) for v in value]

    def ints(self, tag: int) -> list[int]:
        value = self.get(tag)
        if value is None:
            return []
        if not isinstance(value, list) or (value and not isinstance(value[0], int)):
            raise FormatError(f"{self.what}: tag {tag} is not an integer array")
        return [int(v) for v in value]

    def int_array(self, tag: int) -> array[int]:
        """An integer array tag as a compact array (8 bytes a value at most), no list of ints."""
        entry = self.entries.get(tag)
        if entry is None:
            return array("q")
        if entry.type not in _INT_FORMATS:
            raise FormatError(f"{self.what}: tag {tag} is not an integer array")
        start = self._store + entry.offset
        size = _INT_SIZES[entry.type] * entry.count
        if start + size > self._store + self._dl:
            raise FormatError(f"{self.what}: tag {entry.tag} runs past the data store")
        values = array(_INT_FORMATS[entry.type])
        values.frombytes(self.blob[start : start + size])
        if sys.byteorder == "little" and values.itemsize > 1:
            values.byteswap()
        return values  # unsigned, as ints() reads them

    def string_offsets(self, tag: int) -> array[int]:
        """Where each string of a string array tag starts in ``blob`` (each ends at a NUL).

        Checked like get(): the count strings are terminated within the data store. A
        caller keeps 4 bytes a string (a header is far below 4 GiB: MAX_DATA) and decodes
        one when it needs it (see string_at).
        """
        entry = self.entries.get(tag)
        offsets = array("I")
        if entry is None:
            return offsets
        if entry.type not in (TagType.STRING_ARRAY, TagType.STRING, TagType.I18NSTRING):
            raise FormatError(f"{self.what}: tag {tag} is not a string array")
        pos, end, blob = self._store + entry.offset, self._store + self._dl, self.blob
        left = entry.count
        while left:
            # _SCAN bytes of strings at a time, split in C: each offset is the last one plus
            # the string's length and its NUL (accumulate over map, no Python loop per string).
            # (maxsplit: what follows the array, often runs of NULs, is never split up)
            span = min(_SCAN, 256 + 128 * left)
            parts = blob[pos:min(pos + span, end)].split(b"\0", left)[:-1]
            if not parts:  # no NUL in the next span: one long string, or none at all
                nul = blob.find(b"\0", pos, end)
                if nul < 0:
                    raise FormatError(f"{self.what}: string of tag {entry.tag} is not terminated")
                parts = [blob[pos:nul]]
            starts = itertools.accumulate(map(operator.add, map(len, parts), itertools.repeat(1)),
                                          initial=pos)
            offsets.extend(itertools.islice(starts, len(parts)))
            pos += sum(map(len, parts)) + len(parts)
            left -= len(parts)
        return offsets

    def string_at(self, offset: int) -> str:
        """The NUL-terminated string at offset of blob (one of string_offsets)."""
        return self.blob[offset : self.blob.index(b"\0", offset)].decode("utf-8", "surrogateescape")

    def number(self, tag: int) -> int | None:
        values = self.ints(tag)
        return values[0] if values else None

    def binary(self, tag: int) -> bytes | None:
        value = self.get(tag)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise FormatError(f"{self.what}: tag {tag} is not binary")
        return value


# Bytes of a string array split at a time (string_offsets): the split makes an object a
# string, so this bounds the transient memory (a column of empty strings: 16 Ki objects).
_SCAN = 16 << 10

def strings_end(buf: bytes, start: int, end: int, count: int, what: str, tag: int) -> int:
    """Where count NUL-terminated strings from start in buf end (past the last NUL), each
    terminated before end."""
    pos = start
    for _ in range(count):
        nul = buf.find(b"\0", pos, end)
        if nul < 0:
            raise FormatError(f"{what}: string of tag {tag} is not terminated")
        pos = nul + 1
    return pos


def read_exact(f: BinaryIO, n: int, what: str, offset: int) -> bytes:
    """n bytes of f, read at offset (named in the error when fewer are there)."""
    data = f.read(n)
    if len(data) != n:
        raise FormatError(f"truncated {what}: wanted {n} bytes at offset {offset}, got {len(data)}")
    return data


def read_intro(f: BinaryIO, offset: int, what: str) -> tuple[bytes, int, int]:
    """A header's first 16 bytes read at offset: (the bytes, its entry count, its data length),
    its magic and sizes checked."""
    intro = read_exact(f, 16, what, offset)
    if intro[:8] != HEADER_MAGIC:
        raise FormatError(f"bad {what} magic {intro[:8].hex()} at offset {offset}")
    il, dl = struct.unpack_from(">II", intro, 8)
    if il < 1 or il > MAX_TAGS or dl > MAX_DATA:
        raise FormatError(f"{what} at offset {offset} has an absurd size ({il} tags, {dl} bytes)")
    return intro, il, dl


def _read_header(f: BinaryIO, offset: int, what: str) -> bytes:
    intro, il, dl = read_intro(f, offset, what)
    rest = 16 * il + dl
    if rest >= 1 << 20 and _seekable(f):
        # Read again from the magic in one piece: `intro + rest` would hold the header
        # twice for a moment (50 MB for a package of 200,000 files).
        f.seek(-16, os.SEEK_CUR)
        return read_exact(f, 16 + rest, what, offset)
    return intro + read_exact(f, rest, what, offset + 16)


def _seekable(f: BinaryIO) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError):
        return False


@dataclass(frozen=True)
class PackagePrefix:
    """Lead, signature header and header of a package, with their offsets."""

    before_header: bytes  # lead, signature header and its padding, as read
    signature: Header
    header: Header
    header_start: int
    header_end: int

    @property
    def raw(self) -> bytes:
        """Bytes [0, header_end): everything before the payload, as read (made on each call:
        the header's bytes are kept once, in ``header``)."""
        return self.before_header + self.header.blob

    def sha256(self) -> str:
        """The sha256 of ``raw``, without making it; worked out once when the bytes are
        immutable (an update's deploy asks for each of its hundreds of headers' three times:
        the store's identity check, the build and the /etc merge)."""
        known: str | None = self.__dict__.get("_sha256")
        if known is not None:
            return known
        h = digest.new("sha256", len(self.before_header) + len(self.header.blob))
        h.update(self.before_header)
        h.update(self.header.blob)
        known = h.hexdigest()
        if type(self.before_header) is bytes and type(self.header.blob) is bytes:
            object.__setattr__(self, "_sha256", known)  # a frozen instance's memo, not a field
        return known


def read_signature(f: BinaryIO) -> tuple[bytes, bytes]:
    """Read lead, signature header and its padding from the start of ``f``: (all of them as
    read, the signature header's bytes); ``f`` is left where the header starts."""
    lead = read_exact(f, LEAD_SIZE, "lead", 0)
    if lead[:4] != LEAD_MAGIC:
        raise FormatError(f"not an RPM package: bad lead magic {lead[:4].hex()}")
    # rpm writes lead version 3.0 for v4 packages too; the header tells v3 from v4.
    major = lead[4]
    if major not in (3, 4):
        raise UnsupportedPackageError(f"unknown RPM lead version {major}")
    sig_type = struct.unpack_from(">H", lead, 78)[0]
    if sig_type != 5:
        raise UnsupportedPackageError(f"unsupported signature type {sig_type} in the lead")
    sig_blob = _read_header(f, LEAD_SIZE, "signature header")
    pad = (8 - len(sig_blob) % 8) % 8
    sig_pad = read_exact(f, pad, "signature padding", LEAD_SIZE + len(sig_blob))
    return lead + sig_blob + sig_pad, sig_blob


def read_prefix(f: BinaryIO) -> PackagePrefix:
    """Read lead, signature header and header from the start of ``f``."""
    before, sig_blob = read_signature(f)
    header_start = len(before)
    header_blob = _read_header(f, header_start, "header")
    signature = Header(sig_blob, "signature header")
    header = Header(header_blob, "header")
    if Tag.HEADERIMMUTABLE not in header:
        raise UnsupportedPackageError(
            "RPM v3 package format is not supported (the header has no immutable region)"
        )
    return PackagePrefix(before, signature, header, header_start, len(before) + len(header_blob))
