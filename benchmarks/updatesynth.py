"""Benchmark: an update deploy of a synthetic image, against rpm -U of the changed packages.

    python -m benchmarks.updatesynth [--packages 350] [--changed 18] [--runs 3] [--json]
                                     [--profile OUT.txt] [--baseline CHECKOUT] [--corpus DIR]
                                     [--download-first]

A quick stand-in for the corpus's update row (benchmarks.metrics_image), in minutes
rather than an hour: N generated packages shaped like a distribution's (about 85 files
each, some /etc configuration, sysusers.d accounts owning files, a few set-id programs),
published as v1, and a v2 where `--changed` of them have a new version (a third of their
files changed); or, with --corpus, a corpus of benchmarks.debcorpus (its base and its
update set), published without compose (no initrd, no zstd copies). On a loop-mounted
btrfs, v1 is deployed once; each run then deploys v2 onto a fresh copy of that state (the
filesystem image reflinked on an outer btrfs), and
`rpm -U --root --nodeps --noscripts` of the changed packages runs on the same filesystem,
onto a reflinked copy of rpm's own v1 root. Reports the medians (wall and CPU) and their
ratio; with --baseline, the same update deployed by another checkout's code (run from
there, `python -m rpmimg` imports it), alternating with this one's. Both checkouts are
byte-compiled first, as an installed rpmimg is. With --download-first, each run (the
baseline's too) first fetches v2 with `deploy --download-only`, timed on its own ("download"),
and the deploy timed is that of a version already in the store: issue 13's update deploy
"fetch from a local directory excluded". Needs root (loop mount, rpm --root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.context import byte_compile
from benchmarks.measure import loop_btrfs
from benchmarks.rpmwriter import FileEntry, FileFlag, PackageSpec, write_package
from fixtures.build import cache_root, signing_key

FILES = 85


def _files(i: int, version: str, rng: random.Random, changed: set[int]) -> list[FileEntry]:
    name = f"synth-{i:03d}"
    out = [FileEntry(f"/usr/lib/{name}", 0o40755), FileEntry(f"/usr/share/doc/{name}", 0o40755)]
    user = f"synth{i}" if i % 20 == 0 else "root"
    for j in range(FILES):
        size = min(int(rng.lognormvariate(7.5, 1.5)), 1 << 20)
        data = rng.randbytes(size)
        if j in changed:
            data = version.encode() + data
        where = f"/usr/share/doc/{name}" if j % 4 == 0 else f"/usr/lib/{name}"
        mode = 0o100755 if j % 7 == 0 else 0o100644
        owner = user if j % 10 == 1 else "root"
        out.append(FileEntry(f"{where}/f{j:03d}", mode, user=owner, group=owner,
                             mtime=1_700_000_000 + j, data=data))
    if i % 3 == 0:  # a package in three ships configuration
        out.append(FileEntry(f"/etc/{name}", 0o40755))
        for k in range(1 + i % 3):
            conf = f"# {name} {k}\nkey = {version if k == 0 else 'same'}\n".encode()
            out.append(FileEntry(f"/etc/{name}/{name}-{k}.conf", 0o100644, data=conf,
                                 flags=FileFlag.CONFIG | FileFlag.NOREPLACE))
    if i % 20 == 0:  # and one in twenty an account, owning some of its files
        out.append(FileEntry(f"/usr/lib/sysusers.d/{name}.conf", 0o100644,
                             data=f"u {user} - \"{name}\" /var/lib/{name}\n".encode()))
    if i % 50 == 7:
        out.append(FileEntry(f"/usr/bin/{name}-setuid", 0o104755, data=b"\x7fELF" + rng.randbytes(9000)))
    return out


def _spec(i: int, version: str) -> PackageSpec:
    rng = random.Random(i)
    changed = set(range(0, FILES, 3)) if version != "1" else set()
    return PackageSpec(name=f"synth-{i:03d}", version=version, release="1", arch="x86_64",
                       summary="synthetic", files=tuple(_files(i, version, rng, changed)))


def packages(n: int, changed: int) -> tuple[list[Path], list[Path]]:
    """(v1 RPMs, the changed packages' v2 RPMs), built once into the cache."""
    top = cache_root() / f"bench-updatesynth-{n}-{changed}"
    if not (top / "done").is_file():
        shutil.rmtree(top, ignore_errors=True)
        (top / "v1").mkdir(parents=True)
        (top / "v2").mkdir()
        for i in range(n):
            write_package(_spec(i, "1"), top / "v1", level=3)
        for i in _changed(n, changed):
            write_package(_spec(i, "2"), top / "v2", level=3)
        (top / "done").touch()
    return sorted((top / "v1").glob("*.rpm")), sorted((top / "v2").glob("*.rpm"))


def _changed(n: int, changed: int) -> list[int]:
    return sorted(random.Random(7).sample(range(n), changed))


def _timed(argv: list[str], cpu: list[float], cwd: Path | None = None) -> float:
    """Wall time of one command; its CPU time (user and system, its children's included)
    appended to cpu: the steadier figure on a shared machine."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"{argv[:3]} failed ({status})")
    cpu.append(usage.ru_utime + usage.ru_stime)
    return elapsed


def corpus_packages(corpus: Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(v1 RPMs, (old RPM, its update) pairs) of a corpus built by benchmarks.debcorpus."""
    info = json.loads((corpus / "corpus.json").read_text())
    pairs = [(corpus / "base" / u["old_rpm"], corpus / "updates" / u["rpm"])
             for u in info["update"]["packages"]]
    return sorted((corpus / "base").glob("*.rpm")), pairs


def synthetic_packages(n: int, changed: int) -> tuple[list[Path], list[tuple[Path, Path]]]:
    v1, updates = packages(n, changed)
    by_name = {p.name.rsplit("-", 2)[0]: p for p in v1}
    return v1, [(by_name[u.name.rsplit("-", 2)[0]], u) for u in updates]


def _btrfs_image(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.btrfs", "-q", os.fspath(path)], check=True, stderr=subprocess.DEVNULL)
    return path


def run(v1: list[Path], pairs: list[tuple[Path, Path]], runs: int, profile: Path | None,
        baseline: Path | None = None, download_first: bool = False) -> dict[str, object]:
    """v1 deployed, then v2 (v1 with each pair's old RPM replaced by its update, in place)
    deployed onto copies of it, runs times, against rpm -U of the updates."""
    for checkout in (Path(__file__).resolve().parent.parent, baseline):
        if checkout is not None:
            byte_compile(checkout)
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent / "tests"))
    from imagepub import publish  # type: ignore[import-not-found]

    new = dict(pairs)
    v2 = [new.get(p, p) for p in v1]
    updates = [u for _, u in pairs]
    with tempfile.TemporaryDirectory(prefix="rpmimg-updsynth-", dir="/var/tmp") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        # The test filesystem is an image file on an outer btrfs: each run's fresh copy of it
        # is a reflink, whatever its size.
        outer = stack.enter_context(loop_btrfs(work, 64 << 30))
        result = _measure(work, outer, v1, v2, updates, runs, profile, baseline, publish, download_first)
    result.update(packages=len(v1), changed=len(pairs))
    return result


def _measure(work: Path, outer: Path, v1: list[Path], v2: list[Path], updates: list[Path],
             runs: int, profile: Path | None, baseline: Path | None,
             publish: Callable[..., Path], download_first: bool = False) -> dict[str, object]:
    """Publish, deploy v1 (and rpm -i it), then the timed runs, each on a fresh copy."""
    key = signing_key()
    rpmimg = [sys.executable, "-m", "rpmimg"]
    out = work / "published"
    m1 = publish(out, "synth", "1", v1, key, zstd=False)
    m2 = publish(out, "synth", "2", v2, key, zstd=False)
    image = _btrfs_image(outer / "fs.img", 16 << 30)
    mnt = work / "mnt"
    mnt.mkdir()
    deploy = [*rpmimg, "deploy", "--keyring", os.fspath(key.public), "--allow-unsigned-packages"]
    subprocess.run(["mount", "-o", "loop", os.fspath(image), os.fspath(mnt)], check=True)
    try:
        # rpm's own v1 root on the same filesystem, outside rpmimg's directories.
        subprocess.run(["rpm", "-i", "--root", os.fspath(mnt / "rpm-v1"), "--nodeps", "--noscripts",
                        "--nosignature", "--ignorearch", *map(os.fspath, v1)], check=True,
                       stderr=subprocess.DEVNULL)
        for d in ("usr", "etc"):
            (mnt / d).mkdir()
        subprocess.run([*deploy, "--sysroot", os.fspath(mnt), os.fspath(m1)], check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["umount", os.fspath(mnt)], check=True)
    times: dict[str, list[float]] = {"deploy": [], "rpm -U": [], "baseline": [], "download": [],
                                     "baseline download": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}

    def fresh(run: Callable[[], object]) -> None:
        """run() on a fresh copy of the v1 filesystem, mounted."""
        copy = outer / "fs-run.img"
        subprocess.run(["cp", "--reflink=always", os.fspath(image), os.fspath(copy)], check=True)
        subprocess.run(["mount", "-o", "loop", os.fspath(copy), os.fspath(mnt)], check=True)
        try:
            subprocess.run(["cp", "-a", "--reflink=always", os.fspath(mnt / "rpm-v1"),
                            os.fspath(mnt / "rpm-run")], check=True)
            subprocess.run(["sync"], check=True)
            run()
        finally:
            subprocess.run(["umount", os.fspath(mnt)], check=True)
            copy.unlink()

    argv = [*deploy, "--sysroot", os.fspath(mnt), os.fspath(m2)]
    fetch = [*argv[:-1], "--download-only", argv[-1]]

    def download(what: str, cwd: Path | None = None) -> None:
        if download_first:
            times[what].append(_timed(fetch, cpu[what], cwd=cwd))
            subprocess.run(["sync"], check=True)

    for _ in range(runs):
        def ours() -> None:
            download("download")
            times["deploy"].append(_timed(argv, cpu["deploy"]))
            subprocess.run(["sync"], check=True)
            times["rpm -U"].append(_timed(
                ["rpm", "-U", "--root", os.fspath(mnt / "rpm-run"), "--nodeps", "--noscripts",
                 "--nosignature", "--ignorearch", *map(os.fspath, updates)], cpu["rpm -U"]))
        fresh(ours)
        if baseline is not None:
            def theirs(checkout: Path = baseline) -> None:
                download("baseline download", checkout)
                times["baseline"].append(_timed(argv, cpu["baseline"], cwd=checkout))
            fresh(theirs)
    if profile is not None:
        def profiled(out: Path = profile) -> None:
            download("download")
            subprocess.run([os.fspath(Path(sys.executable).parent / "py-spy"), "record", "-r", "250",
                            "--idle", "--threads", "-f", "raw", "-o", os.fspath(out), "--", *argv],
                           check=True, stdout=subprocess.DEVNULL)
        fresh(profiled)
    result: dict[str, object] = {}
    for what in times:
        if times[what]:
            result[what] = {"seconds": [round(t, 3) for t in times[what]],
                            "median": round(statistics.median(times[what]), 3),
                            "cpu_median": round(statistics.median(cpu[what]), 3)}
    result["deploy_over_rpm_U"] = round(statistics.median(times["deploy"]) / statistics.median(times["rpm -U"]), 2)
    if times["baseline"]:
        result["baseline_over_rpm_U"] = round(
            statistics.median(times["baseline"]) / statistics.median(times["rpm -U"]), 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packages", type=int, default=350)
    parser.add_argument("--changed", type=int, default=18)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="also record one deploy with py-spy into this file (collapsed stacks, waits included)")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of other code (git archive of a commit) whose deploy of the same"
                             " update runs after each of this one's, on its own fresh copy")
    parser.add_argument("--corpus", type=Path,
                        help="a corpus directory of benchmarks.debcorpus (its base as v1, its update set)"
                             " instead of generated packages")
    parser.add_argument("--download-first", action="store_true",
                        help="fetch v2 with `deploy --download-only` before each timed deploy (timed apart)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    v1, pairs = (corpus_packages(args.corpus) if args.corpus is not None
                 else synthetic_packages(args.packages, args.changed))
    result = run(v1, pairs, args.runs, args.profile, args.baseline, args.download_first)
    print(json.dumps(result, indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
