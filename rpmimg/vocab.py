"""The one JSON vocabulary every verb's `--json` speaks (schemas/*.json document it).

- a deployment is always {"id", "image", "version"} (`ref`); an image version outside a
  sysroot is the same object with "id": null;
- a package diff is {"old": ref|null, "new": ref, "changes": [...]}, for deployments and
  image versions alike;
- a deployment's state is the booleans "default", "booted", "pinned", "rolled_back";
- absent values are null, never ""; sizes are integer bytes ("..._bytes"); times ISO 8601;
- an error is {"error": {"kind", "message"}}, with a kind that stays the same across releases.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.state import DeploymentRecord, State
    from imagespec.diff import PackageDiff


def ref(d: DeploymentRecord | Any | None) -> dict[str, Any] | None:
    """A deployment (anything with id, image, version) as every verb names it."""
    if d is None:
        return None
    return {"id": d.id, "image": d.image, "version": d.version}


def ref_by_id(current: State, deployment_id: str | None) -> dict[str, Any] | None:
    return ref(current.find(deployment_id)) if deployment_id is not None else None


def image_ref(image: str, version: str | None) -> dict[str, Any] | None:
    return None if version is None else {"id": None, "image": image, "version": version}


def jsonable(value: Any) -> Any:
    """Dataclasses, enums and tuples as JSON values, with "" turned into null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value == "":
        return None
    return value


def diff(result: PackageDiff, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    return {"old": old, "new": new, "changes": result.to_json()["changes"]}


def error_kind(e: BaseException) -> str:
    """A stable, lower-case name for an error's family: the class name less "Error"."""
    if isinstance(e, OSError):
        return "os"
    name = type(e).__name__.removesuffix("Error") or "error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error(e: BaseException, message: str, kind: str | None = None) -> dict[str, Any]:
    return {"error": {"kind": kind or error_kind(e), "message": message}}
