"""A package's file list as compact columns over its signed header.

rpm keeps a package's files as arrays beside the header it read them from; so does this:
integers in arrays, strings as offsets into the header's own bytes (decoded when asked),
the few distinct owners and capabilities once each. A whole list costs a few dozen bytes
a file besides the header, and an Entry is made only for the file being worked on.
Everything is checked when the list is made, as before: a path that is unsafe, a column
of the wrong length, an extent that does not fit its file.
"""

from __future__ import annotations

import functools
import itertools
import stat
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import overload

from rpmextents.entry import _GHOST, _TYPES, Entry, EntryType, Extent, check_path
from rpmextents.errors import FormatError
from rpmextents.header import HASH_ALGOS, Header, Tag

_NONE = -1
_SMALL = 1024  # files: a list this size or smaller is looked at in ways that copy a column


def _ints(header: Header, tag: int, n: int, what: str) -> array[int] | None:
    """The tag's values, checked to be one per file; None when the header lacks it."""
    values = header.int_array(tag)
    if not values:
        return None
    if len(values) != n:
        raise FormatError(f"header: {what} has {len(values)} entries for {n} files")
    return values


def _offsets(header: Header, tag: int, n: int, what: str) -> array[int] | None:
    values = header.string_offsets(tag)
    if not values:
        return None
    if len(values) != n:
        raise FormatError(f"header: {what} has {len(values)} entries for {n} files")
    return values


Interned = tuple[list[str], "array[int] | None"]


def _interned(header: Header, tag: int, n: int, what: str, fill: str) -> Interned:
    """(distinct values, each file's index into them): owners and caps repeat a lot, and
    mostly one value fills the whole column (root, root, no capabilities): then there is
    no index at all (None)."""
    offsets = _offsets(header, tag, n, what)
    if offsets is None:
        return [fill], None
    first = header.string_at(offsets[0])
    one = first.encode("utf-8", "surrogateescape") + b"\0"
    if header.blob[offsets[0]:offsets[0] + len(one) * n] == one * n:
        return [first], None
    distinct: dict[str, int] = {}
    which = array("I")
    for value in _decoded(header, offsets, 0, n):
        which.append(distinct.setdefault(value, len(distinct)))
    return list(distinct), which


def _value(column: Interned, i: int) -> str:
    values, which = column
    return values[which[i]] if which is not None else values[0]


CHUNK = 4096  # strings decoded at a time when a column is walked


def _decoded(header: Header, offsets: array[int], start: int, stop: int) -> Iterator[str]:
    """The strings at offsets[start:stop], decoded CHUNK at a time: a string array's
    elements follow each other in the header, so a run of them is one slice to split."""
    blob = header.blob
    for lo in range(start, stop, CHUNK):
        hi = min(lo + CHUNK, stop)
        end = blob.index(b"\0", offsets[hi - 1])
        yield from blob[offsets[lo]:end].decode("utf-8", "surrogateescape").split("\0")


def _raw(header: Header, offsets: array[int], start: int, stop: int) -> Iterator[bytes]:
    """_decoded's strings, as their bytes."""
    blob = header.blob
    for lo in range(start, stop, CHUNK):
        hi = min(lo + CHUNK, stop)
        end = blob.index(b"\0", offsets[hi - 1])
        yield from blob[offsets[lo]:end].split(b"\0")


def may_lead_to(dirname: str, start: str) -> bool:
    """Whether a path with this directory name (DIRNAMES) may start with start: it starts
    with the name, so the name starts with start, or start with the name ("/", "/etc/").
    A path of any other directory name differs from start within both."""
    return dirname.startswith(start) or start.startswith(dirname)


@functools.lru_cache(maxsize=512)
def _checked(path: str) -> bool:
    """Whether check_path takes path; remembered, as most packages' directory names are
    other packages' too (a deploy reads hundreds of lists naming /usr/share/doc/...); a few
    hundred at most, held at every deploy's peak."""
    try:
        check_path(path)
    except FormatError:
        return False
    return True


class FileList(Sequence[Entry]):
    """The header's files in header order; an Entry is made per access."""

    def __init__(self, header: Header) -> None:
        self.header = header
        self._dirnames: list[str] = []
        self._dirindexes: array[int] | None = None
        names = header.string_offsets(Tag.BASENAMES)
        if names:
            self._dirnames = header.strings(Tag.DIRNAMES)
            self._dirindexes = header.int_array(Tag.DIRINDEXES)
            if len(self._dirindexes) != len(names):
                raise FormatError("header: DIRINDEXES and BASENAMES differ in length")
            if self._dirindexes and max(self._dirindexes) >= len(self._dirnames):
                raise FormatError("header: a DIRINDEXES entry points past DIRNAMES")
        else:
            names = header.string_offsets(Tag.OLDFILENAMES)
        self._names = names
        n = self._n = len(names)
        self.sizes = _ints(header, Tag.LONGFILESIZES, n, "LONGFILESIZES") or header.int_array(Tag.FILESIZES)
        self.modes = header.int_array(Tag.FILEMODES)
        if n and (len(self.sizes) != n or len(self.modes) != n):
            raise FormatError("header: file sizes or modes do not match the file count")
        algo_number = header.number(Tag.FILEDIGESTALGO) or 1
        digest_algo = HASH_ALGOS.get(algo_number)
        if digest_algo is None and n:
            raise FormatError(f"header: unknown file digest algorithm {algo_number}")
        self.digest_algo = digest_algo or ""
        self._rdevs = _ints(header, Tag.FILERDEVS, n, "FILERDEVS")
        self._mtimes = _ints(header, Tag.FILEMTIMES, n, "FILEMTIMES")
        self.flags = _ints(header, Tag.FILEFLAGS, n, "FILEFLAGS") or array("I", bytes(4 * n))
        self._digests = _offsets(header, Tag.FILEDIGESTS, n, "FILEDIGESTS")
        self._linktos = _offsets(header, Tag.FILELINKTOS, n, "FILELINKTOS")
        self._users = _interned(header, Tag.FILEUSERNAME, n, "FILEUSERNAME", "root")
        self._groups = _interned(header, Tag.FILEGROUPNAME, n, "FILEGROUPNAME", "root")
        self._caps = _interned(header, Tag.FILECAPS, n, "FILECAPS", "")
        self.hardlink_keys = self._hardlink_keys()
        self._ext_offset: array[int] | None = None
        self._ext_length: array[int] | None = None
        self._extents_from: Callable[[], Iterable[tuple[int, int, int]]] | None = None
        self._plain = self._plain_paths()
        if not self._plain:
            for path in self.paths():
                check_path(path)
        for mode in set(self.modes):
            if stat.S_IFMT(mode) not in _TYPES:
                i = self.modes.index(mode)
                raise FormatError(f"header: {self.path(i)} has an unknown file type in mode {mode:o}")

    def __len__(self) -> int:
        return self._n

    def _plain_paths(self) -> bool:
        """Whether every path is one of the directory names, each absolute, normalised and
        ending in "/", and one name with no "/" that is not "", "." or "..": paths that
        check_path takes, known without making one (the names' bytes are looked at in C).
        Where this can't tell, each path is checked (as old-style file names always are)."""
        names, dirindexes = self._names, self._dirindexes
        if dirindexes is None or not names:
            return False
        for d in self._dirnames:
            if d != "/" and not (d[:1] == "/" and d[-1:] == "/" and len(d) > 2 and _checked(d[:-1])):
                return False
        # The names lie one after the other (string_offsets), each ending in a NUL: looked
        # at in place (a copy of a 200,000-file package's names is megabytes of peak).
        blob = self.header.blob
        start = names[0]
        end = blob.index(b"\0", names[-1]) + 1
        if blob.startswith((b"\0", b".\0", b"..\0"), start):
            return False  # the first name is "", "." or ".."
        return not any(blob.find(bad, start, end) >= 0 for bad in (b"/", b"\0\0", b"\0.\0", b"\0..\0"))

    def stored(self, i: int) -> bool:
        """Whether file i has content in the payload: a regular file, not a %ghost."""
        return stat.S_ISREG(self.modes[i]) and not self.flags[i] & _GHOST

    def _hardlink_keys(self) -> dict[int, int]:
        """File index -> first index of its hardlink group (groups of one are left out).

        Regular, non-ghost files sharing (device, inode) are hardlinks, as rpm groups them.
        """
        inodes = _ints(self.header, Tag.FILEINODES, self._n, "FILEINODES")
        devices = _ints(self.header, Tag.FILEDEVICES, self._n, "FILEDEVICES")
        if inodes is None:
            return {}
        if self._n <= _SMALL and len(set(inodes)) == self._n:
            # No two files share an inode number, so no (device, inode): no links. Told in C
            # for the small lists most packages have; a large one is walked below rather than
            # have a set of all its inode numbers (megabytes for 200,000 files) at the peak.
            return {}
        dev = devices if devices is not None else array("I", bytes(4 * self._n))
        last = (-1, -1)
        modes, flags = self.modes, self.flags
        for i, (d, ino) in enumerate(zip(dev, inodes, strict=True)):
            if ino > 0 and modes[i] & 0o170000 == stat.S_IFREG and not flags[i] & _GHOST:
                if (d, ino) <= last:
                    break
                last = (d, ino)
        else:
            return {}  # (device, inode) only grow in header order, as rpmbuild numbers them: no links
        order = sorted((i for i in range(self._n) if inodes[i] > 0 and self.stored(i)),
                       key=lambda i: (dev[i], inodes[i]))
        keys: dict[int, int] = {}
        # Sorting is stable: a group's members follow each other in header order.
        for prev, i in itertools.pairwise(order):
            if (dev[prev], inodes[prev]) == (dev[i], inodes[i]):
                keys[i] = keys.setdefault(prev, prev)
        return keys

    def defer_extents(self, source: Callable[[], Iterable[tuple[int, int, int]]]) -> None:
        """Give the files their extents from source() (as set_extents takes them) when one
        is first asked for, not now; an error then is raised to whoever asked."""
        self._extents_from = source

    def load_extents(self) -> None:
        """The deferred extents, now (nothing when there are none to load); when they fail
        to load, every later ask fails too."""
        if self._extents_from is not None:
            self.set_extents(self._extents_from())
            self._extents_from = None

    def set_extents(self, data: Iterable[tuple[int, int, int]]) -> None:
        """Give each stored file its extent from (file index, offset, length) records,
        checked against the header; hardlinks share their group's one extent."""
        n = self._n
        offsets = array("q", [_NONE]) * n
        lengths = array("q", bytes(8 * n))
        # stored() written out: this runs for every file of every package an update reads.
        modes, flags, sizes, links = self.modes, self.flags, self.sizes, self.hardlink_keys
        for fx, offset, length in data:
            if fx >= n or fx < 0:
                raise FormatError(f"extents index refers to file {fx}, the header has {n}")
            if modes[fx] & 0o170000 != stat.S_IFREG or flags[fx] & _GHOST or sizes[fx] != length:
                raise FormatError(f"extents index data for {self.path(fx)} does not fit its header entry")
            key = links.get(fx, fx)
            if offsets[key] != _NONE:
                raise FormatError(f"extents index stores {self.path(fx)} twice")
            offsets[key], lengths[key] = offset, length
        for i in range(n):
            if (sizes[i] > 0 and offsets[links.get(i, i)] == _NONE
                    and modes[i] & 0o170000 == stat.S_IFREG and not flags[i] & _GHOST):
                raise FormatError(f"extents index has no data for {self.path(i)}")
        self._ext_offset, self._ext_length = offsets, lengths

    def path(self, i: int) -> str:
        name = self.header.string_at(self._names[i])
        dirindexes = self._dirindexes
        return name if dirindexes is None else self._dirnames[dirindexes[i]] + name

    def paths(self) -> Iterator[str]:
        dirnames, dirindexes = self._dirnames, self._dirindexes
        names = _decoded(self.header, self._names, 0, self._n)
        if dirindexes is None:
            yield from names
        else:
            for i, name in enumerate(names):
                yield dirnames[dirindexes[i]] + name

    def digest(self, i: int) -> str:
        return self.header.string_at(self._digests[i]) if self._digests is not None else ""

    def extent(self, i: int) -> Extent | None:
        if self._extents_from is not None:
            self.load_extents()
        offsets, lengths = self._ext_offset, self._ext_length
        if offsets is None or lengths is None or not self.stored(i) or self.sizes[i] <= 0:
            return None
        key = self.hardlink_keys.get(i, i)
        return Extent(offsets[key], lengths[key])

    def entry(self, i: int) -> Entry:
        if i < 0:
            i += self._n
        return self._entry(i, self.path(i), self.digest(i))

    def metadata(self, i: int) -> Entry:
        """Entry i as the header describes it, its extent left None (the extents index is
        not read for it): for callers after the file's metadata alone (the update plan, the
        /etc merge, set-id files), which would otherwise read the index of every package
        they look at."""
        if i < 0:
            i += self._n
        return self._entry(i, self.path(i), self.digest(i), with_extent=False)

    def _entry(self, i: int, path: str, digest: str, with_extent: bool = True) -> Entry:
        mode, flags, size = self.modes[i], self.flags[i], self.sizes[i]
        etype = _TYPES[stat.S_IFMT(mode)]
        extent = None
        if with_extent and self._extents_from is not None:
            self.load_extents()
        if (with_extent and etype is EntryType.FILE and size > 0 and not flags & _GHOST
                and self._ext_offset is not None):
            extent = self.extent(i)
        header = self.header
        return Entry(
            i, path, etype, mode, _value(self._users, i), _value(self._groups, i),
            self._mtimes[i] if self._mtimes is not None else 0,
            size,
            header.string_at(self._linktos[i]) if etype is EntryType.SYMLINK and self._linktos is not None else "",
            _value(self._caps, i) or None, self._rdevs[i] if self._rdevs is not None else 0,
            digest, self.digest_algo, flags, self.hardlink_keys.get(i), extent,
        )

    def outline(self) -> Iterator[tuple[str, EntryType, bool]]:
        """(path, type, %ghost) of every file in order, without making an Entry: for
        callers that need only where each file is and what it is."""
        for path, mode, flags in zip(self.paths(), self.modes, self.flags, strict=True):
            yield path, _TYPES[stat.S_IFMT(mode)], bool(flags & _GHOST)

    def mapped_paths(self, by_dirname: Callable[[str], str | None], each: Callable[[str], str]) -> Iterator[str]:
        """Every file's path mapped, in order: prefix + name where by_dirname gives a prefix
        for the file's directory name (asked once a name), else each(path). For a mapping
        that moves whole directories (a relocation): most paths cost one concatenation."""
        dirindexes = self._dirindexes
        if dirindexes is None:
            yield from map(each, self.paths())
            return
        dirnames = self._dirnames
        prefixes = [by_dirname(d) for d in dirnames]
        for name, k in zip(_decoded(self.header, self._names, 0, self._n), dirindexes, strict=True):
            prefix = prefixes[k]
            yield prefix + name if prefix is not None else each(dirnames[k] + name)

    def split_by_dirname(self) -> bool:
        """Whether every path is one of the directory names and a name without "/" (checked
        as the list was made): each file's parent is then its directory name."""
        return self._dirindexes is not None and self._plain

    def split_names(self) -> tuple[list[str], array[int], Iterator[bytes]] | None:
        """(DIRNAMES, DIRINDEXES, each file's name in order as the header holds its bytes,
        undecoded) when every path is a directory name and a name (split_by_dirname); else
        None. The names are split out of the header a chunk at a time."""
        dirindexes = self._dirindexes
        if dirindexes is None or not self.split_by_dirname():
            return None
        return self._dirnames, dirindexes, _raw(self.header, self._names, 0, self._n)

    def owner(self, i: int) -> tuple[str, str]:
        """The user and group names of file i."""
        return _value(self._users, i), _value(self._groups, i)

    def placed_dirnames(self) -> list[str] | None:
        """The directory names (DIRNAMES) of the files other than %ghost ones, each once, when
        every path is one of them and a name without "/" (so each such file's parent is its
        directory name); None where that is not so (old-style names, or a name holding "/"):
        then a caller asks paths(). Of a package without %ghost files, told in C."""
        dirindexes = self._dirindexes
        if dirindexes is None or not self.split_by_dirname():
            return None
        flags = self.flags
        if any(f & _GHOST for f in set(flags)):
            used = {k for k, f in zip(dirindexes, flags, strict=True) if not f & _GHOST}
        else:
            used = set(dirindexes)
        return [self._dirnames[k] for k in sorted(used)]

    def owner_names(self) -> tuple[set[str], set[str]]:
        """The user and the group names the files other than %ghost ones name."""
        found: tuple[set[str], set[str]] = (set(), set())
        flags = self.flags
        for (values, which), out in zip((self._users, self._groups), found, strict=True):
            if which is None:
                if any(not f & _GHOST for f in flags):
                    out.add(values[0])
            else:
                out.update(values[w] for w in {w for w, f in zip(which, flags, strict=True) if not f & _GHOST})
        return found

    def entries_below(self, directory: str) -> Iterator[Entry]:
        """The entries of directory and everything below it (an absolute path), in order, as
        metadata() makes them (no extent); no Entry is made for the others."""
        below = directory.rstrip("/") + "/"
        for i, path in self.paths_in(lambda d: may_lead_to(d, below)):
            if path.startswith(below) or path == below[:-1]:
                yield self._entry(i, path, self.digest(i), with_extent=False)

    def paths_in(self, directories: Callable[[str], bool]) -> Iterator[tuple[int, str]]:
        """(index, path) in order of the files whose directory name (DIRNAMES, "/usr/bin/")
        directories() holds for, decoding no other name: a caller that wants the paths
        below (or outside) some directory asks it of the names that may lead to one, then
        checks each path. Old-style file names have no directory names: every path."""
        dirindexes = self._dirindexes
        if dirindexes is None:
            yield from enumerate(self.paths())
            return
        wanted = [directories(d) for d in self._dirnames]
        if not any(wanted):
            return  # the common case: no file of this package, and nothing decoded
        dirnames, string_at, names = self._dirnames, self.header.string_at, self._names
        for i, k in enumerate(dirindexes):
            if wanted[k]:
                yield i, dirnames[k] + string_at(names[i])

    @overload
    def __getitem__(self, i: int) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...
    def __getitem__(self, i: int | slice) -> Entry | list[Entry]:
        if isinstance(i, slice):
            return [self.entry(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self.entry(i)

    def __iter__(self) -> Iterator[Entry]:
        """Every entry in order; paths and digests decoded a chunk at a time."""
        digests = (_decoded(self.header, self._digests, 0, self._n) if self._digests is not None
                   else itertools.repeat(""))
        for i, (path, digest) in enumerate(zip(self.paths(), digests, strict=False)):
            yield self._entry(i, path, digest)

    def payload_sizes(self) -> array[int]:
        """How many data bytes rpm writes after each entry's cpio header.

        Symlinks carry their target; of a hardlink set only the last member carries
        the content (rpm's rpmfiArchiveWriteHeader).
        """
        last_link: dict[int, int] = {}
        for i, key in self.hardlink_keys.items():
            last_link[key] = max(i, last_link.get(key, i))
        sizes = array("q", bytes(8 * self._n))
        for i in range(self._n):
            fmt = stat.S_IFMT(self.modes[i])
            if fmt == stat.S_IFLNK or (fmt == stat.S_IFREG and last_link.get(
                    self.hardlink_keys.get(i, i), i) == i):
                sizes[i] = self.sizes[i]
        return sizes


def header_files(header: Header, data: Iterable[tuple[int, int, int]] | None = None) -> FileList:
    """The header's file list; with ``data`` ((file index, offset, length) of the stored
    content), every regular file gets its extent, hardlinks sharing one."""
    files = FileList(header)
    if data is not None:
        files.set_extents(data)
    return files
