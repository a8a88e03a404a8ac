"""The realistic benchmark corpus: a small bootable container host from Debian 12, as RPMs.

Resolves the Depends/Pre-Depends closure of a container host's packages (plus
Debian's Essential set) in apt's own index, fetches the .debs with
`apt-get download`, repackages each as a zstd-compressed RPM (deb2rpm) and
publishes two rpm-md repositories with createrepo_c:

- `base/`: every package of the closure;
- `updates/`: about 5% of the packages, whole Debian source packages chosen by
  a hash of the source name, in a new release (".1" appended). The real newer
  Debian versions are not available offline, so each updated package changes
  the content of a deterministic ~40% of its regular files the way a rebuild
  does: a short insertion near the start shifts everything after it, and one
  4 KiB block in eight after that is rewritten. Dependencies pinned with `=`
  to a sibling of the same source follow the new release.

Everything is cached under ~/.cache/rpmimg/bench-corpus (RPMIMG_BENCH_CACHE),
keyed by the resolved package versions and the builder's settings, so a rerun
is instant; `corpus.json` is written last and marks a complete build.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.deb2rpm import DebArchive, file_entries, package_spec, read_deb
from benchmarks.debian import (
    DebPackage,
    DebVersion,
    Relation,
    apt_index_files,
    load_index,
    parse_relations,
    unversioned_provides,
)
from benchmarks.rpmwriter import FileEntry, write_package

log = logging.getLogger(__name__)

BUILDER_VERSION = 4  # 4: kernel packages carry their module indexes; 3: kernels at /usr/lib/modules/KVER/vmlinuz, dracut seeded
ZSTD_LEVEL = int(os.environ.get("RPMIMG_BENCH_ZSTD_LEVEL", "19"))  # rpmbuild's w19.zstdio, as distributions ship
UPDATE_FRACTION = 0.05
CHANGED_FILE_FRACTION = 0.4

# What a small bootable container host installs on top of Debian's Essential set.
SEEDS = (
    "linux-image-amd64", "systemd", "systemd-sysv", "systemd-timesyncd", "udev", "dbus",
    "util-linux", "coreutils", "bash", "podman", "python3", "perl", "openssl", "ca-certificates",
    "openssh-server", "iproute2", "iputils-ping", "nftables", "iptables", "curl", "kmod",
    "btrfs-progs", "e2fsprogs", "dosfstools", "cryptsetup-bin", "sudo", "less", "vim-tiny",
    "procps", "psmisc", "rsync", "zstd", "xz-utils", "tar", "gzip", "file", "lsof", "strace",
    "tzdata", "locales", "jq", "git", "tmux", "bash-completion", "man-db",
    "buildah", "skopeo", "fuse-overlayfs", "slirp4netns", "uidmap", "catatonit",
    "dbus-user-session", "apparmor", "systemd-resolved", "systemd-container", "polkitd",
    "cloud-init", "grub-efi-amd64", "efibootmgr", "lvm2", "parted", "fdisk", "xfsprogs",
    "nfs-common", "wget", "htop", "bind9-dnsutils", "tcpdump", "ethtool", "conntrack",
    "logrotate", "cron", "netcat-openbsd", "dracut",
)


def cache_root() -> Path:
    """Where corpora live: $RPMIMG_BENCH_CACHE or ~/.cache/rpmimg/bench-corpus."""
    env = os.environ.get("RPMIMG_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rpmimg" / "bench-corpus"


# --- resolving the closure ------------------------------------------------------------------


def resolve_closure(index: dict[str, DebPackage], seeds: Iterable[str]) -> list[DebPackage]:
    """Depends/Pre-Depends closure, picking the first installable alternative as apt would by default.

    Essential packages are included: every Debian system has them and packages
    rely on them without declaring it.
    """
    providers: dict[str, list[DebPackage]] = {}
    for pkg in index.values():
        for group in parse_relations(pkg.fields.get("Provides", "")):
            for rel in group:
                providers.setdefault(rel.name, []).append(pkg)
    essential = sorted(n for n, p in index.items() if p.fields.get("Essential") == "yes")
    chosen: dict[str, DebPackage] = {}
    queue = [index[n] for n in (*essential, *seeds) if n in index]
    missing = sorted(set(seeds) - set(index))
    if missing:
        raise ValueError(f"seed packages not in the apt index: {', '.join(missing)}")

    def satisfied(rel: Relation) -> bool:
        own = chosen.get(rel.name)
        if own is not None and rel.satisfied_by(own.name, own.version):
            return True
        return any(p.name in chosen and _provides(p, rel) for p in providers.get(rel.name, ()))

    while queue:
        pkg = queue.pop(0)
        if pkg.name in chosen:
            continue
        chosen[pkg.name] = pkg
        for field in ("Pre-Depends", "Depends"):
            for group in parse_relations(pkg.fields.get(field, "")):
                if any(satisfied(rel) for rel in group) or any(
                    q.name == rel.name for q in queue for rel in group
                ):
                    continue
                pick = _pick(index, providers, group)
                if pick is None:
                    log.warning("%s: nothing provides %s", pkg.name, " | ".join(r.name for r in group))
                else:
                    queue.append(pick)
    return sorted(chosen.values(), key=lambda p: p.name)


def _provides(pkg: DebPackage, rel: Relation) -> bool:
    for group in parse_relations(pkg.fields.get("Provides", "")):
        for prov in group:
            if prov.name == rel.name and (not rel.op or (
                prov.version and rel.satisfied_by(prov.name, DebVersion.parse(prov.version)))):
                return True
    return False


def _pick(index: dict[str, DebPackage], providers: dict[str, list[DebPackage]],
          group: list[Relation]) -> DebPackage | None:
    for rel in group:
        real = index.get(rel.name)
        if real is not None and rel.satisfied_by(real.name, real.version):
            return real
        cands = sorted((p for p in providers.get(rel.name, ()) if _provides(p, rel)),
                       key=lambda p: p.name)
        if cands:
            return cands[0]
    return None


# --- fetching -------------------------------------------------------------------------------


def _deb_name(pkg: DebPackage) -> str:
    """The file name apt-get download gives a package (the epoch's colon escaped)."""
    version = str(pkg.version).replace(":", "%3a")
    return f"{pkg.name}_{version}_{pkg.arch}.deb"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_debs(pkgs: list[DebPackage], dest: Path) -> list[Path]:
    """Each package's .deb in dest, checked against the index's SHA256; fetched with apt-get download."""
    dest.mkdir(parents=True, exist_ok=True)
    want = {_deb_name(p): p for p in pkgs}
    apt_cache = Path("/var/cache/apt/archives")
    todo = []
    for name, pkg in want.items():
        path = dest / name
        if path.exists():
            continue
        cached = apt_cache / name
        if cached.exists() and _sha256(cached) == pkg.fields.get("SHA256"):
            shutil.copyfile(cached, path)  # apt already has it: same bytes as a download
        else:
            todo.append(pkg)
    if todo:
        with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
            os.chmod(tmp, 0o755)  # apt downloads as its _apt user when it can
            subprocess.run(["apt-get", "download", "-q", *(f"{p.name}={p.version}" for p in todo)],
                           check=True, cwd=tmp, stdout=subprocess.DEVNULL)
            for pkg in todo:
                got = Path(tmp) / _deb_name(pkg)
                if _sha256(got) != pkg.fields.get("SHA256"):
                    raise RuntimeError(f"{got.name}: SHA256 differs from apt's index")
                os.replace(got, dest / got.name)
    return [dest / n for n in sorted(want)]


# --- converting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Converted:
    name: str
    source: str
    rpm: str
    rpm_size: int
    files: int
    installed_bytes: int


def convert_one(deb: Path, out: Path, level: int, virtual: frozenset[str]) -> Converted:
    """Repackage one .deb into out/."""
    archive = read_deb(deb)
    spec = package_spec(archive, virtual=virtual)
    written = write_package(spec, out, level=level)
    return Converted(spec.name, _source(archive), written.path.name, written.size, written.files,
                     written.installed_size)


def _source(archive: DebArchive) -> str:
    return archive.control.get("Source", archive.control["Package"]).split(" ")[0]


def _parallel(fn: Any, jobs: list[tuple[Any, ...]]) -> list[Any]:
    workers = os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in futures]


# --- the update set -------------------------------------------------------------------------


def _score(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:4], "big")


def choose_update_sources(converted: list[Converted], fraction: float = UPDATE_FRACTION) -> set[str]:
    """Whole source packages, in order of a hash of their name, until `fraction` of the binaries."""
    by_source: dict[str, list[Converted]] = {}
    for c in converted:
        by_source.setdefault(c.source, []).append(c)
    target = max(1, round(fraction * len(converted)))
    chosen: set[str] = set()
    count = 0
    for source in sorted(by_source, key=_score):
        if count >= target:
            break
        chosen.add(source)
        count += len(by_source[source])
    return chosen


def changed_content(path: str, data: bytes) -> bytes:
    """A deterministic 'rebuilt' version of a file: an insertion near the start, 1 block in 8 rewritten."""
    seed = hashlib.sha256(b"rpmimg-bench-update\0" + path.encode("utf-8", "surrogateescape")).digest()
    at = int.from_bytes(seed[:4], "big") % (len(data) // 2 + 1)
    out = bytearray(data[:at] + b"<rpmimg-bench-update " + seed[:8].hex().encode() + b">" + data[at:])
    block = 4096
    for n, start in enumerate(range(at + block, len(out), block)):
        if (seed[8] + n) % 8 == 0:
            chunk = len(out[start:start + block])
            out[start:start + chunk] = _noise(seed + n.to_bytes(4, "big"), chunk)
    return bytes(out)


def _noise(seed: bytes, n: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:n])


def is_changed(path: str) -> bool:
    return _score("changed\0" + path) < CHANGED_FILE_FRACTION * 2**32


@dataclass(frozen=True)
class UpdatedPackage:
    name: str
    rpm: str
    rpm_size: int
    old_rpm: str
    changed_files: list[str]
    changed_bytes: int


def update_one(deb: Path, out: Path, level: int, virtual: frozenset[str], siblings: list[str],
               old_rpm: str) -> UpdatedPackage:
    """The new version of one package: release bumped, a share of its files changed."""
    archive = read_deb(deb)
    files = file_entries(archive)
    regular = [f for f in files if f.data and f.hardlink_key in (None, f.path)]
    picked = {f.path for f in regular if is_changed(f.path)}
    if not picked and regular:
        picked = {max(regular, key=lambda f: len(f.data)).path}
    new_data = {p: changed_content(p, f.data) for f in regular if (p := f.path) in picked}
    bumped: list[FileEntry] = []
    for f in files:
        key = f.hardlink_key or f.path
        if key in new_data:
            f = replace(f, data=new_data[key], mtime=f.mtime + 86400)
        bumped.append(f)
    spec = package_spec(archive, release_suffix=".1", files=bumped, virtual=virtual)
    old_evr = f"{archive.package.version.rpm_evr(with_release=True)}"
    new_evr = spec.provides[0].version
    requires = [replace(d, version=new_evr) if d.name in siblings and d.version == old_evr else d
                for d in spec.requires]
    written = write_package(replace(spec, requires=requires), out, level=level)
    return UpdatedPackage(spec.name, written.path.name, written.size, old_rpm, sorted(new_data),
                          sum(len(d) for d in new_data.values()))


# --- the whole corpus -----------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """A built corpus: two rpm-md repositories and what they hold."""

    root: Path
    info: dict[str, Any]

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def updates(self) -> Path:
        return self.root / "updates"

    @property
    def package_names(self) -> list[str]:
        return [p["name"] for p in self.info["packages"]]


def createrepo(path: Path) -> None:
    subprocess.run(["createrepo_c", "--quiet", "--no-database", "--workers", str(os.cpu_count() or 1),
                    os.fspath(path)], check=True)


def corpus_key(pkgs: list[DebPackage]) -> str:
    h = hashlib.sha256(json.dumps({
        "builder": BUILDER_VERSION, "level": ZSTD_LEVEL, "update": UPDATE_FRACTION,
        "changed": CHANGED_FILE_FRACTION, "packages": [f"{p.name}={p.version}" for p in pkgs],
    }, sort_keys=True).encode())
    return h.hexdigest()[:16]


def build_corpus(cache: Path | None = None, seeds: Iterable[str] = SEEDS) -> Corpus:
    """Build (or find in the cache) the corpus for the current apt index."""
    cache = cache or cache_root()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    index = load_index(apt_index_files())
    if not index:
        raise RuntimeError("apt has no bookworm main amd64 Packages list: run apt-get update")
    pkgs = resolve_closure(index, seeds)
    root = cache / corpus_key(pkgs)
    if (root / "corpus.json").exists():
        return Corpus(root, json.loads((root / "corpus.json").read_text()))
    timings["resolve"] = time.monotonic() - t0

    t = time.monotonic()
    debs = fetch_debs(pkgs, cache / "debs")
    timings["fetch"] = time.monotonic() - t

    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "base").mkdir(parents=True)
    (work / "updates").mkdir()
    t = time.monotonic()
    debs_by_size = sorted(debs, key=lambda p: -p.stat().st_size)  # big ones first balance the workers
    virtual = unversioned_provides(index.values())
    converted: list[Converted] = _parallel(convert_one, [(d, work / "base", ZSTD_LEVEL, virtual)
                                                         for d in debs_by_size])
    converted.sort(key=lambda c: c.name)
    timings["convert"] = time.monotonic() - t

    t = time.monotonic()
    sources = choose_update_sources(converted)
    deb_of = {read_name(d): d for d in debs}
    chosen = [c for c in converted if c.source in sources]
    siblings = {s: [c.name for c in chosen if c.source == s] for s in sources}
    updated: list[UpdatedPackage] = _parallel(update_one, [
        (deb_of[c.name], work / "updates", ZSTD_LEVEL, virtual, siblings[c.source], c.rpm)
        for c in chosen
    ])
    timings["update"] = time.monotonic() - t

    t = time.monotonic()
    createrepo(work / "base")
    createrepo(work / "updates")
    timings["createrepo"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0

    info = {
        "key": root.name,
        "seeds": list(seeds),
        "zstd_level": ZSTD_LEVEL,
        "packages": [asdict(c) for c in converted],
        "package_count": len(converted),
        "installed_bytes": sum(c.installed_bytes for c in converted),
        "files": sum(c.files for c in converted),
        "rpm_bytes": sum(c.rpm_size for c in converted),
        "deb_bytes": sum(d.stat().st_size for d in debs),
        "update": {
            "sources": sorted(sources),
            "packages": [asdict(u) for u in updated],
            "changed_files": sum(len(u.changed_files) for u in updated),
            "changed_bytes": sum(u.changed_bytes for u in updated),
            "rpm_bytes": sum(u.rpm_size for u in updated),
            "old_rpm_bytes": sum(c.rpm_size for c in chosen),
        },
        "build_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    (work / "corpus.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(work, root)
    return Corpus(root, info)


def read_name(deb: Path) -> str:
    return deb.name.split("_", 1)[0]


def summary(corpus: Corpus) -> dict[str, Any]:
    info = corpus.info
    return {
        "root": os.fspath(corpus.root),
        "packages": info["package_count"],
        "installed_mb": round(info["installed_bytes"] / 1e6, 1),
        "files": info["files"],
        "rpm_mb": round(info["rpm_bytes"] / 1e6, 1),
        "update_packages": len(info["update"]["packages"]),
        "update_changed_files": info["update"]["changed_files"],
        "update_changed_mb": round(info["update"]["changed_bytes"] / 1e6, 1),
        "build_seconds": info["build_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.debcorpus", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, help="cache directory (default: $RPMIMG_BENCH_CACHE or ~/.cache/rpmimg/bench-corpus)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="debcorpus: %(message)s")
    corpus = build_corpus(args.cache)
    s = summary(corpus)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
    else:
        for k, v in s.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

