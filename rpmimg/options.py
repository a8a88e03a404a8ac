"""Options shared by the client verbs, validated where they are parsed."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def seconds(text: str) -> float:
    """A wait in seconds: a finite number, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a wait can't be negative or infinite")
    return value


def count(text: str) -> int:
    """A whole number, one or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def common(parser: argparse.ArgumentParser, mutating: bool) -> None:
    parser.add_argument(
        "--sysroot", type=Path, default=Path("/"), metavar="DIR",
        help="root of the target system as mounted (default: /); its filesystem is btrfs",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--esp", type=Path, metavar="DIR",
        help="the mounted ESP or XBOOTLDR holding the boot entries (default: as bootctl finds"
        " them on the running system; without one, no boot entries are written)",
    )
    if mutating:
        parser.add_argument("--tries", type=count, metavar="N",
                            help="boot tries of a new default's entry (default: /etc/kernel/tries, else 3)")
        parser.add_argument(
            "--lock-wait", type=seconds, default=5.0, metavar="SECONDS",
            help="how long to wait for another rpmimg on this system (default: 5)",
        )


def keyring(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keyring", type=Path, action="append", default=[], metavar="FILE",
        help="trusted OpenPGP public key file (repeatable; added to SYSROOT/etc/rpmimg/keys.d"
        " and SYSROOT/usr/lib/rpmimg/keys.d)",
    )


def unsigned(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-unsigned-packages", action="store_true",
                        help="do not require header signatures on the packages (the signed manifest"
                        " still pins each package's sha256)")

