"""The state file: which deployments exist, which is default, pinned or known bad.

It is small JSON, replaced atomically (temp file, fsync, rename, fsync of the
directory), so a reader or a crash sees either the old or the new state, never half.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import DeploymentError, StateError
from host.files import write_atomically

FORMAT = 1


@dataclass(frozen=True)
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


def _package_from(data: Mapping[str, Any]) -> PackageRecord:
    return PackageRecord(**data)


def _deployment_from(data: Mapping[str, Any]) -> DeploymentRecord:
    values = dict(data)
    values["packages"] = tuple(_package_from(p) for p in values["packages"])
    return DeploymentRecord(**values)


def to_json(state: State) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "deployments": [dataclasses.asdict(d) for d in state.deployments],
        "default": state.default,
        "bad": list(state.bad),
        "next_id": state.next_id,
        "newest": dict(state.newest),
    }


def from_json(data: Mapping[str, Any]) -> State:
    if data.get("format") != FORMAT:
        raise StateError(f"unsupported state format {data.get('format')!r}")
    return State(
        deployments=tuple(_deployment_from(d) for d in data["deployments"]),
        default=data["default"],
        bad=tuple(data["bad"]),
        next_id=int(data["next_id"]),
        newest=dict(data["newest"]),
    )


def load(path: Path) -> State:
    """Read the state file; a missing file is the empty state."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as e:
        raise StateError(f"{path}: unreadable state file: {e}") from e
    try:
        return from_json(data)
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"{path}: malformed state file: {e!r}") from e


def save(path: Path, state: State) -> None:
    """Write the state file atomically."""
    text = json.dumps(to_json(state), indent=1, sort_keys=True) + "\n"
    write_atomically(path, text.encode())
