"""`rpmimg reset`: a factory reset, as a new deployment (see deploy.reset)."""

from __future__ import annotations

import argparse
from typing import Any

from rpmimg import options
from rpmimg.client import _system
from rpmimg.ui import print_json


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reset", help="new deployment of the current image with /etc and accounts fresh from the image",
        description="Make a new deployment of the default deployment's image whose root is made"
        " fresh from the image's vendor defaults and sysusers.d, as a first deployment's; the"
        " previous deployment stays for rollback.")
    p.add_argument("--keep-var", action="store_true",
                   help="mount the shared /var in the new root (default: a new, empty /var)")
    options.common(p, mutating=True)
    p.set_defaults(func=cmd_reset)


def cmd_reset(args: argparse.Namespace) -> int:
    from deploy.reset import reset

    with _system(args) as system:
        result = reset(system, keep_var=args.keep_var, lock_wait=args.lock_wait)
    if args.json:
        print_json({
            "deployment": {"id": result.deployment, "image": result.image, "version": result.version},
            "replaces": {"id": result.previous_default, "image": result.image, "version": result.version},
            "root": result.root, "var_subvol": result.var, "kernel_arguments": result.kernel_arguments or None,
        })
        return 0
    print(f"reset {result.image} {result.version} as deployment {result.deployment}"
          f" (deployment {result.previous_default} stays for rollback)")
    print(f"  root: {result.root}; /var: {result.var}")
    print(f"default for next boot: {result.kernel_arguments}")
    return 0
