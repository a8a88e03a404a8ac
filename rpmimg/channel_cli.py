"""Channel verbs: `check` (is an update waiting?) and `upgrade` (take it, maybe reboot).

`check` exits 0 when nothing new is waiting for this machine, UPDATE_AVAILABLE when an
update is, other codes on errors, so that scripts and timers can act on it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rpmimg import options, vocab
from rpmimg.client import _system
from rpmimg.deploy_verbs import _Bars
from rpmimg.ui import UsageError, human_bytes, print_json

if TYPE_CHECKING:
    from deploy.channel import Channel
    from deploy.check import CheckResult
    from deploy.system import System
    from deploy.upgrade import UpgradeResult

UPDATE_AVAILABLE = 10


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check", help="is a newer image version waiting on the channel?",
        description="Fetch and verify the channel's latest manifest and compare it with the"
        f" newest deployment. Exit 0: nothing new; {UPDATE_AVAILABLE}: an update is waiting"
        " for this machine; other: an error.",
    )
    options.keyring(p)
    options.common(p, mutating=False)
    p.set_defaults(func=cmd_check)

    p = subparsers.add_parser(
        "upgrade", help="deploy the channel's latest version",
        description="Deploy the channel's latest version when it is newer than what is"
        " deployed and the staged rollout includes this machine; with --reboot, reboot into it"
        " as the channel's reboot policy allows.",
    )
    p.add_argument("--reboot", action="store_true",
                   help="reboot into the new default by the channel's policy")
    options.unsigned(p)
    options.keyring(p)
    options.common(p, mutating=True)
    p.set_defaults(func=cmd_upgrade)


def _channel(system: System) -> Channel:
    from deploy.channel import MAIN, load

    channel = load(system.sysroot)
    if channel is None:
        raise UsageError(f"no channel configured: write /{MAIN[1]} (see `rpmimg check --help`"
                         " and the README's 'Running a fleet')")
    return channel


def _print_check(found: CheckResult) -> None:
    current = found.current
    have = f"{current['version']} (deployment {current['id']})" if current else "nothing deployed"
    if found.result == "up to date":
        print(f"{found.image}: nothing new: the channel's latest is {found.version},"
              f" deployed {have}")
        return
    if found.result == "held by rollout":
        print(f"{found.image}: {found.version} is staged to {found.rollout.percent}% of machines,"
              f" not yet this one (deployed: {have})")
    else:
        print(f"{found.image}: update available: {found.version} (deployed: {have})")
    if found.diff is not None:
        for line in found.diff.lines():
            print(line)
    print(f"download: {found.download_packages} packages, {human_bytes(found.download_bytes)}")


def _check_json(found: CheckResult) -> dict[str, Any]:
    """The check, with its diff in the shared shape: from the deployment to the image version."""
    value = found.to_json()
    if found.diff is not None:
        value["diff"] = vocab.diff(found.diff, found.current, vocab.image_ref(found.image, found.version))
    return value


def cmd_check(args: argparse.Namespace) -> int:
    from deploy.check import check

    with _system(args) as system:
        found = check(system, _channel(system), tuple(args.keyring))
    if args.json:
        print_json(_check_json(found))
    else:
        _print_check(found)
    return UPDATE_AVAILABLE if found.update else 0


def _upgrade_json(result: UpgradeResult) -> dict[str, Any]:
    """The shared vocabulary: a deployment as {"id", "image", "version"}, null when absent."""
    d = result.deployed
    deployed = None if d is None else {
        "outcome": d.outcome.value,
        "deployment": {"id": d.deployment, "image": d.image, "version": d.version},
        "packages": d.packages, "fetched": d.fetched, "fetched_bytes": d.fetched_bytes,
        "transferred_bytes": d.transferred_bytes, "kernel_arguments": d.kernel_arguments or None,
    }
    reboot = None if result.reboot is None else {
        "rebooted": result.reboot.rebooted, "reason": result.reboot.reason}
    return {"check": _check_json(result.check), "deployed": deployed,
            "reboot_needed": result.reboot_needed, "reboot": reboot}


def cmd_upgrade(args: argparse.Namespace) -> int:
    from deploy.reboot import commands_for
    from deploy.upgrade import upgrade

    with _system(args) as system:
        channel = _channel(system)
        with _Bars() as bars:
            result = upgrade(system, channel, keyrings=tuple(args.keyring),
                             reboot=commands_for(channel) if args.reboot else None,
                             progress=bars, lock_wait=args.lock_wait,
                             allow_unsigned_packages=args.allow_unsigned_packages)
    if args.json:
        print_json(_upgrade_json(result))
        return 0
    if result.deployed is None:
        _print_check(result.check)
    else:
        d = result.deployed
        print(f"deployed {d.image} {d.version} as deployment {d.deployment}"
              f" ({d.fetched} packages fetched, {human_bytes(d.transferred_bytes)} transferred)")
    if result.reboot is not None:
        print(result.reboot.reason)
    elif result.reboot_needed:
        print("reboot to use the new default deployment")
    return 0
