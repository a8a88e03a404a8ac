"""Image definitions: a strict TOML schema, with errors that name the key and its line.

tomllib reports line numbers only for syntax errors, so schema errors locate the key
by scanning the source text for it within its table (see `_KeyLines`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from host.files import ReadRefused, read_limited
from rpmextents.index import DEFAULT_BLOCK_SIZE, block_size_problem
from solver.errors import DefinitionError

# zypp marks packages that may be installed in several versions side by side this way.
DEFAULT_MULTIVERSION = ("multiversion(kernel)",)
MAX_DEFINITION = 1 << 20  # bytes; a definition is a page of TOML
REPO_SCHEMES = ("http", "https", "file")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_ARCH = re.compile(r"^[A-Za-z0-9_]+$")

T = TypeVar("T")


@dataclass(frozen=True)
class RepoSource:
    """One `[[repo]]` table: where rpm-md metadata lives and which key signs its packages."""

    name: str
    url: str
    gpgkey: str | None = None  # a URL, or an absolute path (relative ones resolved on load)
    priority: int = 99  # lower wins, as in zypper (whose default is 99 too)
    # Fingerprints a key fetched from a URL must have (upper-case hex, no spaces).
    gpgkey_fingerprint: tuple[str, ...] = ()
    max_metadata_age: int | None = None  # seconds; older signed metadata fails the compose
    allow_weak_checksums: bool = False  # accept md5/sha1 checksums from this repository

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "gpgkey": self.gpgkey,
                "priority": self.priority, "gpgkey_fingerprint": list(self.gpgkey_fingerprint),
                "max_metadata_age": self.max_metadata_age,
                "allow_weak_checksums": self.allow_weak_checksums}


@dataclass(frozen=True)
class ImageDefinition:
    """What an image contains: the solver job and the repositories it draws from."""

    name: str
    arch: str
    packages: tuple[str, ...]
    repos: tuple[RepoSource, ...]
    exclude: tuple[str, ...] = ()
    ignore_recommends: bool = True
    multiversion: tuple[str, ...] = DEFAULT_MULTIVERSION
    block_size: int = DEFAULT_BLOCK_SIZE
    allow_downgrade: tuple[str, ...] = ()  # package names that may go back to an older EVR

    def canonical(self) -> dict[str, Any]:
        """A JSON-able form that hashes the same for the same job (used for inputs_sha256)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "packages": list(self.packages),
            "exclude": list(self.exclude),
            "ignore_recommends": self.ignore_recommends,
            "multiversion": list(self.multiversion),
            "block_size": self.block_size,
            "allow_downgrade": list(self.allow_downgrade),
            "repos": [r.canonical() for r in self.repos],
        }


class _KeyLines:
    """Finds the line on which a key is set, table by table, in TOML source text."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")

    def __init__(self, source: str) -> None:
        # (table, array index, key) -> 1-based line number; table "" is the root.
        self.lines: dict[tuple[str, int, str], int] = {}
        self.tables: dict[tuple[str, int], int] = {}
        table, index = "", 0
        counts: dict[str, int] = {}
        for number, line in enumerate(source.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                table = header.group(2).strip().strip("\"'")
                if header.group(1) == "[[":
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                else:
                    index = 0
                self.tables.setdefault((table, index), number)
                continue
            key = self._KEY.match(line)
            if key:
                self.lines.setdefault((table, index, key.group(1).strip("\"'")), number)

    def find(self, table: str, index: int, key: str | None) -> int | None:
        if key is None:
            return self.tables.get((table, index))
        return self.lines.get((table, index, key))


class _Validator:
    """Checks one parsed table, reporting errors as `PATH:LINE: message`."""

    def __init__(self, path: Path, lines: _KeyLines, table: str = "", index: int = 0) -> None:
        self.path = path
        self.lines = lines
        self.table = table
        self.index = index

    def where(self, key: str | None) -> str:
        line = self.lines.find(self.table, self.index, key)
        location = os.fspath(self.path) + (f":{line}" if line else "")
        if self.table:
            location += f": in [[{self.table}]] #{self.index + 1}"
        return location

    def fail(self, key: str | None, message: str) -> DefinitionError:
        return DefinitionError(f"{self.where(key)}: {message}")

    def reject_unknown(self, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for key in data:
            if key not in known:
                raise self.fail(key, f"unknown key {key!r} (expected one of {', '.join(known)})")

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        kind: type[T],
        default: T | None = None,
        check: Callable[[T], str | None] | None = None,
    ) -> T:
        if key not in data:
            if default is None:
                raise self.fail(None, f"missing required key {key!r}")
            return default
        value = data[key]
        # bool is an int in Python; a TOML boolean is never a valid integer here.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"{key!r} must be {_kind_name(kind)}, not {_toml_type(value)}")
        if check is not None:
            problem = check(value)
            if problem:
                raise self.fail(key, f"{key!r} {problem}")
        return value

    def strings(
        self, data: Mapping[str, Any], key: str, default: tuple[str, ...] | None = None
    ) -> tuple[str, ...]:
        value = self.get(data, key, list, list(default) if default is not None else None)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(key, f"{key!r}[{i}] must be a string, not {_toml_type(item)}")
            if not item.strip():
                raise self.fail(key, f"{key!r}[{i}] is empty")
        return tuple(value)


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean (true or false)",
            list: "an array"}.get(kind, kind.__name__)


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
             dict: "table"}
    return names.get(type(value), type(value).__name__)


def _check_name(value: str) -> str | None:
    return None if _NAME.match(value) else "must be letters, digits and ._+- (not starting with one of ._+-)"


def _check_arch(value: str) -> str | None:
    return None if _ARCH.match(value) else "must be an rpm architecture such as x86_64"


def _check_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in REPO_SCHEMES:
        return f"must be an http://, https:// or file:// URL, not {value!r}"
    if parts.scheme != "file" and not parts.netloc:
        return f"has no host: {value!r}"
    if parts.scheme == "file" and not parts.path.startswith("/"):
        return f"must be an absolute file:// URL: {value!r}"
    return None


def _resolve_key(value: str, base: Path) -> str:
    if urlsplit(value).scheme in REPO_SCHEMES:
        return value
    return os.fspath((base / value).resolve())


TOP_KEYS = ("name", "arch", "packages", "exclude", "ignore_recommends", "multiversion",
            "block_size", "allow_downgrade", "repo")
REPO_KEYS = ("name", "url", "gpgkey", "gpgkey_fingerprint", "priority", "max_metadata_age",
             "allow_weak_checksums")
_FINGERPRINT = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _check_duration(value: str) -> str | None:
    match = _DURATION.match(value.strip())
    if not match or int(match.group(1)) == 0:
        return "must be a positive duration such as \"36h\" or \"7d\" (units s, m, h, d, w)"
    return None


def _seconds(value: str) -> int:
    match = _DURATION.match(value.strip())
    assert match is not None
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _fingerprints(v: _Validator, table: Mapping[str, Any]) -> tuple[str, ...]:
    """gpgkey_fingerprint: one fingerprint or a list; spaces allowed, case ignored."""
    value = table.get("gpgkey_fingerprint", [])
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise v.fail("gpgkey_fingerprint", "'gpgkey_fingerprint' must be a string or an array "
                     f"of strings, not {_toml_type(value)}")
    found: list[str] = []
    for item in items:
        text = item.replace(" ", "").upper() if isinstance(item, str) else ""
        if not _FINGERPRINT.match(text):
            raise v.fail("gpgkey_fingerprint", f"'gpgkey_fingerprint' {item!r} is not a full "
                         "OpenPGP fingerprint (40 or 64 hex digits)")
        found.append(text)
    return tuple(found)


def parse_definition(source: str, path: Path) -> ImageDefinition:
    """Validate TOML text of an image definition; `path` names it in errors and anchors gpgkey."""
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        raise DefinitionError(f"{os.fspath(path)}: invalid TOML: {e}") from e
    except RecursionError as e:
        raise DefinitionError(f"{os.fspath(path)}: invalid TOML: nested too deeply") from e
    lines = _KeyLines(source)
    top = _Validator(path, lines)
    top.reject_unknown(data, TOP_KEYS)
    name = top.get(data, "name", str, check=_check_name)
    arch = top.get(data, "arch", str, check=_check_arch)
    packages = top.strings(data, "packages")
    if not packages:
        raise top.fail("packages", "'packages' is empty: name at least one package or capability")
    exclude = top.strings(data, "exclude", ())
    ignore_recommends = top.get(data, "ignore_recommends", bool, True)
    multiversion = top.strings(data, "multiversion", DEFAULT_MULTIVERSION)
    block_size = top.get(data, "block_size", int, DEFAULT_BLOCK_SIZE, check=block_size_problem)
    tables = top.get(data, "repo", list)
    if not tables:
        raise top.fail("repo", "at least one [[repo]] table is needed")
    repos: list[RepoSource] = []
    for index, table in enumerate(tables):
        v = _Validator(path, lines, "repo", index)
        if not isinstance(table, dict):
            raise top.fail("repo", f"'repo' must be an array of tables ([[repo]]), not {_toml_type(table)}")
        v.reject_unknown(table, REPO_KEYS)
        repo_name = v.get(table, "name", str, check=_check_name)
        if any(r.name == repo_name for r in repos):
            raise v.fail("name", f"repository name {repo_name!r} is used twice")
        gpgkey = v.get(table, "gpgkey", str, "")
        fingerprints = _fingerprints(v, table)
        if fingerprints and not gpgkey:
            raise v.fail("gpgkey_fingerprint", "'gpgkey_fingerprint' needs a 'gpgkey'")
        age = v.get(table, "max_metadata_age", str, "", check=_check_duration)
        repos.append(RepoSource(
            name=repo_name,
            url=v.get(table, "url", str, check=_check_url).rstrip("/") + "/",
            gpgkey=_resolve_key(gpgkey, path.parent) if gpgkey else None,
            priority=v.get(table, "priority", int, 99),
            gpgkey_fingerprint=fingerprints,
            max_metadata_age=_seconds(age) if age else None,
            allow_weak_checksums=v.get(table, "allow_weak_checksums", bool, False),
        ))
    return ImageDefinition(
        name=name, arch=arch, packages=packages, repos=tuple(repos), exclude=exclude,
        ignore_recommends=ignore_recommends, multiversion=multiversion, block_size=block_size,
        allow_downgrade=top.strings(data, "allow_downgrade", ()),
    )


def load_definition(path: str | os.PathLike[str]) -> ImageDefinition:
    """Read and validate an image definition file."""
    p = Path(path)
    try:
        source = read_limited(p, MAX_DEFINITION).decode("utf-8")
    except ReadRefused as e:
        raise DefinitionError(str(e)) from e
    except UnicodeDecodeError as e:
        raise DefinitionError(f"{os.fspath(p)}: not UTF-8 text: {e}") from e
    except OSError as e:
        raise DefinitionError(f"{os.fspath(p)}: cannot read: {e.strerror}") from e
    return parse_definition(source, p.resolve())
