"""Deploy, update and verify metrics: rpmimg on the corpus image against rpm, cp, ostree, casync.

The peers always run; when an rpmimg verb is missing or fails, its row says
"not run: <reason>" and keeps the peer's figure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import zstandard

from benchmarks.context import Context, rpm_install_command, rpmimg_has
from benchmarks.image import (
    SigningKey,
    compose,
    default_usr,
    deploy,
    make_signing_key,
    new_packages_zstd_bytes,
)
from benchmarks.measure import (
    Row,
    Target,
    Timing,
    btrfs_data_used,
    median_of,
    median_timing,
    not_run,
    row,
    run_timed,
    stderr_tail,
    tree_bytes,
)
from fixtures.httpd import serve as http_serve
from fixtures.rsyncd import rsync_daemon, url_of

MB = 1e6
# Seconds `rpmimg compose` of the corpus v1 took in round one (one .rpm.zst per pool entry,
# no seekable form): README's table before issue 13, an earlier run on this machine.
ROUND_ONE_COMPOSE = 254.0
T = TypeVar("T")
faster = lambda rpmimg, peer: peer / rpmimg  # noqa: E731 - "N x faster": peer time over ours


class Published:
    """compose v1 (base) then v2 (base + updates) into one output with the real rpmimg."""

    def __init__(self, ctx: Context) -> None:
        self.key: SigningKey = make_signing_key(ctx.scratch("keys"))
        self.output = ctx.scratch("published")
        self.repos = {"base": ctx.corpus.base}
        self.v1 = compose(ctx, self.key, self.output, self.repos, "v1")
        self.v2 = compose(ctx, self.key, self.output,
                          {**self.repos, "updates": ctx.corpus.updates}, "v2")


class Deployed:
    """deploy v1 onto a fresh btrfs (its top level is the sysroot), then v2 over it: first
    `deploy --download-only` (its own timing), then the deploy of the downloaded version,
    which is issue 13's update deploy, "fetch from a local directory excluded".

    The published directory is on another filesystem, as a download would be, so the
    store's growth while downloading and deploying v2 is what the update costs on the
    client's disk.

    The update deploy's time is the median of ctx.runs, as its peer's (rpm -U) is: the
    others each on a sysroot of its own, brought to the same point (v1 deployed, v2
    downloaded, synced); only the first sysroot is kept for the other rows. Each sysroot
    also holds a copy of rpm's v1 root, made before v2 is downloaded: right after each
    update deploy (and a sync), rpm -U of the changed packages runs on that copy, so that
    both work on the same filesystem in the same state (until 2026-12-04, rpm's root was a
    copy on the shared work filesystem, beside everything else the run made there).
    """

    def __init__(self, ctx: Context, pub: Published) -> None:
        self.pub = pub
        self.sysroot = ctx.new_sysroot()
        self.deploy_v1 = deploy(ctx, pub.key, self.sysroot, os.fspath(pub.v1.manifest))
        self.usr_v1 = default_usr(ctx, self.sysroot)
        rpm_root = _rpm_root_beside(ctx, self.sysroot)  # before the update's disk cost is counted
        before = btrfs_data_used(self.sysroot)
        self.download_v2 = deploy(ctx, pub.key, self.sysroot, os.fspath(pub.v2.manifest), "--download-only")
        subprocess.run(["sync"], check=True)
        first = deploy(ctx, pub.key, self.sysroot, os.fspath(pub.v2.manifest))
        self.update_disk = btrfs_data_used(self.sysroot) - before
        runs = [(first, *_rpm_update(ctx, rpm_root, keep=False)),
                *(self._update_elsewhere(ctx) for _ in range(ctx.runs - 1))]
        self.update_runs = [ours for ours, _, _ in runs]
        self.rpm_update_runs = [theirs for _, theirs, _ in runs]
        self.rpm_update_synced_runs = [synced for _, _, synced in runs]
        self.deploy_v2 = median_of(self.update_runs)
        self.rpm_update = median_of(self.rpm_update_runs)
        self.rpm_update_synced = median_of(self.rpm_update_synced_runs)

    def _update_elsewhere(self, ctx: Context) -> tuple[Timing, Timing, Timing]:
        sysroot = ctx.new_sysroot()
        deploy(ctx, self.pub.key, sysroot, os.fspath(self.pub.v1.manifest))
        rpm_root = _rpm_root_beside(ctx, sysroot)
        deploy(ctx, self.pub.key, sysroot, os.fspath(self.pub.v2.manifest), "--download-only")
        subprocess.run(["sync"], check=True)
        ours = deploy(ctx, self.pub.key, sysroot, os.fspath(self.pub.v2.manifest))
        return ours, *_rpm_update(ctx, rpm_root, keep=True)

    @property
    def update_runs_note(self) -> str:
        runs = ", ".join(f"{t.seconds:.3f}" for t in self.update_runs)
        rpm_runs = ", ".join(f"{t.seconds:.3f}" for t in self.rpm_update_runs)
        return (f"median of {len(self.update_runs)} ({runs} s), each on a sysroot of its own with v1 deployed "
                f"and v2 downloaded beforehand by `deploy --download-only` ({self.download_v2.seconds:.2f}s); "
                f"rpm -U: median of {len(self.rpm_update_runs)} ({rpm_runs} s), each right after one of "
                "those, synced, on a copy of rpm's v1 root on the same filesystem")


def _rpm_root_beside(ctx: Context, sysroot: Path) -> Path:
    """A copy of rpm's v1 root on the sysroot's filesystem, outside rpmimg's directories."""
    root = sysroot / "rpm-U-v1"
    subprocess.run(["cp", "-a", "--reflink=auto", os.fspath(ctx.rpm_root_v1), os.fspath(root)], check=True)
    return root


def _rpm_update(ctx: Context, root: Path, keep: bool) -> tuple[Timing, Timing]:
    """rpm -U of the changed packages onto root (after a sync, as the update deploy before it):
    its time, and its time with the `sync -f` that follows it (rpmimg's update is on the disk
    when it returns, rpm's once that sync has written it back); the root removed afterwards
    unless keep (the kept sysroot's other rows never see it)."""
    updated = [ctx.corpus.updates / u["rpm"] for u in ctx.update_packages()]
    subprocess.run(["sync"], check=True)
    timing = run_timed([["rpm", "-U", "--root", os.fspath(root), "--nodeps", "--noscripts", "--nosignature",
                         "--ignorearch", *map(os.fspath, updated)]])
    written_back = run_timed([["sync", "-f", os.fspath(root)]])
    if not keep:
        subprocess.run(["rm", "-rf", "--one-file-system", os.fspath(root)], check=True)
    return timing, Timing(timing.seconds + written_back.seconds, timing.max_rss)


def _once(ctx: Context, key: str, verbs: tuple[str, ...], make: Callable[[], T]) -> T | str:
    """make() run once per benchmark run and shared, or why it can't run."""
    if key not in ctx.shared:
        reason = rpmimg_has(*verbs)
        if reason:
            ctx.shared[key] = reason
        else:
            try:
                ctx.shared[key] = make()
            except subprocess.CalledProcessError as e:
                ctx.shared[key] = f"`rpmimg {' '.join(map(str, e.cmd[1:2]))}` failed: {stderr_tail(e)}"
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                ctx.shared[key] = f"{type(e).__name__}: {e}"
    result: T | str = ctx.shared[key]
    return result


def published(ctx: Context) -> Published | str:
    return _once(ctx, "published", ("compose",), lambda: Published(ctx))


def deployed(ctx: Context) -> Deployed | str:
    pub = published(ctx)
    if isinstance(pub, str):
        return pub
    return _once(ctx, "deployed", ("deploy", "status"), lambda: Deployed(ctx, pub))


def ostree_repo(ctx: Context) -> Path:
    """A bare ostree repository on the work btrfs with the v1 tree committed (not timed)."""
    if "ostree" not in ctx.shared:
        repo = ctx.scratch("ostree")
        subprocess.run(["ostree", f"--repo={repo}", "init", "--mode=bare"], check=True)
        _ostree_commit(repo, ctx.rpm_root_v1 / "usr", "v1")
        ctx.shared["ostree"] = repo
    path: Path = ctx.shared["ostree"]
    return path


def _ostree_commit(repo: Path, tree: Path, subject: str) -> None:
    subprocess.run(["ostree", f"--repo={repo}", "commit", "--branch=bench", f"--subject={subject}",
                    f"--tree=dir={tree}"], check=True, capture_output=True)


def deploy_metrics(ctx: Context) -> list[Row]:
    """Deploy time from a warm store vs rpm -i, cp -a --reflink=always and ostree checkout."""
    rpms = ctx.base_rpms()
    note = f"{len(rpms)} packages; {ctx.cache.label}; median of {ctx.runs}"
    rpm_t = median_timing(ctx.runs, ctx.cache, lambda: run_timed(
        [rpm_install_command(ctx.scratch("rpm-i"), rpms)]))
    repo = ostree_repo(ctx)
    ostree_t = median_timing(ctx.runs, ctx.cache, lambda: run_timed([[
        "ostree", f"--repo={repo}", "checkout", "-H", "bench",
        os.fspath(ctx.scratch("ostree-co") / "usr")]]))
    f = deployed(ctx)
    # reflinks need the copy on the tree's own filesystem
    tree, fs = (f.usr_v1, f.sysroot) if isinstance(f, Deployed) else (ctx.rpm_root_v1 / "usr", ctx.work)
    copies = iter(range(1_000_000))
    cp_t = median_timing(ctx.runs, ctx.cache, lambda: run_timed([[
        "cp", "-a", "--reflink=always", os.fspath(tree), os.fspath(fs / f"cp-usr-{next(copies)}")]]))
    # deploy syncs the filesystem before it commits: cp's copy, to be on the disk too, needs one
    cp_sync_t = median_timing(ctx.runs, ctx.cache, lambda: run_timed([
        ["cp", "-a", "--reflink=always", os.fspath(tree), os.fspath(fs / f"cp-usr-{next(copies)}")],
        ["sync", "-f", os.fspath(fs)]]))
    metric, unit = "deploy time, warm store", "s"
    rows_peers = (("rpm -i --root --nodeps --noscripts", rpm_t.seconds, Target(">=", 10), faster),
                  ("cp -a --reflink=always of the deployed tree", cp_t.seconds, Target("<=", 1.5), None),
                  ("cp -a --reflink=always of the deployed tree, then sync -f", cp_sync_t.seconds, None, None),
                  ("ostree checkout -H of the same tree", ostree_t.seconds, None, None))
    if isinstance(f, str):
        return [not_run(metric, peer, value, unit, f, target) for peer, value, target, _ in rows_peers]
    deploy_t = warm_deploys(ctx, f.pub).median
    rows = [row(metric, deploy_t.seconds, peer, value, unit, ratio=ratio, target=target,
                note=f"{note}; a full build (--full) with every package already in rpmimg's "
                     "store (the same packages published under another image name)")
            for peer, value, target, ratio in rows_peers]
    rows.append(row("deploy time, empty store", f.deploy_v1.seconds, "rpm -i --root --nodeps --noscripts",
                    rpm_t.seconds, unit, ratio=faster,
                    note="first deploy: packages copied in from the published directory on "
                         "another filesystem, verified, then the tree built; one run"))
    rows.append(row("peak memory: rpmimg deploy", deploy_t.max_rss / MB, "rpm -i", rpm_t.max_rss / MB, "MB"))
    return rows


@dataclass(frozen=True)
class WarmDeploys:
    """Full deploys of the corpus with every package already in the store, on one sysroot."""

    sysroot: Path
    first: Timing  # the first: every store entry hashed (and marked, deploy.storemarks)
    median: Timing  # the median of ctx.runs after it: entries the marks vouch for not read


def warm_deploys(ctx: Context, pub: Published) -> WarmDeploys:
    """Deploy times of the corpus with every package already in the store (made once a run).

    After v1 is deployed (not timed), each run deploys the same packages published under a
    new image name with --full --switch, so rpmimg builds a whole new deployment (/usr,
    root, accounts, rpm database) without fetching (as an update of the previous one it
    would have nothing to do). The first such deploy hashes every stored package; the
    ones after it, timed for the median, find them marked as unchanged.
    """
    if "warm deploys" in ctx.shared:
        done: WarmDeploys = ctx.shared["warm deploys"]
        return done
    sysroot = ctx.new_sysroot()
    deploy(ctx, pub.key, sysroot, os.fspath(pub.v1.manifest))
    manifests: list[Path] = []

    def publish_next() -> None:
        n = len(manifests)
        manifests.append(compose(ctx, pub.key, pub.output, pub.repos, f"warm{n}",
                                 image=f"bench-warm{n}").manifest)

    def full_deploy() -> Timing:
        return deploy(ctx, pub.key, sysroot, os.fspath(manifests[-1]), "--full", "--switch")

    first = median_timing(1, ctx.cache, full_deploy, setup=publish_next)
    median = median_timing(ctx.runs, ctx.cache, full_deploy, setup=publish_next)
    result = ctx.shared["warm deploys"] = WarmDeploys(sysroot, first, median)
    return result


def compose_metrics(ctx: Context) -> list[Row]:
    """Time and peak memory of composing the image (v1 from scratch, v2 with the update)."""
    pub = published(ctx)
    if isinstance(pub, str):
        return [not_run("compose time", "", None, "s", pub)]
    n = len(pub.v1.data["packages"])
    return [row("compose time (v1, empty pool)", pub.v1.timing.seconds,
                "round one's compose (one-stream copies only)", ROUND_ONE_COMPOSE, "s",
                note=f"{n} packages: solve, transcode, one-stream zstd copies and seekable zstd "
                     "forms (frames on all cores), sign; the reference is round one's figure "
                     "from an earlier run on this machine, before issue 13 (not measured here)"),
            row("compose time (v2, update)", pub.v2.timing.seconds, "", None, "s"),
            row("peak memory: rpmimg compose", max(pub.v1.timing.max_rss, pub.v2.timing.max_rss) / MB,
                "", None, "MB")]


def update_metrics(ctx: Context) -> list[Row]:
    """Disk cost and bytes on the wire of the update, against the physical limit and the peers."""
    updated = ctx.update_packages()
    limit = sum(int(u["changed_bytes"]) for u in updated)
    note = (f"{len(updated)} packages updated, {sum(len(u['changed_files']) for u in updated)} "
            f"files changed ({limit / MB:.1f} MB)")
    repo = ostree_repo(ctx)
    before = tree_bytes(repo / "objects")
    _ostree_commit(repo, ctx.rpm_root_v2 / "usr", "v2")
    ostree_growth = tree_bytes(repo / "objects") - before
    casync = casync_new_bytes(ctx)
    zstd_limit = changed_files_zstd19(ctx)
    originals = sum(int(u["rpm_size"]) for u in updated)
    pub, dep = published(ctx), deployed(ctx)
    rows = []
    http_metric, http_peer = "update bytes over HTTP", "original compressed RPMs of the changed packages"
    wire = (dep if isinstance(dep, str) else
            _once(ctx, "http", ("deploy",), lambda: _http_bytes(ctx, dep.pub)))
    if isinstance(pub, str) or isinstance(wire, str):
        reason = pub if isinstance(pub, str) else str(wire)
        rows.append(not_run(http_metric, http_peer, originals / MB, "MB", reason, Target("<=", 1.0)))
        rows.append(not_run(http_metric, "the limit: changed files, zstd -19 each", zstd_limit / MB,
                            "MB", reason, Target("<=", 1.1)))
    else:
        count, zst = new_packages_zstd_bytes(pub.v1.data, pub.v2.data)
        level = ctx.corpus.info.get("zstd_level")
        caveat = ("" if level == 19 else f"; the corpus RPMs are zstd level {level}, not the 19 "
                  "distributions use: the ratio against them does not measure the target")
        v1, v2 = wire
        http_note = (f"bytes a server on 127.0.0.1 sent for the {count} new packages while rpmimg "
                     f"deployed v2 over http:// onto v1 ({v2.requests} requests); the whole .rpm.zst of the {count} "
                     f"new pool entries would be {zst / MB:.2f} MB; {v2.note()}")
        rows.append(row(http_metric, v2.packages / MB, http_peer, originals / MB, "MB",
                        target=Target("<=", 1.0), note=http_note + caveat))
        rows.append(row(http_metric, v2.packages / MB, "the limit: changed files, zstd -19 each",
                        zstd_limit / MB, "MB", target=Target("<=", 1.1), note=http_note))
        rows.append(row("update bytes over HTTP: boot files", v2.boot / MB, "", None, "MB",
                        note="kernels and initrds v2 brought (compose builds a new initrd when a "
                             "package it is made from changes); informational"))
        rows.append(row("update bytes over HTTP: signed manifest", v2.metadata / MB, "", None, "MB",
                        note=f"manifest.json and its signature, {len(pub.v2.data['packages'])} "
                             "packages; informational"))
        v1_originals = sum(int(p["source_size"]) for p in pub.v1.data["packages"])
        rows.append(row("full-image bytes over HTTP", v1.packages / MB, "original compressed RPMs of v1",
                        v1_originals / MB, "MB", target=Target("<=", 1.0),
                        note="bytes the server sent for the packages while rpmimg deployed v1 over "
                             f"http:// onto an empty system; {v1.note()}" + caveat))
        rows.append(row("full-image bytes over HTTP, everything", v1.total / MB, "original compressed RPMs of v1",
                        v1_originals / MB, "MB",
                        note="the packages, the kernel and the initrd compose built (an rpm-based "
                             "system builds its initrd itself; the kernel is also in its package), "
                             "and the signed manifest; informational"))
    rsync_metric = "update bytes over rsync"
    sent = (dep if isinstance(dep, str) else
            _once(ctx, "rsync", ("deploy",), lambda: _rsync_update_bytes(ctx, dep.pub)))
    if isinstance(sent, str):
        rows.append(not_run(rsync_metric, http_peer, originals / MB, "MB", sent, Target("<=", 0.6)))
    else:
        rows.append(row(rsync_metric, sent.packages / MB, http_peer, originals / MB, "MB", target=Target("<=", 0.6),
                        note="bytes an rsync daemon on 127.0.0.1 sent (its %b log) for the packages while "
                             f"rpmimg deployed v2 over rsync:// onto v1; {sent.note()}"))
    disk_metric, disk_peer = "update disk cost", "bytes of changed files (physical limit)"
    rpmimg_disk: float | None = None
    if isinstance(dep, str):
        rows.append(not_run(disk_metric, disk_peer, limit / MB, "MB", dep, Target("<=", 1.1)))
    else:
        boot = new_boot_bytes(dep.pub.v1.data, dep.pub.v2.data)
        rpmimg_disk = (dep.update_disk - boot) / MB
        rows.append(row(disk_metric, rpmimg_disk, disk_peer, limit / MB, "MB",
                        target=Target("<=", 1.1),
                        note=f"btrfs data growth while deploying v2 ({dep.update_disk / MB:.2f} MB) less the "
                             f"{boot / MB:.2f} MB of its new kernels and initrds (kept once each in "
                             f"@rpmimg/boot/files); {note}"))
    rows.append(_update_time(ctx, dep, note))
    rows.append(row("update disk cost vs ostree", rpmimg_disk, "ostree repo growth", ostree_growth / MB,
                    "MB", note="bare repository; informational"))
    rows.append(row("update wire bytes: peers", None, "casync new chunks + index", casync / MB, "MB",
                    note="casync make with its default chunk compression; informational"))
    rows.append(row("update wire bytes: limit", None, "changed files, zstd -19 each", zstd_limit / MB,
                    "MB", note=note))
    return rows


def rpm_update_timing(ctx: Context) -> Timing:
    """rpm -U of the changed packages onto a fresh copy of rpm's v1 root (median; once a run)."""
    if "rpm -U" in ctx.shared:
        done: Timing = ctx.shared["rpm -U"]
        return done
    updated = [ctx.corpus.updates / u["rpm"] for u in ctx.update_packages()]
    roots = iter(range(1_000_000))
    root: list[Path] = []

    def fresh_v1() -> None:
        root[:] = [ctx.work / f"rpm-U-{next(roots)}"]
        subprocess.run(["cp", "-a", "--reflink=auto", os.fspath(ctx.rpm_root_v1), os.fspath(root[0])],
                       check=True)

    rpm_u = median_timing(ctx.runs, ctx.cache, lambda: run_timed([[
        "rpm", "-U", "--root", os.fspath(root[0]), "--nodeps", "--noscripts", "--nosignature",
        "--ignorearch", *map(os.fspath, updated)]]), setup=fresh_v1)
    ctx.shared["rpm -U"] = rpm_u
    return rpm_u


def _update_time(ctx: Context, dep: Deployed | str, note: str) -> Row:
    """Deploying v2 onto v1 against rpm -U of the changed packages onto rpm's v1 root (on the
    same filesystem, Deployed; rpm's alone on the work filesystem when rpmimg's did not run)."""
    metric, peer = "update deploy time (v2 onto v1)", "rpm -U --root of the changed packages onto v1"
    # Issue 13's target: the update deploy in at most half rpm -U's time (2x faster).
    target = Target(">=", 2.0)
    if isinstance(dep, str):
        return not_run(metric, peer, rpm_update_timing(ctx).seconds, "s", dep, target)
    return row(metric, dep.deploy_v2.seconds, peer, dep.rpm_update.seconds, "s", ratio=faster, target=target,
               note=f"{note}; target: at most 0.5x rpm -U's time; rpmimg, building from the previous deployment: "
                    f"{dep.update_runs_note}")


@dataclass(frozen=True)
class Sent:
    """Bytes a server sent while rpmimg deployed one version, by what they were."""

    packages: int  # the pool's package files: whole copies, seekable tables and frames
    boot: int  # kernels and initrds (pool/boot/): compose makes a new initrd whenever a
    # package it is built from changes, and no package's file list holds it
    metadata: int  # the signed manifest, its signature: everything outside the pool
    requests: int = 0

    @property
    def total(self) -> int:
        return self.packages + self.boot + self.metadata

    def minus(self, before: Sent) -> Sent:
        return Sent(self.packages - before.packages, self.boot - before.boot,
                    self.metadata - before.metadata, self.requests - before.requests)

    def note(self) -> str:
        return (f"{self.boot / MB:.2f} MB of kernels and initrds and {self.metadata / MB:.2f} MB "
                f"of signed manifest and signature sent besides ({self.total / MB:.2f} MB in all)")


def sent_by_kind(by_path: dict[str, int], requests: int = 0) -> Sent:
    """Bytes sent per served path (an HTTP URL path or an rsync module path) as a Sent."""
    kinds = {"packages": 0, "boot": 0, "metadata": 0}
    for path, n in by_path.items():
        rel = path.lstrip("/")
        kind = "boot" if rel.startswith("pool/boot/") else "packages" if rel.startswith("pool/") else "metadata"
        kinds[kind] += n
    return Sent(**kinds, requests=requests)


def new_boot_bytes(old: dict[str, Any], new: dict[str, Any]) -> int:
    """Bytes of the kernels and initrds the manifest new pins that old does not."""
    def files(m: dict[str, Any]) -> dict[str, int]:
        return {f["sha256"]: int(f["size"]) for b in m.get("boot", ()) for f in (b["kernel"], b["initrd"])}
    have = files(old)
    return sum(size for sha, size in files(new).items() if sha not in have)


def _http_bytes(ctx: Context, pub: Published) -> tuple[Sent, Sent]:
    """Deploy v1 then v2 over http:// from a real server on 127.0.0.1: what it sent for
    each."""
    with http_serve(pub.output) as served:
        sysroot = ctx.new_sysroot()
        deploy(ctx, pub.key, sysroot, served.url + os.fspath(pub.v1.manifest.relative_to(pub.output)))
        v1 = sent_by_kind(served.by_path, len(served.requests))
        deploy(ctx, pub.key, sysroot, served.url + os.fspath(pub.v2.manifest.relative_to(pub.output)))
        return v1, sent_by_kind(served.by_path, len(served.requests)).minus(v1)


def _rsync_update_bytes(ctx: Context, pub: Published) -> Sent:
    """Deploy v1 then v2 over rsync:// from a real daemon; what it sent for v2."""
    with rsync_daemon(pub.output, ctx.scratch("rsyncd"), "bench") as daemon:
        sysroot = ctx.new_sysroot()
        deploy(ctx, pub.key, sysroot, url_of(daemon, pub.output, pub.v1.manifest))
        before = sent_by_kind(daemon.sent_by_path())
        deploy(ctx, pub.key, sysroot, url_of(daemon, pub.output, pub.v2.manifest))
        return sent_by_kind(daemon.sent_by_path()).minus(before)


def casync_new_bytes(ctx: Context) -> int:
    """Bytes a casync client fetches for v2 having v1: new chunks in the store plus the v2 index."""
    work = ctx.scratch("casync")
    store = work / "store"
    subprocess.run(["casync", "make", f"--store={store}", os.fspath(work / "v1.caidx"),
                    os.fspath(ctx.rpm_root_v1 / "usr")], check=True, capture_output=True)
    before = tree_bytes(store)
    subprocess.run(["casync", "make", f"--store={store}", os.fspath(work / "v2.caidx"),
                    os.fspath(ctx.rpm_root_v2 / "usr")], check=True, capture_output=True)
    return tree_bytes(store) - before + (work / "v2.caidx").stat().st_size


def changed_files_zstd19(ctx: Context) -> int:
    """The changed files' new content, each compressed with zstd -19: what no transport can beat."""
    cctx = zstandard.ZstdCompressor(level=19)
    total = 0
    for pkg in ctx.update_packages():
        for path in pkg["changed_files"]:
            total += len(cctx.compress((ctx.rpm_root_v2 / path.lstrip("/")).read_bytes()))
    return total


def verify_metrics(ctx: Context) -> list[Row]:
    """rpmimg verify of a deployment vs rpm -V --root of the same packages and sha256sum of the files."""
    root = ctx.rpm_root_v2  # the deployment rpmimg verifies is the default one: v2
    rpm_v = median_timing(ctx.runs, ctx.cache, lambda: _rpm_verify(root))
    files = [os.fspath(p) for p in (root / "usr").rglob("*") if p.is_file() and not p.is_symlink()]
    sha_t = median_timing(ctx.runs, ctx.cache, lambda: _chunked(["sha256sum"], files))
    metric, unit = "verify time", "s"
    f = deployed(ctx)
    reason = f if isinstance(f, str) else rpmimg_has("verify")
    if reason:
        return [not_run(metric, "rpm -Va --root", rpm_v.seconds, unit, reason, Target(">=", 2)),
                not_run(metric, "sha256sum of the same files", sha_t.seconds, unit, reason)]
    assert isinstance(f, Deployed)
    try:
        t = median_timing(ctx.runs, ctx.cache, lambda: run_timed([[
            *ctx.rpmimg, "verify", "--sysroot", os.fspath(f.sysroot)]]))
    except subprocess.CalledProcessError as e:
        return [not_run(metric, "rpm -Va --root", rpm_v.seconds, unit, f"rpmimg verify: {stderr_tail(e)}",
                        Target(">=", 2))]
    note = f"{len(files)} files; {ctx.cache.label}; median of {ctx.runs}"
    return [row(metric, t.seconds, "rpm -Va --root", rpm_v.seconds, unit, ratio=faster,
                target=Target(">=", 2), note=note),
            row(metric, t.seconds, "sha256sum of the same files", sha_t.seconds, unit, ratio=faster,
                note=note),
            row("peak memory: rpmimg verify", t.max_rss / MB, "rpm -Va", rpm_v.max_rss / MB, "MB")]


def _rpm_verify(root: Path) -> Timing:
    # rpm -V exits 1 when it reports differences (owners it mapped to root): still a full run.
    return run_timed([["rpm", "-Va", "--root", os.fspath(root), "--nodeps", "--noscripts"]],
                     ok=(0, 1))


def _chunked(cmd: list[str], args: list[str], size: int = 2000) -> Timing:
    return run_timed([[*cmd, *args[i:i + size]] for i in range(0, len(args), size)])
