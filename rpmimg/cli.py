"""The `rpmimg` command: parse arguments, run one verb, turn errors into exit codes.

The three libraries (rpmextents, solver, deploy) raise; only this layer prints and
exits. Verb groups are imported lazily so that a client never loads libsolv.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from host import log as hostlog
from host import memory
from rpmimg.ui import UsageError, print_json
from rpmimg.vocab import error

# Each verb module exposes register(subparsers); handlers receive the parsed arguments.
# VERBS names the module that registers each verb (in --help's order): a command line that
# names a verb builds only that module's parsers, not every verb's (tests/test_cli_verbs.py
# holds the table to what the modules register).
VERBS = {
    "pkg": "rpmimg.pkg",
    "compose": "rpmimg.server",
    "image": "rpmimg.server",
    **dict.fromkeys(("deploy", "switch", "rollback", "status", "diff", "verify", "pin", "state",
                     "cleanup"), "rpmimg.client"),
    "check": "rpmimg.channel_cli",
    "upgrade": "rpmimg.channel_cli",
    "rollout": "rpmimg.rollout_cli",
    "reset": "rpmimg.reset",
    **dict.fromkeys(("health-check", "boot-check", "install"), "rpmimg.boot"),
}
VERB_MODULES = tuple(dict.fromkeys(VERBS.values()))

# Library exception families whose message is meant for the user, by module.
USER_ERRORS = (
    ("rpmextents.errors", "ExtentsError"),
    ("imagespec.errors", "ImageSpecError"),
    ("host.run", "CommandError"),
    ("solver.errors", "ComposeError"),
    ("deploy.errors", "DeployError"),
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rpmimg")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """--version, the installed version looked up only when asked (importlib.metadata is slow)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    if stdout is None:
        return 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (ValueError, OSError):  # closed, detached, or not a terminal
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's, with the width found as argparse finds it but without importing shutil
    (which loads bz2 and lzma): argparse makes a formatter for every argument added."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as a JSON object on stdout too when --json was asked for."""

    json_errors = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            print_json({"error": {"kind": "usage", "message": f"{self.prog}: {message}"}})
            sys.stdout.flush()
        super().error(message)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given a known verb, only the parsers of the module that has
    it (its usage and errors are the same either way, and a verb-less parse lists all)."""
    parser = _Parser(
        prog="rpmimg",
        description="Image-based, transactional OS updates built from RPM packages.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and commands run")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    if verb not in VERBS or not _register(sub, (VERBS[verb],)):
        _register(sub, VERB_MODULES)
    _every_verb(parser)
    return parser


def _register(sub: Any, modules: Sequence[str]) -> bool:
    """Let each verb module present (a client-only install has no server) add its verbs."""
    found = False
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
        found = True
    return found


def _named_verb(words: Sequence[str]) -> str | None:
    """The verb a command line names, when only --debug comes before it: any other
    top-level option (--help, --version, an abbreviation) gets the whole parser."""
    for word in words:
        if word != "--debug":
            return word
    return None


def _every_verb(parser: argparse.ArgumentParser) -> None:
    """Let every verb take --debug too, and remember its own parser for its usage errors."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                   help="show tracebacks and commands run")
                child.set_defaults(_parser=child)
                _every_verb(child)


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
    memory.return_large_blocks()  # transient header copies are not kept resident
    memory.one_arena()  # nor what a thread freed (the rpm database's, beside the /etc merge)
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_named_verb(words))
    _Parser.json_errors = "--json" in words
    args, extra = parser.parse_known_args(words)
    if extra:
        # Named by the verb's own usage, not the top level's.
        verb_parser: argparse.ArgumentParser = getattr(args, "_parser", parser)
        verb_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # logging itself is loaded only for a message to show (host.log).
    hostlog.configure(hostlog.DEBUG if args.debug else hostlog.WARNING, format="rpmimg: %(message)s")
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
            return _fail(args, e, _describe(e), 1)
        return _fail(args, e, f"{type(e).__name__}: {e} (run with --debug for a traceback)", 70)


def entry() -> int:
    """main() as the rpmimg command runs it (its console script, `python -m rpmimg`): the
    objects left at the end are frozen out of the garbage collector, so that the
    interpreter's shutdown frees them without walking them all first (about 20 ms of the
    30 ms an update of the benchmark image took to exit). Not for main() called in a
    process that goes on (the tests'): nothing frozen is ever collected."""
    try:
        return main()
    finally:
        gc.freeze()


def _fail(args: argparse.Namespace, e: BaseException, message: str, code: int) -> int:
    """Report an error: one line on stderr, and under --json an error object on stdout."""
    internal = code != 1
    if getattr(args, "json", False):
        print_json(error(e, message, "internal" if internal else None))
    print(f"rpmimg: {'internal error' if internal else 'error'}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
