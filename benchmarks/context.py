"""What every metric needs: the corpus, a btrfs to work on, the run policy, and shared trees."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.debcorpus import Corpus
from benchmarks.measure import CacheState, loop_btrfs, run_timed

CHECKOUT = Path(__file__).resolve().parents[1]


def rpmimg_command() -> list[str]:
    """The real rpmimg of this checkout (.venv/bin/rpmimg), else the one on PATH."""
    venv = CHECKOUT / ".venv" / "bin" / "rpmimg"
    if venv.exists():
        return [os.fspath(venv)]
    found = shutil.which("rpmimg")
    return [found] if found else [sys.executable, "-m", "rpmimg"]


def byte_compile(checkout: Path = CHECKOUT) -> None:
    """Compile a checkout's modules and its dataclasses' methods as the package compiles
    them (rpmimg.precompile): a fresh checkout run with PYTHONDONTWRITEBYTECODE would
    otherwise compile its sources on every command, a fixed cost larger than `status`."""
    subprocess.run([sys.executable, "-m", "rpmimg.precompile"], check=True, cwd=checkout,
                   env={**os.environ, "PYTHONPATH": os.fspath(checkout)}, stdout=subprocess.DEVNULL)


@functools.cache
def rpmimg_verbs() -> frozenset[str]:
    """Verbs the installed rpmimg offers (`pkg`, `compose`, `deploy`, ...), read from its help."""
    proc = subprocess.run([*rpmimg_command(), "--help"], capture_output=True, text=True)
    words = proc.stdout.replace(",", " ").replace("{", " ").replace("}", " ").split()
    return frozenset(words)


def rpmimg_has(*verbs: str) -> str | None:
    """None when rpmimg offers every verb, else the reason it can't be measured yet."""
    missing = [v for v in verbs if v not in rpmimg_verbs()]
    if missing:
        return f"`rpmimg {' '.join(missing)}` not available in this checkout yet"
    return None


@dataclass
class Context:
    corpus: Corpus
    work: Path  # a mounted btrfs with room for several copies of the image
    runs: int = 3
    cache: CacheState = field(default_factory=CacheState)
    limit: int | None = None  # only the first N packages (quick runs)
    shared: dict[str, Any] = field(default_factory=dict)  # results several metrics reuse
    host: Path | None = None  # where further loop filesystems' images go
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _counter: int = 0

    def new_btrfs(self, size: int = 16 << 30) -> Path:
        """Another empty loop-mounted btrfs, unmounted when the run ends (ctx.stack)."""
        return self.stack.enter_context(loop_btrfs(self.host or self.work.parent, size))

    def new_sysroot(self) -> Path:
        """A fresh btrfs whose top level is a bare system root (/usr to deploy into, an empty /etc)."""
        root = self.new_btrfs()
        for d in ("usr", "etc"):
            (root / d).mkdir()
        return root

    @property
    def rpmimg(self) -> list[str]:
        return rpmimg_command()

    def base_rpms(self) -> list[Path]:
        rpms = sorted((self.corpus.base).glob("*.rpm"))
        return rpms[: self.limit] if self.limit else rpms

    def package_names(self) -> list[str]:
        """Names of the packages in base_rpms()."""
        base = {p.name for p in self.base_rpms()}
        return [p["name"] for p in self.corpus.info["packages"] if p["rpm"] in base]

    def update_packages(self) -> list[dict[str, Any]]:
        """The update set's packages (as in corpus.json) whose old version is in base_rpms()."""
        base = {p.name for p in self.base_rpms()}
        return [u for u in self.corpus.info["update"]["packages"] if u["old_rpm"] in base]

    def v2_rpms(self) -> list[Path]:
        """The package set after the update: base with the updated packages replaced."""
        updated = {u["old_rpm"]: u["rpm"] for u in self.update_packages()}
        out = []
        for p in self.base_rpms():
            new = updated.get(p.name)
            out.append(self.corpus.updates / new if new else p)
        return out

    def scratch(self, name: str) -> Path:
        """A new, empty directory on the work filesystem."""
        self._counter += 1
        path = self.work / f"{name}-{self._counter}"
        path.mkdir(parents=True)
        return path

    @functools.cached_property
    def rpm_root_v1(self) -> Path:
        """rpm -i --root of the original RPMs: the reference tree the peers work on."""
        return self._rpm_install("rpmroot-v1", self.base_rpms())

    @functools.cached_property
    def rpm_root_v2(self) -> Path:
        return self._rpm_install("rpmroot-v2", self.v2_rpms())

    def _rpm_install(self, name: str, rpms: list[Path]) -> Path:
        root = self.scratch(name)
        rpm_install(root, rpms)
        # rpm leaves directories with the install time: zero them so two installs of the same
        # packages are the same tree to the peers that store directory times (casync).
        for dirpath, _, _ in os.walk(root):
            os.utime(dirpath, (0, 0), follow_symlinks=False)
        return root


def rpm_install(root: Path, rpms: list[Path]) -> None:
    """`rpm -i --root --nodeps --noscripts` of the packages, as one transaction."""
    run_timed([rpm_install_command(root, rpms)])


def rpm_install_command(root: Path, rpms: list[Path]) -> list[str]:
    return ["rpm", "-i", "--root", os.fspath(root), "--nodeps", "--noscripts", "--nosignature",
            "--ignorearch", *map(os.fspath, rpms)]
