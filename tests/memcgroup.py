"""A real memory cgroup to run a command in, for the memory-ceiling tests.

systemd-run --scope when systemd is PID 1; otherwise a cgroup made here: a child of this
process's own cgroup in the unified (v2) hierarchy, or in the v1 memory hierarchy. Where
none of these can be made, `unavailable()` says why (the tests skip with it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Limited:
    """A way to run commands under a memory limit."""

    kind: str  # "systemd-run", "v2" or "v1"
    limit: int
    directory: Path | None = None  # the cgroup made here

    def command(self, argv: Sequence[str]) -> list[str]:
        if self.kind == "systemd-run":
            return ["systemd-run", "--scope", "--quiet", "-p", f"MemoryMax={self.limit}",
                    "-p", "MemorySwapMax=0", "--", *argv]
        assert self.directory is not None
        # The shell moves itself into the cgroup, then becomes the command.
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', os.fspath(self.directory), *argv]

    def run(self, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]

    def oom_kills(self) -> int:
        """How many processes the kernel killed in the cgroup for want of memory (0 if unknown)."""
        if self.directory is None:
            return 0
        for name in ("memory.events", "memory.oom_control"):
            path = self.directory / name
            if path.exists():
                for line in path.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0


def _own(controller: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (controller == "" and controllers == ""):
            return path
    return None


def _make_v2(name: str, limit: int) -> Path:
    own = _own("")
    if own is None or not (CGROUP / "cgroup.controllers").exists():
        raise OSError("no unified cgroup hierarchy at /sys/fs/cgroup")
    parent = CGROUP / own.lstrip("/")
    if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
        (parent / "cgroup.subtree_control").write_text("+memory")
    path = parent / name
    path.mkdir()
    (path / "memory.max").write_text(str(limit))
    with contextlib.suppress(FileNotFoundError):
        (path / "memory.swap.max").write_text("0")
    return path


def _make_v1(name: str, limit: int) -> Path:
    own = _own("memory")
    base = CGROUP / "memory"
    if own is None or not base.is_dir():
        raise OSError("no v1 memory cgroup hierarchy at /sys/fs/cgroup/memory")
    path = base / own.lstrip("/") / name
    path.mkdir()
    (path / "memory.limit_in_bytes").write_text(str(limit))
    if (path / "memory.memsw.limit_in_bytes").exists():
        (path / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no escape into swap
    return path


@contextlib.contextmanager
def memory_limit(limit: int) -> Iterator[Limited]:
    """A memory-limited cgroup for the duration; OSError says why none can be made."""
    if os.geteuid() != 0:
        raise OSError("making a cgroup needs root")
    if Path("/proc/1/comm").read_text().strip() == "systemd" and shutil.which("systemd-run"):
        yield Limited("systemd-run", limit)
        return
    name = f"rpmimg-test-{os.getpid()}"
    errors = []
    for make in (_make_v2, _make_v1):
        try:
            path = make(name, limit)
        except OSError as e:
            errors.append(str(e))
            continue
        try:
            yield Limited("v2" if make is _make_v2 else "v1", limit, path)
        finally:
            with contextlib.suppress(OSError):
                path.rmdir()
        return
    raise OSError("; ".join(errors))
