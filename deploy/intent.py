"""What a deploy may change without being asked: the admin's intent, kept.

A deploy that would switch the machine to another image, or make the default again a
version the admin rolled back, is refused unless asked for (`--switch`, `--force`).
The deployment records where its manifest came from as the *versioned* location (never a
moving `latest/`), so that `verify --repair` can refetch from it later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deploy.errors import DeployError
from deploy.state import DeploymentRecord, State
from imagespec.manifest import ImageManifest
from imagespec.published import LATEST, MANIFEST


class IntentError(DeployError):
    """The deploy would undo what the admin chose; a flag says it is meant."""


@dataclass(frozen=True)
class Intent:
    """What the administrator allowed a deploy: to switch images, or to go back (force)."""

    switch: bool = False  # another image than the default's may replace it
    force: bool = False  # a version rolled back or failed to boot may become the default again


def _describe(d: DeploymentRecord) -> str:
    return f"deployment {d.id} ({d.image} {d.version})"


def check(current: State, m: ImageManifest, intent: Intent,
          failed_to_boot: Mapping[str, str] | None = None) -> None:
    """Raise IntentError when deploying m onto current would change what the admin chose.

    failed_to_boot: deployments the boot check recorded as abandoned, with the reason
    (deploy.bootcheck.failed); they are refused like rolled-back ones."""
    failures = failed_to_boot or {}
    default = current.find(current.default)
    if default is not None and default.image != m.name and not intent.switch:
        raise IntentError(
            f"{m.name} {m.version} is another image than the default, {_describe(default)};"
            f" use `rpmimg switch` (or deploy --switch) to change the operating system"
        )
    same = next((d for d in current.deployments if (d.image, d.version) == (m.name, m.version)), None)
    if same is None or same.id == current.default or intent.force:
        return
    if same.id in failures:
        raise IntentError(
            f"{m.name} {m.version} failed to boot ({_describe(same)}: {failures[same.id]});"
            f" use --force to make it the default again"
        )
    if same.id in current.bad:
        raise IntentError(
            f"{m.name} {m.version} was rolled back or failed to boot ({_describe(same)} is"
            f" marked failed); use --force to make it the default again"
        )


def versioned_location(location: str, m: ImageManifest) -> str:
    """The manifest's location with a moving `latest` replaced by the version it pointed to."""
    suffix = f"/{LATEST}/{MANIFEST}"
    if location.endswith(suffix):
        return location[: -len(suffix)] + f"/{m.version}/{MANIFEST}"
    return location


@dataclass(frozen=True)
class Ref:
    """A deployment as every command's output names it."""

    id: str
    image: str
    version: str


def ref_of(d: DeploymentRecord | None) -> Ref | None:
    return Ref(d.id, d.image, d.version) if d is not None else None
