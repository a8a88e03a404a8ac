"""The `rpmimg` command: parse arguments, run one verb, turn errors into exit codes.

The three libraries (rpmextents, solver, deploy) raise; only this layer prints and
exits. Verb groups are imported lazily so that a client never loads libsolv.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from rpmimg.ui import UsageError

# Each verb module exposes register(subparsers); handlers receive the parsed arguments.
VERB_MODULES = ("rpmimg.pkg", "rpmimg.server", "rpmimg.client", "rpmimg.boot")

# Library exception families whose message is meant for the user, by module.
USER_ERRORS = (
    ("rpmextents.errors", "ExtentsError"),
    ("imagespec.errors", "ImageSpecError"),
    ("host.run", "CommandError"),
    ("solver.errors", "ComposeError"),
    ("deploy.errors", "DeployError"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpmimg",
        description="Image-based, transactional OS updates built from RPM packages.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and commands run")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError, UsageError]
    for module_name, attr in USER_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None:
            types.append(getattr(module, attr))
    return tuple(types)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror}"
    return str(e) or type(e).__name__


def _closed_stdout() -> int:
    """The reader of our output went away (`rpmimg status | head`): stop quietly, as other
    Unix tools do, with the status a SIGPIPE death gives."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so that the exit flush does not fail again
    os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="rpmimg: %(message)s",
    )
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        code = handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _closed_stdout()
    except KeyboardInterrupt:
        print("rpmimg: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        if args.debug:
            raise
        if isinstance(e, _user_error_types()):
            print(f"rpmimg: error: {_describe(e)}", file=sys.stderr)
            return 1
        print(
            f"rpmimg: internal error: {type(e).__name__}: {e} (run with --debug for a traceback)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
