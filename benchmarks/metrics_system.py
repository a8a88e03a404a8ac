"""The whole-system parts of a deployment on the corpus image (issue 11's targets).

A deploy also makes the deployment's root, its accounts and its rpm database, and an update
merges /etc and updates the database incrementally. The deploy group's "deploy time, warm
store" row times a full deploy with all of it against `cp -a --reflink=always` of the /usr
alone; this group's first row holds the same deploys (shared, run once) against
`cp -a --reflink=always` of everything they made, the /usr and the root (target <= 1.5x),
and the first of those full deploys, which hashes every store entry (deploy.storemarks
spares the later ones). It adds the update target (the v2 deploy, /etc merge and incremental database
update included, faster than `rpm -U` of the same packages) and the rpm database's share of
each: the database timed alone, built the way the deploy builds it (deploy.rpmdb: the headers
written into rpm's Packages table, rpm building the indexes; an update deletes and imports the
changed packages in a copy of the previous database), against the whole deploy and the whole
update of the same run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.context import Context
from benchmarks.image import deployments
from benchmarks.measure import Row, Target, Timing, median_timing, not_run, row, run_timed
from benchmarks.metrics_image import (
    Deployed,
    WarmDeploys,
    deployed,
    published,
    rpm_update_timing,
    warm_deploys,
)
from deploy import rpmdb

HEADERS = "lib/sysimage/packages"
faster = lambda rpmimg, peer: peer / rpmimg  # noqa: E731 - "N x faster": peer time over ours


def _timed(fn: Callable[[], None]) -> Timing:
    t0 = time.monotonic()
    fn()
    return Timing(time.monotonic() - t0, 0)


def update_vs_rpm(ctx: Context) -> list[Row]:
    """The v2 update deploy of a downloaded version (/usr from v1, /etc merge, accounts,
    incremental rpm database) against rpm -U of the changed packages onto rpm's v1 root."""
    metric, peer = "update deploy incl. /etc merge + rpm db (v2 onto v1)", "rpm -U --root of the changed packages"
    target = Target(">=", 1.0)
    f = deployed(ctx)
    if isinstance(f, str):
        return [not_run(metric, peer, rpm_update_timing(ctx).seconds, "s", f, target)]
    synced = ", ".join(f"{t.seconds:.3f}" for t in f.rpm_update_synced_runs)
    return [row(metric, f.deploy_v2.seconds, peer, f.rpm_update.seconds, "s", ratio=faster, target=target,
                note=f"issue 11: faster than rpm -U; ratio = rpm -U's time over rpmimg's; rpmimg: "
                     f"{f.update_runs_note}"),
            row(metric, f.deploy_v2.seconds, f"{peer}, then sync -f", f.rpm_update_synced.seconds, "s",
                ratio=faster, note=f"informational: rpmimg's update is on the disk when it returns, rpm's "
                                   f"after the sync that follows it (median of {synced} s); the target is "
                                   "judged on rpm -U alone, the row above")]


def full_deploy_vs_cp(ctx: Context) -> list[Row]:
    """A full deploy of the whole system from a warm store (the deploy group's runs: /usr,
    root, accounts, /etc merge, rpm database) against cp -a --reflink=always of what it made."""
    metric = "full deploy incl. root, accounts, rpm db, warm store"
    first_metric = "full deploy incl. root, accounts, rpm db, store entries hashed"
    peer = "cp -a --reflink=always of the deployment's /usr and root"
    pub = published(ctx)
    if isinstance(pub, str):
        return [not_run(metric, peer, None, "s", pub, Target("<=", 1.5)), not_run(first_metric, peer, None, "s", pub)]
    warm = warm_deploys(ctx, pub)
    default = next(d for d in deployments(ctx, warm.sysroot) if d.get("default"))
    copies = iter(range(1_000_000))

    def cp() -> Timing:
        dst = warm.sysroot / f"cp-system-{next(copies)}"  # reflinks need the same filesystem
        dst.mkdir()
        return run_timed([["cp", "-a", "--reflink=always", default["path"], os.fspath(dst / "usr")],
                          ["cp", "-a", "--reflink=always", default["root"], os.fspath(dst / "root")]])

    cp_t = median_timing(ctx.runs, ctx.cache, cp)
    note = (f"issue 11: the whole system; {ctx.cache.label}; median of {ctx.runs} (cp too); "
            "the same packages published under new image names, deployed with --switch --full")
    return [
        row(metric, warm.median.seconds, peer, cp_t.seconds, "s", target=Target("<=", 1.5),
            note=f"{note}; the store entries found unchanged since an earlier full deploy hashed them"),
        row(first_metric, warm.first.seconds, peer, cp_t.seconds, "s",
            note="one run: the first full deploy after v1, which hashes every stored package "
                 "(and marks it, so the later ones need not)"),
    ]


def rpmdb_metrics(ctx: Context) -> list[Row]:
    f = deployed(ctx)
    full_metric, upd_metric = "rpm database, full build", "rpm database, incremental update"
    warm_deploys: WarmDeploys | None = ctx.shared.get("warm deploys")
    warm = warm_deploys.median if warm_deploys is not None else None
    full_peer = ("the whole full deploy, warm store (same run)" if warm is not None
                 else "the whole first deploy (same run)")
    upd_peer = "the whole update deploy v2 onto v1 (same run)"
    if isinstance(f, str):
        return [not_run(full_metric, full_peer, None, "s", f), not_run(upd_metric, upd_peer, None, "s", f)]
    usr_v1, usr_v2 = _trees(ctx, f)
    v1 = sorted(os.listdir(usr_v1 / HEADERS))
    v2 = sorted(os.listdir(usr_v2 / HEADERS))
    trees = iter(range(1_000_000))

    def fresh(name: str) -> Path:
        tree = ctx.scratch(f"{name}-{next(trees)}")
        (tree / "lib/sysimage").mkdir(parents=True, exist_ok=True)
        return tree

    full = median_timing(ctx.runs, ctx.cache, lambda: _timed(
        lambda: rpmdb.build(fresh("rpmdb-full"), [usr_v1 / HEADERS / n for n in v1])))
    gone = [n.removesuffix(".rpm") for n in v1 if n not in set(v2)]
    added = [usr_v2 / HEADERS / n for n in v2 if n not in set(v1)]
    base: list[Path] = []

    def copy_v1() -> None:
        tree = fresh("rpmdb-update")
        shutil.copytree(usr_v1 / rpmdb.DB_DIR, tree / rpmdb.DB_DIR)
        base[:] = [tree]

    update = median_timing(ctx.runs, ctx.cache, lambda: _timed(
        lambda: rpmdb.update(base[0], gone, added)), setup=copy_v1)
    note = f"{len(v1)} packages; median of {ctx.runs}; ratio = the database's share"
    whole = warm.seconds if warm is not None else f.deploy_v1.seconds
    return [
        row(full_metric, full.seconds, full_peer, whole, "s", note=note),
        row(upd_metric, update.seconds, upd_peer, f.deploy_v2.seconds, "s",
            note=f"{len(gone)} erased, {len(added)} added; {note}"),
    ]


def _trees(ctx: Context, f: Deployed) -> tuple[Path, Path]:
    deps = deployments(ctx, f.sysroot)
    paths = [Path(d["path"]) for d in deps]
    return paths[0], paths[-1]
