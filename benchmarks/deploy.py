"""Benchmark: deploying an image from a warm store, against rpm -i and cp --reflink.

    python -m benchmarks.deploy [--packages 24] [--files 200] [--json]

Builds (once, cached) a synthetic repository of N packages of M files each, composes it
twice under two image names (same packages, so the second deploy finds every package in
the store), and on a loop-mounted btrfs measures, in one run each:

- `rpmimg deploy` of the second image (warm store: no fetch, only the build),
- `rpm -i --root R --nodeps --noscripts` of the original RPMs into the same filesystem,
- `cp -a --reflink=always` of the deployed tree,

reporting wall times, the ratios (targets: deploy >= 10x faster than rpm, <= 1.5x cp) and
the deploy's peak memory. Needs root (loop mount, rpm --root).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fixtures.build import FileSpec, PackageSpec, build_package, cache_root, signing_key
from fixtures.repos import createrepo


def _specs(packages: int, files: int) -> list[PackageSpec]:
    rng = random.Random(42)
    out = []
    for i in range(packages):
        # Sizes like a distribution's /usr: mostly small files, a few large ones.
        sizes = [min(int(rng.lognormvariate(8.5, 1.6)), 4 << 20) for _ in range(files)]
        out.append(PackageSpec(
            name=f"bench-{i:03d}",
            files=tuple(FileSpec(f"/usr/lib/bench-{i:03d}/f{j:04d}", size=s) for j, s in enumerate(sizes)),
        ))
    return out


def _repo(packages: int, files: int) -> Path:
    repo = cache_root() / f"bench-deploy-{packages}x{files}"
    if (repo / "repodata/repomd.xml").is_file():
        return repo
    tmp = repo.with_name(repo.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for spec in _specs(packages, files):
        build_package(spec, tmp / "Packages")
    createrepo(tmp)
    os.replace(tmp, repo)
    return repo


def _timed(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one command."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"{argv[0]} failed ({status}): {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss * 1024


def run(packages: int, files: int) -> dict[str, object]:
    repo = _repo(packages, files)
    rpms = sorted((repo / "Packages").glob("*.rpm"))
    key = signing_key()
    rpmimg = [sys.executable, "-m", "rpmimg"]
    with tempfile.TemporaryDirectory(prefix="rpmimg-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        out = work / "out"
        for name in ("bench", "bench-warm"):
            definition = work / f"{name}.toml"
            names = ", ".join(f'"{p.name.rsplit("-", 2)[0]}"' for p in rpms)
            definition.write_text(f'name = "{name}"\narch = "x86_64"\npackages = [{names}]\n'
                                  f'[[repo]]\nname = "bench"\nurl = "file://{repo}/"\n')
            subprocess.run([*rpmimg, "compose", os.fspath(definition), "-o", os.fspath(out),
                            "--sign-key", os.fspath(key.secret)], check=True, capture_output=True)
        image = work / "fs.img"
        with open(image, "wb") as f:
            f.truncate(8 << 30)
        subprocess.run(["mkfs.btrfs", "-q", os.fspath(image)], check=True, capture_output=True)
        mnt = work / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "loop", os.fspath(image), os.fspath(mnt)], check=True)
        try:
            deploy = [*rpmimg, "deploy", "--sysroot", os.fspath(mnt), "--keyring", os.fspath(key.public),
                      "--allow-unsigned-packages"]
            subprocess.run([*deploy, os.fspath(out / "images/bench/latest")], check=True, capture_output=True)
            subprocess.run(["sync"], check=True)
            t_deploy, rss = _timed([*deploy, os.fspath(out / "images/bench-warm/latest")])
            state = json.loads((mnt / "@rpmimg/state.json").read_text())
            tree = mnt / "@rpmimg/deployments" / state["default"]
            t_rpm, _ = _timed(["rpm", "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts",
                               "--nosignature", "--nodigest", "--root", os.fspath(mnt / "rpm-root"),
                               *map(os.fspath, rpms)])
            t_sync, _ = _timed(["sync", "-f", os.fspath(mnt)])  # deploy syncs before committing
            t_cp, _ = _timed(["cp", "-a", "--reflink=always", os.fspath(tree), os.fspath(mnt / "cp-copy")])
        finally:
            subprocess.run(["umount", os.fspath(mnt)], check=False)
    data = sum(p.stat().st_size for p in rpms)
    return {
        "packages": len(rpms), "files": len(rpms) * files, "rpm_bytes": data,
        "deploy_seconds": round(t_deploy, 3), "rpm_seconds": round(t_rpm, 3), "cp_seconds": round(t_cp, 3),
        "rpm_sync_seconds": round(t_rpm + t_sync, 3),
        "rpm_over_deploy": round(t_rpm / t_deploy, 2),
        "rpm_sync_over_deploy": round((t_rpm + t_sync) / t_deploy, 2), "deploy_over_cp": round(t_deploy / t_cp, 2),
        "deploy_peak_rss_bytes": rss,
        "targets": {"rpm_over_deploy": ">= 10", "deploy_over_cp": "<= 1.5"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packages", type=int, default=24)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.packages, args.files)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
