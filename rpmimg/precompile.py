"""`python3 -m rpmimg.precompile [--ddir DIR]`: compile rpmimg as it is installed.

/usr is read-only where rpmimg runs, so whatever it compiled at run time it would compile
at every command (its modules about 70 ms, its dataclasses' methods about 25 ms). This
writes both beside the sources it is run from: the dataclasses' methods that the command
line's first imports make (host.dataclasses_lean keeps them), then every module's .pyc,
validated by the source's hash rather than its mtime (a package build stays reproducible),
recorded as lying under DIR (where the package installs them) when given. The package's
spec and the benchmark's checkout both run it, so that both are compiled alike.
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import py_compile
import sys
from pathlib import Path

PACKAGES = ("host", "rpmextents", "imagespec", "deploy", "rpmimg", "solver")
# What a command line loads first: the verbs, the deploy transaction and what they import.
FIRST_IMPORTS = ("rpmimg.cli", "rpmimg.client", "rpmimg.deploy_verbs", "deploy.transaction")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m rpmimg.precompile", description=__doc__.split("\n")[0])
    parser.add_argument("--ddir", help="the directory the modules are recorded as lying in")
    args = parser.parse_args(argv)
    sys.dont_write_bytecode = False  # writing them is this command's work, whatever the environment says
    for name in FIRST_IMPORTS:
        importlib.import_module(name)  # the methods' file is written as the process exits
    root = Path(__file__).resolve().parent.parent
    ok = True
    for package in PACKAGES:
        where = root / package
        if where.is_dir():  # the server part (solver) is not in every install
            ok &= bool(compileall.compile_dir(
                where, quiet=1, force=True, ddir=f"{args.ddir}/{package}" if args.ddir else None,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
