"""Scaling: time and peak memory against the number of files, rpmimg beside rpm and cp.

    python -m benchmarks.metrics_scale [--sizes 10000,50000,200000] [--output DIR]

For generated packages of 10k, 50k and 200k small files (benchmarks/scalepkg.py), on one
loop btrfs and in one run: `rpmimg pkg transcode`, `pkg extract`, a full `deploy` (a new
deployment built from a warm store), `verify` and `status` against `rpm -i`, `rpm -V` and
`cp -a --reflink=always` of the deployed tree. Each figure is a row; the per-file slope
of each (least squares over the sizes) is a row too; scaling.svg plots time and memory
against the file count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.context import CHECKOUT, Context, byte_compile, rpmimg_command
from benchmarks.measure import Row, Target, Timing, loop_btrfs, median_of, row, run_timed
from benchmarks.report import markdown
from benchmarks.scalepkg import package
from benchmarks.scaleplot import write_plot
from fixtures.build import cache_root, signing_key

SIZES = (10_000, 50_000, 200_000)
RSS_TARGET = Target("<=", 1.5)
SLOPE_TARGET = Target("<=", 1.2)
STATUS_SECONDS = 0.5
Figures = dict[str, Timing]


def published(n: int) -> Path:
    """A published directory with two images, scaleN and scaleN-warm, of the one n-file
    package (the second deploy finds it in the store); cached beside the package.

    Published with the tests' publisher (transcode, manifest, signature) rather than
    `rpmimg compose`: compose also writes a zstd -19 copy of every pool entry, which for
    a package of 200,000 block-aligned files takes longer than everything measured here.
    """
    out = package(n).parent / "published"
    if (out / "images" / f"scale{n}-warm" / "latest").exists():
        return out
    sys.path.insert(0, os.fspath(CHECKOUT / "tests"))
    from imagepub import publish  # type: ignore[import-not-found,unused-ignore]

    tmp = out.with_name(f"published.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for image in (f"scale{n}", f"scale{n}-warm"):
        publish(tmp, image, "1", [package(n)], signing_key(), zstd=False)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def measure_size(n: int, fs: Path) -> Figures:
    """Every figure for the n-file package, on the empty btrfs at fs (its top level is the
    sysroot deployed to)."""
    rpmimg = rpmimg_command()
    rpm = package(n)
    work = fs / f"scale-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    out = published(n)
    key = signing_key()
    f: Figures = {}
    (work / "x").mkdir()
    f["transcode"] = run_timed([[*rpmimg, "pkg", "transcode", os.fspath(rpm), "-o", os.fspath(work / "x")]])
    ext = next((work / "x").glob("*.rpm"))
    f["extract"] = run_timed([[*rpmimg, "pkg", "extract", os.fspath(ext), os.fspath(work / "tree")]])
    f["rpm -i"] = run_timed([["rpm", "-i", "--nodeps", "--noscripts", "--nosignature", "--nodigest",
                              "--root", os.fspath(work / "rpmroot"), os.fspath(rpm)]])
    f["rpm -V"] = run_timed([["rpm", "-V", "--root", os.fspath(work / "rpmroot"), f"scale{n}"]], ok=(0, 1))
    sysroot = fs
    for d in ("usr", "etc"):
        (sysroot / d).mkdir(parents=True, exist_ok=True)
    deploy = [*rpmimg, "deploy", "--sysroot", os.fspath(sysroot), "--keyring", os.fspath(key.public),
              "--allow-unsigned-packages"]
    f["deploy (cold store)"] = run_timed([[*deploy, os.fspath(out / f"images/scale{n}/latest")]])
    subprocess.run(["sync"], check=True)
    # Another image name (hence --switch) over the same package, every file from the warm
    # store (--full: not built as an update of the first deployment, which shares it all).
    f["deploy"] = run_timed([[*deploy, "--switch", "--full", os.fspath(out / f"images/scale{n}-warm/latest")]])
    state = json.loads((sysroot / "@rpmimg/state.json").read_text())
    tree = sysroot / "@rpmimg/deployments" / state["default"]
    f["cp -a --reflink"] = run_timed([["cp", "-a", "--reflink=always", os.fspath(tree), os.fspath(work / "cp")]])
    # deploy syncs the filesystem before it commits; cp's copy is not on the disk when it ends
    subprocess.run(["sync", "-f", os.fspath(sysroot)], check=True)
    f[CP_SYNCED] = run_timed([["cp", "-a", "--reflink=always", os.fspath(tree), os.fspath(work / "cp-synced")],
                              ["sync", "-f", os.fspath(sysroot)]])
    f["verify"] = run_timed([[*rpmimg, "verify", "--sysroot", os.fspath(sysroot)]], ok=(0, 1))
    status = [*rpmimg, "status", "--sysroot", os.fspath(sysroot)]
    f["status (first)"] = run_timed([status])
    # Cached status is a fraction of a second: one run is at the mercy of whatever else the
    # machine does at that moment, so it is the median of three.
    runs = [run_timed([status]) for _ in range(3)]
    f["status"] = median_of(runs)
    for copy in ("cp", "cp-synced"):
        subprocess.run(["btrfs", "subvolume", "delete", os.fspath(work / copy)], check=False, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    return f


def slope(points: Sequence[tuple[int, float]]) -> float:
    """Least-squares slope of y against x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


# rpmimg's operation -> the peer it is set beside
PEERS = {"transcode": "rpm -i", "extract": "cp -a --reflink", "deploy": "cp -a --reflink",
         "deploy (cold store)": "rpm -i", "verify": "rpm -V", "status": "rpm -V"}
MEMORY_CHECKED = ("extract", "deploy", "verify")
CP_SYNCED = "cp -a --reflink, then sync -f"  # a peer beside deploy's: its copy on the disk too


def rows_for(by_size: dict[int, Figures]) -> list[Row]:
    out = []
    for n, f in sorted(by_size.items()):
        for op, peer in PEERS.items():
            out.append(row(f"scale {n // 1000}k files: {op} time", f[op].seconds, peer, f[peer].seconds, "s"))
            rss_target = RSS_TARGET if op in MEMORY_CHECKED else None
            out.append(row(f"scale {n // 1000}k files: {op} peak RSS", f[op].max_rss / 2**20, "rpm -i",
                           f["rpm -i"].max_rss / 2**20, "MiB", target=rss_target))
        st = f["status"].seconds
        out.append(Row(f"scale {n // 1000}k files: status (cached sizes) time", round(st, 3), "limit",
                       STATUS_SECONDS, round(st / STATUS_SECONDS, 3), f"<= {STATUS_SECONDS}",
                       st <= STATUS_SECONDS, "s", "first status after deploy: "
                       f"{f['status (first)'].seconds:.2f}s (measures and caches the sizes)"))
    sizes = sorted(by_size)
    if len(sizes) >= 2:
        ops = [*PEERS, "rpm -i", "rpm -V", "cp -a --reflink", CP_SYNCED]
        time_slope = {op: slope([(n, by_size[n][op].seconds) for n in sizes]) for op in ops}
        rss_slope = {op: slope([(n, by_size[n][op].max_rss) for n in sizes]) for op in ops}
        for op, peer in PEERS.items():
            target = SLOPE_TARGET if op == "deploy" else None
            out.append(row(f"scale slope: {op} time per 1000 files", time_slope[op] * 1000, peer,
                           time_slope[peer] * 1000, "s", target=target))
            out.append(row(f"scale slope: {op} memory per file", rss_slope[op], "rpm -i",
                           rss_slope["rpm -i"], "B"))
        out.append(row("scale slope: deploy time per 1000 files", time_slope["deploy"] * 1000, CP_SYNCED,
                       time_slope[CP_SYNCED] * 1000, "s",
                       note="deploy syncs the filesystem before it commits; this peer syncs after its copy"))
    return out


def scale_metrics(ctx: Context) -> list[Row]:
    """The group for `make bench` (benchmarks/run.py): its own btrfs, every size."""
    byte_compile()
    by_size = {}
    for n in SIZES:
        by_size[n] = measure_size(n, ctx.new_btrfs(8 << 30))
    ctx.shared["scale"] = by_size
    write_plot(by_size, CHECKOUT / "benchmarks" / "results" / "scaling.svg")
    return rows_for(by_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    byte_compile()
    by_size = {}
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"scale: {n} files ...", file=sys.stderr, flush=True)
        with loop_btrfs(cache_root().parent / "bench-work", 8 << 30) as fs:
            by_size[n] = measure_size(n, fs)
    args.output.mkdir(parents=True, exist_ok=True)
    write_plot(by_size, args.output / "scaling.svg")
    rows = rows_for(by_size)
    (args.output / "scaling.json").write_text(json.dumps([r.as_dict() for r in rows], indent=1) + "\n")
    print(markdown(rows, {"group": "scale", "sizes": args.sizes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
