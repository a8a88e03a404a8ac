"""`make bench`: rpmimg against its peers on the realistic corpus, in one run, as ratios.

Builds (or reuses) the Debian corpus, mounts a loop btrfs to work on, runs each
metric group and writes benchmarks/results/latest.{json,md,svg}. A metric that
fails is reported as a "not run" row with its reason; nothing is made up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import metrics_format, metrics_image, metrics_scale, metrics_solve, metrics_system
from benchmarks.context import CHECKOUT, Context, byte_compile
from benchmarks.debcorpus import build_corpus, cache_root, summary
from benchmarks.measure import CacheState, Row, loop_btrfs
from benchmarks.report import markdown, write_results

Metric = Callable[[Context], list[Row]]

GROUPS: dict[str, list[tuple[str, Metric]]] = {
    "format": [("transcode throughput", metrics_format.transcode),
               ("extract time", metrics_format.extract)],
    "compose": [("compose", metrics_image.compose_metrics)],
    "deploy": [("deploy time", metrics_image.deploy_metrics)],
    "update": [("update cost", metrics_image.update_metrics)],
    "system": [("full deploy vs cp", metrics_system.full_deploy_vs_cp),
               ("update vs rpm -U", metrics_system.update_vs_rpm),
               ("rpm database share", metrics_system.rpmdb_metrics)],
    "verify": [("verify time", metrics_image.verify_metrics)],
    "solve": [("solve time", metrics_solve.solve)],
    "scale": [("scaling with file count", metrics_scale.scale_metrics)],
}
# Tools only the benchmark needs: installed here so `make test` stays lean.
BENCH_TOOLS = {"ostree": "ostree", "casync": "casync", "testsolv": "libsolv-tools",
               "rpmmd2solv": "libsolv-tools", "createrepo_c": "createrepo-c"}


def ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in BENCH_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        print(f"bench: installing {' '.join(missing)}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)


def run_metric(name: str, fn: Metric, ctx: Context) -> list[Row]:
    start = time.monotonic()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    try:
        rows = fn(ctx)
    except Exception as e:  # one broken metric must not lose the others' results
        traceback.print_exc(file=sys.stderr)
        rows = [Row(name, None, "", None, None, "", None, "", f"not run: {type(e).__name__}: {e}")]
    print(f"bench: {name} done in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", metavar="GROUPS",
                        help=f"comma-separated groups out of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--cold", action="store_true",
                        help="drop the page cache before each timed run (root only)")
    parser.add_argument("--limit", type=int, help="only the first N corpus packages (quick look)")
    parser.add_argument("--output", type=Path, default=CHECKOUT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=cache_root().parent / "bench-work",
                        help="where the loop btrfs image lives while running")
    parser.add_argument("--fs-size", type=int, default=48, metavar="GIB",
                        help="size of the sparse loop btrfs")
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group {', '.join(unknown)}: choose from {', '.join(GROUPS)}")

    t0 = time.monotonic()
    ensure_tools()
    # Every group runs this checkout's rpmimg as it is installed: with its modules compiled
    # (until 2026-12-04 only the scale group did; the others compiled them on every command).
    byte_compile()
    corpus = build_corpus()
    s = summary(corpus)
    print(f"bench: corpus {s['packages']} packages, {s['installed_mb']} MB installed, "
          f"{s['files']} files (built in {s['build_seconds'].get('total', 0):.0f}s, cached at {s['root']})",
          file=sys.stderr)
    rows: list[Row] = []
    cache = CacheState(cold=args.cold)
    with loop_btrfs(args.work, args.fs_size << 30) as mnt:
        ctx = Context(corpus, mnt, runs=args.runs, cache=cache, limit=args.limit, host=args.work)
        with ctx.stack:
            for group in groups:
                for name, fn in GROUPS[group]:
                    rows.extend(run_metric(name, fn, ctx))
    header = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {os.uname().release}",
        "caches": cache.label,
        "runs": f"median of {args.runs}",
        "corpus": (f"{s['packages']} Debian 12 packages as zstd-{corpus.info['zstd_level']} RPMs, "
                   f"{s['installed_mb']} MB installed, {s['files']} files; update: "
                   f"{s['update_packages']} packages, {s['update_changed_files']} files changed"),
        "groups": ", ".join(groups),
        "wall time": f"{time.monotonic() - t0:.0f}s",
    }
    written = write_results(rows, header, args.output)
    print(markdown(rows, header))
    print(f"bench: wrote {', '.join(os.fspath(p) for p in written.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
