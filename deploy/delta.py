"""An update built from the previous deployment instead of from nothing.

The new deployment starts as a writable snapshot of the current default, and only
the paths where the new image differs are touched: entries of removed packages are
deleted, entries that changed are written, entries an updated package carries over
unchanged (same type, owner, mode, mtime and content digest) are left as they are.
The update then costs the changed files and their metadata, not a new copy of
every inode of the image.

The result must equal a fresh build of the new image, in which packages are
extracted in manifest order and the last one to write a path wins. So both images
are laid out that way (path -> winning entry) and compared; wherever a shortcut
could differ from a fresh build (a directory symlink that changes, a path whose
entries disagree on its type, owner names that now resolve to other ids, a base
tree that isn't as recorded), planning or applying raises `NoDelta` and the caller
builds from scratch.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from deploy.headers import HEADER_DIR
from imagespec.relocation import USR_TREE
from rpmextents import Entry, Owners
from rpmextents.files import EntryType, FileFlag, FileList, entry_type
from rpmextents.header import STRONG_HASH_ALGOS
from rpmextents.tree import Tree


class NoDelta(Exception):
    """The update can't be built from the previous deployment; str() says why."""


@dataclass(frozen=True)
class Placed:
    """The entry a fresh build leaves at a path: the last package's to write it."""

    key: str  # the package's sha256
    entry: Entry


# A package's entries in a placement: its file list (or entry list), or, of a package an
# update keeps, only the entries the plan looked at, by position (Kept.outline_within).
Entries = Sequence[Entry] | Mapping[int, Entry]

_SHIFT = 32  # a placed file is (package number << _SHIFT) | its position in the package's list
_POSITION = (1 << _SHIFT) - 1


@dataclass
class Placement:
    """A whole image as a fresh build lays it out, by tree-relative path ("" is the top).

    Each path maps to one int (package number, file index); the Entry is made from the
    package's file list when asked, so an image costs a dict of its paths, not an object
    per file.
    """

    packages: list[tuple[str, Entries]] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    types: dict[str, EntryType] = field(default_factory=dict)  # each path's placed entry's type
    mixed: set[str] = field(default_factory=set)  # paths whose entries disagree on their type

    @classmethod
    def of(cls, packages: Iterable[tuple[str, Entries]],
           placed: dict[str, Outline] | None = None) -> Placement:
        """The layout of packages (key, file list) in order. placed: each package's outline
        by key, filled as they are made; the old and the new image of an update share most
        packages, whose paths are then relocated once."""
        layout = cls()
        codes, types = layout.codes, layout.types
        mixed_add = layout.mixed.add
        for number, (key, entries) in enumerate(packages):
            layout.packages.append((key, entries))
            outline = placed.get(key) if placed is not None else None
            if outline is None:
                assert isinstance(entries, Sequence), "a kept package's entries come with its outline"
                outline = _placed_outline(entries)
                if placed is not None:
                    placed[key] = outline
            base = number << _SHIFT
            for position, path, etype in zip(*outline, strict=True):
                before = types.get(path)
                if before is not None and before is not etype:
                    mixed_add(path)
                codes[path] = base | position
                types[path] = etype
        return layout

    def entry(self, code: int) -> Entry:
        """The placed entry, its metadata alone where it is a file list's (the plan compares
        what the headers say; nothing reads its data through it)."""
        entries = self.packages[code >> _SHIFT][1]
        if isinstance(entries, FileList):
            return entries.metadata(code & _POSITION)
        return entries[code & _POSITION]

    def same_entry(self, code: int, other: Placement, other_code: int) -> bool:
        """Whether code here and other_code in other place the same package's same entry
        (known without reading the entries when both lists are a package's file list)."""
        mine, theirs = self.packages[code >> _SHIFT], other.packages[other_code >> _SHIFT]
        if mine[0] != theirs[0]:
            return False
        if isinstance(mine[1], FileList) and isinstance(theirs[1], FileList):
            return code & _POSITION == other_code & _POSITION  # an Entry's index is its position
        return self.entry(code).index == other.entry(other_code).index

    def hardlink_key(self, code: int) -> int | None:
        entries = self.packages[code >> _SHIFT][1]
        if isinstance(entries, FileList):
            return entries.hardlink_keys.get(code & _POSITION)
        return self.entry(code).hardlink_key

    def key(self, code: int) -> str:
        return self.packages[code >> _SHIFT][0]

    def at(self, path: str) -> Placed | None:
        code = self.codes.get(path)
        return None if code is None else Placed(self.key(code), self.entry(code))

    @property
    def placed(self) -> Mapping[str, Placed]:
        """path -> Placed, made on demand (for callers that want the whole view)."""
        return {path: Placed(self.key(c), self.entry(c)) for path, c in self.codes.items()}

    @functools.cached_property
    def parents(self) -> set[str]:
        """Every directory some path lies below: the tree-relative ancestors of all paths."""
        return _with_ancestors(path.rpartition("/")[0] for path in self.codes)


# A package's entries but %ghost ones: (their positions, tree-relative paths, types).
Outline = tuple["array[int]", list[str], list[EntryType]]


def _placed_outline(entries: Sequence[Entry]) -> Outline:
    if isinstance(entries, FileList):
        return _list_outline(entries)
    positions: array[int] = array("I")
    paths: list[str] = []
    types: list[EntryType] = []
    tree_path = USR_TREE.tree_path
    for position, e in enumerate(entries):
        if not e.ghost:
            positions.append(position)
            paths.append(tree_path(e.path))
            types.append(e.type)
    return positions, paths, types


_GHOST = int(FileFlag.GHOST)  # an int: IntFlag's & is Python code, run for every file


def _list_outline(files: FileList) -> Outline:
    """_placed_outline of a file list from its columns: the paths relocated by directory
    name, the types by mode, no Entry made."""
    positions: array[int] = array("I")
    paths: list[str] = []
    types: list[EntryType] = []
    type_of = {mode: entry_type(mode) for mode in set(files.modes)}
    rel_paths = files.mapped_paths(USR_TREE.tree_dir, USR_TREE.tree_path)
    for position, (rel, mode, flags) in enumerate(zip(rel_paths, files.modes, files.flags, strict=True)):
        if not flags & _GHOST:
            positions.append(position)
            paths.append(rel)
            types.append(type_of[mode])
    return positions, paths, types


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def same_result(a: Entry, b: Entry) -> bool:
    """Whether writing b where a stands would leave the tree as it is (owner ids aside,
    which the caller checks for the whole image)."""
    if a.type is not b.type or a.mode != b.mode or a.user != b.user or a.group != b.group:
        return False
    if a.type is EntryType.DIR:
        return True  # a directory's mtime is whatever its last change made it, as with rpm
    if a.mtime != b.mtime:
        return False
    if a.type is EntryType.SYMLINK:
        return a.linkto == b.linkto
    if a.type is EntryType.FILE:
        return (
            a.hardlink_key is None and b.hardlink_key is None  # links are rewritten as groups
            and a.size == b.size and a.caps == b.caps
            and a.digest_algo == b.digest_algo and a.digest_algo in STRONG_HASH_ALGOS
            and bool(a.digest) and a.digest == b.digest
        )
    return a.rdev == b.rdev


@dataclass(frozen=True)
class Plan:
    """What turns a tree of the old image into one of the new."""

    delete: tuple[str, ...]  # non-directories, then directories deepest first
    reset_dirs: tuple[str, ...]  # directories no package owns any more, kept as parents
    write: Mapping[str, frozenset[int]]  # package sha256 -> indices of the entries to write
    kept: int  # paths left untouched


def _is_dir(at: Placed | None) -> bool:
    return at is not None and at.entry.type is EntryType.DIR


def _depth_first(paths: Iterable[str]) -> list[str]:
    return sorted(paths, key=lambda p: (-p.count("/"), p))


def _written(old: Placement, new: Placement) -> set[str]:
    """Paths of new whose entry differs from what old leaves there."""
    write: set[str] = set()
    old_codes = old.codes
    # A path both place from the same package's file list at the same position is the same
    # entry (same_entry's first case), known here without a call for each of the paths (so
    # is one both place from a kept package's same directory entry: _Sparse).
    old_lists = [k if isinstance(e, FileList | _Sparse) else None for k, e in old.packages]
    new_lists = [k if isinstance(e, FileList | _Sparse) else None for k, e in new.packages]
    for path, code in new.codes.items():
        before = old_codes.get(path)
        if before is None:
            write.add(path)
            continue
        key = new_lists[code >> _SHIFT]
        if key is not None and key == old_lists[before >> _SHIFT] and before & _POSITION == code & _POSITION:
            continue
        if not old.same_entry(before, new, code) and not same_result(old.entry(before), new.entry(code)):
            write.add(path)
    # A hardlinked file is written with every other winning member of its group: looked for
    # in the packages written paths are placed from, where any of them has hardlinks.
    keys = {new.packages[new.codes[path] >> _SHIFT][0] for path in write}
    linking = {n for n, (k, e) in enumerate(new.packages)
               if k in keys and (not isinstance(e, FileList) or e.hardlink_keys)}
    if not linking:
        return write
    groups: dict[tuple[str, int], list[str]] = {}
    linked: dict[str, tuple[str, int]] = {}
    for path, code in new.codes.items():
        if code >> _SHIFT not in linking:
            continue
        link = new.hardlink_key(code)
        if link is not None:
            linked[path] = (new.key(code), link)
            groups.setdefault(linked[path], []).append(path)
    for path in list(write):
        if path in linked:
            write.update(groups[linked[path]])
    return write


def _check(old: Placement, new: Placement, changed: set[str]) -> None:
    parents = old.parents | new.parents
    for path in sorted(changed):
        if path in old.mixed or path in new.mixed:
            raise NoDelta(f"/{path}: packages disagree on what it is")
        before, after = old.at(path), new.at(path)
        if path in parents and EntryType.SYMLINK in {p.entry.type for p in (before, after) if p is not None}:
            raise NoDelta(f"/{path}: a symlink that other paths lie below changes")
        for layout, at in ((old, before), (new, after)):
            if at is not None and at.entry.type is not EntryType.DIR and path in layout.parents:
                raise NoDelta(f"/{path}: other paths lie below a {at.entry.type.value}")


def plan(old: Placement, new: Placement) -> Plan:
    """The smallest set of changes that makes a tree laid out as `old` equal one laid out as `new`."""
    write = _written(old, new)
    old_types, new_types = old.types, new.types
    gone = {path for path, etype in old_types.items() if new_types.get(path) is not etype}
    _check(old, new, write | gone)
    files = sorted(p for p in gone if old_types[p] is not EntryType.DIR)
    dirs = {p for p in gone if old_types[p] is EntryType.DIR and p not in new.parents}
    # Directories rpm made only as parents, that nothing lies below any more.
    dirs |= {p for p in old.parents - new.parents if not _is_dir(new.at(p))}
    reset = sorted(
        p for p, etype in old_types.items()
        if etype is EntryType.DIR and p not in new.codes and p in new.parents
    )
    by_package: dict[str, set[int]] = {}
    for path in write:
        code = new.codes[path]
        by_package.setdefault(new.key(code), set()).add(new.entry(code).index)
    return Plan(
        delete=(*files, *_depth_first(dirs)),
        reset_dirs=tuple(reset),
        write={k: frozenset(v) for k, v in by_package.items()},
        kept=len(new.codes) - len(write),
    )


def plan_update(old: Sequence[tuple[str, Sequence[Entry] | None]],
                new: Sequence[tuple[str, Sequence[Entry] | None]],
                kept: Kept | None = None, load: Callable[[str], Sequence[Entry]] | None = None) -> Plan:
    """plan() of the images old and new (each package's key and file list, in order, as
    Placement.of takes them), comparing only the paths where they can differ.

    Those are the paths of the packages one image has and the other lacks, the directories
    that lie above paths of one image and not of the other, and the other paths of a
    hardlink group any of those is in. Every other path is owned by the same packages in
    both, and the same one wins it, when the packages both images have stand in the same
    order in both: an update of the benchmark image compares a thousand of its 30,000
    paths. Where that order differs (or a key repeats), every path is compared.
    kept counts the compared paths left as they were.

    kept: what old's packages are (Kept, of the old image), for the packages both images
    have that come without a file list (None): the plan then reads one (load) only where
    kept can't tell what the package places at a compared path (a file, not a directory;
    most compared paths another package places are the directories all packages share)."""
    lists: dict[str, Sequence[Entry] | None] = {**dict(old), **dict(new)}
    missing = [k for k, e in lists.items() if e is None]
    if missing and (kept is None or load is None):
        raise ValueError("packages without a file list need kept and load")

    def loaded(key: str) -> Sequence[Entry]:
        entries = lists[key]
        if entries is None:
            assert load is not None
            entries = lists[key] = load(key)
        return entries

    old_keys, new_keys = [k for k, _ in old], [k for k, _ in new]
    in_old, in_new = set(old_keys), set(new_keys)
    if (len(in_old) < len(old_keys) or len(in_new) < len(new_keys)
            or [k for k in old_keys if k in in_new] != [k for k in new_keys if k in in_old]):
        placed: dict[str, Outline] = {}
        return plan(Placement.of([(k, loaded(k)) for k in old_keys], placed),
                    Placement.of([(k, loaded(k)) for k in new_keys], placed))
    outlines = {k: _placed_outline(loaded(k)) for k in in_old ^ in_new}
    parent_dirs = {k: _parent_dirs(e) if e is not None else kept.parent_dirs(k)  # type: ignore[union-attr]
                   for k, e in lists.items()}
    old_parents = _with_ancestors(d for k in old_keys for d in parent_dirs[k])
    new_parents = _with_ancestors(d for k in new_keys for d in parent_dirs[k])
    paths = {path for _, placed_paths, _ in outlines.values() for path in placed_paths}
    paths |= old_parents ^ new_parents
    shared = [k for k in old_keys if k in in_new]
    sparse: dict[str, Mapping[int, Entry]] = {}
    hits: dict[str, set[str]] = {}  # kept packages that may place compared paths: those paths
    looked: set[str] = set()
    while True:
        dirs = {rel.rpartition("/")[0] for rel in paths}
        if kept is not None:
            for path in paths - looked:
                for key in kept.owners(path):
                    hits.setdefault(key, set()).add(path)
            looked |= paths
        for k in shared:
            if lists[k] is None:
                assert kept is not None
                found = kept.outline_within(k, hits.get(k, ()))
                if found is not None:
                    outlines[k], sparse[k] = found
                    continue
            outlines[k] = _outline_within(loaded(k), paths, dirs)
        linked = {path for k in shared if (e := lists[k]) is not None
                  for path in _group_paths(e, outlines[k][0])}
        if linked <= paths:
            break
        paths |= linked

    def entries(key: str) -> Entries:
        e = lists[key]
        return e if e is not None else sparse[key]

    old_layout = Placement.of([(k, entries(k)) for k in old_keys], outlines)
    new_layout = Placement.of([(k, entries(k)) for k in new_keys], outlines)
    # Every path's ancestors, not only the compared paths': the checks ask about all of them.
    old_layout.parents, new_layout.parents = old_parents, new_parents
    try:
        return plan(old_layout, new_layout)
    except KeptError:  # a record of a kept package not as written: their file lists tell
        return plan_update([(k, loaded(k)) for k in old_keys], [(k, loaded(k)) for k in new_keys])


class KeptError(Exception):
    """What was kept of a package can't be used (deploy.summaries: a record not as written)."""


class DirEntries(Protocol):
    """A package's placed directories by tree path, as PlanPart keeps them."""

    def index_of(self, rel: str) -> int | None:
        """The index of the directory entry placed at rel; None when it places none there
        (or what was kept of it is not as written)."""

    def entry(self, rel: str) -> Entry:
        """The directory entry placed at rel (KeptError: not as written)."""


def dir_entry(index: int, path: str, mode: int, user: str, group: str) -> Entry:
    """A directory entry as a PlanPart keeps it: what the plan compares of a directory (its
    index, type, mode and owner: same_result), its other fields empty."""
    return Entry(index, path, EntryType.DIR, mode, user, group, 0, 0, "", None, 0, "", "", 0, None)


class DirMap(dict[str, Entry]):
    """DirEntries of Entries at hand."""

    def index_of(self, rel: str) -> int | None:
        e = self.get(rel)
        return None if e is None else e.index

    def entry(self, rel: str) -> Entry:
        return self[rel]


@dataclass(frozen=True)
class PlanPart:
    """What an update's plan asks of a package both its images have, kept (deploy.summaries)
    so that its file list need not be read: the parents of its placed paths, its placed
    directories, and a CRC-32 of each of its placed paths (to tell where it may place a
    compared path that is not one of its directories). exact: no path placed twice."""

    parent_dirs: tuple[str, ...]  # sorted (a tuple: a set of a few hundred kB an image)
    dirs: DirEntries  # entries as dir_entry makes them, or a package's own
    placed: array[int]  # CRC-32 of each placed tree path, in the package's order
    exact: bool


def path_crc(rel: str) -> int:
    return zlib.crc32(rel.encode("utf-8", "surrogateescape"))


def plan_part(entries: Sequence[Entry]) -> PlanPart:
    """The PlanPart of a package's file list (or entries). Of a file list, its directories'
    entries hold what the plan compares of a directory (DirMap) and its paths are relocated
    only where they must be (a directory's, or one outside /usr's directories)."""
    if isinstance(entries, FileList):
        split = entries.split_names()
        if split is not None:
            return _list_part(entries, *split)
    positions, rels, types = _placed_outline(entries)
    dirs = DirMap((rel, entries[pos]) for pos, rel, t in zip(positions, rels, types, strict=True)
                  if t is EntryType.DIR)
    return PlanPart(tuple(sorted(_parent_dirs(entries))), dirs, array("I", map(path_crc, rels)),
                    len(set(rels)) == len(rels))


def _list_part(files: FileList, dirnames: list[str], dirindexes: array[int], names: Iterator[bytes]) -> PlanPart:
    """plan_part of a file list whose paths are its directory names and names: the CRC-32
    of a path below /usr is its directory's relocated name's, continued over the name's
    bytes (no path made)."""
    prefixes = [USR_TREE.tree_dir(d) for d in dirnames]
    prefix_crcs = [None if p is None else zlib.crc32(p.encode("utf-8", "surrogateescape")) for p in prefixes]
    crcs: array[int] = array("I")
    dirs = DirMap()
    modes, flags, crc32 = files.modes, files.flags, zlib.crc32
    for i, (name, k) in enumerate(zip(names, dirindexes, strict=True)):
        if flags[i] & _GHOST:
            continue
        start = prefix_crcs[k]
        is_dir = modes[i] & 0o170000 == stat.S_IFDIR
        if start is None or is_dir:
            text = name.decode("utf-8", "surrogateescape")
            prefix = prefixes[k]
            rel = prefix + text if prefix is not None else USR_TREE.tree_path(dirnames[k] + text)
            crc = path_crc(rel)
            if is_dir:
                dirs[rel] = dir_entry(i, dirnames[k] + text, modes[i], *files.owner(i))
        else:
            crc = crc32(name, start)
        crcs.append(crc)
    # A path placed twice (a directory among them) gives one CRC-32 twice: told apart from
    # two paths of one CRC-32 by the paths themselves.
    exact = len(set(crcs)) == len(crcs)
    if not exact:
        rels = _placed_outline(files)[1]
        exact = len(set(rels)) == len(rels)
    return PlanPart(tuple(sorted(_parent_dirs(files))), dirs, crcs, exact)


class _Sparse(Mapping[int, Entry]):
    """Of a package known by its PlanPart, the directory entries the plan compares, by index
    (= position): each made an Entry only when the plan asks for it (the winner of a path
    most packages place, not every package's)."""

    def __init__(self, dirs: DirEntries, at: dict[int, str]) -> None:
        self._dirs, self._at = dirs, at

    def __getitem__(self, index: int) -> Entry:
        return self._dirs.entry(self._at[index])

    def __iter__(self) -> Iterator[int]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)


_NUMBER = (1 << 32) - 1


def crc_table(placed: Iterable[array[int]]) -> array[int]:
    """Kept's table of packages' placed paths' CRC-32s (each package's, in order)."""
    return array("Q", sorted(crc << 32 | n for n, crcs in enumerate(placed) for crc in crcs))


class Kept:
    """The PlanParts of an image's packages (in its order) and one sorted table of their
    placed paths' CRC-32s: which of them may place a path is a bisection, not a question
    to each."""

    def __init__(self, keys: Sequence[str], parts: Mapping[str, PlanPart],
                 table: array[int] | None = None) -> None:
        """table: (CRC-32 << 32 | package number) of every placed path, sorted, when known
        (deploy.summaries keeps it); else made from the parts."""
        self.keys = list(keys)
        self.parts = parts
        self.table = table if table is not None else crc_table(parts[key].placed for key in self.keys)

    def parent_dirs(self, key: str) -> tuple[str, ...]:
        return self.parts[key].parent_dirs

    def owners(self, rel: str) -> Iterator[str]:
        """The keys of the packages that may place rel (all that do, and a few that don't)."""
        crc = path_crc(rel)
        table, keys = self.table, self.keys
        i = bisect_left(table, crc << 32)
        while i < len(table) and table[i] >> 32 == crc:
            number = table[i] & _NUMBER
            if number < len(keys):
                yield keys[number]
            i += 1

    def outline_within(self, key: str, paths: Iterable[str]) -> tuple[Outline, Mapping[int, Entry]] | None:
        """The package's outline within paths (those of them it may place: owners()) and its
        entries there by position, when all of them are directories it places; None when
        one may be anything else (or the part is not exact, or not as written): then its
        file list tells."""
        part = self.parts[key]
        if not part.exact:
            return None
        at: dict[int, str] = {}
        index_of = part.dirs.index_of
        for rel in paths:
            index = index_of(rel)
            if index is None or index in at:
                return None
            at[index] = rel
        order = sorted(at)
        rels = [at[i] for i in order]
        return (array("I", order), rels, [EntryType.DIR] * len(order)), _Sparse(part.dirs, at)


def _parent_dirs(entries: Sequence[Entry]) -> set[str]:
    """The tree-relative parents of a package's placed (not %ghost) paths: of a file list,
    from its directory names, decoding the names of files outside /usr's directories only."""
    tree_path = USR_TREE.tree_path
    dirnames = entries.placed_dirnames() if isinstance(entries, FileList) else None
    if dirnames is None:
        return {rel.rpartition("/")[0] for rel in _placed_outline(entries)[1] if rel}
    found = {parent for d in dirnames if (parent := _tree_parent(d)) is not None}
    assert isinstance(entries, FileList)
    for i, path in entries.paths_in(lambda d: _tree_parent(d) is None):
        rel = tree_path(path)
        if rel and not entries.flags[i] & _GHOST:
            found.add(rel.rpartition("/")[0])
    return found


@functools.lru_cache(maxsize=4096)
def _tree_parent(dirname: str) -> str | None:
    """The tree-relative parent of the files of a directory name below /usr ("/usr/bin/":
    "bin"), None for any other (their tree paths are asked one by one). Remembered: most
    directory names are many packages' ("/usr/share/doc/"), and asked again at every pass."""
    prefix = USR_TREE.tree_dir(dirname)
    return None if prefix is None else prefix.rstrip("/")


def _with_ancestors(dirs: Iterable[str]) -> set[str]:
    """dirs and all their ancestors, with what every tree has ("" and the header files'
    directory, which stands in every deployment)."""
    found = {"", *_ancestors(f"{HEADER_DIR}/-")}
    for path in dirs:
        while path not in found:
            found.add(path)
            path = path.rpartition("/")[0]
    return found


def _outline_within(entries: Sequence[Entry], paths: set[str], dirs: set[str]) -> Outline:
    """A package's outline, only the paths of it in paths (whose parents are dirs); of a
    plain file list, only the names in those directories are decoded."""
    if not isinstance(entries, FileList) or not entries.split_by_dirname():
        positions_all, rels_all, types_all = _placed_outline(entries)
        keep = [n for n, rel in enumerate(rels_all) if rel in paths]
        return (array("I", [positions_all[n] for n in keep]), [rels_all[n] for n in keep],
                [types_all[n] for n in keep])
    tree_path = USR_TREE.tree_path

    def wanted(d: str) -> bool:
        parent = _tree_parent(d)
        return parent is None or parent in dirs

    positions: array[int] = array("I")
    rels: list[str] = []
    types: list[EntryType] = []
    modes, flags = entries.modes, entries.flags
    for i, path in entries.paths_in(wanted):
        # tree_path, its common case written out: a path below /usr loses "/usr/".
        rel = path[5:] if path.startswith("/usr/") else tree_path(path)
        if not flags[i] & _GHOST and rel in paths:
            positions.append(i)
            rels.append(rel)
            types.append(entry_type(modes[i]))
    return positions, rels, types


def _group_paths(entries: Sequence[Entry], positions: Iterable[int]) -> set[str]:
    """The tree paths of every member of the hardlink groups of the entries at positions."""
    tree_path = USR_TREE.tree_path
    if isinstance(entries, FileList):
        keys = entries.hardlink_keys
        groups = {keys[i] for i in positions if i in keys}
        return {tree_path(entries.path(j)) for j, g in keys.items() if g in groups} if groups else set()
    groups_of = {entries[i].hardlink_key for i in positions} - {None}
    return {tree_path(e.path) for e in entries if e.hardlink_key in groups_of and not e.ghost}


def check_owners(recorded: Mapping[str, Mapping[str, int | None]], owners: Owners) -> None:
    """Raise NoDelta when a name the base deployment used now resolves to another id."""
    for kind, table in (("users", owners.users), ("groups", owners.groups)):
        for name, was in recorded.get(kind, {}).items():
            now = table.get(name)
            if now != was:
                raise NoDelta(f"{kind[:-1]} {name} is {now} now, {was} in the previous deployment")


def remove(root: str, plan: Plan) -> None:
    """Delete what the new image no longer has and reset directories that lost their owner.

    Paths resolve inside the tree as extraction resolves them (a directory symlink is
    followed within the tree, never out of it); nothing is followed at the last component.
    """
    with Tree(root, USR_TREE) as tree:
        for path in plan.delete:
            image = USR_TREE.image_path(path)
            try:
                dir_fd, name, _ = tree.find(image)
                mode = os.lstat(name, dir_fd=dir_fd).st_mode
                if stat.S_ISDIR(mode):
                    os.rmdir(name, dir_fd=dir_fd)
                else:
                    os.unlink(name, dir_fd=dir_fd)
                if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
                    tree.forget(image)  # what was resolved through it is gone
            except FileNotFoundError:
                pass  # already gone with a directory symlink's other name
            except OSError as e:
                if e.errno == errno.ENOTEMPTY:
                    raise NoDelta(f"/{path} holds files no package of the new image owns") from e
                raise
        mask = os.umask(0)
        os.umask(mask)
        for path in plan.reset_dirs:
            # As a fresh build makes a directory only needed as a parent: root's, 0755 less the umask.
            dir_fd, name, _ = tree.find(USR_TREE.image_path(path))
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o755 & ~mask)
            finally:
                os.close(fd)
