"""Staged rollouts on the client: is this machine among the `percent` that take a version?

Each machine has a stable place in [0, 1) per image version: the first 64 bits of
sha256(machine-id, image, version) as a fraction. It takes the version when its place is
below percent/100, so raising the percentage only adds machines (a 20% rollout is a
superset of the 10% one), the same machines are chosen on every check, and a new version
draws a new, independent tenth of the fleet (a bad version does not always hit the same
machines). The published file is imagespec.rollout; it can only hold machines back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployError
from host import digest as _digest
from host.kernel import Resolve, openat2
from imagespec.rollout import Rollout

_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


class RolloutHeld(DeployError):
    """This machine is not (yet) among those the rollout lets take a version."""


def place(machine_id: str, image: str, version: str) -> float:
    """This machine's stable place in [0, 1) for one image version."""
    digest = _digest.of("sha256", f"{machine_id}\n{image}\n{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def selected(machine_id: str, image: str, version: str, percent: int) -> bool:
    """Whether a machine takes version at a rollout of percent (0 to 100)."""
    return place(machine_id, image, version) * 100 < percent


def machine_id(sysroot: Path) -> str:
    """The sysroot's /etc/machine-id (read inside it), or DeployError."""
    where = os.fspath(sysroot / "etc/machine-id")
    root = os.open(sysroot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root, "etc/machine-id", os.O_RDONLY | os.O_NONBLOCK, Resolve.IN_ROOT)
    except OSError as e:
        raise DeployError(f"{where}: cannot place this machine in a staged rollout: "
                          f"{e.strerror}") from None
    finally:
        os.close(root)
    with os.fdopen(fd, "rb") as f:
        text = f.read(64).decode("ascii", errors="replace").strip()
    if not _MACHINE_ID.fullmatch(text):
        raise DeployError(f"{where}: not a machine id (32 lowercase hex digits);"
                          " cannot place this machine in a staged rollout")
    return text


@dataclass(frozen=True)
class Decision:
    """What the rollout says about one version for this machine."""

    percent: int  # of the fleet that may take it now (100 without a rollout file)
    selected: bool
    published: bool  # whether a rollout file was published for the image

    def to_json(self) -> dict[str, object]:
        return {"percent": self.percent, "selected": self.selected, "published": self.published}


def decide(rollout: Rollout | None, image: str, version: str, machine: str | None) -> Decision:
    """The decision for `version` given the image's verified rollout file (None: none).

    A rollout file naming another version holds this one at 0% until the publisher stages
    it: once a channel is staged, every new version waits for its own rollout.
    """
    if rollout is None:
        return Decision(100, True, False)
    percent = rollout.percent if (rollout.name, rollout.version) == (image, version) else 0
    if percent >= 100:
        return Decision(percent, True, True)
    if percent <= 0 or machine is None:
        return Decision(percent, False, True)
    return Decision(percent, selected(machine, image, version, percent), True)
