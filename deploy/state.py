"""The state file: which deployments exist, which is default, pinned or known bad.

It is small JSON, replaced atomically (temp file, fsync, rename, fsync of the
directory), so a reader or a crash sees either the old or the new state, never half.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import DeploymentError, StateError
from host.digest import is_sha256_hex
from host.files import write_atomically


def now_iso() -> str:
    """Now, as records and the check's memory write it: 2026-12-02T23:59:59Z (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


FORMAT = 1
REBUILD_HINT = "`rpmimg state rebuild` rebuilds it from the deployments' own records"


@dataclass(frozen=True, slots=True)
class PackageRecord:
    """A package of a deployment, as the manifest named it."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    sha256: str
    header_sha256: str
    size: int
    url: str  # absolute location it was fetched from, for `verify --repair`

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"


@dataclass(frozen=True)
class DeploymentRecord:
    """One deployment: a read-only /usr subvolume built from one image version."""

    id: str
    image: str
    version: str
    arch: str
    created: str  # ISO 8601 UTC
    manifest_sha256: str
    source: str  # the manifest's path or URL
    subvol_id: int
    packages: tuple[PackageRecord, ...]
    pinned: bool = False
    # The ids the deployment's owner names resolved to when it was built (None: unknown
    # name, so root); an update may start from this deployment only while they still do.
    # Absent in deployments made before updates were built that way.
    owner_ids: Mapping[str, Mapping[str, int | None]] | None = None
    # The key that signed the manifest (fingerprint); empty in deployments made before.
    signed_by: str = ""
    # Deployed with --allow-unsigned-packages: `verify --repair` refetches on the same terms.
    allow_unsigned_packages: bool = False


@dataclass(frozen=True)
class State:
    """Everything rpmimg remembers about a sysroot."""

    deployments: tuple[DeploymentRecord, ...] = ()
    default: str | None = None
    bad: tuple[str, ...] = ()
    next_id: int = 1
    # Highest version ever deployed per image, so an old signed manifest can't be replayed
    # after its deployment was cleaned up.
    newest: Mapping[str, str] = field(default_factory=dict)
    # Raised by one at every save and written into usr-default.conf with it, so that a
    # state file older than the boot selection (restored from a backup) is recognised.
    serial: int = 0

    def get(self, deployment_id: str) -> DeploymentRecord:
        for d in self.deployments:
            if d.id == deployment_id:
                return d
        known = ", ".join(d.id for d in self.deployments) or "none"
        raise DeploymentError(f"deployment {deployment_id!r} does not exist (known: {known})")

    def find(self, deployment_id: str | None) -> DeploymentRecord | None:
        return next((d for d in self.deployments if d.id == deployment_id), None)

    def replace_deployment(self, record: DeploymentRecord) -> State:
        return dataclasses.replace(
            self,
            deployments=tuple(record if d.id == record.id else d for d in self.deployments),
        )


_ID = re.compile(r"[1-9][0-9]{0,8}")


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """data[key], refused unless it has the expected JSON type (a bool is not an int)."""
    if key not in data:
        raise StateError(f"{where}: missing field {key!r}")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise StateError(f"{where}: field {key!r} should be {names}, not {value!r:.40}")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise StateError(f"{where}: should be an object, not {value!r:.40}")
    return value


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value: list[Any] = _get(data, key, list, where)
    return value


def _strings(values: list[Any], where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in values):
        raise StateError(f"{where}: should be a list of strings")
    return tuple(values)


# A package record read before, by its fields: deployments share most of their packages,
# and one frozen record serves them all (fifteen deployments of 347 packages held 5,200
# records and their strings, 1.2 MB a deployment; now about one deployment's worth).
Known = dict[tuple[Any, ...], PackageRecord]


def _package_from(value: Any, where: str, known: Known | None = None) -> PackageRecord:
    if isinstance(value, PackageRecord):
        return value  # made as the file was read (_read_packages): checked then
    data = _object(value, where)
    key: tuple[Any, ...] | None = None
    if known is not None:
        # Types too: true == 1 and 1.0 == 1, but only the int passes the checks below.
        key = tuple((type(v), v) for v in map(data.get, _PACKAGE_FIELDS))
        try:
            record = known.get(key)
        except TypeError:  # an unhashable value (a list, an object): refused below
            key = None
        else:
            if record is not None:
                return record  # the same fields as a record already checked
    epoch = _get(data, "epoch", (int, type(None)), where)
    sha256 = _get(data, "sha256", str, where)
    header_sha256 = _get(data, "header_sha256", str, where)
    if not is_sha256_hex(sha256) or not is_sha256_hex(header_sha256):
        raise StateError(f"{where}: sha256 and header_sha256 should be 64 hex digits")
    record = PackageRecord(
        name=_get(data, "name", str, where), epoch=epoch, version=_get(data, "version", str, where),
        release=_get(data, "release", str, where), arch=_get(data, "arch", str, where),
        sha256=sha256, header_sha256=header_sha256, size=_get(data, "size", int, where),
        url=_get(data, "url", str, where),
    )
    if known is not None and key is not None:
        known[key] = record
    return record


def _owner_ids(value: Any, where: str) -> Mapping[str, Mapping[str, int | None]] | None:
    if value is None:
        return None
    out: dict[str, dict[str, int | None]] = {}
    for kind, names in _object(value, where).items():
        ids = _object(names, f"{where} {kind}")
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in ids.values()):
            raise StateError(f"{where}: {kind} ids should be integers or null")
        out[kind] = dict(ids)
    return out


def deployment_from(value: Any, where: str) -> DeploymentRecord:
    """A deployment record from JSON, every field checked (StateError names the bad one)."""
    data = _object(value, where)
    deployment_id = _get(data, "id", str, where)
    if not _ID.fullmatch(deployment_id):
        raise StateError(f"{where}: deployment id {deployment_id!r} is not a positive number")
    where = f"{where} (deployment {deployment_id})"
    packages = _list(data, "packages", where)
    return DeploymentRecord(
        id=deployment_id, image=_get(data, "image", str, where),
        version=_get(data, "version", str, where), arch=_get(data, "arch", str, where),
        created=_get(data, "created", str, where),
        manifest_sha256=_get(data, "manifest_sha256", str, where),
        source=_get(data, "source", str, where), subvol_id=_get(data, "subvol_id", int, where),
        packages=tuple(_package_from(p, f"{where} package #{i}") for i, p in enumerate(packages)),
        pinned=_get(data, "pinned", bool, where) if "pinned" in data else False,
        owner_ids=_owner_ids(data.get("owner_ids"), f"{where} owner_ids"),
        signed_by=_get(data, "signed_by", str, where) if "signed_by" in data else "",
        allow_unsigned_packages=(
            _get(data, "allow_unsigned_packages", bool, where)
            if "allow_unsigned_packages" in data else False
        ),
    )


_PACKAGE_FIELDS = tuple(f.name for f in dataclasses.fields(PackageRecord))
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(DeploymentRecord))


def record_json(record: DeploymentRecord) -> dict[str, Any]:
    """A deployment record as JSON values: what dataclasses.asdict gives, made field by
    field (asdict deep-copies every value of every package record, a state's largest part)."""
    return {**_own_json(record), "packages": [_package_json(p) for p in record.packages]}


def _own_json(record: DeploymentRecord) -> dict[str, Any]:
    """The record's fields but its packages."""
    data = {name: getattr(record, name) for name in _RECORD_FIELDS if name != "packages"}
    if record.owner_ids is not None:
        data["owner_ids"] = {kind: dict(ids) for kind, ids in record.owner_ids.items()}
    return data


def _package_json(p: PackageRecord) -> dict[str, Any]:
    return {name: getattr(p, name) for name in _PACKAGE_FIELDS}


def _head_json(state: State) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "default": state.default,
        "bad": list(state.bad),
        "next_id": state.next_id,
        "newest": dict(state.newest),
        "serial": state.serial,
    }


def to_json(state: State) -> dict[str, Any]:
    return {**_head_json(state), "deployments": [record_json(d) for d in state.deployments]}


def _lines(state: State) -> Iterator[bytes]:
    """The state file, a line at a time: the state's own fields, then each deployment's
    on a line of its own and each of its packages on a line of its own. json's C encoder
    writes each line (indent= would turn it off), and neither the whole text nor the
    whole of to_json is ever in memory: at fifteen deployments of 347 packages the text is
    2.3 MB and the indented dump of to_json took 9 MB more than the records."""
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    # Deployments share most of their packages' records (equal, most often the same
    # objects): each distinct record is encoded once.
    encoded: dict[PackageRecord, str] = {}

    def package_line(p: PackageRecord) -> str:
        line = encoded.get(p)
        if line is None:
            line = encoded[p] = encode(_package_json(p))
        return line

    yield f'{encode(_head_json(state))[:-1]},"deployments":[\n'.encode()
    for n, d in enumerate(state.deployments, 1):
        packages = ",\n".join(package_line(p) for p in d.packages)
        end = "," if n < len(state.deployments) else ""
        yield f'{encode(_own_json(d))[:-1]},"packages":[\n{packages}]}}{end}\n'.encode()
    yield b"]}\n"


def from_json(value: Any, where: str = "state") -> State:
    """The state from parsed JSON, refusing any field of the wrong shape with StateError."""
    data = _object(value, where)
    if data.get("format") != FORMAT:
        raise StateError(f"{where}: unsupported state format {data.get('format')!r}")
    deployments = tuple(
        deployment_from(d, f"{where}: deployments[{i}]")
        for i, d in enumerate(_list(data, "deployments", where))
    )
    ids = [d.id for d in deployments]
    if len(set(ids)) != len(ids):
        raise StateError(f"{where}: a deployment id is listed twice")
    default = _get(data, "default", (str, type(None)), where)
    if default is not None and default not in ids:
        raise StateError(f"{where}: the default {default!r} is not one of the deployments")
    newest = _object(_get(data, "newest", dict, where), f"{where}: newest")
    next_id = _get(data, "next_id", int, where)
    if next_id < 1:
        raise StateError(f"{where}: field 'next_id' should be positive")
    serial = _get(data, "serial", int, where) if "serial" in data else 0
    return State(
        serial=serial, deployments=deployments, default=default,
        bad=_strings(_list(data, "bad", where), f"{where}: bad"), next_id=next_id,
        newest=dict(zip(newest, _strings(list(newest.values()), f"{where}: newest"), strict=True)),
    )


def _read_packages(known: Known) -> Callable[[dict[str, Any]], Any]:
    """json's object_hook for the state file: a package record is made (or shared, by
    known) as soon as its object is read, so that the file's thousands of package objects
    are never in memory all at once. An object that is no good package record is left as
    it is, and from_json refuses it naming its place."""
    def hook(data: dict[str, Any]) -> Any:
        if "header_sha256" in data:
            with contextlib.suppress(StateError):
                return _package_from(data, "", known)
        return data
    return hook


def load(path: Path) -> State:
    """Read the state file; a missing file is the empty state."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_hook=_read_packages({}))
    except FileNotFoundError:
        return State()
    except (OSError, ValueError, RecursionError) as e:
        raise StateError(f"{path}: unreadable state file: {e}; {REBUILD_HINT}") from e
    try:
        return from_json(data, "in")
    except StateError as e:
        raise StateError(f"{path}: malformed state file: {e}; {REBUILD_HINT}") from e


def save(path: Path, state: State) -> None:
    """Write the state file atomically."""
    write_atomically(path, _lines(state))
