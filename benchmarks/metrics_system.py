"""The whole-system parts of a deployment on the corpus image: the rpm database's share.

A deploy now also makes the deployment's root, its accounts and its rpm database, and an
update merges /etc and updates the database incrementally; the deploy and update rows of
metrics_image time all of it. These rows time the rpm database alone, the way the deploy
builds it (deploy.rpmdb: `rpm -i --justdb` of the header files; an update erases and adds
the changed packages in a copy of the previous database), against the whole deploy and the
whole update of the same run: the database's share of each.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.context import Context
from benchmarks.image import deployments
from benchmarks.measure import Row, Timing, median_timing, not_run, row
from benchmarks.metrics_image import Deployed, deployed
from deploy import rpmdb

HEADERS = "lib/sysimage/packages"


def _timed(fn: Callable[[], None]) -> Timing:
    t0 = time.monotonic()
    fn()
    return Timing(time.monotonic() - t0, 0)


def rpmdb_metrics(ctx: Context) -> list[Row]:
    f = deployed(ctx)
    full_metric, upd_metric = "rpm database, full build", "rpm database, incremental update"
    full_peer, upd_peer = "the whole first deploy (same run)", "the whole update deploy v2 onto v1 (same run)"
    if isinstance(f, str):
        return [not_run(full_metric, full_peer, None, "s", f), not_run(upd_metric, upd_peer, None, "s", f)]
    usr_v1, usr_v2 = _trees(ctx, f)
    v1 = sorted(os.listdir(usr_v1 / HEADERS))
    v2 = sorted(os.listdir(usr_v2 / HEADERS))
    trees = iter(range(1_000_000))

    def fresh(name: str) -> Path:
        tree = ctx.scratch(f"{name}-{next(trees)}")
        tree.mkdir(parents=True, exist_ok=True)
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
    return [
        row(full_metric, full.seconds, full_peer, f.deploy_v1.seconds, "s", note=note),
        row(upd_metric, update.seconds, upd_peer, f.deploy_v2.seconds, "s",
            note=f"{len(gone)} erased, {len(added)} added; {note}"),
    ]


def _trees(ctx: Context, f: Deployed) -> tuple[Path, Path]:
    deps = deployments(ctx, f.sysroot)
    paths = [Path(d["path"]) for d in deps]
    return paths[0], paths[-1]
