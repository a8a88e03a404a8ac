"""Boot verbs: `health-check` and `boot-check` (run by rpmimg's units at boot), `install`.

Handlers import the deploy library lazily so that `rpmimg --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rpmimg import install, vocab
from rpmimg.ui import print_json


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sysroot", type=Path, default=Path("/"), metavar="DIR",
                   help="root of the target system as mounted (default: /)")
    p.add_argument("--esp", type=Path, metavar="DIR",
                   help="the mounted ESP or XBOOTLDR (default: as bootctl finds them)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "health-check", help="run the health checks of the booted system (at boot)",
        description="Run the executables in /usr/lib/rpmimg/health.d and /etc/rpmimg/health.d"
        " (and openSUSE health-checker plugins); exit 1 and note the reason when one fails.",
    )
    _options(p)
    p.set_defaults(func=cmd_health_check)

    p = subparsers.add_parser(
        "boot-check", help="record a deployment the boot loader abandoned (at boot)",
        description="When the booted deployment is not the default and the default's boot"
        " entries have no tries left, record the default as failed and make the booted one"
        " the default again.",
    )
    _options(p)
    p.add_argument("--lock-wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for another rpmimg on this system (default: 30)")
    p.set_defaults(func=cmd_boot_check)

    install.register(subparsers)


def cmd_health_check(args: argparse.Namespace) -> int:
    from deploy.bootcheck import note_health_failure, run_health_checks
    from rpmimg.client import _system

    failures = run_health_checks(args.sysroot)
    if failures:
        with _system(args) as system:
            note_health_failure(system, failures)
    if args.json:
        print_json({"healthy": not failures, "failures": failures})
    else:
        for f in failures:
            print(f"health check failed: {f}")
        if not failures:
            print("healthy")
    return 1 if failures else 0


def cmd_boot_check(args: argparse.Namespace) -> int:
    from deploy.bootcheck import record_abandoned
    from deploy.bootselect import write
    from deploy.lifecycle import mutating
    from rpmimg.client import _system

    with _system(args) as system, mutating(system, args.lock_wait, clean=False) as current:
        new, abandoned = record_abandoned(system, current)
        write(system, new)
    if args.json:
        print_json({"failed": vocab.ref_by_id(new, abandoned.deployment) if abandoned else None,
                    "reason": abandoned.reason if abandoned else None})
    elif abandoned:
        print(f"deployment {abandoned.deployment} failed to boot: {abandoned.reason};"
              f" deployment {new.default} is the default again")
    return 0
