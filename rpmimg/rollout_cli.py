"""Server verb: `rollout`, staging an image version to a share of the fleet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rpmimg.ui import print_json


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rollout", help="let a percentage of machines take an image's latest version",
        description="Publish images/NAME/rollout.json (signed) in OUTPUT: machines whose"
        " stable hash falls below PERCENT take the version; 0 stops the rollout. Once a"
        " channel has a rollout file, each new version waits for its own.",
    )
    p.add_argument("output", type=Path, metavar="OUTPUT", help="the compose output directory")
    p.add_argument("name", metavar="NAME", help="image name")
    p.add_argument("percent", type=int, metavar="PERCENT", help="0 to 100")
    p.add_argument("--version", dest="image_version", metavar="VERSION",
                   help="the version to stage (default: what `latest` names)")
    p.add_argument("--sign-key", type=Path, required=True, metavar="FILE",
                   help="armoured OpenPGP secret key to sign with (clients refuse an unsigned"
                   " rollout file)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_rollout)


def cmd_rollout(args: argparse.Namespace) -> int:
    from solver.rollout import publish_rollout

    r = publish_rollout(args.output, args.name, args.percent, args.sign_key, args.image_version)
    if args.json:
        print_json({"image": r.name, "version": r.version, "percent": r.percent})
    else:
        print(f"{r.name} {r.version}: rollout at {r.percent}%")
    return 0
