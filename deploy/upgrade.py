"""`rpmimg upgrade`: deploy the channel's latest version when this machine should take it.

The version is checked first (deploy.check: signature, newer than what is deployed, the
rollout), then deployed by its own version URL (not `latest`, which may move meanwhile)
with every check `deploy` makes, from the mirror that answered, else the next ones.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.channel import Channel
from deploy.channelfetch import version_url
from deploy.check import CheckResult, check
from deploy.errors import DeployFetchError
from deploy.reboot import RebootCommands, RebootDecision, reboot_by_policy
from deploy.system import System
from deploy.transaction import (
    DeployOptions,
    DeployResult,
    Outcome,
    ProgressFactory,
    ProgressFn,
    deploy,
)
from host.fetchlimits import Limits
from host.log import get as logger
from imagespec.errors import ManifestError, SignatureError

log = logger(__name__)


def _quiet(label: str, unit: str) -> ProgressFn:
    return lambda done, total: None


@dataclass(frozen=True)
class UpgradeResult:
    """An upgrade: the check, the deploy, and the reboot."""

    check: CheckResult
    deployed: DeployResult | None
    reboot_needed: bool
    reboot: RebootDecision | None


def _deploy(system: System, channel: Channel, found: CheckResult, keyrings: Sequence[Path],
            progress: ProgressFactory, lock_wait: float, unsigned: bool) -> DeployResult:
    mirrors = [found.mirror] + [u for u in channel.urls if u != found.mirror]
    last: Exception | None = None
    for base in mirrors:
        options = DeployOptions(
            source=version_url(base, found.image, found.version),
            keyrings=(*keyrings, *channel.key_paths(system.sysroot)), lock_wait=lock_wait,
            allow_unsigned_packages=unsigned,
        )
        try:
            return deploy(system, options, progress)
        except SignatureError:
            raise
        except (DeployFetchError, ManifestError) as e:
            log.warning("%s; trying the next mirror", e)
            last = e
    assert last is not None
    raise last


def upgrade(system: System, channel: Channel, *, keyrings: Sequence[Path] = (),
            reboot: RebootCommands | None = None, progress: ProgressFactory | None = None,
            lock_wait: float = 5.0, limits: Limits | None = None,
            now: datetime.datetime | None = None,
            allow_unsigned_packages: bool = False) -> UpgradeResult:
    """Deploy the channel's latest if it is new and this machine's turn; with `reboot`,
    reboot into the default by the channel's policy when it is not what is booted.
    allow_unsigned_packages: as deploy's (the signed manifest still pins every package)."""
    found = check(system, channel, keyrings, limits)
    deployed = None
    if found.update:
        deployed = _deploy(system, channel, found, keyrings, progress or _quiet, lock_wait,
                           allow_unsigned_packages)
    state = system.load_state()
    booted = system.booted()
    needed = state.default is not None and (
        (deployed is not None and deployed.outcome is not Outcome.UNCHANGED)
        or (booted is not None and booted != state.default))
    decision = None
    if reboot is not None and needed:
        decision = reboot_by_policy(channel.reboot, reboot, now)
    return UpgradeResult(found, deployed, needed, decision)
