"""Measuring: timed commands with their peak memory, medians, result rows, a loop-mounted btrfs."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
TIME = "/usr/bin/time"  # GNU time, Debian's "time" package


@dataclass(frozen=True)
class Target:
    """What the ratio must satisfy: `>= 10` or `<= 1.5`."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Row:
    """One line of the results: rpmimg's figure, the peer's, and their ratio against the target."""

    metric: str
    rpmimg: float | None
    peer: str
    peer_value: float | None
    ratio: float | None
    target: str
    met: bool | None
    unit: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def row(metric: str, rpmimg: float | None, peer: str, peer_value: float | None, unit: str,
        *, ratio: Callable[[float, float], float] | None = None, target: Target | None = None,
        note: str = "") -> Row:
    """A row whose ratio is ratio(rpmimg, peer_value) (rpmimg/peer by default)."""
    r = None
    if rpmimg is not None and peer_value:
        r = (ratio or (lambda a, b: a / b))(rpmimg, peer_value)
    return Row(metric, rpmimg, peer, peer_value, None if r is None else round(r, 3),
               str(target) if target else "", None if r is None or target is None else target.met(r),
               unit, note)


def not_run(metric: str, peer: str, peer_value: float | None, unit: str, reason: str,
            target: Target | None = None) -> Row:
    """A row for a measurement whose rpmimg side could not run; the peer's figure is kept."""
    return Row(metric, None, peer, peer_value, None, str(target) if target else "", None, unit,
               f"not run: {reason}")


@dataclass(frozen=True)
class Timing:
    seconds: float
    max_rss: int  # bytes, the largest of the processes run


@dataclass
class CacheState:
    """Whether caches are dropped before each timed run (root only), else runs are warm.

    Either way the system is synced before each timed run."""

    cold: bool = False
    dropped: bool = field(default=False)

    def prepare(self) -> None:
        # Always write out what earlier runs left dirty, so that their writeback doesn't
        # land in this run's time.
        os.sync()
        if not self.cold:
            return
        try:
            DROP_CACHES.write_text("3\n")
            self.dropped = True
        except OSError:
            self.cold = False  # not allowed here: say "warm" in the results

    @property
    def label(self) -> str:
        return "cold (caches dropped)" if self.cold else "warm, synced before each run"


def run_timed(cmds: Sequence[Sequence[str]], *, cwd: Path | None = None,
              stdout: int | None = subprocess.DEVNULL, env: dict[str, str] | None = None,
              ok: tuple[int, ...] = (0,)) -> Timing:
    """Run commands one after another; total wall time and the largest peak RSS among them.

    Peak RSS comes from GNU time, which forks the command itself: a child of this
    (large) Python process would report our own RSS as its maximum after exec.
    An exit status outside `ok` raises CalledProcessError with the command's stderr.
    """
    max_rss = 0
    elapsed = 0.0
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss:
        for cmd in cmds:
            start = time.perf_counter()
            proc = subprocess.run([TIME, "-f", "%M", "-o", rss.name, *cmd], cwd=cwd, stdout=stdout,
                                  stderr=subprocess.PIPE, env=env)
            elapsed += time.perf_counter() - start
            if proc.returncode not in ok:
                raise subprocess.CalledProcessError(proc.returncode, list(cmd), stderr=proc.stderr)
            max_rss = max(max_rss, _kib(Path(rss.name).read_text()) * 1024)
    return Timing(elapsed, max_rss)


def _kib(text: str) -> int:
    # GNU time prefixes "Command exited with non-zero status N" when the command failed.
    return int(text.strip().splitlines()[-1]) if text.strip() else 0


def median_timing(runs: int, cache: CacheState, once: Callable[[], Timing],
                  setup: Callable[[], None] | None = None) -> Timing:
    """Median wall time (and largest RSS) of `runs` runs, each after setup() and the cache policy."""
    timings = []
    for _ in range(runs):
        if setup is not None:
            setup()
        cache.prepare()
        timings.append(once())
    return median_of(timings)


def median_of(timings: Sequence[Timing]) -> Timing:
    """The median wall time of timings, with the largest RSS of any of them."""
    return Timing(statistics.median(t.seconds for t in timings), max(t.max_rss for t in timings))


def tree_bytes(path: Path) -> int:
    """Apparent bytes of the regular files under path (each inode once)."""
    seen: set[int] = set()
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen and (st.st_mode & 0o170000) == 0o100000:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def btrfs_data_used(mount: Path) -> int:
    """Bytes of data btrfs has allocated to files on mount (after a sync)."""
    subprocess.run(["btrfs", "filesystem", "sync", os.fspath(mount)], check=True,
                   capture_output=True)
    out = subprocess.run(["btrfs", "filesystem", "usage", "-b", os.fspath(mount)], check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Data,"):
            return int(line.split("Used:")[1].split()[0].rstrip(","))
    raise RuntimeError(f"no Data line in btrfs filesystem usage of {mount}")


@contextlib.contextmanager
def loop_btrfs(where: Path, size: int) -> Iterator[Path]:
    """A fresh btrfs in a sparse file under `where`, loop-mounted; removed afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-btrfs-", dir=where)))
        image, mnt = tmp / "fs.img", tmp / "mnt"
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.btrfs", "-q", os.fspath(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", os.fspath(image), os.fspath(mnt)], check=True,
                       capture_output=True)
        stack.callback(subprocess.run, ["umount", "-l", os.fspath(mnt)], check=False,
                       capture_output=True)
        yield mnt


def fresh_dir(path: Path) -> Path:
    """path, emptied (a btrfs subvolume is deleted as such)."""
    if path.exists():
        subprocess.run(["btrfs", "subvolume", "delete", os.fspath(path)], check=False,
                       capture_output=True)
        if path.exists():
            shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_pipeline(first: Sequence[str], second: Sequence[str], *, stdout: int) -> Timing:
    """`first | second > stdout`, timed; peak RSS is the second's (the consumer does the work)."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss:
        start = time.perf_counter()
        a = subprocess.Popen(list(first), stdout=subprocess.PIPE)
        b = subprocess.Popen([TIME, "-f", "%M", "-o", rss.name, *second], stdin=a.stdout,
                             stdout=stdout, stderr=subprocess.PIPE)
        assert a.stdout is not None
        a.stdout.close()  # so `first` sees SIGPIPE if `second` dies
        _, err = b.communicate()
        a.wait()
        elapsed = time.perf_counter() - start
        for proc, cmd in ((a, first), (b, second)):
            if proc.returncode != 0:
                raise subprocess.CalledProcessError(proc.returncode, list(cmd), stderr=err)
        return Timing(elapsed, _kib(Path(rss.name).read_text()) * 1024)


def stderr_tail(e: subprocess.CalledProcessError) -> str:
    """The last line a failed command wrote to stderr (its error message), or its exit status."""
    err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {e.returncode}"
