"""Client verbs: status, diff, verify, pin, cleanup, state (deploy, switch and rollback
are in rpmimg.deploy_verbs).

Handlers import the deploy library lazily so that `rpmimg --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpmimg import deploy_verbs, options, table, vocab
from rpmimg.ui import Progress, UsageError, human_bytes, plural, print_json

_common = options.common
_keyring_option = options.keyring

if TYPE_CHECKING:
    from deploy.system import System


def register(subparsers: Any) -> None:
    deploy_verbs.register(subparsers)

    p = subparsers.add_parser("status", help="list deployments")
    p.add_argument("--no-size", action="store_true", help="skip measuring exclusive disk use")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show each deployment's source, signing key, kernel, path, root and boot entries")
    _common(p, mutating=False)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("diff", help="package differences between two deployments")
    p.add_argument("old", nargs="?", metavar="A", help="deployment id (default: see README)")
    p.add_argument("new", nargs="?", metavar="B", help="deployment id (default: the default)")
    p.add_argument("--etc", action="store_true",
                   help="show B's /etc merge instead: every .rpmnew/.rpmsave and kept file")
    _common(p, mutating=False)
    p.set_defaults(func=cmd_diff)

    p = subparsers.add_parser(
        "verify", help="check a deployment's files against its headers",
        description="Check every file of a deployment against its package headers, and report"
        " files no package owns and a deployment whose read-only flag is off.",
    )
    p.add_argument("deployment", nargs="?", metavar="ID", help="deployment id (default: the default)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--repair", action="store_true",
                     help="rewrite damaged files from the store (refetching a missing or damaged"
                     " package), remove files no package owns")
    how.add_argument("--store", action="store_true",
                     help="re-hash every store entry against its recorded sha256 instead")
    _keyring_option(p)
    options.unsigned(p)
    _common(p, mutating=True)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("pin", help="protect a deployment from cleanup")
    p.add_argument("deployment", metavar="ID")
    p.add_argument("--unpin", action="store_true", help="remove the protection instead")
    _common(p, mutating=True)
    p.set_defaults(func=cmd_pin)

    _register_state(subparsers)
    p = subparsers.add_parser("cleanup", help="remove old deployments and unneeded packages")
    p.add_argument("--keep", type=options.count, default=2, metavar="N",
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
    """The system with the ESP that --esp names, or that bootctl finds (none: no entries)."""
    import dataclasses

    from deploy.bootentries import find_esp
    from deploy.esp import DirectoryEsp
    from host.log import get as logger

    esp = getattr(args, "esp", None) or find_esp(args.sysroot)
    if esp is None:
        logger("rpmimg").info("no ESP found: boot entries are not written (see --esp)")
        return system
    if not esp.is_dir():
        raise UsageError(f"--esp {esp}: not a directory")
    return dataclasses.replace(system, esp=DirectoryEsp(esp), tries=getattr(args, "tries", None))


def _settled(system: System) -> None:
    """Before a read-only view: make the boot selection agree with the state (see README)."""
    from deploy.lifecycle import settle

    settle(system)


def _kernel(tree: Path) -> str | None:
    """The kernel version a deployment ships (lib/modules/VERSION/vmlinuz), if any."""
    try:
        found = sorted(p.parent.name for p in (tree / "lib/modules").glob("*/vmlinuz"))
    except OSError:
        return None
    return found[-1] if found else None


def status_rows(system: System, measure: bool) -> list[dict[str, Any]]:
    """status --json's deployments: the status fields in the one vocabulary, with the
    record's source and signer and the kernel."""
    from deploy.overview import status

    current = system.load_state()
    rows = []
    for r in status(system, measure=measure):
        row = vocab.jsonable(r)
        row["rolled_back"] = row.pop("bad")
        record = current.get(r.id)
        row["source"] = record.source or None
        row["signed_by"] = record.signed_by or None
        row["kernel"] = _kernel(system.layout.deployment(r.id))
        rows.append(row)
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    from deploy.channelmemory import channel_status

    with _system(args) as system:
        _settled(system)
        rows = status_rows(system, measure=not args.no_size)
        channel = channel_status(system)
    if args.json:
        print_json({"deployments": rows, **channel})
        return 0
    if channel["channel"] is not None:
        print(channel_line(channel))
    if not rows:
        print("no deployments")
        return 0
    lines = table.render(rows)
    print(lines[0])
    for row, line in zip(rows, lines[1:], strict=True):
        print(line)
        if args.verbose:
            print("\n".join(table.details(row)))
    return 0


def channel_line(channel: dict[str, Any]) -> str:
    """`status`'s line about the channel and its last check."""
    ch, last = channel["channel"], channel["last_check"]
    if "error" in ch:
        return f"channel: not usable: {ch['error']}"
    line = f"channel: {ch['image']} from {', '.join(ch['urls'])}, reboot {ch['reboot']}"
    if last is None:
        return line + "; never checked"
    found = last["error"] if last["result"] == "error" else last["result"]
    return line + f"; last check {last['checked']}: {found}"


def cmd_diff(args: argparse.Namespace) -> int:
    from deploy.overview import diff

    if args.etc:
        return cmd_diff_etc(args)
    with _system(args) as system:
        _settled(system)
        result = diff(system, args.old, args.new)
        current = system.load_state()
    if args.json:
        print_json(vocab.diff(result, vocab.ref_by_id(current, result.old),
                              vocab.ref_by_id(current, result.new)))
        return 0
    print(f"deployment {result.old} -> {result.new}: {plural(len(result.changes), 'changed package')}")
    for line in result.lines():
        print(line)
    return 0


def _verify_json(result: Any, current: Any) -> dict[str, Any]:
    value: dict[str, Any] = vocab.jsonable(result)
    value["deployment"] = vocab.ref_by_id(current, result.deployment)
    for m in value["mismatches"]:
        m["package"] = m["package"] or None
    return value


def cmd_diff_etc(args: argparse.Namespace) -> int:
    from deploy.etcreport import etc_diff

    with _system(args) as system:
        _settled(system)
        result = etc_diff(system, args.old, args.new)
        current = system.load_state()
    if args.json:
        value = result.to_json()
        for key in ("old", "new", "merged_from"):  # deployments as every verb names them
            value[key] = vocab.ref_by_id(current, result.to_json()[key])  # type: ignore[arg-type]
        print_json(value)
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
            fetch = refetcher(system, tuple(args.keyring), args.allow_unsigned_packages)
            result = repair(system, args.deployment, fetch, args.lock_wait)
        else:
            _settled(system)
            bar = Progress("verify", unit="files")
            try:
                result = verify(system, args.deployment, bar)
            finally:
                bar.close()
        current = system.load_state()
    if args.json:
        print_json(_verify_json(result, current))
    else:
        for path in result.repaired:
            print(f"repaired  {path}")
        for m in result.mismatches:
            owner = f"  ({m.package})" if m.package else ""
            print(f"{','.join(m.what):<20} {m.path}{owner}")
        state = "ok" if not result.mismatches else plural(len(result.mismatches), "mismatch", "mismatches")
        print(f"deployment {result.deployment}: {plural(result.files, 'file')} checked, {state}")
    return 1 if result.mismatches else 0


def cmd_pin(args: argparse.Namespace) -> int:
    from deploy.lifecycle import pin

    with _system(args) as system:
        pin(system, args.deployment, not args.unpin, args.lock_wait)
        current = system.load_state()
    if args.json:
        print_json({"deployment": vocab.ref_by_id(current, args.deployment), "pinned": not args.unpin})
    else:
        print(f"deployment {args.deployment} {'unpinned' if args.unpin else 'pinned'}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from deploy.lifecycle import cleanup

    with _system(args) as system:
        before = system.load_state()
        result = cleanup(system, args.keep, args.lock_wait)
    if args.json:
        print_json({
            "removed": [vocab.ref_by_id(before, d) for d in result.removed_deployments],
            "removed_packages": result.removed_packages, "freed_bytes": result.freed_store_bytes,
            "leftovers": list(result.leftovers),
        })
    else:
        removed = ", ".join(result.removed_deployments) or "none"
        print(f"removed deployments: {removed}; {plural(result.removed_packages, 'package')}"
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
        print_json(vocab.jsonable(result))
    else:
        for path in result.damaged:
            print(f"damaged  {path}")
        state = "ok" if not result.damaged else f"{len(result.damaged)} damaged"
        print(f"store: {plural(result.entries, 'package')} checked, {state}")
    return 1 if result.damaged else 0


def cmd_state_rebuild(args: argparse.Namespace) -> int:
    from deploy.lifecycle import rebuild_state

    with _system(args) as system:
        new, skipped = rebuild_state(system, args.lock_wait)
    ids = [d.id for d in new.deployments]
    if args.json:
        print_json({"deployments": [vocab.ref(d) for d in new.deployments],
                    "default": vocab.ref_by_id(new, new.default), "skipped": skipped})
        return 0
    print(f"state rebuilt: {plural(len(ids), 'deployment')} ({', '.join(ids) or 'none'}),"
          f" default {new.default or 'none'}")
    for name in skipped:
        print(f"  skipped {name}: not a complete deployment with its own record")
    return 0
