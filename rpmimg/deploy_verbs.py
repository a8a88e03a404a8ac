"""`rpmimg deploy`, `rpmimg switch` and `rpmimg rollback`: what changes the next boot."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rpmimg import options, vocab
from rpmimg.ui import Progress, human_bytes, plural, print_json

if TYPE_CHECKING:
    from deploy.transaction import DeployOptions, DeployResult


def register(subparsers: Any) -> None:
    for verb in ("deploy", "switch"):
        switching = verb == "switch"
        p = subparsers.add_parser(
            verb,
            help="deploy another image than the default's (change the operating system)" if switching
            else "deploy a signed image version as a new read-only /usr",
            description=(
                "Like deploy, for a manifest of another image than the default deployment's."
                if switching else
                "Fetch and verify an image version, build it as a new read-only /usr"
                " subvolume, and make it the default for the next boot."
            ),
        )
        p.add_argument("manifest", metavar="MANIFEST",
                       help="manifest path or directory, or a file://, http(s):// or rsync:// URL")
        options.keyring(p)
        p.add_argument("--allow-downgrade", action="store_true",
                       help="deploy even if the version is older than one already deployed")
        options.unsigned(p)
        p.add_argument("--full", action="store_true",
                       help="build the new /usr from the stored packages alone, not as an update of"
                       " the current default deployment")
        p.add_argument("--mirror", action="append", default=[], metavar="URL",
                       help="another http(s) URL of the same manifest; packages and ranges that"
                       " fail or do not check are fetched from the next (repeatable)")
        if not switching:
            p.add_argument("--switch", action="store_true",
                           help="allow an image other than the default deployment's")
        p.add_argument("--force", action="store_true",
                       help="deploy a version even though it was rolled back or failed to boot")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="list every file placed outside /usr and every scriptlet not run")
        p.add_argument("--download-only", action="store_true",
                       help="only fetch and verify the version's packages and boot files into the"
                       " store, for a later deploy that fetches nothing")
        options.common(p, mutating=True)
        p.set_defaults(func=cmd_deploy, **({"switch": True} if switching else {}))

    p = subparsers.add_parser(
        "rollback", help="make an earlier deployment the default",
        description="Make deployment ID (default: the one before the default) the default for"
        " the next boot; the deployment that was the default is marked as rolled back.",
    )
    p.add_argument("target", nargs="?", metavar="ID", help="deployment to return to")
    options.common(p, mutating=True)
    p.set_defaults(func=cmd_rollback)


class _Bars:
    """Progress bars for the deploy phases, for the length of a `with` block. Off a
    terminal, the plain line of each slow phase is written when the block ends without an
    error: a failure stays one line."""

    def __init__(self) -> None:
        self.bars: list[Progress] = []
        self.lines: list[str] = []

    def __call__(self, label: str, unit: str) -> Callable[[int, int], None]:
        self._close_all()
        bar = Progress(label, unit=unit)
        self.bars.append(bar)
        return bar

    def _close_all(self) -> None:
        for bar in self.bars:
            line = bar.plain_line()
            if line:
                self.lines.append(line)
            bar.close(plain=False)
        self.bars = []

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._close_all()
        if exc_type is None:
            sys.stderr.write("".join(self.lines))


def cmd_deploy(args: argparse.Namespace) -> int:
    from deploy.intent import Intent
    from deploy.transaction import DeployOptions, deploy
    from rpmimg.client import _system

    opts = DeployOptions(
        source=args.manifest, keyrings=tuple(args.keyring), allow_downgrade=args.allow_downgrade,
        allow_unsigned_packages=args.allow_unsigned_packages, lock_wait=args.lock_wait,
        full=args.full, intent=Intent(switch=args.switch, force=args.force),
        mirrors=tuple(args.mirror),
    )
    if args.download_only:
        return _download(args, opts)
    with _system(args) as system, _Bars() as bars:
        result = deploy(system, opts, bars)
    if args.json:
        print_json(deploy_json(result))
        return 0
    for line in report(result, args.verbose):
        print(line)
    return 0


def _download(args: argparse.Namespace, opts: DeployOptions) -> int:
    from deploy.transaction import download
    from rpmimg.client import _system

    with _system(args) as system, _Bars() as bars:
        got = download(system, opts, bars)
    if args.json:
        value = vocab.jsonable(got)
        for key in ("image", "version"):
            del value[key]
        # The version, as a deployment when one already has it, else with "id": null.
        value["deployment"] = {"id": got.deployment, "image": got.image, "version": got.version}
        print_json(value)
        return 0
    if got.deployment is not None:
        print(f"{got.image} {got.version} is already deployment {got.deployment}: nothing fetched")
        return 0
    print(f"downloaded {got.image} {got.version}: {plural(got.fetched, 'package')} fetched,"
          f" {human_bytes(got.transferred_bytes)} transferred,"
          f" {human_bytes(got.deduplicated_bytes)} deduplicated; `rpmimg deploy` builds it")
    return 0


def deploy_json(result: DeployResult) -> dict[str, Any]:
    value = vocab.jsonable(result)
    for key in ("image", "version", "previous_default"):
        del value[key]
    value["deployment"] = {"id": result.deployment, "image": result.image, "version": result.version}
    return dict(value)


def _replaces(result: DeployResult) -> str:
    r = result.replaces
    if r is None:
        return ""
    return f", replacing {r.image} {r.version} (deployment {r.id})"


def _outside_lines(result: DeployResult, verbose: bool) -> list[str]:
    outside = sum(len(p) for p in result.outside_usr.values())
    if not outside:
        return []
    head = f"  {plural(outside, 'file')} outside /usr placed under /usr/share/factory"
    if verbose:
        return [head] + [f"    {nevra}: {', '.join(paths)}"
                         for nevra, paths in sorted(result.outside_usr.items())]
    new = result.outside_usr_new
    if new is None or result.replaces is None:
        return [head + " (--verbose lists them)"]
    count = sum(len(p) for p in new.values())
    head += f", {count} new since deployment {result.replaces.id} (--verbose lists all)"
    return [head] + [f"    {nevra}: {', '.join(paths)}" for nevra, paths in sorted(new.items())]


def report(result: DeployResult, verbose: bool) -> list[str]:
    """A few lines with counts; the outside-/usr files new since the replaced deployment,
    and every one and every scriptlet only when verbose."""
    from deploy.transaction import Outcome

    name = f"{result.image} {result.version}"
    if result.outcome is Outcome.UNCHANGED:
        return [f"no change: {name} is already the default (deployment {result.deployment})"]
    if result.outcome is Outcome.REACTIVATED:
        return [f"{name}: deployment {result.deployment} is the default again{_replaces(result)}"]
    lines = [
        f"deployed {name} as deployment {result.deployment}{_replaces(result)}",
        f"  {plural(result.packages, 'package')}, {result.fetched} fetched,"
        f" {human_bytes(result.transferred_bytes)} transferred,"
        f" {human_bytes(result.deduplicated_bytes)} deduplicated",
    ]
    if result.build == "update":
        lines.append(f"  built from deployment {result.previous_default}:"
                     f" {plural(result.written_paths, 'path')} written, {result.kept_paths} kept")
    elif result.full_reason:
        lines.append(f"  built in full: {result.full_reason}")
    lines += _outside_lines(result, verbose)
    if result.scriptlets_not_run:
        lines.append(f"  {plural(len(result.scriptlets_not_run), 'package')} with scriptlets that were not run"
                     + (": " + ", ".join(result.scriptlets_not_run) if verbose else " (--verbose lists them)"))
    if result.unknown_owners:
        lines.append(f"  owned by root instead (unknown here): {', '.join(result.unknown_owners)}")
    lines += [f"  warning: {line}" for line in result.setid_dropped]
    lines += [f"  {nevra}: creates accounts in a scriptlet without sysusers.d: they will not exist"
              for nevra in result.accounts_by_scriptlet]
    lines += [f"  {a.path}: {a.action}: {a.detail}" for a in result.etc_notable]
    if result.root:
        lines.append(f"  root: {result.root}")
    lines.append(f"default for next boot: {result.kernel_arguments}")
    return lines


def cmd_rollback(args: argparse.Namespace) -> int:
    from deploy.lifecycle import rollback
    from rpmimg.client import _system

    with _system(args) as system:
        result = rollback(system, args.lock_wait, args.target)
        current = system.load_state()
    default, previous = vocab.ref_by_id(current, result.default), vocab.ref_by_id(current, result.previous)
    if args.json:
        print_json({"deployment": default, "replaces": previous})
    else:
        print(f"rolled back: deployment {result.default} is the default for next boot"
              f" (was {result.previous}, now marked as rolled back)")
    return 0
