"""Client verbs: deploy, status, diff, verify, rollback, pin, cleanup.

Handlers import the deploy library lazily so that `rpmimg --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpmimg.ui import Progress, UsageError, human_bytes, print_json

if TYPE_CHECKING:
    from deploy.system import System


def _common(parser: argparse.ArgumentParser, mutating: bool) -> None:
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
        parser.add_argument("--tries", type=int, metavar="N",
                            help="boot tries of a new default's entry (default: /etc/kernel/tries, else 3)")
        parser.add_argument(
            "--lock-wait", type=float, default=5.0, metavar="SECONDS",
            help="how long to wait for another rpmimg on this system (default: 5)",
        )


def _keyring_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keyring", type=Path, action="append", default=[], metavar="FILE",
        help="trusted OpenPGP public key file (repeatable; added to SYSROOT/etc/rpmimg/keys.d"
        " and SYSROOT/usr/lib/rpmimg/keys.d)",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "deploy", help="deploy a signed image version as a new read-only /usr",
        description="Fetch and verify an image version, build it as a new read-only /usr"
        " subvolume, and make it the default for the next boot.",
    )
    p.add_argument("manifest", metavar="MANIFEST",
                   help="manifest path or directory, or a file://, http(s):// or rsync:// URL")
    _keyring_option(p)
    p.add_argument("--allow-downgrade", action="store_true",
                   help="deploy even if the version is older than one already deployed")
    p.add_argument("--allow-unsigned-packages", action="store_true",
                   help="do not require header signatures on the packages (the signed manifest"
                   " still pins each package's sha256)")
    p.add_argument("--full", action="store_true",
                   help="build the new /usr from the stored packages alone, not as an update of"
                   " the current default deployment")
    p.add_argument("--force", action="store_true",
                   help="make a deployment that failed to boot the default again")
    _common(p, mutating=True)
    p.set_defaults(func=cmd_deploy)

    p = subparsers.add_parser("status", help="list deployments")
    p.add_argument("--no-size", action="store_true", help="skip measuring exclusive disk use")
    p.add_argument("-v", "--verbose", action="store_true", help="show each deployment's root too")
    _common(p, mutating=False)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("diff", help="package differences between two deployments")
    p.add_argument("old", nargs="?", metavar="A", help="deployment id (default: see README)")
    p.add_argument("new", nargs="?", metavar="B", help="deployment id (default: the default)")
    p.add_argument("--etc", action="store_true",
                   help="show B's /etc merge instead: every .rpmnew/.rpmsave and kept file")
    _common(p, mutating=False)
    p.set_defaults(func=cmd_diff)

    p = subparsers.add_parser("verify", help="check a deployment's files against its headers")
    p.add_argument("deployment", nargs="?", metavar="ID", help="deployment id (default: the default)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--repair", action="store_true",
                     help="rewrite damaged files from the store (refetching a missing or damaged"
                     " package)")
    how.add_argument("--store", action="store_true",
                     help="re-hash every store entry against its recorded sha256 instead")
    _keyring_option(p)
    _common(p, mutating=True)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("rollback", help="make the previous deployment the default")
    _common(p, mutating=True)
    p.set_defaults(func=cmd_rollback)

    p = subparsers.add_parser("pin", help="protect a deployment from cleanup")
    p.add_argument("deployment", metavar="ID")
    p.add_argument("--unpin", action="store_true", help="remove the protection instead")
    _common(p, mutating=True)
    p.set_defaults(func=cmd_pin)

    _register_state(subparsers)
    p = subparsers.add_parser("cleanup", help="remove old deployments and unneeded packages")
    p.add_argument("--keep", type=int, default=2, metavar="N",
                   help="keep the N newest deployments (default: 2), besides the booted,"
                   " default and pinned ones")
    _common(p, mutating=True)
    p.set_defaults(func=cmd_cleanup)


def _register_state(subparsers: Any) -> None:
    p = subparsers.add_parser("state", help="manage the state file")
    state_verbs = p.add_subparsers(dest="state_verb", metavar="VERB", required=True)
    p = state_verbs.add_parser(
        "rebuild", help="rebuild state.json from the deployments' own records",
        description="Rebuild the state file from the records each deployment keeps in its"
        " subvolume (atomically); the default is the deployment usr-default.conf selects.",
    )
    _common(p, mutating=True)
    p.set_defaults(func=cmd_state_rebuild)


@contextlib.contextmanager
def _system(args: argparse.Namespace) -> Iterator[System]:
    from deploy.system import open_system

    with open_system(args.sysroot, private_namespace=True) as system:
        yield _with_esp(system, args)


def _with_esp(system: System, args: argparse.Namespace) -> System:
    import logging

    from deploy.bootentries import find_esp
    from deploy.esp import DirectoryEsp

    esp = getattr(args, "esp", None) or find_esp(args.sysroot)
    if esp is None:
        logging.getLogger("rpmimg").info("no ESP found: boot entries are not written (see --esp)")
        return system
    if not esp.is_dir():
        raise UsageError(f"--esp {esp}: not a directory")
    return dataclasses.replace(system, esp=DirectoryEsp(esp), tries=getattr(args, "tries", None))


def _settled(system: System) -> None:
    """Before a read-only view: make the boot selection agree with the state (see README)."""
    from deploy.lifecycle import settle

    settle(system)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Bars:
    """Progress bars for the deploy phases, closed when the command ends."""

    def __init__(self) -> None:
        self.bars: list[Progress] = []

    def __call__(self, label: str, unit: str) -> Callable[[int, int], None]:
        for bar in self.bars:
            bar.close()
        bar = Progress(label, unit=unit)
        self.bars.append(bar)
        return bar

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def cmd_deploy(args: argparse.Namespace) -> int:
    from deploy.transaction import DeployOptions, Outcome, deploy

    options = DeployOptions(
        source=args.manifest, keyrings=tuple(args.keyring), allow_downgrade=args.allow_downgrade,
        allow_unsigned_packages=args.allow_unsigned_packages, lock_wait=args.lock_wait,
        full=args.full, force=args.force,
    )
    bars = _Bars()
    with _system(args) as system:
        try:
            result = deploy(system, options, bars)
        finally:
            bars.close()
    if args.json:
        print_json(_jsonable(result))
        return 0
    if result.outcome is Outcome.UNCHANGED:
        print(f"no change: {result.image} {result.version} is already the default"
              f" (deployment {result.deployment})")
        return 0
    if result.outcome is Outcome.REACTIVATED:
        print(f"{result.image} {result.version}: deployment {result.deployment} is the default again")
        return 0
    print(
        f"deployed {result.image} {result.version} as deployment {result.deployment}"
        f" ({result.packages} packages, {result.fetched} fetched,"
        f" {human_bytes(result.transferred_bytes)} transferred,"
        f" {human_bytes(result.deduplicated_bytes)} deduplicated)"
    )
    if result.build == "update":
        print(f"  built from deployment {result.previous_default}: {result.written_paths} paths written,"
              f" {result.kept_paths} kept")
    elif result.full_reason:
        print(f"  built in full: {result.full_reason}")
    for nevra, paths in sorted(result.outside_usr.items()):
        print(f"  {nevra}: files outside /usr placed under /usr/share/factory: {', '.join(paths)}")
    for nevra in result.scriptlets_not_run:
        print(f"  {nevra}: has scriptlets, which were not run")
    for owner in result.unknown_owners:
        print(f"  {owner} does not exist on this system: files owned by root instead")
    for nevra in result.accounts_by_scriptlet:
        print(f"  {nevra}: creates accounts in a scriptlet without sysusers.d: they will not exist")
    if result.root:
        print(f"  root: {result.root}")
    print(f"default for next boot: {result.kernel_arguments}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from deploy.overview import status

    with _system(args) as system:
        _settled(system)
        rows = status(system, measure=not args.no_size)
    if args.json:
        print_json({"deployments": _jsonable(rows)})
        return 0
    if not rows:
        print("no deployments")
        return 0
    for r in rows:
        flags = [f for f, on in (("default", r.default), ("booted", r.booted),
                                 ("pinned", r.pinned), ("rolled back", r.bad)) if on]
        size = human_bytes(r.exclusive_bytes) if r.exclusive_bytes is not None else "-"
        mark = "*" if r.default else " "
        print(f"{mark} {r.id:>4}  {r.image} {r.version}  {r.packages} packages  {r.created}"
              f"  {size} exclusive  {r.path or r.subvol}"
              + (f"  ({', '.join(flags)})" if flags else ""))
        for e in r.boot:
            tries = f", {e.tries_left} tries left, {e.tries_done} done" if e.tries_left is not None else ""
            print(f"        boot entry {e.entry}: kernel {e.kernel_version}, {e.assessment}{tries}")
        if r.failed:
            print(f"        failed to boot: {r.failed}")
        if args.verbose and (r.root or r.root_subvol):
            print(f"        root {r.root or r.root_subvol}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from deploy.overview import diff

    if args.etc:
        return cmd_diff_etc(args)
    with _system(args) as system:
        _settled(system)
        result = diff(system, args.old, args.new)
    if args.json:
        print_json(result.to_json())
        return 0
    print(f"deployment {result.old} -> {result.new}: {len(result.changes)} changed packages")
    for line in result.lines():
        print(line)
    return 0


def cmd_diff_etc(args: argparse.Namespace) -> int:
    from deploy.etcreport import etc_diff

    with _system(args) as system:
        _settled(system)
        result = etc_diff(system, args.old, args.new)
    if args.json:
        print_json(result.to_json())
        return 0
    for line in result.lines():
        print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from deploy.verify import refetcher, repair, verify

    if args.store:
        return _verify_store(args)
    with _system(args) as system:
        if args.repair:
            result = repair(system, args.deployment, refetcher(system, tuple(args.keyring)),
                            args.lock_wait)
        else:
            _settled(system)
            bar = Progress("verify", unit="files")
            try:
                result = verify(system, args.deployment, bar)
            finally:
                bar.close()
    if args.json:
        print_json(_jsonable(result))
    else:
        for path in result.repaired:
            print(f"repaired  {path}")
        for m in result.mismatches:
            print(f"{','.join(m.what):<20} {m.path}  ({m.package})")
        state = "ok" if not result.mismatches else f"{len(result.mismatches)} mismatches"
        print(f"deployment {result.deployment}: {result.files} files checked, {state}")
    return 1 if result.mismatches else 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from deploy.lifecycle import rollback

    with _system(args) as system:
        result = rollback(system, args.lock_wait)
    if args.json:
        print_json(_jsonable(result))
    else:
        print(f"rolled back: deployment {result.default} is the default for next boot"
              f" (was {result.previous})")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from deploy.lifecycle import pin

    with _system(args) as system:
        pin(system, args.deployment, not args.unpin, args.lock_wait)
    if args.json:
        print_json({"deployment": args.deployment, "pinned": not args.unpin})
    else:
        print(f"deployment {args.deployment} {'unpinned' if args.unpin else 'pinned'}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from deploy.lifecycle import cleanup

    with _system(args) as system:
        result = cleanup(system, args.keep, args.lock_wait)
    if args.json:
        print_json(_jsonable(result))
    else:
        removed = ", ".join(result.removed_deployments) or "none"
        print(f"removed deployments: {removed}; {result.removed_packages} packages"
              f" ({human_bytes(result.freed_store_bytes)}) from the store")
    return 0


def _verify_store(args: argparse.Namespace) -> int:
    from deploy.verify import verify_store

    with _system(args) as system:
        bar = Progress("verify store", unit="packages")
        try:
            result = verify_store(system, bar)
        finally:
            bar.close()
    if args.json:
        print_json(_jsonable(result))
    else:
        for path in result.damaged:
            print(f"damaged  {path}")
        state = "ok" if not result.damaged else f"{len(result.damaged)} damaged"
        print(f"store: {result.entries} packages checked, {state}")
    return 1 if result.damaged else 0


def cmd_state_rebuild(args: argparse.Namespace) -> int:
    from deploy.lifecycle import rebuild_state

    with _system(args) as system:
        new, skipped = rebuild_state(system, args.lock_wait)
    ids = [d.id for d in new.deployments]
    if args.json:
        print_json({"deployments": ids, "default": new.default, "skipped": skipped})
        return 0
    print(f"state rebuilt: {len(ids)} deployments ({', '.join(ids) or 'none'}),"
          f" default {new.default or 'none'}")
    for name in skipped:
        print(f"  skipped {name}: not a complete deployment with its own record")
    return 0
