"""Rebooting into a new default deployment, by the channel's policy.

A reboot happens only when the policy allows it now (never, immediately, or inside a
daily window of local time), no inhibitor blocks shutdown (`systemd-inhibit --list`),
and then through openSUSE's rebootmgr when it is installed (`rebootmgrctl reboot`, which
applies its own strategy and locks), else the configured reboot command. Every command
is a value of RebootCommands, so tests run real substitutes and never reboot the host.
"""

from __future__ import annotations

import datetime
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deploy.channel import Channel, RebootPolicy
from host.log import get as logger
from host.run import CommandError, run

log = logger(__name__)

REBOOT_ENV = "RPMIMG_REBOOT_COMMAND"
_WHAT = {"shutdown", "sleep", "idle", "handle-power-key", "handle-suspend-key",
         "handle-hibernate-key", "handle-lid-switch"}


@dataclass(frozen=True)
class RebootCommands:
    """The commands that reboot, list inhibitors, or hand the reboot to rebootmgr."""

    reboot: tuple[str, ...]
    list_inhibitors: tuple[str, ...] | None  # None: systemd-inhibit is not installed
    rebootmgr: tuple[str, ...] | None  # None: rebootmgr is not installed


def commands_for(channel: Channel, environ: Mapping[str, str] | None = None) -> RebootCommands:
    """The commands on this machine: RPMIMG_REBOOT_COMMAND overrides the channel's."""
    env = os.environ if environ is None else environ
    override = env.get(REBOOT_ENV, "").strip()
    inhibit = shutil.which("systemd-inhibit")
    mgr = shutil.which("rebootmgrctl")
    return RebootCommands(
        reboot=tuple(shlex.split(override)) if override else channel.reboot_command,
        list_inhibitors=(inhibit, "--list", "--no-legend", "--no-pager") if inhibit else None,
        rebootmgr=None if override or not mgr else (mgr, "reboot"),
    )


def blocking_inhibitors(listing: str) -> list[str]:
    """The lines of `systemd-inhibit --list` that block shutdown."""
    found = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[-1] != "block":
            continue
        for f in fields:
            what = set(f.split(":"))
            if what <= _WHAT and "shutdown" in what:
                found.append(" ".join(line.split()))
                break
    return found


@dataclass(frozen=True)
class RebootDecision:
    """Whether an upgrade rebooted, and why (not)."""

    rebooted: bool
    reason: str  # why not, or how


def reboot_by_policy(policy: RebootPolicy, commands: RebootCommands,
                     now: datetime.datetime | None = None) -> RebootDecision:
    """Reboot now if the policy and the inhibitors allow it; say why not otherwise."""
    local = (now or datetime.datetime.now()).time()
    if not policy.allows(local):
        return RebootDecision(False, f"reboot policy {policy}: not now ({local:%H:%M})")
    if commands.list_inhibitors is not None:
        try:
            listing = run(commands.list_inhibitors, timeout=30).stdout.decode(errors="replace")
        except CommandError as e:
            # Without logind there is no knowing what a reboot would cut short: don't.
            return RebootDecision(False, f"cannot list shutdown inhibitors: {e}")
        blocking = blocking_inhibitors(listing)
        if blocking:
            return RebootDecision(False, f"shutdown is inhibited: {blocking[0]}")
    argv: Sequence[str] = commands.rebootmgr or commands.reboot
    log.info("rebooting: %s", shlex.join(argv))
    run(argv)
    return RebootDecision(True, f"rebooting ({shlex.join(argv)})")
