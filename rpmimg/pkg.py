"""`rpmimg pkg`: transcode, verify, extract and describe single extents RPMs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rpmimg import vocab
from rpmimg.ui import Progress, UsageError, human_bytes, print_json


class NotExtentsError(UsageError):
    """A plain RPM where an extents RPM was needed."""


RPM_LEAD_MAGIC = b"\xed\xab\xee\xdb"


def open_extents(path: Path) -> Any:
    """ExtentsPackage.open(path), with a plain RPM named as such rather than by the bytes
    where the extents index should be."""
    from rpmextents import ExtentsError
    from rpmextents.package import ExtentsPackage

    try:
        return ExtentsPackage.open(path)
    except ExtentsError as e:
        try:
            with open(path, "rb") as f:
                lead = f.read(4)
        except OSError:
            raise e from None
        if lead == RPM_LEAD_MAGIC and "index" in str(e):
            raise NotExtentsError(f"{path}: a plain RPM, not an extents package"
                             " (make one with `rpmimg pkg transcode`)") from e
        raise


def register(sub: Any) -> None:
    pkg = sub.add_parser("pkg", help="work with single extents RPMs")
    verbs = pkg.add_subparsers(dest="pkg_verb", metavar="VERB", required=True)

    p = verbs.add_parser("transcode", help="transcode RPMs into extents RPMs")
    p.add_argument("inputs", type=Path, nargs="+", metavar="IN.rpm")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="output file, or a directory to write each input's name into "
                        "(required, and created, with several inputs)")
    p.add_argument("--block-size", type=int, default=4096, metavar="N",
                   help="alignment of file data in bytes (power of two, default 4096)")
    p.add_argument("--sync", action="store_true",
                   help="fsync the output before renaming it into place (like cp, the default does not)")
    p.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                   help="packages transcoded at once, each in a process of its own (default: one per"
                        " core)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_transcode)

    p = verbs.add_parser("verify", help="verify extents RPMs against their signed headers")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("--keyring", type=Path, action="append", default=[], metavar="FILE",
                   help="armoured OpenPGP public key; the header signature must verify against one")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_verify)

    p = verbs.add_parser("extract", help="extract extents RPMs into a directory")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("dest", type=Path, metavar="DEST")
    p.add_argument("--method", choices=("auto", "reflink", "copy"), default="auto",
                   help="reflink file data (auto falls back to copying across filesystems)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_extract)

    p = verbs.add_parser("info", help="describe an extents RPM")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_info)


def _transcode_one(source: Path, target: Path, block_size: int, sync: bool,
                   progress: Progress | None = None) -> dict[str, Any]:
    from rpmextents.transcode import transcode

    result = transcode(source, target, block_size=block_size, progress=progress, checksum=False, fsync=sync)
    return {"output": os.fspath(target), **vocab.jsonable(result)}


def _transcode_all(jobs: list[tuple[Path, Path]], args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Each job's result, in order; the first failure in order is raised (after the jobs
    already running have finished: every output that appears is complete)."""
    workers = min(args.jobs or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        for source, target in jobs:
            progress = Progress(f"transcode {source.name}")
            try:
                yield _transcode_one(source, target, args.block_size, args.sync, progress)
            finally:
                progress.close()
        return
    import concurrent.futures  # a pool's machinery, only when there is more than one package
    import multiprocessing

    progress = Progress("transcode", unit="packages")
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(_transcode_one, s, t, args.block_size, args.sync) for s, t in jobs]
        try:
            for i, future in enumerate(futures):
                yield future.result()
                progress(i + 1, len(futures))
        finally:
            progress.close()
            pool.shutdown(cancel_futures=True)


def cmd_transcode(args: argparse.Namespace) -> int:
    output: Path = args.output
    if args.jobs < 0:
        raise UsageError(f"--jobs {args.jobs}: must be 0 (one per core) or more")
    if len(args.inputs) > 1:
        output.mkdir(parents=True, exist_ok=True)
    jobs = []
    for source in args.inputs:
        target = output / source.name if output.is_dir() else output
        if target.resolve() == source.resolve():
            raise UsageError(f"{target}: refusing to overwrite the input")
        jobs.append((source, target))
    results = []
    for result in _transcode_all(jobs, args):
        results.append(result)
        if not args.json:
            print(f"{result['output']}: {result['nevra']}, {result['files']} files,"
                  f" {human_bytes(result['data_bytes'])} of data, block size {result['block_size']}")
    if args.json:
        print_json({"packages": results})
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from rpmextents import ExtentsError
    from rpmextents.keyring import Keyring

    keyring = Keyring.from_files(args.keyring) if args.keyring else None
    results: list[dict[str, Any]] = []
    failed = 0
    for path in args.files:
        try:
            with open_extents(path) as pkg:
                report = pkg.verify(keyring)
            results.append({"path": os.fspath(path), "ok": True, **vocab.jsonable(report)})
            if not args.json:
                note = " (no PAYLOADDIGESTALT: checked every file against FILEDIGESTS)" \
                    if report.method == "file-digests" else ""
                sig = ", signature verified" if report.signature == "verified" else ""
                print(f"{path}: OK {report.nevra}{sig}{note}")
        except (ExtentsError, OSError, UsageError) as e:
            failed += 1
            reason = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
            results.append({"path": os.fspath(path), "ok": False, "error": reason})
            if not args.json:
                print(f"{path}: FAILED {reason.removeprefix(os.fspath(path) + ': ')}", file=sys.stderr)
    if args.json:
        print_json({"packages": results})
    return 1 if failed else 0


def cmd_extract(args: argparse.Namespace) -> int:
    from rpmextents.extract import extract

    reports = []
    for path in args.files:
        with open_extents(path) as pkg:
            report = extract(pkg, args.dest, method=args.method)
        reports.append({"file": os.fspath(path), **vocab.jsonable(report), "method": report.method})
        if not args.json:
            print(f"{path} -> {args.dest}: {report.entries} entries, {report.files} files, "
                  f"{human_bytes(report.bytes)} ({report.method}: {report.reflinked} reflinked, "
                  f"{report.copied} copied)")
    if args.json:
        print_json({"packages": reports})
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from rpmextents import index
    from rpmextents.header import Tag
    from rpmextents.keyring import signature_kind

    with open_extents(args.file) as pkg:
        entries = pkg.entries()
        has_alt = bool(pkg.header.strings(Tag.PAYLOADDIGESTALT))
        info = {
            "path": os.fspath(args.file),
            "format": f"extents v{index.VERSION}",
            "nevra": pkg.nevra,
            "block_size": pkg.block_size,
            "header_size": pkg.header_end,
            "header_sha256": pkg.header_sha256,
            "index_size": pkg.index.index_size,
            "data_offset": pkg.index.data_offset,
            "size": pkg.size,
            "digest": "payload digest (PAYLOADDIGESTALT)" if has_alt else "file digests only (no PAYLOADDIGESTALT)",
            "signature": signature_kind(pkg.prefix.signature) or "none",
            "files": len(entries),
            "regular_files": sum(1 for e in entries if e.extent is not None),
            "data_bytes": pkg.data_bytes,
            "scriptlets": pkg.has_scriptlets,
            "triggers": pkg.has_triggers,
        }
    if args.json:
        print_json(info)
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0
