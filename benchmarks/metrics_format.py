"""Issue 2's format benchmark: transcode throughput against rpm2cpio, extract time against cp --reflink."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.context import Context, rpmimg_has
from benchmarks.measure import (
    Row,
    Target,
    Timing,
    median_timing,
    not_run,
    row,
    run_timed,
    stderr_tail,
)

MB = 1e6

# Transcode every package in one Python process, through the library the CLI calls.
_TRANSCODE_IN_PROCESS = """
import sys
from pathlib import Path
from rpmextents.transcode import transcode
out = Path(sys.argv[1])
for src in sys.argv[2:]:
    transcode(src, out / Path(src).name)
"""

_EXTRACT_IN_PROCESS = """
import sys
from rpmextents import ExtentsPackage
from rpmextents.extract import extract
dest = sys.argv[1]
for path in sys.argv[2:]:
    with ExtentsPackage.open(path) as pkg:
        extract(pkg, dest)
"""


def transcode(ctx: Context) -> list[Row]:
    """MB/s of original RPM through `rpmimg pkg transcode` and through `rpm2cpio > /dev/null`."""
    rpms = ctx.base_rpms()
    total = sum(p.stat().st_size for p in rpms) / MB
    peer = median_timing(ctx.runs, ctx.cache, lambda: run_timed([["rpm2cpio", os.fspath(p)] for p in rpms]))
    peer_thr = total / peer.seconds
    metric, unit, target = "transcode throughput", "MB/s", Target(">=", 1.0)
    note = f"{len(rpms)} packages, {total:.0f} MB of zstd RPMs; {ctx.cache.label}; median of {ctx.runs}"
    reason = rpmimg_has("pkg")
    if reason:
        return [not_run(metric, "rpm2cpio > /dev/null", peer_thr, unit, reason, target)]
    rows = []

    def cli(*options: str) -> Callable[[], Timing]:
        def once() -> Timing:
            out = ctx.scratch("transcode")
            return run_timed([[*ctx.rpmimg, "pkg", "transcode", *options, *map(os.fspath, rpms), "-o",
                               os.fspath(out)]])
        return once

    def library() -> Timing:
        out = ctx.scratch("transcode-lib")
        return run_timed([[sys.executable, "-c", _TRANSCODE_IN_PROCESS, os.fspath(out),
                           *map(os.fspath, rpms)]])

    runs = (
        (f"rpmimg pkg CLI, all packages in one call, a process per core ({os.cpu_count()})", cli()),
        ("rpmimg pkg CLI -j 1, one package at a time like the peer", cli("-j", "1")),
        ("library, one process", library),
    )
    for label, fn in runs:
        try:
            t = median_timing(ctx.runs, ctx.cache, fn)
        except subprocess.CalledProcessError as e:
            rows.append(not_run(metric, "rpm2cpio > /dev/null", peer_thr, unit,
                                f"{label} failed: {stderr_tail(e)}", target))
            continue
        rows.append(row(f"{metric} ({label})", total / t.seconds, "rpm2cpio > /dev/null", peer_thr,
                        unit, target=target, note=f"{note}; peak RSS {t.max_rss / MB:.0f} MB"))
    return rows


def extents_store(ctx: Context) -> Path:
    """The corpus transcoded once into a directory on the work btrfs (not timed)."""
    store = ctx.work / "extents-store"
    if not store.exists():
        tmp = ctx.scratch("extents-store-tmp")
        run_timed([[sys.executable, "-c", _TRANSCODE_IN_PROCESS, os.fspath(tmp),
                    *map(os.fspath, ctx.base_rpms())]])
        tmp.rename(store)
    return store


def extract(ctx: Context) -> list[Row]:
    """Seconds for `rpmimg pkg extract` of every package into one tree vs `cp -a --reflink=always` of it."""
    metric, unit, target = "extract time", "s", Target("<=", 1.5)
    reason = rpmimg_has("pkg")
    if reason:
        return [not_run(metric, "cp -a --reflink=always", None, unit, reason, target)]
    try:
        store = extents_store(ctx)
    except subprocess.CalledProcessError as e:
        return [not_run(metric, "cp -a --reflink=always", None, unit, f"transcode failed: {stderr_tail(e)}", target)]
    files = sorted(store.glob("*.rpm"))
    trees: list[Path] = []

    def cli() -> Timing:
        dest = ctx.scratch("extract")
        trees.append(dest)
        return run_timed([[*ctx.rpmimg, "pkg", "extract", *map(os.fspath, files), os.fspath(dest)]])

    def library() -> Timing:
        dest = ctx.scratch("extract-lib")
        return run_timed([[sys.executable, "-c", _EXTRACT_IN_PROCESS, os.fspath(dest),
                           *map(os.fspath, files)]])

    results: list[tuple[str, Timing | str]] = []
    for label, fn in (("rpmimg pkg CLI, all packages in one call", cli), ("library, one process", library)):
        try:
            results.append((label, median_timing(ctx.runs, ctx.cache, fn)))
        except subprocess.CalledProcessError as e:
            results.append((label, stderr_tail(e)))
    if not trees:
        return [not_run(metric, "cp -a --reflink=always", None, unit, "no tree extracted")]
    source = trees[0]
    peer = median_timing(ctx.runs, ctx.cache, lambda: run_timed([
        ["cp", "-a", "--reflink=always", os.fspath(source), os.fspath(ctx.scratch("cp") / "tree")]]))
    note = f"{len(files)} packages on a loop btrfs; {ctx.cache.label}; median of {ctx.runs}"
    rows = []
    for label, t in results:
        if isinstance(t, str):
            rows.append(not_run(metric, "cp -a --reflink=always", peer.seconds, unit, f"{label} failed: {t}", target))
        else:
            rows.append(row(f"{metric} ({label})", t.seconds, "cp -a --reflink=always", peer.seconds,
                            unit, target=target, note=f"{note}; peak RSS {t.max_rss / MB:.0f} MB"))
    return rows
