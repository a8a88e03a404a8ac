"""Server verbs: `compose`, `image list`, `image diff`.

The solver package (and with it libsolv) is imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpmimg import vocab
from rpmimg.ui import Progress, UsageError, print_json

if TYPE_CHECKING:
    from imagespec.diff import PackageDiff
    from solver.compose import ComposeResult


def register(subparsers: Any) -> None:
    """Add the server verbs to the `rpmimg` parser."""
    p = subparsers.add_parser("compose", help="solve an image definition and publish a version")
    p.add_argument("definition", type=Path, help="image definition (TOML)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.add_argument("--sign-key", type=Path, help="armoured OpenPGP secret key to sign with")
    p.add_argument("--keep", type=int, metavar="N", help="keep the N newest versions, prune the rest")
    p.add_argument("--allow-downgrade", action="append", default=[], metavar="NAME",
                   help="let package NAME go back to an older version (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_compose)

    image = subparsers.add_parser("image", help="inspect published images")
    verbs = image.add_subparsers(dest="image_verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="list images and their versions")
    ls.add_argument("output", type=Path)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_image_list)
    diff = verbs.add_parser("diff", help="package differences between two versions")
    diff.add_argument("output", type=Path)
    diff.add_argument("name")
    diff.add_argument("v1")
    diff.add_argument("v2")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_image_diff)


class _Bar:
    """A thread-safe running total over ui.Progress (fetch threads advance it together)."""

    def __init__(self, label: str, total: int, unit: str) -> None:
        self.progress = Progress(label, unit=unit)
        self.total = total
        self.done = 0
        self.lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self.lock:
            self.done = min(self.done + n, self.total)
            self.progress(self.done, self.total)

    def close(self, summary: str | None = None) -> None:
        self.progress.close(summary)


class _Reporter:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def step(self, message: str) -> None:
        if not self.quiet:
            print(f"{message}", file=sys.stderr)

    def bar(self, label: str, total: int, unit: str) -> _Bar:
        return _Bar(label, total, unit)


def cmd_compose(args: argparse.Namespace) -> int:
    from solver.compose import compose
    from solver.definition import load_definition

    if args.keep is not None and args.keep < 1:
        raise UsageError(f"--keep must be at least 1, not {args.keep}")
    definition = load_definition(args.definition)
    # systemd stops a unit with SIGTERM: unwind like SIGINT, so the temporary GNUPGHOME
    # and the lock are released and nothing half-made stays behind.
    previous = {s: signal.signal(s, _terminated) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = compose(definition, args.output, sign_key=args.sign_key, keep=args.keep,
                         reporter=_Reporter(quiet=args.json),
                         allow_downgrade=tuple(args.allow_downgrade))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if args.json:
        print_json(compose_json(result))
    else:
        _print_compose(result)
    return 0


def compose_json(result: ComposeResult) -> dict[str, Any]:
    """compose --json in the one vocabulary: "image", and the diff as every verb shows one."""
    value = result.to_json()
    value["image"] = value.pop("name")
    if result.diff is not None:
        value["diff"] = vocab.diff(result.diff, vocab.image_ref(result.name, result.previous),
                                   vocab.image_ref(result.name, result.version))
    return value


def _terminated(signum: int, frame: object) -> None:
    from solver.signing import close_all

    # The secret key goes first: unwinding may wait for fetch threads to finish.
    close_all()
    raise KeyboardInterrupt(f"signal {signum}")


def _print_compose(result: ComposeResult) -> None:
    if not result.changed:
        print(f"{result.name}: no change (latest is {result.version})")
    else:
        since = f" (from {result.previous})" if result.previous else ""
        print(f"{result.name}: published {result.version}{since}: {result.packages} packages, "
              f"{result.fetched} fetched, {result.reused} reused")
        if result.diff is not None:
            _print_diff(result.diff)
        print(f"manifest: {result.manifest}")
    if result.pruned_versions:
        print(f"pruned versions: {', '.join(result.pruned_versions)}")
    if result.pruned_pool:
        print(f"pruned {len(result.pruned_pool)} pool files")


def _print_diff(diff: PackageDiff) -> None:
    lines = diff.lines()
    print("\n".join(lines) if lines else "  (no package changes)")


def cmd_image_list(args: argparse.Namespace) -> int:
    from imagespec.published import SIGNATURE
    from solver.publish import ImageStore

    store = ImageStore(args.output)
    if not store.images.is_dir():
        raise UsageError(f"{args.output}: not a compose output (no images directory)")
    listing: list[dict[str, Any]] = []
    for name in store.names():
        latest = store.latest(name)
        versions: list[dict[str, Any]] = []
        for version in store.versions(name):
            manifest = store.manifest(name, version)
            versions.append({
                "version": version, "created": manifest.created,
                "packages": len(manifest.packages), "latest": version == latest,
                "signed": (store.manifest_path(name, version).parent / SIGNATURE).exists(),
            })
        listing.append({"image": name, "latest": latest, "versions": versions})
    if args.json:
        print_json({"images": listing})
        return 0
    for image in listing:
        print(f"{image['image']} (latest {image['latest']})")
        for v in image["versions"]:
            mark = "*" if v["latest"] else " "
            signed = "signed" if v["signed"] else "unsigned"
            print(f" {mark} {v['version']}  {v['created']}  {v['packages']} packages  {signed}")
    return 0


def cmd_image_diff(args: argparse.Namespace) -> int:
    from imagespec.diff import manifest_diff
    from solver.publish import ImageStore

    store = ImageStore(args.output)
    diff = manifest_diff(store.manifest(args.name, args.v1), store.manifest(args.name, args.v2))
    if args.json:
        print_json(vocab.diff(diff, vocab.image_ref(args.name, args.v1), vocab.image_ref(args.name, args.v2)))
    else:
        print(f"{args.name}: {args.v1} -> {args.v2}")
        _print_diff(diff)
    return 0
