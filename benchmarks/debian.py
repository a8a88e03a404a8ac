"""Debian package metadata, read and translated into RPM terms.

Parses deb822 stanzas (apt's Packages index, a .deb's control file), compares
Debian versions, and translates relationship fields into RPM dependencies:
versions become epoch:version-release, `a | b` becomes the rich dependency
`(a or b)`, architecture qualifiers (`:any`) are dropped.
"""

from __future__ import annotations

import enum
import re
import subprocess
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# apt stores its lists compressed (lz4 here); apt-helper decompresses any of its formats.
APT_HELPER = "/usr/lib/apt/apt-helper"
APT_LISTS = Path("/var/lib/apt/lists")
COMPRESSED = {".lz4", ".gz", ".xz", ".zst", ".bz2", ".lzma"}


class DebianError(Exception):
    """Malformed Debian metadata; the message names the thing and the reason."""


def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Yield deb822 paragraphs as {field: value}; continuation lines are joined with newlines."""
    fields: dict[str, str] = {}
    last = ""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif line[0] in " \t":
            if not last:
                raise DebianError(f"line {lineno}: continuation line outside a field")
            fields[last] += "\n" + line[1:]
        else:
            key, sep, value = line.partition(":")
            if not sep:
                raise DebianError(f"line {lineno}: expected 'Field: value', got {line[:60]!r}")
            last = key.strip()
            fields[last] = value.strip()
    if fields:
        yield fields


def apt_index_files(suffix: str = "_main_binary-amd64_Packages") -> list[Path]:
    """apt's Packages lists for bookworm main amd64 (release, updates, security), newest wins later."""
    found = []
    for path in sorted(APT_LISTS.glob("*")):
        stem = path.name.removesuffix(path.suffix) if path.suffix in COMPRESSED else path.name
        if stem.endswith(suffix) and "bookworm" in stem and "backports" not in stem:
            found.append(path)
    return found


def read_index(path: Path) -> str:
    """The text of one apt list file, decompressed."""
    out = subprocess.run(
        [APT_HELPER, "cat-file", str(path)], check=True, capture_output=True
    ).stdout
    return out.decode("utf-8", errors="replace")


# --- versions -------------------------------------------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternating non-digit and digit runs, '~' sorting before everything."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


@dataclass(frozen=True, order=False)
class DebVersion:
    """A Debian version: [epoch:]upstream[-revision]."""

    epoch: int
    upstream: str
    revision: str

    @classmethod
    def parse(cls, text: str) -> DebVersion:
        text = text.strip()
        epoch_s, sep, rest = text.partition(":")
        if not sep:
            epoch_s, rest = "0", text
        if not epoch_s.isdigit() or not rest:
            raise DebianError(f"bad Debian version {text!r}")
        upstream, sep, revision = rest.rpartition("-")
        if not sep:
            upstream, revision = rest, ""
        return cls(int(epoch_s), upstream, revision)

    def compare(self, other: DebVersion) -> int:
        """<0, 0, >0 like dpkg --compare-versions."""
        if self.epoch != other.epoch:
            return self.epoch - other.epoch
        return _compare_part(self.upstream, other.upstream) or _compare_part(
            self.revision, other.revision
        )

    def __str__(self) -> str:
        head = f"{self.epoch}:" if self.epoch else ""
        tail = f"-{self.revision}" if self.revision else ""
        return f"{head}{self.upstream}{tail}"

    @property
    def rpm_version(self) -> str:
        # rpm forbids '-' and ':' inside a version; '_' is a separator to rpmvercmp as they are to dpkg.
        return re.sub(r"[^A-Za-z0-9._+~^]", "_", self.upstream)

    @property
    def rpm_release(self) -> str:
        """The Debian revision, or "0" for native packages (an rpm header needs a release).

        A revision without letters or digits (Debian's `<< 1.0-.` idiom, "after
        every revision of 1.0") has no such meaning to rpm, which ignores
        punctuation; a large number sorts after every real revision instead.
        """
        if self.revision and not re.search(r"[A-Za-z0-9]", self.revision):
            return "999999"
        return re.sub(r"[^A-Za-z0-9._+~^]", "_", self.revision) or "0"

    def rpm_evr(self, *, with_release: bool = True) -> str:
        """epoch:version-release as an rpm dependency version."""
        head = f"{self.epoch}:" if self.epoch else ""
        if self.revision and with_release:
            return f"{head}{self.rpm_version}-{self.rpm_release}"
        return f"{head}{self.rpm_version}"


# --- relationships --------------------------------------------------------------------------


class Sense(enum.IntFlag):
    """RPMSENSE_* comparison bits (rpmds.h)."""

    ANY = 0
    LESS = 1 << 1
    GREATER = 1 << 2
    EQUAL = 1 << 3
    SCRIPT_PRE = 1 << 9
    RPMLIB = 1 << 24


DEB_OPERATORS = {
    ">=": Sense.GREATER | Sense.EQUAL,
    "<=": Sense.LESS | Sense.EQUAL,
    "=": Sense.EQUAL,
    ">>": Sense.GREATER,
    "<<": Sense.LESS,
    ">": Sense.GREATER | Sense.EQUAL,  # obsolete dpkg spelling of >=
    "<": Sense.LESS | Sense.EQUAL,  # obsolete dpkg spelling of <=
}
RPM_OPERATORS = {
    Sense.GREATER | Sense.EQUAL: ">=",
    Sense.LESS | Sense.EQUAL: "<=",
    Sense.EQUAL: "=",
    Sense.GREATER: ">",
    Sense.LESS: "<",
}

_RELATION = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9+.\-]*)(?::[a-z0-9\-]+)?\s*"
    r"(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[^)\s]+)\s*\))?\s*"
    r"(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$"
)


@dataclass(frozen=True)
class Relation:
    """One Debian relation `name (op version)`; op and version empty when unversioned."""

    name: str
    op: str = ""
    version: str = ""

    @classmethod
    def parse(cls, text: str) -> Relation:
        m = _RELATION.match(text)
        if not m:
            raise DebianError(f"bad relation {text.strip()!r}")
        return cls(m["name"], m["op"] or "", m["version"] or "")

    @property
    def sense(self) -> Sense:
        return DEB_OPERATORS[self.op] if self.op else Sense.ANY

    def rpm_text(self) -> str:
        """`name op evr` as it appears inside an rpm rich dependency."""
        if not self.op:
            return self.name
        return f"{self.name} {RPM_OPERATORS[self.sense]} {self.rpm_evr}"

    @property
    def rpm_evr(self) -> str:
        """The version as rpm compares it.

        rpm ignores the release when a dependency has none, dpkg treats a missing
        revision as the lowest one: `>> 2.36` is met by 2.36-9 for dpkg but `> 2.36`
        is not by rpm. For `>>`, `<=` and `=` the missing revision is spelled out
        as "0", which sorts like dpkg's empty revision.
        """
        if not self.version:
            return ""
        v = DebVersion.parse(self.version)
        if not v.revision and self.sense in (Sense.GREATER, Sense.LESS | Sense.EQUAL, Sense.EQUAL):
            return f"{v.rpm_evr()}-0"
        return v.rpm_evr()

    def satisfied_by(self, name: str, version: DebVersion | None) -> bool:
        """Whether a package or provide `name` at `version` satisfies this relation, as dpkg decides."""
        if name != self.name:
            return False
        if not self.op:
            return True
        if version is None:
            return False
        c = version.compare(DebVersion.parse(self.version))
        sense = self.sense
        return bool(
            (c < 0 and sense & Sense.LESS)
            or (c == 0 and sense & Sense.EQUAL)
            or (c > 0 and sense & Sense.GREATER)
        )


def parse_relations(field: str) -> list[list[Relation]]:
    """A relationship field as a list of OR-groups."""
    groups = []
    for group in field.replace("\n", " ").split(","):
        if group.strip():
            groups.append([Relation.parse(alt) for alt in group.split("|")])
    return groups


@dataclass(frozen=True)
class Dependency:
    """One rpm dependency: name (possibly a rich `(a or b)`), flags and version."""

    name: str
    flags: int = 0
    version: str = ""

    def __str__(self) -> str:
        op = RPM_OPERATORS.get(Sense(self.flags & 0xE))
        return f"{self.name} {op} {self.version}" if op and self.version else self.name


def to_rpm_dependency(group: list[Relation], extra: Sense = Sense.ANY) -> Dependency:
    """One Debian OR-group as an rpm dependency: plain when one alternative, else `(a or b)`."""
    if len(group) == 1:
        rel = group[0]
        return Dependency(rel.name, int(rel.sense | extra), rel.rpm_evr)
    # rpm parses `(a or b)` itself; duplicates inside an or are harmless but untidy.
    alts = list(dict.fromkeys(rel.rpm_text() for rel in group))
    if len(alts) == 1:
        return to_rpm_dependency(group[:1], extra)
    return Dependency("(" + " or ".join(alts) + ")", int(extra))


def translate(fields: dict[str, str], names: Iterable[str],
              keep: Callable[[Relation], bool] = lambda rel: True) -> list[Dependency]:
    """Translate the given relationship fields (in order) into unique rpm dependencies."""
    seen: dict[str, Dependency] = {}
    for field in names:
        extra = Sense.SCRIPT_PRE if field == "Pre-Depends" else Sense.ANY
        for group in parse_relations(fields.get(field, "")):
            kept = [rel for rel in group if keep(rel)]
            if kept:
                dep = to_rpm_dependency(kept, extra)
                seen.setdefault(str(dep), dep)
    return list(seen.values())


@dataclass(frozen=True)
class DebPackage:
    """The fields of one binary package stanza that the corpus and index need."""

    name: str
    version: DebVersion
    arch: str
    fields: dict[str, str]

    @classmethod
    def from_stanza(cls, fields: dict[str, str]) -> DebPackage:
        try:
            return cls(fields["Package"], DebVersion.parse(fields["Version"]),
                       fields["Architecture"], fields)
        except KeyError as e:
            raise DebianError(f"stanza {fields.get('Package', '?')}: missing field {e}") from None

    @property
    def rpm_arch(self) -> str:
        return {"all": "noarch", "amd64": "x86_64", "i386": "i686", "arm64": "aarch64"}.get(
            self.arch, self.arch
        )

    @property
    def installed_size(self) -> int:
        return int(self.fields.get("Installed-Size", "0")) * 1024

    def provides(self) -> list[Dependency]:
        """Self-provide `name = evr` (as rpmbuild adds) plus the Provides field, versions kept."""
        own = Dependency(self.name, int(Sense.EQUAL), self.version.rpm_evr())
        deps = [own]
        for group in parse_relations(self.fields.get("Provides", "")):
            for rel in group:
                deps.append(Dependency(rel.name, int(rel.sense), rel.rpm_evr))
        return list(dict.fromkeys(deps))

    def requires(self) -> list[Dependency]:
        return translate(self.fields, ("Pre-Depends", "Depends"))

    def conflicts(self, virtual: Container[str] = frozenset()) -> list[Dependency]:
        """Conflicts and Breaks (for an image, "not both configured" is a conflict).

        A versioned relation never matches an unversioned Provides for dpkg, but
        does for rpm: versioned conflicts on names in `virtual` (provided without
        a version somewhere) are left out rather than made to hit the providers.
        """
        return translate(self.fields, ("Conflicts", "Breaks"),
                         keep=lambda rel: not (rel.op and rel.name in virtual))

    def recommends(self) -> list[Dependency]:
        return translate(self.fields, ("Recommends",))

    def suggests(self) -> list[Dependency]:
        return translate(self.fields, ("Suggests",))

    def enhances(self) -> list[Dependency]:
        return translate(self.fields, ("Enhances",))

    @property
    def summary(self) -> str:
        return self.fields.get("Description", self.name).split("\n", 1)[0]

    @property
    def description(self) -> str:
        body = self.fields.get("Description", "").split("\n", 1)
        lines = body[1].split("\n") if len(body) > 1 else []
        return "\n".join("" if ln.strip() == "." else ln for ln in lines) or self.summary


def load_index(paths: Iterable[Path], arches: tuple[str, ...] = ("amd64", "all")) -> dict[str, DebPackage]:
    """The newest version of every package across the given apt lists (apt's candidate, unpinned)."""
    best: dict[str, DebPackage] = {}
    for path in paths:
        text = read_index(path) if path.suffix in COMPRESSED else path.read_text()
        for stanza in parse_stanzas(text):
            pkg = DebPackage.from_stanza(stanza)
            if pkg.arch not in arches:
                continue
            old = best.get(pkg.name)
            if old is None or pkg.version.compare(old.version) > 0:
                best[pkg.name] = pkg
    return best


def unversioned_provides(pkgs: Iterable[DebPackage]) -> frozenset[str]:
    """Names some package provides without a version (which versioned relations never match)."""
    names: set[str] = set()
    for pkg in pkgs:
        for group in parse_relations(pkg.fields.get("Provides", "")):
            names.update(rel.name for rel in group if not rel.op)
    return frozenset(names)
