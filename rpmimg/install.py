"""`rpmimg install MANIFEST --disk DEV_OR_FILE`: a new bootable system with a first deployment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpmimg.ui import UsageError, print_json

if TYPE_CHECKING:
    from deploy.install import InstallResult, Partition

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A size in bytes, with an optional K, M, G or T suffix (binary)."""
    unit = _UNITS.get(text[-1:].upper(), 1)
    number = text[:-1] if unit != 1 else text
    if not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 4G or 1024M)")
    return int(number) * unit


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "install", help="make a new bootable disk (or disk image) from a signed image",
        description="Partition DEV_OR_FILE (GPT: an EFI system partition and a btrfs), install"
        " systemd-boot, deploy the image as the first deployment with its boot entry.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="manifest path or URL, as for deploy")
    p.add_argument("--disk", type=Path, required=True, metavar="DEV_OR_FILE",
                   help="the block device or disk image file to overwrite")
    p.add_argument("--size", type=parse_size, metavar="N",
                   help="create or grow the disk image file to N bytes (K, M, G suffixes)")
    p.add_argument("--keyring", type=Path, action="append", default=[], metavar="FILE",
                   help="trusted OpenPGP public key file (repeatable; at least one)")
    p.add_argument("--allow-unsigned-packages", action="store_true",
                   help="as for deploy: the signed manifest still pins each package's sha256")
    p.add_argument("--tries", type=int, metavar="N", help="boot tries of the first entry (default: 3)")
    p.add_argument("--cmdline", default="", metavar="ARGS",
                   help="kernel arguments added to the deployment's own (kept in its root's"
                   " /etc/kernel/cmdline, carried on to later deployments), e.g. console=ttyS0")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_install)


def install_json(result: InstallResult) -> dict[str, Any]:
    """install --json in the one vocabulary: byte sizes and offsets, the deployment as a ref."""
    def part(p: Partition) -> dict[str, Any]:
        return {"offset_bytes": p.offset, "size_bytes": p.size, "uuid": p.uuid or None}

    return {"disk": result.disk, "esp": part(result.esp), "root": part(result.root),
            "deployment": {"id": result.deployment, "image": result.image, "version": result.version},
            "entries": list(result.entries)}


def cmd_install(args: argparse.Namespace) -> int:
    from deploy.install import install

    if not args.keyring:
        raise UsageError("install: give the image's signing key with --keyring")
    result = install(args.disk, args.manifest, tuple(args.keyring), size=args.size, tries=args.tries,
                     cmdline=args.cmdline, allow_unsigned_packages=args.allow_unsigned_packages)
    if args.json:
        print_json(install_json(result))
        return 0
    print(f"installed {result.image} {result.version} as deployment {result.deployment} on {result.disk}")
    for e in result.entries:
        print(f"  boot entry {e}")
    if not result.entries:
        print("  warning: the image has no kernel (no boot section): the disk will not boot")
    return 0
