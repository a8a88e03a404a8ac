"""Generated packages of many small files, for the scaling benchmark and the memory-ceiling test.

One package of N files laid out like a big distribution package (a kernel's modules, an
icon theme, a language runtime's library): a few top directories, fan-out of a few dozen
per level, realistic base names, sizes of a few hundred bytes to a few KiB, a sprinkling
of symlinks. Deterministic for N, written once into the cache and reused.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

from benchmarks.rpmwriter import FileEntry, PackageSpec, write_package
from fixtures.build import cache_root

WORDS = ("core", "net", "drivers", "gpu", "sound", "input", "media", "usb", "scsi", "block",
         "crypto", "fs", "video", "hid", "i2c", "spi", "pci", "power", "thermal", "misc",
         "icons", "locale", "share", "python3", "site-packages", "modules", "firmware", "data")
STEMS = ("handler", "config", "module", "widget", "parser", "helper", "common", "main", "util",
         "table", "theme", "index", "ctl", "dev", "io", "mem", "sched", "proto", "codec", "cache")
EXTS = (".ko", ".py", ".png", ".svg", ".so", ".json", ".mo", ".h", ".conf", ".txt")
VERSION = "1"


def _paths(n: int, rng: random.Random) -> Iterator[str]:
    """n distinct file paths under a three-level tree of ~30-way fan-out."""
    made = 0
    for a in range(1 << 30):
        top = f"/usr/lib/scale/{WORDS[a % len(WORDS)]}{a // len(WORDS) or ''}"
        for b in range(30):
            mid = f"{top}/{WORDS[(a + b * 7) % len(WORDS)]}-{b:02d}"
            for c in range(40):
                stem = STEMS[(b + c) % len(STEMS)]
                yield f"{mid}/{stem}_{rng.randrange(1 << 20):05x}_{c:02d}{EXTS[(a + c) % len(EXTS)]}"
                made += 1
                if made == n:
                    return


def files(n: int) -> list[FileEntry]:
    """The n entries: directories, mostly small regular files, one symlink in 50."""
    rng = random.Random(n)
    out: list[FileEntry] = []
    dirs: set[str] = set()
    for i, path in enumerate(_paths(n, rng)):
        parent = path.rsplit("/", 1)[0]
        while parent not in dirs and parent != "/usr/lib":
            dirs.add(parent)
            out.append(FileEntry(parent, 0o40755))
            parent = parent.rsplit("/", 1)[0]
        if i % 50 == 49:
            out.append(FileEntry(path, 0o120777, linkto=os.path.basename(out[-1].path)))
        else:
            size = min(int(rng.lognormvariate(6.5, 1.0)), 64 << 10)
            out.append(FileEntry(path, 0o100644, mtime=1_700_000_000 + i,
                                 data=rng.randbytes(size // 2) * 2))
    return out


def package(n: int) -> Path:
    """scale-N-1-1.x86_64.rpm of n files (plus their directories), from the cache."""
    directory = cache_root() / f"scale-{n}-v{VERSION}"
    name = f"scale{n}"
    rpm = directory / f"{name}-1-1.x86_64.rpm"
    if rpm.is_file():
        return rpm
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_package(PackageSpec(name=name, version="1", release="1", arch="x86_64",
                              summary=f"{n} small files", files=files(n)), tmp, level=3)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return rpm
